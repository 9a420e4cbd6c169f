//! Kernel benchmarks on the GPU machine (scripts/device-check.sh runs them): the GEMM at the
//! shapes of gemma-2-2b over 4096 tokens plus a square 8192³, attention at 4096 tokens (global
//! and sliding window), and the memory-bound kernels. Times are the median of 10 event-timed runs
//! after 3 warm-ups, on random data (never zeros). Prints a table; with `WHITTLE_BENCH_OUT` set,
//! also writes the numbers there as JSON.
#![cfg(feature = "cuda")]

use half::bf16;
use serde_json::json;
use whittle::cuda::ops::{self, AttnParams};
use whittle::cuda::{DTensor, Gpu};

fn rand_bf16(n: usize, seed: u64, scale: f32) -> Vec<bf16> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            bf16::from_f32(((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale)
        })
        .collect()
}

fn dev(g: &Gpu, n: &[usize], seed: u64, scale: f32) -> DTensor<bf16> {
    DTensor::from_host(g, &rand_bf16(n.iter().product(), seed, scale), n).unwrap()
}

/// Median milliseconds of `f` over 10 timed runs after 3 warm-ups.
fn time_ms(g: &Gpu, mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    g.synchronize().unwrap();
    let mut v = Vec::new();
    for _ in 0..10 {
        let (a, b) = g.timing_events().unwrap();
        a.record(g.stream()).unwrap();
        f();
        b.record(g.stream()).unwrap();
        v.push(a.elapsed_ms(&b).unwrap() as f64);
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
#[ignore = "needs a GPU"]
fn bench_kernels() {
    let g = Gpu::new(0).expect("a GPU");
    g.set_sync(false);
    let mut rows = Vec::new();
    let mut add = |name: String, ms: f64, flop: f64, bytes: f64| {
        let tflops = flop / ms / 1e9;
        let gbs = bytes / ms / 1e6;
        println!("{name:<44} {ms:>9.3} ms {tflops:>8.1} TFLOP/s {gbs:>8.0} GB/s");
        rows.push(json!({"name": name, "ms": ms, "tflops": tflops, "gbps": gbs}));
    };
    println!("device: {}", g.info);

    // GEMM: (M, N, K) of gemma-2-2b's projections over 4096 tokens, the LM head over 512 rows,
    // and a square reference size.
    for &(what, m, n, k) in &[
        ("q_proj", 4096, 2048, 2304),
        ("gate/up_proj", 4096, 9216, 2304),
        ("down_proj", 4096, 2304, 9216),
        ("lm_head 512 rows", 512, 256_000, 2304),
        ("square", 8192, 8192, 8192),
    ] {
        let x = dev(&g, &[m, k], 1, 1.0);
        let w = dev(&g, &[n, k], 2, 0.05);
        let mut y = DTensor::<bf16>::zeros(&g, &[m, n]).unwrap();
        let ms = time_ms(&g, || {
            ops::gemm_nt(&g, &x, &w, Some(&mut y), None, false).unwrap()
        });
        let flop = 2.0 * (m * n * k) as f64;
        let bytes = 2.0 * (m * k + n * k + m * n) as f64;
        add(format!("gemm {what} {m}x{n}x{k}"), ms, flop, bytes);
    }
    // Gram of one 2b layer's activations over 4096 tokens (upper block triangle only).
    {
        let (t, i) = (4096, 9216);
        let a = dev(&g, &[t, i], 3, 1.0);
        let mut gm = DTensor::<f32>::zeros(&g, &[i, i]).unwrap();
        let ms = time_ms(&g, || ops::gram_accumulate(&g, &a, &mut gm).unwrap());
        add(
            format!("gram {t}x{i}"),
            ms,
            (t * i * i) as f64 + (t * i * 128) as f64,
            2.0 * (t * i) as f64 + 8.0 * (i * i) as f64 / 2.0,
        );
    }
    // Attention, gemma-2-2b heads, 4096 tokens: global causal and a 1024 window.
    for &(t, window) in &[
        (4096usize, None),
        (4096, Some(1024usize)),
        (8192, Some(4096)),
    ] {
        let (nh, nkv, d) = (8, 4, 256);
        let q = dev(&g, &[t, nh * d], 4, 1.0);
        let k = dev(&g, &[t, nkv * d], 5, 1.0);
        let v = dev(&g, &[t, nkv * d], 6, 1.0);
        let mut o = DTensor::<bf16>::zeros(&g, &[t, nh * d]).unwrap();
        let p = AttnParams {
            n_seq: 1,
            seq_len: t,
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: d,
            scale: 0.0625,
            softcap: Some(50.0),
            window,
        };
        let ms = time_ms(&g, || ops::attention(&g, &q, &k, &v, &mut o, &p).unwrap());
        // visible (query, key) pairs × 4·d FLOPs (QKᵀ and PV)
        let pairs: f64 = (0..t)
            .map(|i| (i + 1).min(window.unwrap_or(usize::MAX)) as f64)
            .sum();
        add(
            format!("attention T={t} nh={nh} nkv={nkv} d={d} W={window:?}"),
            ms,
            4.0 * d as f64 * nh as f64 * pairs,
            2.0 * (2 * t * nh * d + 2 * t * nkv * d) as f64,
        );
    }
    // Memory-bound kernels over 4096 tokens of gemma-2-2b.
    {
        let (n, h, i) = (4096, 2304, 9216);
        let gate = dev(&g, &[n, i], 7, 3.0);
        let up = dev(&g, &[n, i], 8, 3.0);
        let mut act = DTensor::<bf16>::zeros(&g, &[n, i]).unwrap();
        let mut s1 = DTensor::<f64>::zeros(&g, &[i]).unwrap();
        let mut s2 = DTensor::<f64>::zeros(&g, &[i]).unwrap();
        let ms = time_ms(&g, || {
            ops::gelu_mul(&g, &gate, &up, &mut act, None, Some((&mut s1, &mut s2))).unwrap()
        });
        add(
            format!("gelu_mul+stats {n}x{i}"),
            ms,
            0.0,
            6.0 * (n * i) as f64,
        );
        let x = dev(&g, &[n, h], 9, 3.0);
        let w = DTensor::from_host(&g, &vec![0.1f32; h], &[h]).unwrap();
        let mut y = DTensor::<bf16>::zeros(&g, &[n, h]).unwrap();
        let ms = time_ms(&g, || ops::rms_norm(&g, &x, &w, &mut y, 1e-6).unwrap());
        add(format!("rms_norm {n}x{h}"), ms, 0.0, 4.0 * (n * h) as f64);
        let mut q = dev(&g, &[n, 2048], 10, 1.0);
        let mut k = dev(&g, &[n, 1024], 11, 1.0);
        let rope = whittle::config::Rope {
            theta: 10000.0,
            linear_factor: 1.0,
        };
        let ms = time_ms(&g, || {
            ops::rope(&g, &mut q, Some(&mut k), 8, 4, 256, n, rope).unwrap()
        });
        add(format!("rope {n} rows"), ms, 0.0, 4.0 * (n * 3072) as f64);
    }
    if let Some(p) = std::env::var_os("WHITTLE_BENCH_OUT") {
        let doc = json!({"device": g.info.to_string(), "results": rows});
        std::fs::write(p, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    }
}

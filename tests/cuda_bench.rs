//! Kernel and calibration benchmarks on the GPU machine (scripts/device-check.sh runs them).
//!
//! `bench_kernels`: every shape in `scripts/device/bench_shapes.json` (compiled in; the torch
//! peer `scripts/device/bench_torch.py` reads the same file and `scripts/device/ratios.py` joins
//! the two on each record's `key`): GEMM at gemma-2-2b and gemma-2-9b projection shapes over 4096
//! tokens plus 8192³, the Gram accumulation, attention at T = 1k/4k/8k (head_dim 256, GQA 8:4,
//! causal, window 4096; with and without the Gemma-2 softcap), RMSNorm, RoPE, gelu·up + column
//! statistics, the NLL row reduction and a device-to-device copy (the memory ceiling).
//!
//! Method (the same constants and loop as bench_torch.py, from the JSON's `method`): each call
//! cycles through `sets` copies of its inputs and outputs, enough that one pass over them moves
//! at least `rotate_bytes` (256 MiB, five times the H100's 50 MB L2), so no call finds its
//! operands in L2 from the previous one. `max(3, sets)` warm-up calls, then one event-timed pass
//! estimates a call; a sample is `inner` back-to-back calls between two CUDA events (inner makes
//! a sample ≥ 0.5 ms, so launch gaps and event resolution stay small); as many samples as fit in
//! 300 ms (10 to 50). Reports the median, p10 and p90 of the per-call time. Inputs are random,
//! never zeros. Prints a table; with `WHITTLE_BENCH_OUT` (or `WHITTLE_BENCH_JSON`) set, writes
//! `{"device", "method", "records": [...]}` there, one record per (op, shape).
//!
//! `bench_calib`: calibration throughput — tokens/s through all layers of
//! `$WHITTLE_CALIB_MODEL` with on-device capture of Σa, Σa² (f64) and the Gram Σ a aᵀ (f32) of
//! every down_proj input, no LM head — over the pre-tokenized `$WHITTLE_CALIB_IDS` (safetensors
//! `input_ids` [n, seq], as `whittle compile --calib-ids` reads), `$WHITTLE_CALIB_BATCH`
//! sequences per forward (default 8). JSON to `$WHITTLE_CALIB_OUT`. This is `GpuModel`'s
//! device-statistics path, the one a device-resident compile would use; `whittle compile
//! --device cuda` today moves activations through the host (its wall time is a separate step).
#![cfg(feature = "cuda")]

use half::bf16;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use whittle::checkpoint::config::{Activation, NormWeight};
use whittle::cuda::ops::{self, AttnKernel, AttnParams, GemmKernel, RowStatsOut};
use whittle::cuda::{DTensor, Gpu, GpuModel, Residency};
use whittle::engine::Batch;

const SHAPES: &str = include_str!("../scripts/device/bench_shapes.json");

/// The compiled-in shapes, or the file `WHITTLE_BENCH_SHAPES` names (tests/emu/bench.sh runs
/// this benchmark on the CPU emulator with tests/emu/bench_shapes_tiny.json).
fn shapes() -> Value {
    match std::env::var_os("WHITTLE_BENCH_SHAPES") {
        Some(p) => {
            let text = std::fs::read_to_string(&p)
                .unwrap_or_else(|e| panic!("WHITTLE_BENCH_SHAPES={}: {e}", p.to_string_lossy()));
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("WHITTLE_BENCH_SHAPES={}: {e}", p.to_string_lossy()))
        }
        None => {
            serde_json::from_str(SHAPES).expect("scripts/device/bench_shapes.json is valid JSON")
        }
    }
}

/// The kernels to time for a GEMM-shaped entry: whittle's choice under the entry's key and, on
/// Hopper, each other kernel under "<key> <kernel>" (no torch row; perf.json keeps them).
fn kernel_variants(e: &Value, others: &[(GemmKernel, &str)]) -> Vec<(GemmKernel, Value)> {
    let mut v = vec![(GemmKernel::Auto, e.clone())];
    for &(kernel, label) in others {
        let mut alt = e.clone();
        alt["key"] = format!("{} {label}", s(e, "key")).into();
        v.push((kernel, alt));
    }
    v
}

/// On Hopper, the GEMM kernels other than `chosen` that can run a reduction of length `len`
/// (self-checks passed), with the label their records get; elsewhere none.
fn other_kernels(g: &Gpu, chosen: GemmKernel, len: usize) -> Vec<(GemmKernel, &'static str)> {
    [
        (GemmKernel::Sm90, "wgmma cp.async"),
        (GemmKernel::MmaSync, "mma.sync"),
    ]
    .into_iter()
    .filter(|&(k, _)| {
        k != chosen
            && g.info.compute_capability == (9, 0)
            && len % 8 == 0
            && (k == GemmKernel::MmaSync || ops::sm90_kernel_enabled(g, k))
    })
    .collect()
}

fn entries<'a>(s: &'a Value, op: &str) -> &'a [Value] {
    s[op]
        .as_array()
        .unwrap_or_else(|| panic!("bench_shapes.json: no list `{op}`"))
}

fn u(e: &Value, f: &str) -> usize {
    e[f].as_u64()
        .unwrap_or_else(|| panic!("bench_shapes.json: {e}: `{f}` is not a count")) as usize
}

fn opt_u(e: &Value, f: &str) -> Option<usize> {
    e[f].as_u64().map(|v| v as usize)
}

fn s<'a>(e: &'a Value, f: &str) -> &'a str {
    e[f].as_str()
        .unwrap_or_else(|| panic!("bench_shapes.json: {e}: `{f}` is not a string"))
}

/// Timing constants shared with bench_torch.py.
struct Method {
    rotate_bytes: f64,
    max_sets: usize,
    warmup_calls: usize,
    target_sample_ms: f64,
    max_inner: usize,
    budget_ms: f64,
    min_samples: usize,
    max_samples: usize,
}

impl Method {
    fn from(v: &Value) -> Method {
        let f = |k: &str| {
            v[k].as_f64()
                .unwrap_or_else(|| panic!("bench_shapes.json: method.{k} missing"))
        };
        Method {
            rotate_bytes: f("rotate_bytes"),
            max_sets: f("max_sets") as usize,
            warmup_calls: f("warmup_calls") as usize,
            target_sample_ms: f("target_sample_ms"),
            max_inner: f("max_inner") as usize,
            budget_ms: f("budget_ms"),
            min_samples: f("min_samples") as usize,
            max_samples: f("max_samples") as usize,
        }
    }

    /// Input/output copies to rotate through so one pass moves at least `rotate_bytes`.
    fn sets(&self, bytes_per_call: f64) -> usize {
        ((self.rotate_bytes / bytes_per_call).ceil() as usize).clamp(1, self.max_sets)
    }
}

/// Useful work of each op, the same formulas as bench_torch.py / ratios.py.
fn attention_pairs(t: usize, window: Option<usize>) -> f64 {
    (0..t)
        .map(|i| (i + 1).min(window.unwrap_or(usize::MAX)) as f64)
        .sum()
}

struct Timing {
    median: f64,
    p10: f64,
    p90: f64,
    samples: usize,
    inner: usize,
}

/// Per-call milliseconds of `f(set)` (see the module comment for the loop).
fn time_op(g: &Gpu, m: &Method, sets: usize, mut f: impl FnMut(usize)) -> Timing {
    let mut next = 0usize;
    for _ in 0..m.warmup_calls.max(sets) {
        f(next % sets);
        next += 1;
    }
    g.synchronize().unwrap();
    let (a, b) = g.timing_events().unwrap();
    a.record(g.stream()).unwrap();
    for _ in 0..sets {
        f(next % sets);
        next += 1;
    }
    b.record(g.stream()).unwrap();
    let est = (a.elapsed_ms(&b).unwrap() as f64 / sets as f64).max(1e-4);
    let inner = ((m.target_sample_ms / est).ceil() as usize).clamp(1, m.max_inner);
    let samples =
        ((m.budget_ms / (est * inner as f64)) as usize).clamp(m.min_samples, m.max_samples);
    let mut v = Vec::with_capacity(samples);
    for _ in 0..samples {
        a.record(g.stream()).unwrap();
        for _ in 0..inner {
            f(next % sets);
            next += 1;
        }
        b.record(g.stream()).unwrap();
        v.push(a.elapsed_ms(&b).unwrap() as f64 / inner as f64);
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Timing {
        median: v[n / 2],
        p10: v[n / 10],
        p90: v[(n * 9 / 10).min(n - 1)],
        samples,
        inner,
    }
}

/// xorshift64 stream (no intermediate buffers: the LM-head weight alone is 590M values).
fn xorshift(seed: u64) -> impl Iterator<Item = u64> {
    whittle::rng::XorShift64::new(seed)
}

fn rand_u64(n: usize, seed: u64) -> Vec<u64> {
    xorshift(seed).take(n).collect()
}

/// Uniform in (-scale, scale), never all zeros.
fn rand_f32(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    xorshift(seed)
        .take(n)
        .map(|r| ((r >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale)
        .collect()
}

fn rand_bf16(n: usize, seed: u64, scale: f32) -> Vec<bf16> {
    xorshift(seed)
        .take(n)
        .map(|r| bf16::from_f32(((r >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale))
        .collect()
}

/// `sets` device copies of one host tensor (distinct addresses are what defeats L2).
fn upload<T>(g: &Gpu, host: &[T], shape: &[usize], sets: usize) -> Vec<DTensor<T>>
where
    T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits + Clone + Default,
{
    (0..sets)
        .map(|_| DTensor::from_host(g, host, shape).unwrap())
        .collect()
}

fn zeros<T>(g: &Gpu, shape: &[usize], sets: usize) -> Vec<DTensor<T>>
where
    T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits + Clone + Default,
{
    (0..sets)
        .map(|_| DTensor::zeros(g, shape).unwrap())
        .collect()
}

struct Records {
    rows: Vec<Value>,
}

impl Records {
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        e: &Value,
        op: &str,
        kernel: &str,
        t: &Timing,
        sets: usize,
        flop: f64,
        bytes: f64,
        note: &str,
    ) {
        let tflops = flop / t.median / 1e9;
        let gbps = bytes / t.median / 1e6;
        let key = s(e, "key");
        println!(
            "{key:<66} {:>9.4} ms  [{:>9.4} {:>9.4}] {tflops:>7.1} TFLOP/s {gbps:>7.0} GB/s",
            t.median, t.p10, t.p90
        );
        self.rows.push(json!({
            "key": key,
            "label": e["label"],
            "op": op,
            "impl": format!("whittle {kernel}"),
            "ms": t.median,
            "ms_p10": t.p10,
            "ms_p90": t.p90,
            "samples": t.samples,
            "inner": t.inner,
            "sets": sets,
            "flop": flop,
            "bytes": bytes,
            "tflops": tflops,
            "gbps": gbps,
            "note": note,
        }));
    }
}

/// Parses, lists unique keys, and every op the two benchmarks know (runs without a GPU); the
/// emulator's tiny shapes too.
#[test]
fn bench_shapes_are_well_formed() {
    let tiny: Value = serde_json::from_str(include_str!("emu/bench_shapes_tiny.json"))
        .expect("tests/emu/bench_shapes_tiny.json is valid JSON");
    check_shapes(&tiny);
    let sh: Value = serde_json::from_str(SHAPES).expect("bench_shapes.json is valid JSON");
    let keys = check_shapes(&sh);
    // The shapes: both models' seven projections over 4096 tokens, and 8192³.
    for (h, i, q, kv) in [(2304, 9216, 2048, 1024), (3584, 14336, 4096, 2048)] {
        for (n, k) in [(q, h), (kv, h), (h, q), (i, h), (h, i)] {
            let key = format!("gemm M=4096 N={n} K={k}");
            assert!(keys.contains(&key), "missing {key}");
        }
    }
    assert!(keys.contains("gemm M=8192 N=8192 K=8192"));
    assert_eq!(attention_pairs(4, Some(2)), 1.0 + 2.0 + 2.0 + 2.0);
    assert_eq!(attention_pairs(3, None), 6.0);
}

/// The schema checks of one shapes document; returns its keys.
fn check_shapes(sh: &Value) -> std::collections::BTreeSet<String> {
    Method::from(&sh["method"]);
    let mut keys = std::collections::BTreeSet::new();
    for op in [
        "gemm",
        "gram",
        "attention",
        "rmsnorm",
        "rope",
        "gelu_mul_stats",
        "nll",
        "copy",
    ] {
        assert!(!entries(sh, op).is_empty(), "{op}: no shapes");
        for e in entries(sh, op) {
            let k = s(e, "key");
            assert!(
                k.starts_with(op.split('_').next().unwrap()),
                "{k} under {op}"
            );
            assert!(keys.insert(k.to_string()), "duplicate key {k}");
            s(e, "label");
        }
    }
    for e in entries(sh, "gemm") {
        assert_eq!(
            s(e, "key"),
            format!("gemm M={} N={} K={}", u(e, "m"), u(e, "n"), u(e, "k"))
        );
    }
    keys
}

#[test]
#[ignore = "needs a GPU"]
fn bench_kernels() {
    let g = Gpu::new(0).expect("a GPU");
    g.set_sync(false);
    let sh = shapes();
    let m = Method::from(&sh["method"]);
    let mut r = Records { rows: Vec::new() };
    println!("device: {}", g.info);
    println!(
        "{:<66} {:>12} {:>21} {:>15} {:>12}",
        "key", "median", "[p10 p90]", "rate", "bandwidth"
    );

    for e in entries(&sh, "gemm") {
        let (mm, n, k) = (u(e, "m"), u(e, "n"), u(e, "k"));
        let bytes = 2.0 * (mm * k + n * k + mm * n) as f64;
        let sets = m.sets(bytes);
        let xs = upload(&g, &rand_bf16(mm * k, 1, 1.0), &[mm, k], sets);
        let ws = upload(&g, &rand_bf16(n * k, 2, 0.05), &[n, k], sets);
        let mut ys = zeros::<bf16>(&g, &[mm, n], sets);
        let flop = 2.0 * (mm * n * k) as f64;
        // What whittle runs (on Hopper the TMA wgmma kernel once its self-check passed), and on
        // Hopper also every other kernel that passed, under the key + " <kernel>" (no torch peer
        // row; in perf.json).
        let chosen = ops::auto_gemm_kernel(&g, k);
        let others = other_kernels(&g, chosen, k);
        for (kernel, entry) in kernel_variants(e, &others) {
            let t = time_op(&g, &m, sets, |i| {
                ops::gemm_nt_with(&g, &xs[i], &ws[i], Some(&mut ys[i]), None, false, kernel)
                    .unwrap()
            });
            let run = if kernel == GemmKernel::Auto {
                chosen
            } else {
                kernel
            };
            let name = ops::gemm_kernel_name(run, k);
            r.add(
                &entry,
                "gemm",
                name,
                &t,
                sets,
                flop,
                bytes,
                "Y = X·Wᵀ, bf16 out",
            );
        }
        // The MLP's input side as whittle runs it where the GEMM is fused (gate and up from one
        // launch, gelu·up in its epilogue; W_gate = W_up here, which changes no timing): twice
        // this shape's FLOPs, under "<key> fused gate/up + gelu" (perf.json). Its unfused peer
        // is two of the rows above plus gelu_mul_stats' pass.
        if s(e, "label").contains("gate_proj") && ops::gate_up_fused(&g, k) {
            let t = time_op(&g, &m, sets, |i| {
                ops::gate_up_act(&g, Activation::GeluTanh, &xs[i], &ws[i], &ws[i], &mut ys[i])
                    .unwrap()
            });
            let mut alt = e.clone();
            alt["key"] = format!("{} fused gate/up + gelu", s(e, "key")).into();
            r.add(
                &alt,
                "gemm",
                "gemm_nt_bf16_sm90_tma (gate/up mode)",
                &t,
                sets,
                2.0 * flop,
                2.0 * (mm * k + 2 * n * k + mm * n) as f64,
                "act = gelu(X·W_gateᵀ)·(X·W_upᵀ), bf16 out; flop counts both GEMMs",
            );
        }
    }

    for e in entries(&sh, "gram") {
        let (t_, i) = (u(e, "t"), u(e, "i"));
        // Useful work is the full Gram (2·T·I²) on both sides; whittle computes the upper block
        // triangle only (about half), so its rate here is an effective one.
        let flop = 2.0 * (t_ * i * i) as f64;
        let bytes = 2.0 * (t_ * i) as f64 + 8.0 * (i * i) as f64;
        let sets = m.sets(bytes);
        let a = upload(&g, &rand_bf16(t_ * i, 3, 1.0), &[t_, i], sets);
        let mut gm = zeros::<f32>(&g, &[i, i], sets);
        // As for the GEMM: whittle's choice under the key, on Hopper the other kernels beside it.
        let chosen = if t_ % 8 == 0 {
            ops::auto_gemm_kernel(&g, t_)
        } else {
            GemmKernel::MmaSync
        };
        let others = other_kernels(&g, chosen, t_);
        for (kernel, entry) in kernel_variants(e, &others) {
            let t = time_op(&g, &m, sets, |s| {
                ops::gram_accumulate_with(&g, &a[s], &mut gm[s], kernel).unwrap()
            });
            let run = if kernel == GemmKernel::Auto {
                chosen
            } else {
                kernel
            };
            let (name, note) = match run {
                GemmKernel::Sm90Tma => (
                    "transpose_bf16 + gemm_nt_bf16_sm90_tma (Gram mode)",
                    "Aᵀ copied, then 128×256 tiles touching the upper block triangle on TMA + wgmma; rate counts the full Gram",
                ),
                GemmKernel::Sm90 => (
                    "transpose_bf16 + gram_nt_bf16_sm90",
                    "Aᵀ copied, then upper block triangle on wgmma; rate counts the full Gram",
                ),
                _ => (
                    "gram_tn_bf16",
                    "upper block triangle only; rate counts the full Gram",
                ),
            };
            r.add(&entry, "gram", name, &t, sets, flop, bytes, note);
        }
    }

    for e in entries(&sh, "attention") {
        let (b, t_, nh, nkv, d) = (u(e, "b"), u(e, "t"), u(e, "nh"), u(e, "nkv"), u(e, "d"));
        let window = opt_u(e, "window");
        let softcap = e["softcap"].as_f64().map(|c| c as f32);
        let n = b * t_;
        let bytes = 2.0 * (n * (2 * nh + 2 * nkv) * d) as f64;
        let sets = m.sets(bytes);
        let q = upload(&g, &rand_bf16(n * nh * d, 4, 1.0), &[n, nh * d], sets);
        let k = upload(&g, &rand_bf16(n * nkv * d, 5, 1.0), &[n, nkv * d], sets);
        let v = upload(&g, &rand_bf16(n * nkv * d, 6, 1.0), &[n, nkv * d], sets);
        let mut o = zeros::<bf16>(&g, &[n, nh * d], sets);
        let p = AttnParams {
            n_seq: b,
            seq_len: t_,
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: d,
            scale: 1.0 / (d as f32).sqrt(),
            softcap,
            window,
        };
        let flop = 4.0 * (d * nh * b) as f64 * attention_pairs(t_, window);
        // whittle's choice under the key; where that is the 8-warp tile, the 4-warp one beside
        // it as "<key> 4 warps" (perf.json only).
        let warps = ops::flash_warps(&g, d);
        let mut variants = vec![(AttnKernel::Auto, warps, e.clone())];
        if warps == 8 {
            let mut alt = e.clone();
            alt["key"] = format!("{} 4 warps", s(e, "key")).into();
            variants.push((AttnKernel::Flash(4), 4, alt));
        }
        for (kernel, w, entry) in variants {
            let t = time_op(&g, &m, sets, |s| {
                ops::attention_with(&g, &q[s], &k[s], &v[s], &mut o[s], &p, kernel).unwrap()
            });
            let name = ops::flash_kernel_name(d, w).unwrap_or("attention_fwd_generic");
            r.add(
                &entry,
                "attention",
                name,
                &t,
                sets,
                flop,
                bytes,
                "flop = 4·d per visible (query, key) pair and head; tiles outside the window skipped",
            );
        }
    }

    for e in entries(&sh, "rmsnorm") {
        let (rows, cols) = (u(e, "rows"), u(e, "cols"));
        let bytes = 4.0 * (rows * cols) as f64;
        let sets = m.sets(bytes);
        let x = upload(&g, &rand_bf16(rows * cols, 9, 3.0), &[rows, cols], sets);
        let w = DTensor::from_host(&g, &rand_f32(cols, 10, 0.1), &[cols]).unwrap();
        let mut y = zeros::<bf16>(&g, &[rows, cols], sets);
        let t = time_op(&g, &m, sets, |s| {
            ops::rms_norm(&g, &x[s], &w, &mut y[s], 1e-6, NormWeight::OnePlus).unwrap()
        });
        r.add(
            e,
            "rmsnorm",
            "rmsnorm_bf16",
            &t,
            sets,
            0.0,
            bytes,
            "bf16 in, bf16 out",
        );
    }

    for e in entries(&sh, "rope") {
        let (rows, nh, nkv, d) = (u(e, "rows"), u(e, "nh"), u(e, "nkv"), u(e, "d"));
        let bytes = 4.0 * (rows * (nh + nkv) * d) as f64;
        let sets = m.sets(bytes);
        let mut q = upload(
            &g,
            &rand_bf16(rows * nh * d, 11, 1.0),
            &[rows, nh * d],
            sets,
        );
        let mut k = upload(
            &g,
            &rand_bf16(rows * nkv * d, 12, 1.0),
            &[rows, nkv * d],
            sets,
        );
        let p = whittle::checkpoint::config::RopeParams {
            theta: 10000.0,
            scaling: whittle::checkpoint::config::RopeScaling::Default,
        };
        let (inv, scale) = whittle::cpu::rope::inv_freq(d, &p);
        let rope = ops::RopeFreqs {
            inv_freq: DTensor::from_host(&g, &inv, &[d / 2]).unwrap(),
            scale,
        };
        let t = time_op(&g, &m, sets, |s| {
            ops::rope(&g, &mut q[s], Some(&mut k[s]), nh, nkv, d, rows, &rope).unwrap()
        });
        r.add(
            e,
            "rope",
            "rope_qk_bf16",
            &t,
            sets,
            0.0,
            bytes,
            "q and k in place, one sequence",
        );
    }

    for e in entries(&sh, "gelu_mul_stats") {
        let (rows, cols) = (u(e, "rows"), u(e, "cols"));
        let bytes = 6.0 * (rows * cols) as f64;
        let sets = m.sets(bytes);
        let gate = upload(&g, &rand_bf16(rows * cols, 13, 3.0), &[rows, cols], sets);
        let up = upload(&g, &rand_bf16(rows * cols, 14, 3.0), &[rows, cols], sets);
        let mut act = zeros::<bf16>(&g, &[rows, cols], sets);
        let mut s1 = DTensor::<f64>::zeros(&g, &[cols]).unwrap();
        let mut s2 = DTensor::<f64>::zeros(&g, &[cols]).unwrap();
        let t = time_op(&g, &m, sets, |s| {
            ops::act_mul(
                &g,
                Activation::GeluTanh,
                &gate[s],
                &up[s],
                &mut act[s],
                None,
                Some((&mut s1, &mut s2)),
            )
            .unwrap()
        });
        r.add(
            e,
            "gelu_mul_stats",
            "act_mul_stats_bf16",
            &t,
            sets,
            0.0,
            bytes,
            "act = bf16(gelu_tanh(gate)·up), Σa and Σa² per column (f64)",
        );
    }

    for e in entries(&sh, "nll") {
        let (rows, v) = (u(e, "rows"), u(e, "vocab"));
        let bytes = 4.0 * (rows * v) as f64;
        let sets = m.sets(bytes);
        let logits = upload(&g, &rand_f32(rows * v, 15, 20.0), &[rows, v], sets);
        let tg: Vec<u32> = rand_u64(rows, 16)
            .into_iter()
            .map(|x| (x % v as u64) as u32)
            .collect();
        let targets = DTensor::from_host(&g, &tg, &[rows]).unwrap();
        let mut out = RowStatsOut::new(&g, rows).unwrap();
        let t = time_op(&g, &m, sets, |s| {
            ops::row_stats(&g, &logits[s], Some(&targets), &mut out).unwrap()
        });
        r.add(
            e,
            "nll",
            "row_stats_f32",
            &t,
            sets,
            0.0,
            bytes,
            "row max, first argmax, f64 log-sum-exp, target logit; bytes = one read of the logits",
        );
    }

    for e in entries(&sh, "copy") {
        let nbytes = u(e, "bytes");
        let bytes = 2.0 * nbytes as f64;
        let sets = m.sets(bytes);
        let words = nbytes / 8;
        let host = rand_u64(words, 17);
        let st = g.stream();
        let src: Vec<_> = (0..sets).map(|_| st.clone_htod(&host).unwrap()).collect();
        let mut dst: Vec<_> = (0..sets)
            .map(|_| st.alloc_zeros::<u64>(words).unwrap())
            .collect();
        let t = time_op(&g, &m, sets, |s| {
            st.memcpy_dtod(&src[s], &mut dst[s]).unwrap()
        });
        r.add(
            e,
            "copy",
            "cuMemcpyDtoDAsync",
            &t,
            sets,
            0.0,
            bytes,
            "bytes = read + written",
        );
    }

    let out =
        std::env::var_os("WHITTLE_BENCH_OUT").or_else(|| std::env::var_os("WHITTLE_BENCH_JSON"));
    if let Some(p) = out {
        let doc = json!({
            "tool": "whittle",
            "device": g.info.to_string(),
            "method": sh["method"],
            "records": r.rows,
        });
        std::fs::write(p, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    }
}

#[test]
#[ignore = "needs a GPU (run by scripts/device-check.sh)"]
fn bench_calib() {
    let (Some(model), Some(ids)) = (
        std::env::var_os("WHITTLE_CALIB_MODEL"),
        std::env::var_os("WHITTLE_CALIB_IDS"),
    ) else {
        eprintln!(
            "skipped: set WHITTLE_CALIB_MODEL and WHITTLE_CALIB_IDS (scripts/device-check.sh does)"
        );
        return;
    };
    let (model, ids) = (PathBuf::from(model), PathBuf::from(ids));
    let batch_seqs: usize = std::env::var("WHITTLE_CALIB_BATCH")
        .ok()
        .map(|v| v.parse().expect("WHITTLE_CALIB_BATCH is a count"))
        .unwrap_or(8);
    let gpu = Arc::new(Gpu::new(0).expect("a GPU"));
    gpu.set_sync(false);
    let t0 = Instant::now();
    let gm = GpuModel::load(&model, gpu.clone(), Residency::Resident).unwrap();
    gpu.synchronize().unwrap();
    let load_s = t0.elapsed().as_secs_f64();
    let calib = whittle::compile::calib::CalibSet::from_ids_file(&ids, gm.cfg.vocab_size).unwrap();
    let (n_seq, seq) = (calib.n_seq, calib.seq_len);
    let run = |b: usize| {
        let s0 = b * batch_seqs;
        let s1 = (s0 + batch_seqs).min(n_seq);
        let batch = Batch {
            n_seq: s1 - s0,
            seq_len: seq,
        };
        gm.forward_device(&calib.ids[s0 * seq..s1 * seq], batch, &mut None)
            .unwrap();
    };
    // Warm-up on the first batch (module load, first allocations), then restart the statistics.
    gm.enable_mlp_stats(true).unwrap();
    run(0);
    gpu.synchronize().unwrap();
    gm.enable_mlp_stats(true).unwrap();
    gpu.synchronize().unwrap();

    let nb = n_seq.div_ceil(batch_seqs);
    let (a, b) = gpu.timing_events().unwrap();
    let wall = Instant::now();
    a.record(gpu.stream()).unwrap();
    for i in 0..nb {
        run(i);
    }
    b.record(gpu.stream()).unwrap();
    let ms = a.elapsed_ms(&b).unwrap() as f64;
    let wall_s = wall.elapsed().as_secs_f64();
    let tokens = n_seq * seq;
    let stats = gm.take_mlp_stats().unwrap().expect("statistics enabled");
    for (l, st) in stats.iter().enumerate() {
        assert_eq!(
            st.count as usize, tokens,
            "layer {l} counted {} tokens",
            st.count
        );
        assert!(
            st.sumsq.iter().all(|v| v.is_finite() && *v >= 0.0),
            "layer {l}: Σa² not finite"
        );
        let gram = st.gram.as_ref().expect("Gram requested");
        assert!(
            gram.iter().all(|v| v.is_finite()),
            "layer {l}: Gram not finite"
        );
    }
    let layers = gm.cfg.num_layers;
    let tok_s = tokens as f64 / (ms / 1e3);
    println!(
        "calibration (whittle, {}): {layers} layers, {n_seq}×{seq} tokens in batches of {batch_seqs}: \
         {:.3} s (events; wall {:.3} s) = {tok_s:.0} tokens/s ({:.0} token-layers/s); load {load_s:.1} s",
        gpu.info,
        ms / 1e3,
        wall_s,
        tok_s * layers as f64
    );
    if let Some(p) = std::env::var_os("WHITTLE_CALIB_OUT") {
        let doc = json!({
            "tool": "whittle",
            "device": gpu.info.to_string(),
            "model": model.display().to_string(),
            "layers": layers,
            "n_seq": n_seq,
            "seq_len": seq,
            "batch_seqs": batch_seqs,
            "tokens": tokens,
            "seconds": ms / 1e3,
            "wall_seconds": wall_s,
            "tokens_per_s": tok_s,
            "load_seconds": load_s,
            "capture": "on device: Σa, Σa² per neuron (f64), Gram Σ a aᵀ (f32, bf16 operands, upper block triangle) per layer; no LM head",
        });
        std::fs::write(p, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    }
}

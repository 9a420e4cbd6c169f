//! The CPU GEMMs at Gemma 3 270M's shapes (512 tokens, width 2048 and 1408, one 26k-row block of
//! the LM head): f32 (`gemm` crate) against the bf16 kernel this CPU has. Median of REPS runs
//! each, A and B interleaved so a neighbour's load hits both alike.
//!
//! Last, one calibration batch's statistics with the Gram matrix (`MlpStats::add`, 2048 tokens
//! of width 2048: Σa, Σa², the Gram's upper block triangle, mirrored into f64) with the f32 and
//! the bf16 Gram.
//!
//! `cargo bench --bench cpu_gemm` (env: REPS, default 7; M, default 512; `WHITTLE_CPU_AMX=on`
//! times the AMX kernel where the CPU has it).

use std::time::Instant;
use whittle::cpu::bf16::{self, Kernel};
use whittle::cpu::decode::Mat;
use whittle::cpu::ops;

fn values(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 1000.0)
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Register-only peak of one core: 30 independent accumulators, no memory traffic. Returns
/// (vdpbf16ps, vfmadd231ps) in GFLOP/s (a vdpbf16ps zmm is 32 multiply-adds, an FMA zmm 16).
#[cfg(target_arch = "x86_64")]
#[clippy::msrv = "1.89"] // the AVX-512 BF16 intrinsics (see src/cpu/mod.rs)
fn peaks() -> Option<(f64, f64)> {
    use std::arch::x86_64::*;
    const ACC: usize = 30;
    const ITERS: usize = 5_000_000;
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn dp() -> f32 {
        let mut acc = [_mm512_setzero_ps(); ACC];
        let pair = std::hint::black_box(0x3f80_3f80); // opaque, so nothing folds
        let a = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(pair));
        for _ in 0..ITERS {
            for v in acc.iter_mut() {
                *v = _mm512_dpbf16_ps(*v, a, a);
            }
        }
        _mm512_reduce_add_ps(
            acc.iter()
                .fold(_mm512_setzero_ps(), |s, &v| _mm512_add_ps(s, v)),
        )
    }
    #[target_feature(enable = "avx512f")]
    unsafe fn fma() -> f32 {
        let mut acc = [_mm512_setzero_ps(); ACC];
        let a = _mm512_set1_ps(std::hint::black_box(1.0001));
        let b = _mm512_set1_ps(std::hint::black_box(0.9999));
        for _ in 0..ITERS {
            for v in acc.iter_mut() {
                *v = _mm512_fmadd_ps(a, b, *v);
            }
        }
        _mm512_reduce_add_ps(
            acc.iter()
                .fold(_mm512_setzero_ps(), |s, &v| _mm512_add_ps(s, v)),
        )
    }
    if !Kernel::supported().contains(&Kernel::Avx512Bf16) {
        return None;
    }
    let time = |f: &dyn Fn() -> f32| {
        let t = Instant::now();
        std::hint::black_box(f());
        t.elapsed().as_secs_f64()
    };
    let (mut tdp, mut tfma) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        // SAFETY: the CPU has avx512f + avx512bf16 (checked above).
        tdp.push(time(&|| unsafe { dp() }));
        tfma.push(time(&|| unsafe { fma() }));
    }
    let flop = |per: f64| (ITERS * ACC) as f64 * per / 1e9;
    Some((flop(64.0) / median(tdp), flop(32.0) / median(tfma)))
}

#[cfg(not(target_arch = "x86_64"))]
fn peaks() -> Option<(f64, f64)> {
    None
}

fn main() {
    if let Some((dp, fma)) = peaks() {
        println!(
            "one core, registers only: vdpbf16ps {dp:.1} GFLOP/s, f32 FMA {fma:.1} GFLOP/s ({:.2}×)",
            dp / fma
        );
    }
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (reps, m) = (env("REPS", 7), env("M", 512));
    let kernel = Kernel::choose(std::env::var(bf16::DISABLE_ENV).ok().as_deref());
    println!(
        "cpu_gemm: m = {m}, {} threads, median of {reps}; bf16 kernel: {}",
        rayon::current_num_threads(),
        kernel.map_or("none (f32 only)", Kernel::name)
    );
    println!("| op | k | n | f32 GFLOP/s | bf16 GFLOP/s | bf16 / f32 |");
    println!("|---|---:|---:|---:|---:|---:|");
    let shapes: &[(&str, usize, usize)] = &[
        ("q_proj", 640, 1024),
        ("k_proj / v_proj", 640, 256),
        ("o_proj", 1024, 640),
        ("gate / up (2048)", 640, 2048),
        ("down (2048)", 2048, 640),
        ("gate / up (1408)", 640, 1408),
        ("down (1408)", 1408, 640),
        ("lm_head block", 640, 26214),
    ];
    for &(name, k, n) in shapes {
        let (x, w) = (values(m * k), values(n * k));
        let wb: Vec<u16> = w
            .iter()
            .map(|&v| whittle::cpu::convert::round_bits(v))
            .collect();
        let mut y = vec![0f32; m * n];
        let flop = 2.0 * (m * n * k) as f64;
        let (mut tf, mut tb) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            let t = Instant::now();
            ops::linear_into(&x, &w, m, k, n, &mut y);
            tf.push(t.elapsed().as_secs_f64());
            if let Some(kern) = kernel {
                let t = Instant::now();
                bf16::linear(kern, &x, Mat::Bf16(&wb), m, k, n, &mut y, n);
                tb.push(t.elapsed().as_secs_f64());
            }
            std::hint::black_box(&y);
        }
        let gf = flop / median(tf) / 1e9;
        if tb.is_empty() {
            println!("| {name} | {k} | {n} | {gf:.1} | – | – |");
        } else {
            let gb = flop / median(tb) / 1e9;
            println!(
                "| {name} | {k} | {n} | {gf:.1} | {gb:.1} | {:.2}× |",
                gb / gf
            );
        }
    }
    if let Some(kern) = kernel {
        let (t, w) = (2048, 2048);
        let a = values(t * w);
        let (mut tf, mut tb) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            for (k, times) in [(None, &mut tf), (Some(kern), &mut tb)] {
                let mut st = whittle::engine::calib::MlpStats::new(w, true, false);
                st.gram_kernel = k;
                let t0 = Instant::now();
                st.add(&a);
                times.push(t0.elapsed().as_secs_f64());
                std::hint::black_box(&st);
            }
        }
        let (f, b) = (median(tf), median(tb));
        println!(
            "\nMlpStats::add with the Gram, {t} tokens × {w}: f32 {:.1} ms, bf16 {:.1} ms ({:.2}×)",
            f * 1e3,
            b * 1e3,
            f / b
        );
    }
}

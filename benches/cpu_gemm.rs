//! The CPU GEMMs at Gemma 3 270M's shapes (512 tokens, width 2048 and 1408, one 26k-row block of
//! the LM head): f32 (`gemm` crate) against the bf16 kernel this CPU has. Median of REPS runs
//! each, A and B interleaved so a neighbour's load hits both alike.
//!
//! `cargo bench --bench cpu_gemm` (env: REPS, default 7; M, default 512).

use std::time::Instant;
use whittle::cpu::bf16::{self, Kernel};
use whittle::cpu::ops;
use whittle::decode::Mat;

fn values(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 1000.0)
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
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
        let wb: Vec<u16> = w.iter().map(|&v| bf16::round_bits(v)).collect();
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
}

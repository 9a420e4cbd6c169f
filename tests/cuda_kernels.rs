//! CUDA kernels against the CPU reference ops (src/cpu), one test per kernel family, at several
//! shapes including odd sizes and ragged tiles. Inputs are fresh pseudo-random values rounded to
//! bf16 first, so the CPU sees exactly what the GPU sees; outputs are poisoned with NaN before
//! every launch so an unwritten element fails. Tolerance for bf16 outputs: ‖Δ‖/‖ref‖ ≤ 1e-2.
//!
//! Every test except the first two needs a GPU and is `#[ignore]`d; run them on a GPU machine
//! with `cargo test --release --test cuda_kernels -- --ignored` (scripts/device-check.sh does).
#![cfg(feature = "cuda")]

mod common;
#[path = "common/gpu.rs"]
mod gpu_common;
use gpu_common::{
    cpu_act_mul, cpu_gate_up_act, down, gpu, llama3_rope, poisoned_bf16, poisoned_f32, rand_vals,
    rope_freqs, up_bf16, up_f32, yarn_rope, ACTIVATIONS,
};

use common::check::assert_rel_l2 as check;
use half::bf16;
use whittle::checkpoint::config::{Activation, NormWeight, Rope, RopeParams};
use whittle::cpu::attention::{attention as cpu_attention, AttnShape};
use whittle::cpu::ops as cpu;
use whittle::cuda::ops::{self, AttnKernel, AttnParams, GemmKernel, RowStatsOut, TokenWeightMode};
use whittle::cuda::{is_available, DTensor, Gpu};
use whittle::device::{select, DeviceChoice, Selected};

// ---------------------------------------------------------------------------------------------
// Runs everywhere (no GPU needed)

#[test]
fn availability_is_reported_without_panicking() {
    // SAFETY: only attempts a dlopen of libcuda.
    let driver = unsafe { cudarc::driver::sys::is_culib_present() };
    match is_available() {
        Ok(info) => {
            assert!(driver, "a GPU was reported without a driver library");
            eprintln!("GPU available: {info}");
        }
        Err(msg) => {
            eprintln!("no GPU: {msg}");
            if !driver {
                assert!(
                    msg.contains("no NVIDIA driver found (libcuda.so not loadable)"),
                    "{msg}"
                );
                // auto falls back to the CPU with the reason; an explicit cuda fails naming the flag
                match select(DeviceChoice::Auto).unwrap() {
                    Selected::Cpu { reason: Some(r) } => {
                        assert!(r.contains("no NVIDIA driver"), "{r}")
                    }
                    other => panic!("auto without a driver selected {other:?}"),
                }
                let e = select(DeviceChoice::Cuda(0)).unwrap_err().to_string();
                assert!(
                    e.contains("--device") && e.contains("no NVIDIA driver"),
                    "{e}"
                );
                let e = Gpu::new(0).unwrap_err().to_string();
                assert!(e.contains("no NVIDIA driver"), "{e}");
            } else {
                assert!(!msg.is_empty());
            }
        }
    }
    assert_eq!(
        select(DeviceChoice::Cpu).unwrap(),
        Selected::Cpu { reason: None }
    );
}

#[test]
fn device_choice_parses() {
    let p = |s: &str| s.parse::<DeviceChoice>();
    assert_eq!(p("auto").unwrap(), DeviceChoice::Auto);
    assert_eq!(p("cpu").unwrap(), DeviceChoice::Cpu);
    assert_eq!(p("CPU").unwrap(), DeviceChoice::Cpu);
    assert_eq!(p("cuda").unwrap(), DeviceChoice::Cuda(0));
    assert_eq!(p("cuda:0").unwrap(), DeviceChoice::Cuda(0));
    assert_eq!(p("cuda:3").unwrap(), DeviceChoice::Cuda(3));
    for bad in [
        "", "gpu0", "cuda:", "cuda:-1", "cuda:x", "metal", "cuda:1:2",
    ] {
        let e = p(bad).unwrap_err().to_string();
        assert!(
            e.contains("--device"),
            "error for {bad:?} does not name the flag: {e}"
        );
    }
    for c in [DeviceChoice::Auto, DeviceChoice::Cpu, DeviceChoice::Cuda(2)] {
        assert_eq!(p(&c.to_string()).unwrap(), c);
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

const BF16_TOL: f64 = 1e-2;

// ---------------------------------------------------------------------------------------------
// GEMM

#[test]
#[ignore = "needs a GPU"]
fn gemm_matches_cpu_linear() {
    let g = gpu();
    // (M, N, K): tile-exact, ragged M/N/K, tiny, one row (decode-like), K not a multiple of 8
    // (the gathering variant), and model-like shapes.
    let shapes = [
        (128, 128, 64),
        (1, 1, 8),
        (7, 13, 16),
        (130, 257, 72),
        (300, 200, 40),
        (1, 2048, 640),
        (65, 96, 64),
        (33, 100, 13),
        (129, 77, 100),
        (512, 1024, 640),
        (257, 640, 2048),
        (96, 2304, 9216 / 8),
    ];
    // Every kernel this GPU has: mma.sync everywhere, both wgmma kernels on compute capability
    // 9.0 (where `Auto` must also have passed their self-checks and chosen them).
    let mut kernels = vec![GemmKernel::MmaSync];
    if g.info.compute_capability == (9, 0) {
        for kernel in [GemmKernel::Sm90, GemmKernel::Sm90Tma] {
            assert!(
                ops::sm90_kernel_enabled(&g, kernel),
                "the {kernel:?} GEMM failed its self-check against mma.sync (see stderr)"
            );
            kernels.push(kernel);
        }
    }
    for kernel in kernels {
        for (i, &(m, n, k)) in shapes.iter().enumerate() {
            if kernel != GemmKernel::MmaSync && k % 8 != 0 {
                continue; // the gathering variant serves that K on every GPU
            }
            let x = rand_vals(m * k, 10 + i as u64, 1.0);
            let w = rand_vals(n * k, 100 + i as u64, 0.5);
            let want = cpu::linear(&x, &w, m, k, n);
            let xd = up_bf16(&g, &x, &[m, k]);
            let wd = up_bf16(&g, &w, &[n, k]);
            let what = |s: &str| format!("gemm ({kernel:?}) {s} {m}x{n}x{k}");
            // bf16 and f32 outputs in one launch
            let mut yb = poisoned_bf16(&g, &[m, n]);
            let mut yf = poisoned_f32(&g, &[m, n]);
            ops::gemm_nt_with(&g, &xd, &wd, Some(&mut yb), Some(&mut yf), false, kernel).unwrap();
            check(&what("bf16 out"), &down(&g, &yb), &want, BF16_TOL);
            check(&what("f32 out"), &yf.to_host(&g).unwrap(), &want, 1e-5);
            // accumulate: C += X·Wᵀ
            let c = rand_vals(m * n, 1000 + i as u64, 2.0);
            let mut yc = up_f32(&g, &c, &[m, n]);
            ops::gemm_nt_with(&g, &xd, &wd, None, Some(&mut yc), true, kernel).unwrap();
            let want_c: Vec<f32> = want.iter().zip(&c).map(|(a, b)| a + b).collect();
            check(&what("accumulate"), &yc.to_host(&g).unwrap(), &want_c, 1e-5);
        }
    }
}

/// The TMA kernel is persistent: with fewer CTAs than tiles each CTA walks several tiles and
/// its 4-stage ring wraps across them (phases flip mid-tile when k-tiles % 4 != 0). Real GEMMs
/// get there only past 132 tiles, so this forces it with 1, 2 and 3 CTAs.
#[test]
#[ignore = "needs a GPU"]
fn gemm_tma_walks_tiles_across_ctas() {
    let g = gpu();
    if g.info.compute_capability != (9, 0) {
        eprintln!("skipped: the TMA GEMM needs compute capability 9.0");
        return;
    }
    for (i, &(m, n, k, ctas)) in [
        (300, 600, 136, 1),
        (129, 513, 200, 3),
        (257, 300, 72, 2),
        (64, 40, 8, 1),
    ]
    .iter()
    .enumerate()
    {
        let x = rand_vals(m * k, 40 + i as u64, 1.0);
        let w = rand_vals(n * k, 400 + i as u64, 0.5);
        let want = cpu::linear(&x, &w, m, k, n);
        let (xd, wd) = (up_bf16(&g, &x, &[m, k]), up_bf16(&g, &w, &[n, k]));
        let mut yb = poisoned_bf16(&g, &[m, n]);
        let mut yf = poisoned_f32(&g, &[m, n]);
        ops::gemm_nt_launch(
            &g,
            &xd,
            &wd,
            Some(&mut yb),
            Some(&mut yf),
            false,
            GemmKernel::Sm90Tma,
            Some(ctas),
        )
        .unwrap();
        let what = format!("gemm (TMA, {ctas} CTAs) {m}x{n}x{k}");
        check(&format!("{what} bf16 out"), &down(&g, &yb), &want, BF16_TOL);
        check(
            &format!("{what} f32 out"),
            &yf.to_host(&g).unwrap(),
            &want,
            1e-5,
        );
    }
}

#[test]
#[ignore = "needs a GPU"]
fn gemm_rejects_bad_shapes() {
    let g = gpu();
    let x = DTensor::<bf16>::zeros(&g, &[4, 16]).unwrap();
    let w = DTensor::<bf16>::zeros(&g, &[8, 24]).unwrap();
    let mut y = DTensor::<bf16>::zeros(&g, &[4, 8]).unwrap();
    let e = ops::gemm_nt(&g, &x, &w, Some(&mut y), None, false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("gemm_nt_bf16") && e.contains("inner dimensions"),
        "{e}"
    );
    let w = DTensor::<bf16>::zeros(&g, &[8, 16]).unwrap();
    let mut y = DTensor::<bf16>::zeros(&g, &[4, 9]).unwrap();
    let e = ops::gemm_nt(&g, &x, &w, Some(&mut y), None, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("expected [4, 8]"), "{e}");
}

#[test]
#[ignore = "needs a GPU"]
fn gram_matches_cpu() {
    let g = gpu();
    // mma.sync everywhere; on compute capability 9.0 also both wgmma paths over the transposed
    // activations (T % 8 == 0 only; the TMA kernel in Gram mode skips tiles below the block
    // diagonal once I > 384), and a transpose check of its own.
    let mut kernels = vec![GemmKernel::MmaSync];
    if g.info.compute_capability == (9, 0) {
        kernels.extend([GemmKernel::Sm90, GemmKernel::Sm90Tma]);
        for (r, c) in [(1, 1), (45, 136), (33, 70)] {
            let x = rand_vals(r * c, 90 + r as u64, 1.0);
            let mut out = poisoned_bf16(&g, &[c, r]);
            ops::transpose(&g, &up_bf16(&g, &x, &[r, c]), &mut out).unwrap();
            let got = down(&g, &out);
            for i in 0..r {
                for j in 0..c {
                    assert_eq!(
                        got[j * r + i],
                        x[i * c + j],
                        "transpose {r}x{c} at ({i}, {j})"
                    );
                }
            }
        }
    }
    for kernel in kernels {
        for (i, &(t, n)) in [
            (1, 8),
            (45, 136),
            (300, 200),
            (77, 100),
            (513, 384),
            (64, 1000),
            (48, 130),
        ]
        .iter()
        .enumerate()
        {
            if kernel != GemmKernel::MmaSync && t % 8 != 0 {
                continue;
            }
            let a = rand_vals(t * n, 7 + i as u64, 1.0);
            let ad = up_bf16(&g, &a, &[t, n]);
            let mut gm = DTensor::<f32>::zeros(&g, &[n, n]).unwrap();
            // twice: the kernel accumulates
            ops::gram_accumulate_with(&g, &ad, &mut gm, kernel).unwrap();
            ops::gram_accumulate_with(&g, &ad, &mut gm, kernel).unwrap();
            ops::gram_symmetrize(&g, &mut gm).unwrap();
            let mut want = vec![0f32; n * n];
            for r in 0..n {
                for c in 0..n {
                    let s: f64 = (0..t)
                        .map(|k| a[k * n + r] as f64 * a[k * n + c] as f64)
                        .sum();
                    want[r * n + c] = (2.0 * s) as f32;
                }
            }
            check(
                &format!("gram ({kernel:?}) T={t} I={n}"),
                &gm.to_host(&g).unwrap(),
                &want,
                1e-5,
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Attention

/// (n_seq, T, nh, nkv, d, softcap, window)
type AttnCase = (
    usize,
    usize,
    usize,
    usize,
    usize,
    Option<f32>,
    Option<usize>,
);

#[test]
#[ignore = "needs a GPU"]
fn attention_matches_cpu() {
    let g = gpu();
    // (n_seq, T, nh, nkv, d, softcap, window)
    let cases: &[AttnCase] = &[
        (1, 1, 1, 1, 256, None, None),
        (1, 64, 2, 1, 256, None, None),
        (2, 150, 4, 2, 128, Some(5.0), Some(70)),
        (1, 300, 8, 4, 256, Some(50.0), Some(100)),
        (3, 65, 4, 1, 256, None, None),
        (1, 600, 4, 1, 256, None, Some(512)),
        (2, 40, 4, 2, 32, Some(5.0), Some(16)),
        (1, 130, 2, 1, 64, None, Some(30)),
        (1, 200, 2, 2, 128, Some(3.0), Some(40)),
        (1, 100, 2, 1, 48, Some(5.0), Some(33)), // generic kernel (no tensor-core instantiation)
    ];
    for (ci, &(n_seq, t, nh, nkv, d, softcap, window)) in cases.iter().enumerate() {
        let n = n_seq * t;
        let q = rand_vals(n * nh * d, 300 + ci as u64, 2.0);
        let k = rand_vals(n * nkv * d, 400 + ci as u64, 2.0);
        let v = rand_vals(n * nkv * d, 500 + ci as u64, 1.0);
        let scale = 1.0 / (d as f32).sqrt();
        let want = cpu_attention(
            &q,
            &k,
            &v,
            AttnShape {
                n_seq,
                seq_len: t,
                n_heads: nh,
                n_kv_heads: nkv,
                head_dim: d,
                scale,
                softcap,
                window,
            },
        );
        let p = AttnParams {
            n_seq,
            seq_len: t,
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: d,
            scale,
            softcap,
            window,
        };
        let (qd, kd, vd) = (
            up_bf16(&g, &q, &[n, nh * d]),
            up_bf16(&g, &k, &[n, nkv * d]),
            up_bf16(&g, &v, &[n, nkv * d]),
        );
        // Auto, both tensor-core tile heights where instantiated, and the scalar kernel.
        let mut kernels = vec![AttnKernel::Auto, AttnKernel::Generic];
        kernels.extend(
            [4, 8]
                .into_iter()
                .filter(|&w| ops::flash_kernel_name(d, w).is_some())
                .filter(|&w| g.info.max_smem_per_block as u32 >= ops::attention_smem(d, w))
                .map(AttnKernel::Flash),
        );
        for kernel in kernels {
            let mut o = poisoned_bf16(&g, &[n, nh * d]);
            ops::attention_with(&g, &qd, &kd, &vd, &mut o, &p, kernel).unwrap();
            let what = format!("attention {kernel:?} n_seq={n_seq} T={t} nh={nh} nkv={nkv} d={d} cap={softcap:?} W={window:?}");
            check(&what, &down(&g, &o), &want, BF16_TOL);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Norms, RoPE, MLP activation

/// The CPU's RMSNorm in a weight convention (Gemma's `cpu::ops::rms_norm` is `OnePlus`).
fn cpu_norm(x: &mut [f32], w: &[f32], conv: NormWeight) {
    whittle::cpu::norm::rms_norm(x, w, 1e-6, conv);
}

#[test]
#[ignore = "needs a GPU"]
fn rms_norm_matches_cpu() {
    let g = gpu();
    for conv in [NormWeight::OnePlus, NormWeight::Plain] {
        for (i, &(rows, cols)) in [(5, 640), (3, 2304), (7, 255), (1, 1), (1000, 32), (33, 256)]
            .iter()
            .enumerate()
        {
            let x = rand_vals(rows * cols, 20 + i as u64, 3.0);
            let y = rand_vals(rows * cols, 40 + i as u64, 3.0);
            // Plain weights sit near 1 (a Llama checkpoint's), Gemma's offsets near 0.
            let off = if conv == NormWeight::Plain { 1.0 } else { 0.0 };
            let w: Vec<f32> = rand_vals(cols, 60 + i as u64, 0.5)
                .into_iter()
                .map(|v| bf16::from_f32(v + off).to_f32())
                .collect();
            let wd = up_f32(&g, &w, &[cols]);
            let mut want = x.clone();
            cpu_norm(&mut want, &w, conv);
            if conv == NormWeight::OnePlus {
                let mut gemma = x.clone();
                cpu::rms_norm(&mut gemma, &w, 1e-6);
                assert_eq!(gemma, want, "cpu::norm OnePlus is cpu::ops::rms_norm");
            }
            let what = |op: &str| format!("rms_norm {conv:?} {op} {rows}x{cols}");
            // out of place
            let xd = up_bf16(&g, &x, &[rows, cols]);
            let mut o = poisoned_bf16(&g, &[rows, cols]);
            ops::rms_norm(&g, &xd, &wd, &mut o, 1e-6, conv).unwrap();
            let out = down(&g, &o);
            check(&what("out of place"), &out, &want, BF16_TOL);
            if conv == NormWeight::Plain {
                // LlamaRMSNorm's bf16 rounding: bf16(w · bf16(x̂)), x̂ from the CPU's f32 x̂.
                let mut xh = x.clone();
                cpu_norm(&mut xh, &vec![1.0; cols], NormWeight::Plain);
                for (j, (&o, &v)) in out.iter().zip(&xh).enumerate() {
                    let r = bf16::from_f32(bf16::from_f32(v).to_f32() * w[j % cols]).to_f32();
                    // x̂ itself may differ by an f32 ulp (sum order), moving a bf16 rounding.
                    assert!(
                        o == r || (o - r).abs() <= r.abs() * 1e-2,
                        "{}: element {j}: {o} vs {r}",
                        what("rounding")
                    );
                }
            }
            // in place
            let mut xi = up_bf16(&g, &x, &[rows, cols]);
            ops::rms_norm_inplace(&g, &mut xi, &wd, 1e-6, conv).unwrap();
            assert_eq!(down(&g, &xi), out, "{}", what("in place"));
            // residual: h += norm(y)
            let mut ny = y.clone();
            cpu_norm(&mut ny, &w, conv);
            let want_h: Vec<f32> = x.iter().zip(&ny).map(|(a, b)| a + b).collect();
            let mut h = up_bf16(&g, &x, &[rows, cols]);
            let yd = up_bf16(&g, &y, &[rows, cols]);
            ops::rms_norm_residual(&g, &mut h, &yd, &wd, 1e-6, conv).unwrap();
            check(&what("residual"), &down(&g, &h), &want_h, BF16_TOL);
        }
    }
}

/// `h = bf16(h + y)` (a block output without a post-norm) and `out = bf16(y + b)` (a Linear's
/// bias on its f32 output) are each one rounding of the f32 result: bitwise equal to the CPU's
/// `add_into` / `add_bias_rows` rounded.
#[test]
#[ignore = "needs a GPU"]
fn residual_add_and_bias_add_match_cpu() {
    let g = gpu();
    for (i, &(rows, cols)) in [(1, 1), (5, 640), (7, 255), (129, 96), (3, 4097)]
        .iter()
        .enumerate()
    {
        let n = rows * cols;
        let x = rand_vals(n, 200 + i as u64, 4.0);
        let y = rand_vals(n, 220 + i as u64, 4.0);
        let mut want = x.clone();
        cpu::add_into(&mut want, &y);
        let mut h = up_bf16(&g, &x, &[rows, cols]);
        ops::residual_add(&g, &mut h, &up_bf16(&g, &y, &[rows, cols])).unwrap();
        let want: Vec<f32> = want.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
        assert_eq!(down(&g, &h), want, "residual_add {rows}x{cols}");

        // The f32 product, not bf16 values: the bias joins before the only rounding.
        let yf: Vec<f32> = (0..n).map(|j| y[j] * 1.001 + 1e-3 * j as f32).collect();
        let b = rand_vals(cols, 240 + i as u64, 2.0);
        let mut want = yf.clone();
        whittle::cpu::bias::add_bias_rows(&mut want, &b);
        let mut o = poisoned_bf16(&g, &[rows, cols]);
        ops::bias_add(
            &g,
            &up_f32(&g, &yf, &[rows, cols]),
            &up_f32(&g, &b, &[cols]),
            &mut o,
        )
        .unwrap();
        let want: Vec<f32> = want.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
        assert_eq!(down(&g, &o), want, "bias_add {rows}x{cols}");
    }
    // A bias that is not a row of y is refused, naming the kernel.
    let e = ops::bias_add(
        &g,
        &up_f32(&g, &[0.0; 6], &[2, 3]),
        &up_f32(&g, &[0.0; 4], &[4]),
        &mut poisoned_bf16(&g, &[2, 3]),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("bias_add_bf16"), "{e}");
}

#[test]
#[ignore = "needs a GPU"]
fn rope_matches_cpu() {
    let g = gpu();
    let linear = |theta: f64, factor: f64| {
        RopeParams::from(Rope {
            theta,
            linear_factor: factor,
        })
    };
    let (llama3, yarn) = (llama3_rope(), yarn_rope);
    // (n_seq, T, nh, nkv, d, params)
    let cases = [
        (2, 40, 4, 2, 32, linear(10_000.0, 1.0)),
        (1, 600, 8, 4, 256, linear(10_000.0, 1.0)),
        (3, 17, 4, 1, 256, linear(1_000_000.0, 8.0)),
        (1, 5000, 1, 1, 128, linear(10_000.0, 1.0)),
        (2, 300, 4, 2, 64, llama3),
        (1, 9000, 2, 1, 128, llama3),
        (3, 33, 6, 2, 128, yarn(true)),
        (1, 5000, 2, 2, 64, yarn(false)),
        (1, 7, 3, 1, 10, yarn(true)),
    ];
    for (ci, &(n_seq, t, nh, nkv, d, p)) in cases.iter().enumerate() {
        let n = n_seq * t;
        let q = rand_vals(n * nh * d, 700 + ci as u64, 2.0);
        let k = rand_vals(n * nkv * d, 800 + ci as u64, 2.0);
        let rotate = |(cos, sin): (Vec<f32>, Vec<f32>)| {
            let (mut wq, mut wk) = (q.clone(), k.clone());
            for b in 0..n_seq {
                let (qs, ks) = (t * nh * d, t * nkv * d);
                cpu::apply_rope(&mut wq[b * qs..(b + 1) * qs], t, nh, d, &cos, &sin);
                cpu::apply_rope(&mut wk[b * ks..(b + 1) * ks], t, nkv, d, &cos, &sin);
            }
            (wq, wk)
        };
        let (wq, wk) = rotate(whittle::cpu::rope::tables(t, d, &p));
        let mut qd = up_bf16(&g, &q, &[n, nh * d]);
        let mut kd = up_bf16(&g, &k, &[n, nkv * d]);
        ops::rope(
            &g,
            &mut qd,
            Some(&mut kd),
            nh,
            nkv,
            d,
            t,
            &rope_freqs(&g, d, &p),
        )
        .unwrap();
        let what = format!("rope n_seq={n_seq} T={t} d={d} {p:?}");
        let (gq, gk) = (down(&g, &qd), down(&g, &kd));
        check(&format!("{what} q"), &gq, &wq, BF16_TOL);
        check(&format!("{what} k"), &gk, &wk, BF16_TOL);
        // Gemma's CPU engines rotate by `cpu::ops::rope_tables` (f32 powf): its frequencies are
        // within an ulp of `inv_freq`'s, so the GPU stays as close to those tables.
        if let Some(r) = p.uniform() {
            let (gq_want, gk_want) = rotate(cpu::rope_tables(t, d, r.theta, r.linear_factor));
            check(&format!("{what} q (Gemma tables)"), &gq, &gq_want, BF16_TOL);
            check(&format!("{what} k (Gemma tables)"), &gk, &gk_want, BF16_TOL);
        }
    }
}

#[test]
#[ignore = "needs a GPU"]
fn act_mul_and_stats_match_cpu() {
    let g = gpu();
    for f in ACTIVATIONS {
        for (i, &(rows, cols)) in [
            (1, 1),
            (300, 100),
            (128, 64),
            (129, 2053),
            (1000, 96),
            (40, 9216),
        ]
        .iter()
        .enumerate()
        {
            let mut gate = rand_vals(rows * cols, 900 + i as u64, 4.0);
            if i == 0 {
                gate[0] = -100.0; // SiLU's exp(-x) overflows: -0, not NaN
            }
            let up = rand_vals(rows * cols, 950 + i as u64, 2.0);
            let mut want = gate.clone();
            cpu_act_mul(f, &mut want, &up);
            let (gd, ud) = (
                up_bf16(&g, &gate, &[rows, cols]),
                up_bf16(&g, &up, &[rows, cols]),
            );
            let mut act = poisoned_bf16(&g, &[rows, cols]);
            let mut act_f = poisoned_f32(&g, &[rows, cols]);
            // statistics accumulate: start from a known offset
            let mut s1 = up_f32_f64(&g, &vec![1.0; cols]);
            let mut s2 = up_f32_f64(&g, &vec![2.0; cols]);
            ops::act_mul(
                &g,
                f,
                &gd,
                &ud,
                &mut act,
                Some(&mut act_f),
                Some((&mut s1, &mut s2)),
            )
            .unwrap();
            let a = down(&g, &act);
            assert!(a.iter().all(|v| v.is_finite()), "{f:?}: non-finite");
            check(&format!("act_mul {f:?} {rows}x{cols}"), &a, &want, BF16_TOL);
            // transformers' rounding: bf16(bf16(f(gate)) · up), element by element.
            let fx = |x: f32| match f {
                Activation::GeluTanh => cpu::gelu_tanh(x),
                Activation::Silu => whittle::cpu::act::silu(x),
            };
            for (j, &v) in a.iter().enumerate().step_by(97) {
                let r = bf16::from_f32(bf16::from_f32(fx(gate[j])).to_f32() * up[j]).to_f32();
                // f32 gelu/silu may differ from the device's by an ulp, moving a rounding.
                assert!(
                    v == r || (v - r).abs() <= 1e-2 * r.abs(),
                    "{f:?} element {j}: {v} vs {r}"
                );
            }
            assert_eq!(
                a,
                act_f.to_host(&g).unwrap(),
                "f32 copy differs from the bf16 activation"
            );
            // statistics of exactly the bf16 activation
            check_col_stats(&format!("act_mul {f:?}"), &g, &a, rows, cols, &s1, &s2);
        }
    }
}

/// The MLP input side in one op: f(x·W_gateᵀ)·(x·W_upᵀ) for both activations, against the CPU
/// with each kernel this GPU has (on Hopper the fused TMA launch, also with few CTAs walking
/// the tiles).
#[test]
#[ignore = "needs a GPU"]
fn gate_up_act_matches_cpu() {
    let g = gpu();
    let mut kernels = vec![GemmKernel::MmaSync];
    if g.info.compute_capability == (9, 0) {
        kernels.extend([GemmKernel::Sm90, GemmKernel::Sm90Tma]);
    }
    for f in ACTIVATIONS {
        for (i, &(m, k, n)) in [
            (1, 8, 1),
            (200, 136, 300),
            (129, 64, 128),
            (33, 13, 70),
            (300, 640, 1408),
        ]
        .iter()
        .enumerate()
        {
            let x = rand_vals(m * k, 60 + i as u64, 1.0);
            let wg = rand_vals(n * k, 70 + i as u64, 0.5);
            let wu = rand_vals(n * k, 80 + i as u64, 0.5);
            let want = cpu_gate_up_act(f, &x, &wg, &wu, m, k, n);
            let (xd, gd, ud) = (
                up_bf16(&g, &x, &[m, k]),
                up_bf16(&g, &wg, &[n, k]),
                up_bf16(&g, &wu, &[n, k]),
            );
            for &kernel in &kernels {
                if kernel != GemmKernel::MmaSync && k % 8 != 0 {
                    continue;
                }
                let mut act = poisoned_bf16(&g, &[m, n]);
                ops::gate_up_act_with(&g, f, &xd, &gd, &ud, &mut act, kernel).unwrap();
                check(
                    &format!("gate_up_act {f:?} ({kernel:?}) {m}x{k} -> {n}"),
                    &down(&g, &act),
                    &want,
                    BF16_TOL,
                );
            }
        }
    }
}

#[test]
#[ignore = "needs a GPU"]
fn token_weights_and_scaled_stats_match_cpu() {
    use whittle::engine::calib::TokenWeight;
    let g = gpu();
    let eps = 1e-6f32;
    for (i, &(rows, hd, cols)) in [(1, 1, 1), (37, 640, 130), (300, 2304, 96), (129, 33, 2053)]
        .iter()
        .enumerate()
    {
        // Rows of very different scale, as MLP outputs are (BOS rows are huge).
        let mut y = rand_vals(rows * hd, 700 + i as u64, 1.0);
        for (r, row) in y.chunks_mut(hd).enumerate() {
            let f = [0.01f32, 1.0, 30.0][r % 3];
            row.iter_mut()
                .for_each(|v| *v = bf16::from_f32(*v * f).to_f32());
        }
        let x = rand_vals(rows * hd, 720 + i as u64, 8.0);
        let act = rand_vals(rows * cols, 740 + i as u64, 3.0);
        for (tw, mode) in [
            (TokenWeight::Out, TokenWeightMode::Out),
            (TokenWeight::OutResid, TokenWeightMode::OutResid),
            (TokenWeight::NextNorm, TokenWeightMode::NextNorm),
        ] {
            let resid = tw.needs_resid();
            let want = tw
                .weights(&y, resid.then_some(&x[..]), hd, eps)
                .expect("weighted");
            let (yd, xd) = (up_bf16(&g, &y, &[rows, hd]), up_bf16(&g, &x, &[rows, hd]));
            let mut wd = poisoned_f32(&g, &[rows]);
            ops::token_weights(&g, mode, &yd, resid.then_some(&xd), &mut wd, eps).unwrap();
            let got = wd.to_host(&g).unwrap();
            for r in 0..rows {
                let tol = 1e-5 * want[r].abs() as f64;
                assert!(
                    ((got[r] - want[r]) as f64).abs() <= tol,
                    "{} weight row {r} of {rows}x{hd}: {} vs {}",
                    tw.name(),
                    got[r],
                    want[r]
                );
            }
            // Scaled rows and their column statistics, from the GPU's own weights.
            let ad = up_bf16(&g, &act, &[rows, cols]);
            let mut out = poisoned_bf16(&g, &[rows, cols]);
            let mut s1 = up_f32_f64(&g, &vec![1.0; cols]);
            let mut s2 = up_f32_f64(&g, &vec![2.0; cols]);
            ops::scale_rows_stats(&g, &ad, &wd, &mut out, Some((&mut s1, &mut s2))).unwrap();
            let o = down(&g, &out);
            let mut scaled = vec![0f32; rows * cols];
            for r in 0..rows {
                let f = got[r].sqrt();
                for c in 0..cols {
                    scaled[r * cols + c] = act[r * cols + c] * f;
                }
            }
            check(
                &format!("scale_rows {rows}x{cols} ({})", tw.name()),
                &o,
                &scaled,
                BF16_TOL,
            );
            check_col_stats(tw.name(), &g, &o, rows, cols, &s1, &s2);
        }
    }
}

/// Column sums Σv, Σv² of `v` [rows, cols] (plus the starting offsets 1 and 2 the tests put in
/// the accumulators) against the GPU's f64 accumulators.
fn check_col_stats(
    what: &str,
    g: &Gpu,
    v: &[f32],
    rows: usize,
    cols: usize,
    s1: &DTensor<f64>,
    s2: &DTensor<f64>,
) {
    let (mut w1, mut w2) = (vec![1f64; cols], vec![2f64; cols]);
    let mut abs1 = vec![0f64; cols]; // Σ|v|: bounds the f32 partial sums' rounding
    for r in 0..rows {
        for c in 0..cols {
            let x = v[r * cols + c] as f64;
            w1[c] += x;
            w2[c] += x * x;
            abs1[c] += x.abs();
        }
    }
    let (g1, g2) = (s1.to_host(g).unwrap(), s2.to_host(g).unwrap());
    for c in 0..cols {
        let tol = |w: f64| 1e-5 * (1.0 + w.abs());
        // Each thread sums ≤ 16 rows in f32 before the f64 atomics: with cancellation the error
        // is relative to Σ|v|, not to |Σv| (seen: Σ -0.18646 vs -0.18648 with Σ|v| in the 100s).
        assert!(
            (g1[c] - w1[c]).abs() <= tol(w1[c]) + 2e-6 * abs1[c],
            "{what}: Σ col {c}: {} vs {}",
            g1[c],
            w1[c]
        );
        assert!(
            (g2[c] - w2[c]).abs() <= tol(w2[c]),
            "{what}: Σ² col {c}: {} vs {}",
            g2[c],
            w2[c]
        );
    }
}

fn up_f32_f64(g: &Gpu, x: &[f64]) -> DTensor<f64> {
    DTensor::from_host(g, x, &[x.len()]).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Embedding, head, conversions

#[test]
#[ignore = "needs a GPU"]
fn embed_gathers_and_scales() {
    let g = gpu();
    let (v, h) = (50, 70);
    let table = rand_vals(v * h, 31, 1.0);
    let ids: Vec<u32> = vec![0, 49, 7, 7, 2, 31];
    let td = up_bf16(&g, &table, &[v, h]);
    let idd = DTensor::from_host(&g, &ids, &[ids.len()]).unwrap();
    // Gemma's bf16 sqrt(H), and 1 (the Llama family: the rows as they are).
    for scale in [bf16::from_f64((h as f64).sqrt()).to_f32(), 1.0] {
        let mut o = poisoned_bf16(&g, &[ids.len(), h]);
        ops::embed(&g, &td, &idd, &mut o, scale).unwrap();
        let got = down(&g, &o);
        for (r, &id) in ids.iter().enumerate() {
            for c in 0..h {
                let want = bf16::from_f32(table[id as usize * h + c] * scale).to_f32();
                assert_eq!(
                    got[r * h + c],
                    want,
                    "scale {scale} row {r} (id {id}) col {c}"
                );
            }
        }
    }
}

fn log_sum_exp(x: &[f32]) -> (f32, usize, f64) {
    let m = x.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    let s: f64 = x.iter().map(|&v| (v - m).exp() as f64).sum();
    (m, best, m as f64 + s.ln())
}

#[test]
#[ignore = "needs a GPU"]
fn head_softcap_stats_and_kl_match_cpu() {
    let g = gpu();
    for &(rows, v) in &[(3usize, 1000usize), (5, 262_144), (1, 7)] {
        let mut za = rand_vals(rows * v, 41 + v as u64, 40.0);
        let zb = rand_vals(rows * v, 43 + v as u64, 20.0);
        // a tie for the argmax: the first index must win
        za[v / 2] = 1000.0;
        za[v - 1] = 1000.0;
        let mut want_cap = za.clone();
        cpu::softcap(&mut want_cap, 30.0);
        let mut ad = up_f32(&g, &za, &[rows, v]);
        ops::softcap(&g, &mut ad, 30.0).unwrap();
        let capped = ad.to_host(&g).unwrap();
        check(&format!("softcap {rows}x{v}"), &capped, &want_cap, 1e-6);
        let bd = up_f32(&g, &zb, &[rows, v]);
        let targets: Vec<u32> = (0..rows as u32).map(|r| (r * 7919) % v as u32).collect();
        let td = DTensor::from_host(&g, &targets, &[rows]).unwrap();
        let mut sa = RowStatsOut::new(&g, rows).unwrap();
        let mut sb = RowStatsOut::new(&g, rows).unwrap();
        ops::row_stats(&g, &ad, Some(&td), &mut sa).unwrap();
        ops::row_stats(&g, &bd, None, &mut sb).unwrap();
        let mut kl = DTensor::<f64>::zeros(&g, &[rows]).unwrap();
        ops::kl_rows(&g, &bd, &ad, &sb.lse, &sa.lse, &mut kl).unwrap();
        let (lse_a, am_a, tl_a) = (
            sa.lse.to_host(&g).unwrap(),
            sa.argmax.to_host(&g).unwrap(),
            sa.target_logit.to_host(&g).unwrap(),
        );
        let (lse_b, am_b) = (sb.lse.to_host(&g).unwrap(), sb.argmax.to_host(&g).unwrap());
        let kl = kl.to_host(&g).unwrap();
        for r in 0..rows {
            let ra = &capped[r * v..(r + 1) * v];
            let rb = &zb[r * v..(r + 1) * v];
            let (_, ia, la) = log_sum_exp(ra);
            let (_, ib, lb) = log_sum_exp(rb);
            assert_eq!(
                am_a[r] as usize, ia,
                "argmax row {r} (ties go to the first index)"
            );
            assert_eq!(am_b[r] as usize, ib, "argmax row {r}");
            assert!(
                (lse_a[r] - la).abs() < 1e-6 * la.abs().max(1.0),
                "lse row {r}: {} vs {la}",
                lse_a[r]
            );
            assert!(
                (lse_b[r] - lb).abs() < 1e-6 * lb.abs().max(1.0),
                "lse row {r}: {} vs {lb}",
                lse_b[r]
            );
            assert_eq!(tl_a[r], ra[targets[r] as usize], "target logit row {r}");
            let mut want_kl = 0f64;
            for (&b, &a) in rb.iter().zip(ra) {
                let lpb = b as f64 - lb;
                let lpm = a as f64 - la;
                want_kl += lpb.exp() * (lpb - lpm);
            }
            assert!(
                (kl[r] - want_kl).abs() <= 1e-6 * (1.0 + want_kl.abs()),
                "kl row {r}: {} vs {want_kl}",
                kl[r]
            );
        }
    }
}

#[test]
#[ignore = "needs a GPU"]
fn conversions_round_to_nearest_even() {
    let g = gpu();
    let mut x = rand_vals(100_003, 5, 1e3);
    // exact ties and specials
    x.extend_from_slice(&[
        1.0 + 1.0 / 256.0,
        1.0 + 3.0 / 256.0,
        -0.0,
        f32::MAX,
        1e-40,
        3.0e38,
    ]);
    for (i, v) in x.iter_mut().enumerate().take(50_000) {
        *v += (i as f32) * 1e-3; // not bf16-representable
    }
    let xd = up_f32(&g, &x, &[x.len()]);
    let mut yb = poisoned_bf16(&g, &[x.len()]);
    ops::f32_to_bf16(&g, &xd, &mut yb).unwrap();
    let got = yb.to_host(&g).unwrap();
    for (i, (&a, &b)) in x.iter().zip(&got).enumerate() {
        assert_eq!(b.to_bits(), bf16::from_f32(a).to_bits(), "element {i}: {a}");
    }
    let mut back = poisoned_f32(&g, &[x.len()]);
    ops::bf16_to_f32(&g, &yb, &mut back).unwrap();
    let want: Vec<f32> = got.iter().map(|v| v.to_f32()).collect();
    assert_eq!(back.to_host(&g).unwrap(), want);
}

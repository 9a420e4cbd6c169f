//! The CPU bf16 GEMM (src/cpu/bf16.rs): every kernel this machine has against the scalar model of
//! its rounding (bitwise; AMX also under an emulator in tests/cpu_amx.rs) and against an f64 product of the bf16-rounded inputs (error bound);
//! the `WHITTLE_CPU_BF16=off` switch leaves the f32 path exactly as `--precision f32`.

mod common;

use common::bf16::{
    assert_gram_upper_bitwise, assert_rows_bitwise, serial_operands, transpose, values,
};
use whittle::cpu::bf16::{self, Kernel, Precision};
use whittle::cpu::decode::Mat;

fn widen(b: u16) -> f64 {
    whittle::cpu::convert::widen(b) as f64
}

/// Shapes with every tail: m and n below, at and past the tile (12 × 32), odd and even k.
const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (1, 2, 1),
    (3, 5, 7),
    (12, 32, 32),
    (13, 33, 31),
    (25, 17, 65),
    (37, 640, 100),
    (97, 1001, 257),
    (200, 64, 600),
];

fn supported_or_skip(test: &str) -> Vec<Kernel> {
    let ks = Kernel::supported();
    if ks.is_empty() {
        eprintln!("{test}: skipped: this CPU has no bf16 GEMM kernel (AVX-512 BF16)");
    }
    if !ks.contains(&Kernel::Avx512Bf16) {
        eprintln!("{test}: avx512-bf16 skipped: the CPU lacks avx512f + avx512bf16");
    }
    if !ks.contains(&Kernel::Amx) {
        eprintln!(
            "{test}: amx-bf16 skipped: the CPU lacks AMX-BF16 or WHITTLE_CPU_AMX is not on \
             (tests/cpu_amx.rs runs it under an emulator)"
        );
    }
    ks
}

#[test]
fn kernels_equal_the_scalar_model_bitwise() {
    for kernel in supported_or_skip("kernels_equal_the_scalar_model_bitwise") {
        for (si, &(m, k, n)) in SHAPES.iter().enumerate() {
            let x = values(m * k, 2 * si as u64 + 1);
            let w = values(n * k, 2 * si as u64 + 2);
            let want = bf16::linear_model_for(kernel, &x, Mat::F32(&w), m, k, n);
            // Written into a wider matrix: columns past n must keep their sentinel.
            let ld = n + 3;
            let mut y = vec![f32::NAN; m * ld];
            bf16::linear(kernel, &x, Mat::F32(&w), m, k, n, &mut y, ld);
            let what = format!("{} m={m} k={k} n={n}", kernel.name());
            assert_rows_bitwise(&what, &y, &want, m, n, ld);
            // The same weights as bf16 bits give the same result.
            let wb: Vec<u16> = w
                .iter()
                .map(|&v| whittle::cpu::convert::round_bits(v))
                .collect();
            let mut yb = vec![0f32; m * n];
            bf16::linear(kernel, &x, Mat::Bf16(&wb), m, k, n, &mut yb, n);
            assert!(yb
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits()));
        }
    }
}

/// The Gram kernel (`gram_upper`, x [t, w] packed straight from token rows) equals the scalar
/// model of xᵀ·x bitwise on every entry of the upper block triangle and leaves the rest alone:
/// odd token counts, widths off the tile and block sizes, one block and several.
#[test]
fn gram_upper_equals_the_scalar_model_bitwise() {
    for kernel in supported_or_skip("gram_upper_equals_the_scalar_model_bitwise") {
        for (si, &(t, w, block)) in [
            (1usize, 1usize, 32usize),
            (7, 13, 32),
            (64, 100, 32),
            (257, 300, 64),
            (2048, 97, 96),
        ]
        .iter()
        .enumerate()
        {
            let x = values(t * w, 100 + si as u64); // [t, w]
            let xt = transpose(&x, t, w); // [w, t]
            let want = bf16::linear_model_for(kernel, &xt, Mat::F32(&xt), w, t, w);
            let ld = w + 2;
            let mut y = vec![f32::NAN; w * ld];
            bf16::gram_upper(kernel, &x, t, w, block, &mut y, ld);
            let what = format!("{} t={t} w={w} block={block}", kernel.name());
            assert_gram_upper_bitwise(&what, &y, &want, w, ld, block);
        }
    }
}

/// The model against exact arithmetic: |y − Σ x̂·ŵ| ≤ γ_k Σ|x̂·ŵ| with γ_k = k·u/(1 − k·u),
/// u = 2⁻²⁴ (one rounding per accumulation step, Higham §3.1), plus the flushed denormal products
/// (each below 2⁻¹²⁶, k of them at most).
#[test]
fn scalar_model_is_within_the_summation_bound_of_f64() {
    for (si, &(m, k, n)) in SHAPES.iter().enumerate() {
        let x = values(m * k, 7 * si as u64 + 3);
        let w = values(n * k, 7 * si as u64 + 4);
        let y = bf16::linear_model(&x, Mat::F32(&w), m, k, n);
        let xb: Vec<u16> = x
            .iter()
            .map(|&v| whittle::cpu::convert::round_bits(v))
            .collect();
        let wb: Vec<u16> = w
            .iter()
            .map(|&v| whittle::cpu::convert::round_bits(v))
            .collect();
        let u = (2f64).powi(-24);
        let gamma = k as f64 * u / (1.0 - k as f64 * u);
        for r in 0..m {
            for c in 0..n {
                let (mut exact, mut abs) = (0f64, 0f64);
                for i in 0..k {
                    let p = widen(xb[r * k + i]) * widen(wb[c * k + i]);
                    exact += p;
                    abs += p.abs();
                }
                let err = (y[r * n + c] as f64 - exact).abs();
                let bound = gamma * abs + k as f64 * (2f64).powi(-126);
                assert!(
                    err <= bound,
                    "m={m} k={k} n={n} at [{r}, {c}]: {} vs exact {exact:e} (err {err:e} > {bound:e})",
                    y[r * n + c]
                );
            }
        }
    }
}

/// The inputs really are rounded: a value between two bf16 neighbours multiplies as its nearest
/// (ties to even), the way the GPU engine's `__float2bfloat16_rn` rounds.
#[test]
fn inputs_are_rounded_to_nearest_even() {
    let one_plus = f32::from_bits(0x3f80_8000); // 1 + 2⁻⁸: a tie between 1 and 1 + 2⁻⁷
    let above = f32::from_bits(0x3f80_8001); // just above the tie
    let x = [one_plus, above];
    let w = [1.0f32, 0.0, 0.0, 1.0]; // [2, 2]: y = x
    let y = bf16::linear_model(&x, Mat::F32(&w), 1, 2, 2);
    assert_eq!(y, vec![1.0, 1.0 + 1.0 / 128.0]);
    for kernel in Kernel::supported() {
        let mut yk = vec![0f32; 2];
        bf16::linear(kernel, &x, Mat::F32(&w), 1, 2, 2, &mut yk, 2);
        assert_eq!(yk, y, "{}", kernel.name());
    }
}

#[test]
fn the_switch_hides_every_kernel() {
    assert_eq!(Kernel::choose(Some("off")), None);
    assert_eq!(Kernel::choose(Some("0")), None);
    assert_eq!(Kernel::choose(None), Kernel::supported().first().copied());
    assert_eq!("bf16".parse::<Precision>(), Ok(Precision::Bf16));
    assert!("fp16".parse::<Precision>().is_err());
}

/// `whittle eval --json` on the tiny fixture: (nll, ppl) as printed, and the log on stderr.
fn eval_out(precision: &str, env_off: bool) -> ((f64, f64), String) {
    let model = common::fixture("tiny-gemma3");
    let text = common::fixture("eval-text.txt");
    let mut cmd = std::process::Command::new(common::bin());
    cmd.args(["--device", "cpu", "--precision", precision, "eval"])
        .arg(&model)
        .arg("--text")
        .arg(&text)
        .args(["--seq", "32", "--windows", "2", "--json"]);
    if env_off {
        cmd.env(bf16::DISABLE_ENV, "off");
    } else {
        cmd.env_remove(bf16::DISABLE_ENV);
    }
    let out = cmd.output().expect("running whittle eval");
    assert!(
        out.status.success(),
        "whittle eval --precision {precision} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("eval --json output");
    let get = |k: &str| v[k].as_f64().unwrap_or_else(|| panic!("no {k} in {v}"));
    (
        (get("nll"), get("ppl")),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A CPU without BF16 (forced by the switch) runs the f32 path unchanged: `--precision bf16`
/// then gives what `--precision f32` gives, to the last digit.
#[test]
fn bf16_switched_off_is_the_f32_path() {
    let (f32_out, f32_log) = eval_out("f32", false);
    let (off_out, off_log) = eval_out("bf16", true);
    assert_eq!(off_out, f32_out);
    assert!(f32_log.contains("(cpu, f32)"), "{f32_log}");
    assert!(off_log.contains("(cpu, f32)"), "{off_log}");
    if Kernel::supported().is_empty() {
        eprintln!("bf16_switched_off_is_the_f32_path: bf16 proper skipped: no kernel on this CPU");
        return;
    }
    // The switch is what made the difference: bf16 proper changes the figures, by little (the
    // GEMM inputs move by at most 2⁻⁹ relative, two layers deep).
    let (bf_out, bf_log) = eval_out("bf16", false);
    assert!(bf_log.contains("(cpu, bf16)"), "{bf_log}");
    assert_ne!(bf_out, f32_out);
    let (nll_f32, nll_bf16) = (f32_out.0, bf_out.0);
    assert!(
        (nll_bf16 - nll_f32).abs() < 0.01 * nll_f32,
        "nll bf16 {nll_bf16} vs f32 {nll_f32}"
    );
}

/// `compile`'s default precision: bf16 only where the kernel exists and was measured faster
/// with KL within 1% of the f32 compile (AMD); f32 on Intel, elsewhere, and whenever the switch
/// hides the kernel (as on a CPU without BF16).
#[test]
fn compile_default_is_bf16_only_where_measured_faster() {
    use bf16::Vendor;
    let k = Some(Kernel::Avx512Bf16);
    assert_eq!(
        Precision::compile_default_for(k, Vendor::Amd),
        Precision::Bf16
    );
    assert_eq!(
        Precision::compile_default_for(k, Vendor::Intel),
        Precision::F32
    );
    assert_eq!(
        Precision::compile_default_for(k, Vendor::Other),
        Precision::F32
    );
    assert_eq!(
        Precision::compile_default_for(None, Vendor::Amd),
        Precision::F32
    );
    let off = Kernel::choose(Some("off"));
    assert_eq!(
        Precision::compile_default_for(off, Vendor::Amd),
        Precision::F32
    );
}

/// `whittle compile` without `--precision` runs and records this CPU's default; with the switch
/// off it runs the f32 path.
#[test]
fn compile_report_names_the_default_precision() {
    let d = tempfile::tempdir().unwrap();
    for env_off in [false, true] {
        let out = d.path().join(format!("out-{env_off}"));
        let mut cmd = std::process::Command::new(common::bin());
        cmd.args(["--device", "cpu", "compile"])
            .arg(common::fixture("tiny-gemma3"))
            .arg("-o")
            .arg(&out)
            .arg("--calib")
            .arg(common::fixture("eval-text.txt"))
            .args(["--seq", "24", "--samples", "4", "--keep-ratio", "0.5"]);
        let kernel = if env_off {
            cmd.env(bf16::DISABLE_ENV, "off");
            None
        } else {
            cmd.env_remove(bf16::DISABLE_ENV);
            Kernel::choose(None)
        };
        let o = cmd.output().expect("running whittle compile");
        assert!(
            o.status.success(),
            "compile failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let r: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("whittle_report.json")).unwrap(),
        )
        .unwrap();
        let gemm = r["cpu_gemm"]
            .as_str()
            .unwrap_or_else(|| panic!("no cpu_gemm in {r}"));
        match Precision::compile_default_for(kernel, bf16::Vendor::detect()) {
            Precision::Bf16 => assert!(gemm.starts_with("bf16 "), "{gemm}"),
            Precision::F32 => assert_eq!(gemm, "f32 (gemm crate)"),
        }
    }
}

/// `round_bits` (branch-free, what the GEMM packs) is `half::bf16::from_f32` for every f32 bit
/// pattern: finite values at and around every rounding midpoint, denormals, infinities, NaNs.
#[test]
fn round_bits_is_half_from_f32_for_every_input() {
    use rayon::prelude::*;
    let bad = (0u32..1 << 16).into_par_iter().find_any(|&hi| {
        (0u32..1 << 16).any(|lo| {
            let v = f32::from_bits(hi << 16 | lo);
            whittle::cpu::convert::round_bits(v) != half::bf16::from_f32(v).to_bits()
        })
    });
    assert_eq!(
        bad, None,
        "round_bits differs from half for upper bits {bad:x?}"
    );
}

/// The packers' row conversions (`round_pairs`: a row's k-pairs; `round_zip`: two token rows
/// zipped) give `round_bits` of every f32 bit pattern, in every lane of the SIMD path this CPU
/// takes and in the tails (odd lengths, lengths off 16, a missing high row).
#[test]
fn row_conversions_equal_round_bits_for_every_input() {
    use rayon::prelude::*;
    use whittle::cpu::convert::{round_bits, round_pairs, round_zip};
    let bad = (0u32..1 << 16).into_par_iter().find_any(|&hi| {
        let x: Vec<f32> = (0..1u32 << 16)
            .map(|lo| f32::from_bits(hi << 16 | lo))
            .collect();
        let mut pairs = vec![0u32; x.len() / 2];
        round_pairs(&x, &mut pairs);
        let (lo, up) = x.split_at(x.len() / 2);
        let mut zip = vec![0u32; lo.len()];
        round_zip(lo, Some(up), &mut zip);
        (0..pairs.len()).any(|p| {
            pairs[p] != round_bits(x[2 * p]) as u32 | (round_bits(x[2 * p + 1]) as u32) << 16
                || zip[p] != round_bits(lo[p]) as u32 | (round_bits(up[p]) as u32) << 16
        })
    });
    assert_eq!(
        bad, None,
        "row conversions differ from round_bits for upper bits {bad:x?}"
    );
    let x = values(37, 7);
    for n in [0usize, 1, 15, 16, 17, 31, 33, 37] {
        let mut pairs = vec![u32::MAX; n.div_ceil(2)];
        round_pairs(&x[..n], &mut pairs);
        for (p, &got) in pairs.iter().enumerate() {
            let hi = x[..n].get(2 * p + 1).map_or(0, |&v| round_bits(v) as u32);
            assert_eq!(
                got,
                round_bits(x[2 * p]) as u32 | hi << 16,
                "round_pairs n={n} p={p}"
            );
        }
        let mut zip = vec![u32::MAX; n];
        round_zip(&x[..n], None, &mut zip);
        assert!(
            zip.iter().zip(&x).all(|(&z, &v)| z == round_bits(v) as u32),
            "round_zip n={n}"
        );
    }
}

/// The attention blocks' single-threaded product (`gemm_serial`) equals the scalar model
/// bitwise, from strided operands, with the right-hand side given as rows of its transpose (K
/// for q·kᵀ) or row-major (V for p·v), a scale applied after the sums, and cells outside the
/// [m, n] block of c left alone.
#[test]
fn serial_strided_gemm_equals_the_scalar_model_bitwise() {
    for kernel in supported_or_skip("serial_strided_gemm_equals_the_scalar_model_bitwise") {
        for (si, &(m, k, n)) in SHAPES.iter().enumerate() {
            let (lda, ldb, ldc) = (k + 5, n.max(k) + 3, n + 2);
            let a = values(m * lda, 300 + si as u64); // [m, lda], the first k columns used
            let b = values(n.max(k) * ldb, 400 + si as u64);
            for b_rows in [true, false] {
                let (a_c, bt) = serial_operands(&a, lda, &b, ldb, b_rows, m, k, n);
                let scale = if b_rows { 0.0625 } else { 1.0 };
                let want: Vec<f32> = bf16::linear_model_for(kernel, &a_c, Mat::F32(&bt), m, k, n)
                    .into_iter()
                    .map(|v| v * scale)
                    .collect();
                let mut c = vec![f32::NAN; m * ldc];
                bf16::gemm_serial(
                    kernel, &a, lda, &b, ldb, b_rows, m, n, k, &mut c, ldc, scale,
                );
                let what = format!("{} m={m} k={k} n={n} b_rows={b_rows}", kernel.name());
                assert_rows_bitwise(&what, &c, &want, m, n, ldc);
            }
        }
    }
}

//! Inputs and bitwise checks shared by the bf16 GEMM tests (cpu_bf16.rs: every kernel the CPU
//! has; cpu_amx.rs: the AMX kernels under an emulator).

/// Deterministic values spread over several binades, with exact zeros and a few tiny ones.
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut r = whittle::rng::XorShift64::new(seed);
    (0..n)
        .map(|i| {
            let s = r.next_u64();
            let u = (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5; // [-0.5, 0.5)
            match i % 97 {
                0 => 0.0,
                1 => u * 1e-30,
                _ => u * (1 << (s % 5)) as f32,
            }
        })
        .collect()
}

/// x [t, w] → xᵀ [w, t].
pub fn transpose(x: &[f32], t: usize, w: usize) -> Vec<f32> {
    (0..w * t).map(|i| x[(i % t) * w + i / t]).collect()
}

/// The attention product's operands as the scalar model takes them: a's first k columns
/// ([m, k] from row stride lda) and the right-hand side as [n, k] rows — b holds them as rows
/// of stride ldb (`b_rows`, K for q·kᵀ) or row-major [k, n] at stride ldb (V for p·v).
#[allow(clippy::too_many_arguments)]
pub fn serial_operands(
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    b_rows: bool,
    m: usize,
    k: usize,
    n: usize,
) -> (Vec<f32>, Vec<f32>) {
    let a_c = (0..m * k).map(|i| a[i / k * lda + i % k]).collect();
    let bt = (0..n * k)
        .map(|i| {
            let (j, kk) = (i / k, i % k);
            if b_rows {
                b[j * ldb + kk]
            } else {
                b[kk * ldb + j]
            }
        })
        .collect();
    (a_c, bt)
}

/// y ([m, ·] at row stride ld) equals `want` ([m, n]) bit for bit, and its columns n..ld still
/// hold their NaN sentinel.
pub fn assert_rows_bitwise(what: &str, y: &[f32], want: &[f32], m: usize, n: usize, ld: usize) {
    for r in 0..m {
        for c in 0..n {
            let (got, exp) = (y[r * ld + c], want[r * n + c]);
            assert_eq!(
                got.to_bits(),
                exp.to_bits(),
                "{what} at [{r}, {c}]: {got:e} vs model {exp:e}"
            );
        }
        assert!(
            y[r * ld + n..r * ld + ld].iter().all(|v| v.is_nan()),
            "{what}: row {r} was written past column {n}"
        );
    }
}

/// A Gram matrix's upper block triangle (rows of block row b from column b·block on) in y
/// ([w, ·] at stride ld) equals `want` ([w, w]) bit for bit; every other cell still holds its
/// NaN sentinel.
pub fn assert_gram_upper_bitwise(
    what: &str,
    y: &[f32],
    want: &[f32],
    w: usize,
    ld: usize,
    block: usize,
) {
    for i in 0..w {
        for j in 0..ld {
            let got = y[i * ld + j];
            if j < w && j >= i / block * block {
                let exp = want[i * w + j];
                assert_eq!(
                    got.to_bits(),
                    exp.to_bits(),
                    "{what} at [{i}, {j}]: {got:e} vs {exp:e}"
                );
            } else {
                assert!(got.is_nan(), "{what}: [{i}, {j}] was written");
            }
        }
    }
}

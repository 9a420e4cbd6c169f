//! CPU reference ops: plain f32, multi-threaded over rows with rayon. These are the oracle every
//! CUDA kernel is tested against, so each one follows transformers' fp32 arithmetic order where
//! the order changes the rounding (the `(1+w)` multiply before any downcast, the scale applied
//! after the dot product, softcap before the mask).

use crate::cpu::gemm::{gemm, Parallelism, View, ViewMut};
use crate::cpu::gemv::Mat;
use rayon::prelude::*;

/// Rows smaller than this are not worth a rayon task each.
const ROW_CHUNK_ELEMS: usize = 1 << 14;

fn rows_per_task(cols: usize) -> usize {
    (ROW_CHUNK_ELEMS / cols.max(1)).max(1)
}

/// Index of the largest value, the first on ties (as torch.argmax).
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

/// `y[m, n] = x[m, k] · w[n, k]ᵀ` — a HF Linear without bias (weights stored `[out, in]`). Under
/// `--precision bf16` ([`super::bf16::active`]) x and w are rounded to bf16 first.
pub fn linear(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    linear_into(x, w, m, k, n, &mut y);
    y
}

pub fn linear_into(x: &[f32], w: &[f32], m: usize, k: usize, n: usize, y: &mut [f32]) {
    assert_eq!(y.len(), m * n, "linear: y is not [m={m}, n={n}]");
    linear_into_ld(x, w, m, k, n, y, n)
}

/// [`linear_into`] writing row r of the result at `y[r·ld ..][..n]` (a column block of a wider
/// matrix: pass the slice starting at the block's first column).
pub fn linear_into_ld(
    x: &[f32],
    w: &[f32],
    m: usize,
    k: usize,
    n: usize,
    y: &mut [f32],
    ld: usize,
) {
    assert_eq!(x.len(), m * k, "linear: x is not [m={m}, k={k}]");
    assert_eq!(w.len(), n * k, "linear: w is not [n={n}, k={k}]");
    assert!(
        ld >= n && (m == 0 || y.len() >= (m - 1) * ld + n),
        "linear: y cannot hold [m={m}, n={n}] at row stride {ld}"
    );
    if let Some(kernel) = super::bf16::active() {
        return super::bf16::linear(kernel, x, Mat::F32(w), m, k, n, y, ld);
    }
    gemm(
        ViewMut::rows(y, m, n, ld),
        View::rows(x, m, k, k),
        View::transposed(w, k, n, k), // wᵀ: column j is row j of w
        None,
        1.0,
        parallelism(m * n * k),
    )
}

/// `x[m, k] · wᵢᵀ` for several weights `(wᵢ [nᵢ, k], nᵢ)` of one input (q, k and v; gate and
/// up): [`linear`] of each, with x rounded and packed once under `--precision bf16`.
pub fn linears<const N: usize>(
    x: &[f32],
    m: usize,
    k: usize,
    ws: [(&[f32], usize); N],
) -> [Vec<f32>; N] {
    let Some(kernel) = super::bf16::active() else {
        return ws.map(|(w, n)| linear(x, w, m, k, n));
    };
    let packed = super::bf16::PackedRows::new(kernel, x, m, k);
    ws.map(|(w, n)| {
        assert_eq!(w.len(), n * k, "linear: w is not [n={n}, k={k}]");
        let mut y = vec![0f32; m * n]; // [m, n]
        super::bf16::linear_packed(kernel, &packed, Mat::F32(w), n, &mut y, n);
        y
    })
}

/// Strided single-threaded GEMM for attention blocks: `c[m,n] = scale · a[m,k] · b[n,k]ᵀ` where
/// each operand is a row-major view with its own row stride.
#[allow(clippy::too_many_arguments)]
pub fn gemm_nt_strided(
    a: &[f32],
    a_rs: usize,
    b: &[f32],
    b_rs: usize,
    c: &mut [f32],
    c_rs: usize,
    m: usize,
    n: usize,
    k: usize,
    scale: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(a.len() >= (m - 1) * a_rs + k && b.len() >= (n - 1) * b_rs + k);
    assert!(c.len() >= (m - 1) * c_rs + n);
    let (c, a) = (ViewMut::rows(c, m, n, c_rs), View::rows(a, m, k, a_rs));
    f32_gemm(c, a, View::transposed(b, k, n, b_rs), false, scale, false)
}

/// `c[m,n] = a[m,k] · b[k,n]` with row strides (b row-major `[k, n]`), single-threaded.
#[allow(clippy::too_many_arguments)]
pub fn gemm_nn_strided(
    a: &[f32],
    a_rs: usize,
    b: &[f32],
    b_rs: usize,
    c: &mut [f32],
    c_rs: usize,
    m: usize,
    n: usize,
    k: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(a.len() >= (m - 1) * a_rs + k && b.len() >= (k.max(1) - 1) * b_rs + n);
    assert!(c.len() >= (m - 1) * c_rs + n);
    let (c, a) = (ViewMut::rows(c, m, n, c_rs), View::rows(a, m, k, a_rs));
    f32_gemm(c, a, View::rows(b, k, n, b_rs), false, 1.0, false)
}

/// `c[m,n] (+)= a[k,m]ᵀ · b[k,n]` with row strides: a sum over k rows (tokens), as weight
/// gradients and Gram statistics are. `acc` adds to c; `all_cores` spreads the product over
/// rayon's threads (false inside a parallel loop).
#[allow(clippy::too_many_arguments)]
pub fn gemm_tn_strided(
    a: &[f32],
    a_rs: usize,
    b: &[f32],
    b_rs: usize,
    c: &mut [f32],
    c_rs: usize,
    m: usize,
    n: usize,
    k: usize,
    acc: bool,
    all_cores: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(a.len() >= (k.max(1) - 1) * a_rs + m && b.len() >= (k.max(1) - 1) * b_rs + n);
    assert!(c.len() >= (m - 1) * c_rs + n);
    let (c, a) = (
        ViewMut::rows(c, m, n, c_rs),
        View::transposed(a, m, k, a_rs),
    );
    f32_gemm(c, a, View::rows(b, k, n, b_rs), acc, 1.0, all_cores)
}

/// Whole-matrix f32 products on all cores, whatever `--precision` says (the arithmetic of
/// gradients and re-fits is f32): `c[m,n] (+)= a[m,k] · b[n,k]ᵀ`.
pub fn matmul_nt(c: &mut [f32], a: &[f32], b: &[f32], m: usize, k: usize, n: usize, acc: bool) {
    assert!(a.len() == m * k && b.len() == n * k && c.len() == m * n);
    let (c, a) = (ViewMut::rows(c, m, n, n), View::rows(a, m, k, k));
    f32_gemm(c, a, View::transposed(b, k, n, k), acc, 1.0, true)
}

/// `c[m,n] (+)= a[m,k] · b[k,n]` (both row-major), f32 on all cores.
pub fn matmul_nn(c: &mut [f32], a: &[f32], b: &[f32], m: usize, k: usize, n: usize, acc: bool) {
    assert!(a.len() == m * k && b.len() == k * n && c.len() == m * n);
    let (c, a) = (ViewMut::rows(c, m, n, n), View::rows(a, m, k, k));
    f32_gemm(c, a, View::rows(b, k, n, n), acc, 1.0, true)
}

/// `c[m,n] (+)= a[t,m]ᵀ · b[t,n]`, reduced over the t rows inside the GEMM, f32 on all cores.
pub fn matmul_tn(c: &mut [f32], a: &[f32], b: &[f32], t: usize, m: usize, n: usize, acc: bool) {
    assert!(a.len() == t * m && b.len() == t * n && c.len() == m * n);
    gemm_tn_strided(a, m, b, n, c, n, m, n, t, acc, true)
}

/// The one call into the gemm crate for the f32 products above: `c (+)= scale·a·b`, on every
/// rayon thread or on the caller's alone (inside a parallel loop).
fn f32_gemm(
    c: ViewMut<'_, f32>,
    a: View<'_, f32>,
    b: View<'_, f32>,
    acc: bool,
    scale: f32,
    all_cores: bool,
) {
    let par = if all_cores {
        Parallelism::Rayon(rayon::current_num_threads())
    } else {
        Parallelism::None
    };
    gemm(c, a, b, acc.then_some(1.0), scale, par)
}

fn parallelism(flops: usize) -> Parallelism {
    let t = rayon::current_num_threads();
    if t > 1 && flops > 1 << 18 {
        gemm::Parallelism::Rayon(t)
    } else {
        gemm::Parallelism::None
    }
}

/// Gemma RMSNorm, in place on every row of `x` ([rows, w.len()]):
/// `x * rsqrt(mean(x²) + eps) * (1 + w)`, all in f32 (transformers multiplies by `1+w` before
/// any downcast — the point where Llama-style ports differ).
pub fn rms_norm(x: &mut [f32], w: &[f32], eps: f32) {
    let d = w.len();
    assert_eq!(x.len() % d, 0, "rms_norm: x is not [rows, {d}]");
    x.par_chunks_mut(d * rows_per_task(d)).for_each(|rows| {
        for row in rows.chunks_exact_mut(d) {
            rms_norm_row(row, w, eps);
        }
    });
}

pub fn rms_norm_row(row: &mut [f32], w: &[f32], eps: f32) {
    let ss: f32 = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
    let r = 1.0 / (ss + eps).sqrt();
    for (v, &g) in row.iter_mut().zip(w) {
        *v = (*v * r) * (1.0 + g);
    }
}

/// `x += y` elementwise (the residual add).
pub fn add_into(x: &mut [f32], y: &[f32]) {
    assert_eq!(x.len(), y.len());
    x.par_chunks_mut(ROW_CHUNK_ELEMS)
        .zip(y.par_chunks(ROW_CHUNK_ELEMS))
        .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a += b));
}

/// `e^x` for f32 without a libm call, so loops over it vectorise: Cody–Waite range reduction
/// x = n·ln2 + r and a degree-5 polynomial for e^r (the Cephes `expf` coefficients); within
/// 2 ulp of `f32::exp` on [-87, 88], 0 below, +inf above, NaN for NaN.
#[inline(always)]
pub fn exp_fast(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4; // ln2 split in two parts so n·C1 is exact
    const C2: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.3, 88.7);
    let (n, ni) = round_half_away(x * LOG2E);
    let r = x - n * C1 - n * C2;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let er = 1.0 + r + r * r * p;
    // 2^n by building the exponent bits (n is in [-126, 128] after the clamp).
    let (n1, n2) = (ni / 2, ni - ni / 2);
    er * f32::from_bits(((n1 + 127) as u32) << 23) * f32::from_bits(((n2 + 127) as u32) << 23)
}

/// `(y.round(), y.round() as i32)` for |y| ≤ 128 or NaN (→ 0), in operations that vectorise on
/// baseline x86-64: `f32::round` (half away from zero) has no SSE2 instruction and becomes a
/// libm call per element, and a saturating `as i32` is scalarised; truncate instead, then step
/// away from zero where the dropped fraction is at least ½. The same bits as `f32::round`,
/// signed zeros included (`round_half_away_is_f32_round`).
#[inline(always)]
fn round_half_away(y: f32) -> (f32, i32) {
    let y = if y.is_nan() { 0.0 } else { y };
    debug_assert!(y.abs() <= 256.0);
    // SAFETY: |y| ≤ 128 (exp_fast clamps its argument first), within i32.
    let ti = unsafe { y.to_int_unchecked::<i32>() };
    let t = (ti as f32).copysign(y);
    if (y - t).abs() >= 0.5 {
        (t + 1f32.copysign(y), if y < 0.0 { ti - 1 } else { ti + 1 })
    } else {
        (t, ti)
    }
}

/// tanh through `exp_fast`: 1 − 2/(e^{2|x|} + 1) with the sign restored. The absolute error is a
/// few 1e-8 (relative error grows only where tanh itself is tiny), which is what GELU needs.
#[inline(always)]
pub fn tanh_fast(x: f32) -> f32 {
    let e = exp_fast(2.0 * x.abs());
    let t = 1.0 - 2.0 / (e + 1.0);
    t.copysign(x)
}

/// GELU with the tanh approximation (`gelu_pytorch_tanh`).
#[inline(always)]
pub fn gelu_tanh(x: f32) -> f32 {
    const K: f32 = 0.797_884_6; // sqrt(2/pi)
    0.5 * x * (1.0 + tanh_fast(K * (x + 0.044715 * x * x * x)))
}

/// `a = gelu_tanh(gate) * up`, written into `gate`.
pub fn gelu_mul(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len());
    gate.par_chunks_mut(ROW_CHUNK_ELEMS)
        .zip(up.par_chunks(ROW_CHUNK_ELEMS))
        .for_each(|(g, u)| {
            super::wide::wide(|| {
                for (g, &u) in g.iter_mut().zip(u) {
                    *g = gelu_tanh(*g) * u;
                }
            })
        });
}

/// `tanh(x / cap) * cap` in place.
pub fn softcap(x: &mut [f32], cap: f32) {
    x.par_chunks_mut(ROW_CHUNK_ELEMS).for_each(|c| {
        for v in c {
            *v = (*v / cap).tanh() * cap;
        }
    });
}

/// RoPE tables for positions `0..t`: `(cos, sin)`, each `[t, d/2]` (the halves of transformers'
/// `cat(freqs, freqs)` are equal, so half is stored). Built in f32 like transformers:
/// `inv_freq = 1 / theta^(2i/d)`, divided by the linear factor, `freq = pos · inv_freq`.
pub fn rope_tables(t: usize, d: usize, theta: f64, linear_factor: f64) -> (Vec<f32>, Vec<f32>) {
    let half = d / 2;
    let inv: Vec<f32> = (0..half)
        .map(|i| {
            let expo = (2 * i) as f32 / d as f32;
            let f = 1.0 / (theta as f32).powf(expo);
            f / linear_factor as f32
        })
        .collect();
    let mut cos = vec![0f32; t * half];
    let mut sin = vec![0f32; t * half];
    for p in 0..t {
        for i in 0..half {
            let a = p as f32 * inv[i];
            cos[p * half + i] = a.cos();
            sin[p * half + i] = a.sin();
        }
    }
    (cos, sin)
}

/// Rotate-half RoPE in place on `x` = [t, n_heads, d] for positions 0..t.
pub fn apply_rope(x: &mut [f32], t: usize, n_heads: usize, d: usize, cos: &[f32], sin: &[f32]) {
    let half = d / 2;
    assert_eq!(x.len(), t * n_heads * d);
    assert!(cos.len() >= t * half && sin.len() >= t * half);
    x.par_chunks_mut(n_heads * d)
        .enumerate()
        .for_each(|(p, row)| {
            let (c, s) = (
                &cos[p * half..(p + 1) * half],
                &sin[p * half..(p + 1) * half],
            );
            for head in row.chunks_exact_mut(d) {
                let (lo, hi) = head.split_at_mut(half);
                for i in 0..half {
                    let (a, b) = (lo[i], hi[i]);
                    lo[i] = a * c[i] - b * s[i];
                    hi[i] = b * c[i] + a * s[i];
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_fast_is_within_a_few_ulp() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (exp_fast(x), x.exp());
            let rel = ((a - b) / b).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 4.0 * f32::EPSILON, "worst relative error {worst}");
        assert!(exp_fast(-200.0) < 1e-37);
    }

    /// `exp_fast` as first written, with `f32::round` and a saturating cast.
    fn exp_fast_reference(x: f32) -> f32 {
        const LOG2E: f32 = std::f32::consts::LOG2_E;
        let x = x.clamp(-87.3, 88.7);
        let n = (x * LOG2E).round();
        let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
        let mut p = 1.987_569_1e-4;
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ] {
            p = p * r + c;
        }
        let er = 1.0 + r + r * r * p;
        let n = n as i32;
        let (n1, n2) = (n / 2, n - n / 2);
        er * f32::from_bits(((n1 + 127) as u32) << 23) * f32::from_bits(((n2 + 127) as u32) << 23)
    }

    /// Every f32 with |y| ≤ 256 (all that `exp_fast` rounds, and more): the same bits as
    /// `f32::round`, and the integer equal to it.
    #[test]
    fn round_half_away_is_f32_round() {
        let top = 256f32.to_bits();
        let bad: u64 = (0..=top)
            .into_par_iter()
            .map(|b| {
                let mut bad = 0;
                for y in [f32::from_bits(b), -f32::from_bits(b)] {
                    let (n, ni) = round_half_away(y);
                    if n.to_bits() != y.round().to_bits() || ni != y.round() as i32 {
                        bad += 1;
                    }
                }
                bad
            })
            .sum();
        assert_eq!(bad, 0);
        assert_eq!(round_half_away(f32::NAN), (0.0, 0));
    }

    /// The vectorisable `exp_fast` is the first one bit for bit: every 61st f32 bit pattern,
    /// the specials, and through [`super::super::wide::wide`] (the AVX-512 copy where the CPU
    /// has it) on the same inputs.
    #[test]
    fn exp_fast_is_the_reference_bit_for_bit() {
        let xs: Vec<f32> = (0..=u32::MAX)
            .step_by(61)
            .map(f32::from_bits)
            .chain([
                0.0,
                -0.0,
                f32::INFINITY,
                f32::NEG_INFINITY,
                -87.3,
                88.7,
                0.5,
                -0.5,
            ])
            .collect();
        let same = |a: f32, b: f32| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
        let want: Vec<f32> = xs.par_iter().map(|&x| exp_fast_reference(x)).collect();
        let got: Vec<f32> = xs.par_iter().map(|&x| exp_fast(x)).collect();
        assert!(want.iter().zip(&got).all(|(&a, &b)| same(a, b)));
        let mut wide = xs.clone();
        wide.par_chunks_mut(1 << 14).for_each(|c| {
            super::super::wide::wide(|| c.iter_mut().for_each(|x| *x = exp_fast(*x)))
        });
        assert!(want.iter().zip(&wide).all(|(&a, &b)| same(a, b)));
        assert!(exp_fast(f32::NAN).is_nan());
    }

    #[test]
    fn tanh_fast_absolute_error() {
        let mut worst = 0f32;
        let mut x = -12.0f32;
        while x < 12.0 {
            worst = worst.max((tanh_fast(x) - x.tanh()).abs());
            x += 0.00371;
        }
        assert!(worst < 2e-7, "worst absolute error {worst}");
        assert_eq!(tanh_fast(0.0), 0.0);
        assert!((tanh_fast(-1e-3) + 1e-3).abs() < 1e-6);
    }
}

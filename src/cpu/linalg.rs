//! Dense f64 linear algebra for scoring and repair: Cholesky, SPD inverse, GEMM. Matrices are
//! row-major `[n, n]` slices. Sizes are the MLP width (2k–37k), so the O(n³) steps run on all
//! cores; results do not depend on the thread count (every reduction has a fixed order).

use crate::cpu::gemm::{gemm, Parallelism, View, ViewMut};
use rayon::prelude::*;

/// Where the dense f64 linear algebra of OBS scoring and repair runs: the host (the reference)
/// or the GPU that ran the calibration (src/cuda/linalg.rs; same results up to rounding).
#[derive(Clone, Default)]
pub enum Solver {
    #[default]
    Cpu,
    #[cfg(feature = "cuda")]
    Cuda(std::sync::Arc<crate::cuda::Gpu>),
}

impl Solver {
    pub fn name(&self) -> &'static str {
        match self {
            Solver::Cpu => "cpu",
            #[cfg(feature = "cuda")]
            Solver::Cuda(_) => "cuda",
        }
    }
}

/// `c[m,n] = a[m,k] · b[k,n]` (row-major, f64), multi-threaded.
pub fn matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    assert_eq!(a.len(), m * k);
    assert_eq!(b.len(), k * n);
    let mut c = vec![0f64; m * n];
    if m == 0 || n == 0 {
        return c;
    }
    gemm(
        ViewMut::rows(&mut c, m, n, n),
        View::rows(a, m, k, k),
        View::rows(b, k, n, n),
        None,
        1.0,
        Parallelism::Rayon(rayon::current_num_threads()),
    );
    c
}

/// `c[m, n] (row stride ldc) = beta·c + alpha·a·b` on strided views: element (i, p) of `a` at
/// `a[i·a_rs + p·a_cs]`, (p, j) of `b` at `b[p·b_rs + j·b_cs]`.
///
/// # Safety
/// Every addressed element of `a`, `b` and `c` must be in bounds, and `c` must not overlap `a`
/// or `b`.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_strided(
    m: usize,
    n: usize,
    k: usize,
    c: *mut f64,
    ldc: usize,
    a: *const f64,
    a_rs: usize,
    a_cs: usize,
    b: *const f64,
    b_rs: usize,
    b_cs: usize,
    alpha: f64,
    beta: f64,
) {
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: forwarded from this function's contract (gemm's alpha scales dst, beta the
    // product).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c,
            1,
            ldc as isize,
            alpha != 0.0,
            a,
            a_cs as isize,
            a_rs as isize,
            b,
            b_cs as isize,
            b_rs as isize,
            alpha,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(rayon::current_num_threads()),
        )
    }
}

/// Block size of the blocked factorisations: large enough that the trailing GEMMs run near peak,
/// small enough that the unblocked diagonal work stays a small share.
const NB: usize = 128;

/// In-place Cholesky `A = L·Lᵀ`; on return the lower triangle holds L and the upper triangle is
/// zeroed. Fails with the pivot index when A is not positive definite.
///
/// Blocked right-looking: factor a diagonal block, solve the panel below it, subtract the panel's
/// outer product from the trailing matrix with one GEMM (2·n³/3 flops at GEMM speed instead of
/// n³/3 memory-bound dot products).
pub fn cholesky(a: &mut [f64], n: usize) -> Result<(), usize> {
    assert_eq!(a.len(), n * n);
    for k0 in (0..n).step_by(NB) {
        let k1 = (k0 + NB).min(n);
        let nb = k1 - k0;
        // Diagonal block, unblocked (its earlier columns are already subtracted).
        for j in k0..k1 {
            let (head, tail) = a.split_at_mut((j + 1) * n);
            let row_j = &mut head[j * n..];
            let d = row_j[j] - dot(&row_j[k0..j], &row_j[k0..j]);
            if d.is_nan() || d <= 0.0 || !d.is_finite() {
                return Err(j);
            }
            let ljj = d.sqrt();
            row_j[j] = ljj;
            let row_j = &*row_j;
            for row_i in tail.chunks_mut(n).take(k1 - j - 1) {
                row_i[j] = (row_i[j] - dot(&row_i[k0..j], &row_j[k0..j])) / ljj;
            }
        }
        // Panel: L[k1.., k0..k1] = A[k1.., k0..k1]·L_kk⁻ᵀ, one row at a time (rows independent).
        let (top, below) = a.split_at_mut(k1 * n);
        let lkk = &top[k0 * n..]; // rows k0..k1
        below.par_chunks_mut(n).for_each(|row_i| {
            for j in k0..k1 {
                let lj = &lkk[(j - k0) * n..];
                row_i[j] = (row_i[j] - dot(&row_i[k0..j], &lj[k0..j])) / lj[j];
            }
        });
        // Trailing update: A[k1.., k1..] -= P·Pᵀ with P = L[k1.., k0..k1] (the full square;
        // only the lower triangle is read later).
        let m = n - k1;
        if m > 0 {
            let base = below.as_mut_ptr();
            // SAFETY: k0 < k1 ≤ n ≤ below.len() (m > 0 rows of n).
            let (p, c) = unsafe { (base.add(k0) as *const f64, base.add(k1)) };
            let pt = p; // Pᵀ: element (q, j) = P[j, q]
                        // SAFETY: P spans rows k1..n, columns k0..k1 of `below` ([m, n] from column 0), C
                        // rows k1..n, columns k1..n: disjoint column ranges of the same rows, so C does not
                        // overlap P; every index is < m·n. gemm reads P through raw pointers only.
            unsafe { gemm_strided(m, m, nb, c, n, p, n, 1, pt, 1, n, 1.0, -1.0) };
        }
    }
    // Zero the upper triangle.
    for i in 0..n {
        a[i * n + i + 1..(i + 1) * n].fill(0.0);
    }
    Ok(())
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    // Four independent partial sums: vectorises, and the order is fixed.
    let mut s = [0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..4 {
            s[i] += x[i] * y[i];
        }
    }
    let mut t = (s[0] + s[1]) + (s[2] + s[3]);
    for (x, y) in ra.iter().zip(rb) {
        t += x * y;
    }
    t
}

/// Inverse of a lower-triangular matrix (row-major), returned lower-triangular.
///
/// Blocked by rows of blocks: with X = L⁻¹, block row i is
/// X[i, ..i0] = −L_ii⁻¹·(L[i, ..i0]·X[..i0, ..i0]) and X[i, i] = L_ii⁻¹ (unblocked), so nearly all
/// the work is two GEMMs per block row.
fn tri_lower_inverse(l: &[f64], n: usize) -> Vec<f64> {
    let mut x = vec![0f64; n * n];
    let mut t = vec![0f64; NB * n]; // [nb, i0] scratch
    for i0 in (0..n).step_by(NB) {
        let i1 = (i0 + NB).min(n);
        let nb = i1 - i0;
        // X_ii = L_ii⁻¹, column by column (forward substitution), into x's diagonal block.
        let mut d = vec![0f64; nb * nb]; // [nb, nb]
        for j in 0..nb {
            d[j * nb + j] = 1.0 / l[(i0 + j) * n + i0 + j];
            for r in j + 1..nb {
                let row = &l[(i0 + r) * n + i0..];
                let mut s = 0.0;
                for q in j..r {
                    s += row[q] * d[q * nb + j];
                }
                d[r * nb + j] = -s / row[r];
            }
        }
        for r in 0..nb {
            x[(i0 + r) * n + i0..(i0 + r) * n + i1].copy_from_slice(&d[r * nb..(r + 1) * nb]);
        }
        if i0 == 0 {
            continue;
        }
        // T = L[i, ..i0]·X[..i0, ..i0] ([nb, i0]); X[i, ..i0] = −X_ii·T.
        let (done, rest) = x.split_at_mut(i0 * n);
        // SAFETY: L rows i0..i1, columns ..i0 and X rows ..i0 (`done`) are read; T is a separate
        // buffer of nb·n ≥ nb·i0 elements with row stride i0.
        unsafe {
            gemm_strided(
                nb,
                i0,
                i0,
                t.as_mut_ptr(),
                i0,
                l[i0 * n..].as_ptr(),
                n,
                1,
                done.as_ptr(),
                n,
                1,
                0.0,
                1.0,
            )
        };
        // SAFETY: X_ii is the separate `d`, T is read with row stride i0, the result goes into
        // X rows i0..i1, columns ..i0 of `rest` (row stride n), which neither overlaps.
        unsafe {
            gemm_strided(
                nb,
                i0,
                nb,
                rest.as_mut_ptr(),
                n,
                d.as_ptr(),
                nb,
                1,
                t.as_ptr(),
                i0,
                1,
                0.0,
                -1.0,
            )
        };
    }
    x
}

/// Inverse of a symmetric positive-definite matrix via Cholesky: `A⁻¹ = L⁻ᵀ L⁻¹`.
pub fn spd_inverse(a: &[f64], n: usize) -> Result<Vec<f64>, usize> {
    let mut l = a.to_vec();
    cholesky(&mut l, n)?;
    let li = tri_lower_inverse(&l, n); // X = L⁻¹, lower-triangular
                                       // (XᵀX)[i, j] = Σ_{k ≥ max(i, j)} X[k, i]·X[k, j]: per block row i0..i1, the columns from
                                       // i0 on over k from i0 on (rows above i0 of X are zero in these columns), one GEMM each —
                                       // n³/3 multiply-adds instead of n³ — then the lower triangle mirrored from the upper.
    let mut out = vec![0f64; n * n];
    for i0 in (0..n).step_by(INV_BLOCK) {
        let rows = INV_BLOCK.min(n - i0);
        // SAFETY: Xᵀ rows i0..i0+rows are X's columns, read from `li` [n, n] at (k, i) =
        // li[k·n + i] for k ≥ i0, i < n; X's columns i0..n likewise; the result goes to rows
        // i0..i0+rows, columns i0..n of the fresh `out` [n, n].
        unsafe {
            gemm_strided(
                rows,
                n - i0,
                n - i0,
                out[i0 * n + i0..].as_mut_ptr(),
                n,
                li[i0 * n + i0..].as_ptr(),
                1,
                n,
                li[i0 * n + i0..].as_ptr(),
                n,
                1,
                0.0,
                1.0,
            )
        };
    }
    for i in 0..n {
        for j in 0..i / INV_BLOCK * INV_BLOCK {
            out[i * n + j] = out[j * n + i];
        }
    }
    Ok(out)
}

/// Block rows of `spd_inverse`'s product.
const INV_BLOCK: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    fn spd(n: usize) -> Vec<f64> {
        let mut s = crate::rng::XorShift64::new(12345);
        let mut r = || s.next_f64() - 0.5;
        let x: Vec<f64> = (0..n * (n + 3)).map(|_| r()).collect();
        // XᵀX over n+3 samples plus a small ridge: SPD and reasonably conditioned.
        let mut a = vec![0f64; n * n];
        for row in x.chunks_exact(n) {
            for i in 0..n {
                for j in 0..n {
                    a[i * n + j] += row[i] * row[j];
                }
            }
        }
        for i in 0..n {
            a[i * n + i] += 0.1;
        }
        a
    }

    #[test]
    fn inverse_times_matrix_is_identity() {
        for n in [1, 2, 7, 33, 130, 128, 257, 300] {
            let a = spd(n);
            let inv = spd_inverse(&a, n).unwrap();
            let p = matmul(&a, &inv, n, n, n);
            for i in 0..n {
                for j in 0..n {
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!(
                        (p[i * n + j] - want).abs() < 1e-8,
                        "n={n} [{i},{j}] = {}",
                        p[i * n + j]
                    );
                }
            }
        }
    }

    #[test]
    fn blocked_cholesky_reconstructs_and_zeroes_the_upper_triangle() {
        for n in [5, 128, 129, 300] {
            let a = spd(n);
            let mut l = a.clone();
            cholesky(&mut l, n).unwrap();
            for i in 0..n {
                for j in 0..n {
                    if j > i {
                        assert_eq!(l[i * n + j], 0.0, "n={n} upper [{i},{j}]");
                    }
                    let s: f64 = (0..=i.min(j)).map(|q| l[i * n + q] * l[j * n + q]).sum();
                    assert!(
                        (s - a[i * n + j]).abs() < 1e-9 * (1.0 + a[i * n + j].abs()),
                        "n={n} (LLᵀ)[{i},{j}] = {s} vs {}",
                        a[i * n + j]
                    );
                }
            }
            let li = tri_lower_inverse(&l, n);
            for i in 0..n {
                for j in 0..n {
                    let s: f64 = (0..n).map(|q| l[i * n + q] * li[q * n + j]).sum();
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!((s - want).abs() < 1e-9, "n={n} (L·L⁻¹)[{i},{j}] = {s}");
                }
            }
        }
    }

    #[test]
    fn indefinite_past_the_first_block_names_its_pivot() {
        let n = 200;
        let mut a = spd(n);
        a[150 * n + 150] = -1.0;
        assert_eq!(cholesky(&mut a, n), Err(150));
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let n = 300; // three blocks, the last ragged
        let a = spd(n);
        let run = |threads| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| spd_inverse(&a, n).unwrap())
        };
        let one = run(1);
        for t in [2, 3, 8] {
            assert!(
                one.iter()
                    .zip(run(t))
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "spd_inverse differs between 1 and {t} threads"
            );
        }
    }

    #[test]
    fn cholesky_rejects_indefinite() {
        let mut a = vec![1.0, 2.0, 2.0, 1.0];
        assert_eq!(cholesky(&mut a, 2), Err(1));
    }
}

//! Dense f64 linear algebra for scoring and repair: Cholesky, SPD inverse, GEMM. Matrices are
//! row-major `[n, n]` slices. Sizes are the MLP width (2k–37k), so the O(n³) steps run on all
//! cores; results do not depend on the thread count (every reduction has a fixed order).

use rayon::prelude::*;

/// `c[m,n] = a[m,k] · b[k,n]` (row-major, f64), multi-threaded.
pub fn matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    assert_eq!(a.len(), m * k);
    assert_eq!(b.len(), k * n);
    let mut c = vec![0f64; m * n];
    if m == 0 || n == 0 {
        return c;
    }
    // SAFETY: lengths checked above; c is a fresh buffer distinct from a and b.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(rayon::current_num_threads()),
        )
    }
    c
}

/// In-place Cholesky `A = L·Lᵀ`; on return the lower triangle holds L and the upper triangle is
/// zeroed. Fails with the pivot index when A is not positive definite.
pub fn cholesky(a: &mut [f64], n: usize) -> Result<(), usize> {
    assert_eq!(a.len(), n * n);
    for j in 0..n {
        let (head, tail) = a.split_at_mut((j + 1) * n);
        let row_j = &mut head[j * n..];
        let d = row_j[j] - dot(&row_j[..j], &row_j[..j]);
        if d.is_nan() || d <= 0.0 || !d.is_finite() {
            return Err(j);
        }
        let ljj = d.sqrt();
        row_j[j] = ljj;
        row_j[j + 1..].fill(0.0);
        let row_j = &*row_j;
        tail.par_chunks_mut(n).for_each(|row_i| {
            row_i[j] = (row_i[j] - dot(&row_i[..j], &row_j[..j])) / ljj;
        });
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
fn tri_lower_inverse(l: &[f64], n: usize) -> Vec<f64> {
    // Column j of L⁻¹ solves L x = e_j; columns are independent.
    let cols: Vec<Vec<f64>> = (0..n)
        .into_par_iter()
        .map(|j| {
            let mut x = vec![0f64; n];
            x[j] = 1.0 / l[j * n + j];
            for i in j + 1..n {
                let row = &l[i * n..i * n + i];
                let s = dot(&row[j..i], &x[j..i]);
                x[i] = -s / l[i * n + i];
            }
            x
        })
        .collect();
    let mut inv = vec![0f64; n * n];
    for (j, c) in cols.iter().enumerate() {
        for i in j..n {
            inv[i * n + j] = c[i];
        }
    }
    inv
}

/// Inverse of a symmetric positive-definite matrix via Cholesky: `A⁻¹ = L⁻ᵀ L⁻¹`.
pub fn spd_inverse(a: &[f64], n: usize) -> Result<Vec<f64>, usize> {
    let mut l = a.to_vec();
    cholesky(&mut l, n)?;
    let li = tri_lower_inverse(&l, n);
    let mut lit = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..n {
            lit[j * n + i] = li[i * n + j];
        }
    }
    Ok(matmul(&lit, &li, n, n, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spd(n: usize) -> Vec<f64> {
        let mut s = 12345u64;
        let mut r = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
            ((s >> 11) as f64 / (1u64 << 53) as f64) - 0.5
        };
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
        for n in [1, 2, 7, 33, 130] {
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
    fn cholesky_rejects_indefinite() {
        let mut a = vec![1.0, 2.0, 2.0, 1.0];
        assert_eq!(cholesky(&mut a, 2), Err(1));
    }
}

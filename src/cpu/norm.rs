//! RMSNorm with either weight convention ([`NormWeight`]). Gemma's `(1 + w)` is
//! [`super::ops::rms_norm_row`] itself, so its arithmetic is untouched; the Llama family's plain
//! `w` is LlamaRMSNorm's `w · (x · rsqrt(mean(x²) + eps))`, here with the same `1 / sqrt` and
//! summation order as Gemma's (transformers' fp32 path multiplies before any downcast).

use super::ops;
use crate::checkpoint::config::NormWeight;
use rayon::prelude::*;

/// Rows whose sums of squares run side by side in [`rms_norm`]: each row's sum is still one
/// sequential chain in its own order (the bits of [`rms_norm_row`]), but eight independent
/// chains keep the FP adders busy where one waits on each add's latency.
const GROUP: usize = 8;

/// In place on every row of `x` ([rows, w.len()]); each row exactly as [`rms_norm_row`].
pub fn rms_norm(x: &mut [f32], w: &[f32], eps: f32, convention: NormWeight) {
    let d = w.len();
    assert!(d > 0 && x.len() % d == 0, "rms_norm: x is not [rows, {d}]");
    let rows_per_task = ((1 << 14) / d).max(1).next_multiple_of(GROUP);
    x.par_chunks_mut(d * rows_per_task).for_each(|rows| {
        let mut groups = rows.chunks_exact_mut(d * GROUP);
        for g in &mut groups {
            let r = inv_rms_group(g, d, eps); // [GROUP]
            super::wide::wide(|| {
                for (row, &r) in g.chunks_exact_mut(d).zip(&r) {
                    for (v, &g) in row.iter_mut().zip(w) {
                        *v = (*v * r) * scale(convention, g);
                    }
                }
            });
        }
        for row in groups.into_remainder().chunks_exact_mut(d) {
            rms_norm_row(row, w, eps, convention);
        }
    });
}

/// [`inv_rms`] of each of the GROUP rows of `g` ([GROUP, d]), the sums interleaved.
fn inv_rms_group(g: &[f32], d: usize, eps: f32) -> [f32; GROUP] {
    let rows: [&[f32]; GROUP] = std::array::from_fn(|r| &g[r * d..][..d]);
    let mut ss = [0f32; GROUP];
    for j in 0..d {
        for (s, row) in ss.iter_mut().zip(&rows) {
            *s += row[j] * row[j];
        }
    }
    ss.map(|s| inv_rms_of_sum(s, d, eps))
}

pub fn rms_norm_row(row: &mut [f32], w: &[f32], eps: f32, convention: NormWeight) {
    match convention {
        NormWeight::OnePlus => ops::rms_norm_row(row, w, eps),
        NormWeight::Plain => {
            let r = inv_rms(row, eps);
            for (v, &g) in row.iter_mut().zip(w) {
                *v = (*v * r) * g;
            }
        }
    }
}

/// The factor a normalised value is multiplied by for stored weight `w`.
#[inline]
pub fn scale(convention: NormWeight, w: f32) -> f32 {
    match convention {
        NormWeight::OnePlus => 1.0 + w,
        NormWeight::Plain => w,
    }
}

/// `1 / sqrt(mean(x²) + eps)`, summed in order as [`ops::rms_norm_row`] sums.
fn inv_rms(row: &[f32], eps: f32) -> f32 {
    inv_rms_of_sum(row.iter().map(|v| v * v).sum::<f32>(), row.len(), eps)
}

/// `1 / sqrt(ss / d + eps)` for a row's sum of squares `ss` over its d values.
#[inline]
fn inv_rms_of_sum(ss: f32, d: usize, eps: f32) -> f32 {
    1.0 / (ss / d as f32 + eps).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The grouped sums (eight rows interleaved) give every row the bits of `rms_norm_row`:
    /// both conventions, row counts off the group, a zero row, large and tiny values.
    #[test]
    fn grouped_rows_equal_rms_norm_row_bitwise() {
        let mut rng = crate::rng::XorShift64::new(5);
        for (rows, d) in [(1usize, 7usize), (8, 5), (13, 640), (37, 256), (40, 3)] {
            let x: Vec<f32> = (0..rows * d)
                .map(|i| {
                    let u = (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                    match (i / d, i % 11) {
                        (2, _) => 0.0,
                        (_, 0) => u * 1e18,
                        (_, 1) => u * 1e-20,
                        _ => u * 3.0,
                    }
                })
                .collect();
            let w: Vec<f32> = (0..d).map(|j| 0.1 * j as f32 - 0.3).collect();
            for convention in [NormWeight::OnePlus, NormWeight::Plain] {
                let mut got = x.clone();
                rms_norm(&mut got, &w, 1e-6, convention);
                let mut want = x.clone();
                for row in want.chunks_exact_mut(d) {
                    rms_norm_row(row, &w, 1e-6, convention);
                }
                let same = got
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "rows={rows} d={d} {convention:?}: grouped norm differs"
                );
            }
        }
    }
}

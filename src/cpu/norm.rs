//! RMSNorm with either weight convention ([`NormWeight`]). Gemma's `(1 + w)` is
//! [`super::ops::rms_norm_row`] itself, so its arithmetic is untouched; the Llama family's plain
//! `w` is LlamaRMSNorm's `w · (x · rsqrt(mean(x²) + eps))`, here with the same `1 / sqrt` and
//! summation order as Gemma's (transformers' fp32 path multiplies before any downcast).

use super::ops;
use crate::checkpoint::config::NormWeight;
use rayon::prelude::*;

/// In place on every row of `x` ([rows, w.len()]).
pub fn rms_norm(x: &mut [f32], w: &[f32], eps: f32, convention: NormWeight) {
    let d = w.len();
    assert!(d > 0 && x.len() % d == 0, "rms_norm: x is not [rows, {d}]");
    let rows_per_task = ((1 << 14) / d).max(1);
    x.par_chunks_mut(d * rows_per_task).for_each(|rows| {
        for row in rows.chunks_exact_mut(d) {
            rms_norm_row(row, w, eps, convention);
        }
    });
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
    let ss: f32 = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
    1.0 / (ss + eps).sqrt()
}

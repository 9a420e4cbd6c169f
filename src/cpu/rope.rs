//! RoPE tables for every [`RopeScaling`] variant, computed the way transformers 5.24's
//! `modeling_rope_utils.py` computes them for the Llama family, op by op in f32:
//! - `θ^(2i/d)`: torch evaluates `python_float ** f32_tensor` near-correctly-rounded, which the
//!   f64 power rounded once to f32 reproduces (f32 `powf` is off by an ulp more often);
//! - `s / t` with a Python scalar `s` is `t.reciprocal() * f32(s)` in torch; `t / s` is a true f32
//!   division by `f32(s)`; comparisons with a Python scalar compare against `f32(s)`;
//! - the yarn correction range is plain Python (f64) arithmetic;
//! - cos and sin are taken of `f32(p) · inv_freq` and multiplied by `f32(attention_factor)`.
//!
//! Gemma's engines still build their tables with [`super::ops::rope_tables`] (f32 `powf`), kept
//! so Gemma outputs stay byte-identical; its table stage is the same as [`tables_from_inv`], and
//! its inverse frequencies are within one ulp of [`inv_freq`]'s (tested).

use crate::checkpoint::config::{LayerType, ModelConfig, RopeParams, RopeScaling};
use std::f64::consts::PI;

/// `θ^(2i/d)` for i in 0..d/2, as torch computes `base ** (arange(0, d, 2).float() / d)`.
fn base_powers(d: usize, theta: f64) -> Vec<f32> {
    (0..d / 2)
        .map(|i| {
            let expo = (2 * i) as f32 / d as f32;
            (theta as f32 as f64).powf(expo as f64) as f32
        })
        .collect()
}

/// The inverse frequencies `[d/2]` of a head of size `d` and the factor cos and sin are scaled
/// by (transformers' `attention_scaling`: 1 except for yarn).
pub fn inv_freq(d: usize, p: &RopeParams) -> (Vec<f32>, f32) {
    let pos = base_powers(d, p.theta);
    let plain = || pos.iter().map(|&x| 1.0 / x).collect::<Vec<f32>>();
    match p.scaling {
        RopeScaling::Default => (plain(), 1.0),
        RopeScaling::Linear { factor } => {
            let f = factor as f32;
            (plain().into_iter().map(|x| x / f).collect(), 1.0)
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor: low,
            high_freq_factor: high,
            original_max_position_embeddings: old,
        } => (llama3(plain(), factor, low, high, old), 1.0),
        RopeScaling::Yarn {
            factor,
            attention_factor,
            beta_fast,
            beta_slow,
            original_max_position_embeddings,
            truncate,
        } => {
            let (low, high) = yarn_correction_range(
                beta_fast,
                beta_slow,
                d,
                p.theta,
                original_max_position_embeddings,
                truncate,
            );
            let f = factor as f32;
            let inv = pos
                .iter()
                .enumerate()
                .map(|(i, &x)| {
                    let extrapolation = 1.0 / x;
                    let interpolation = 1.0 / (f * x);
                    let ramp = yarn_ramp(i, low, high);
                    let extrapolation_factor = 1.0 - ramp;
                    interpolation * (1.0 - extrapolation_factor)
                        + extrapolation * extrapolation_factor
                })
                .collect();
            (inv, attention_factor as f32)
        }
    }
}

/// `_compute_llama3_parameters` on the default frequencies.
fn llama3(inv: Vec<f32>, factor: f64, low: f64, high: f64, old: f64) -> Vec<f32> {
    let (factor32, low32, old32) = (factor as f32, low as f32, old as f32);
    let low_freq_wavelen = (old / low) as f32;
    let high_freq_wavelen = (old / high) as f32;
    let two_pi = (2.0 * PI) as f32;
    inv.into_iter()
        .map(|x| {
            let wavelen = (1.0 / x) * two_pi;
            let scaled = if wavelen > low_freq_wavelen {
                x / factor32
            } else {
                x
            };
            let smooth = ((1.0 / wavelen) * old32 - low32) / ((high - low) as f32);
            let smoothed = (1.0 - smooth) * scaled / factor32 + smooth * scaled;
            // transformers' `~(w < high) * ~(w > low)`, negations kept (they differ on NaN).
            #[allow(clippy::neg_cmp_op_on_partial_ord)]
            let medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
            if medium {
                smoothed
            } else {
                scaled
            }
        })
        .collect()
}

/// Yarn's `find_correction_range`: the dimensions (in 0..d) whose rotation count over the
/// original context is `beta_fast` and `beta_slow`, in f64 as transformers computes them.
fn yarn_correction_range(
    beta_fast: f64,
    beta_slow: f64,
    d: usize,
    theta: f64,
    original_max: f64,
    truncate: bool,
) -> (f64, f64) {
    let dim = d as f64;
    let correction_dim =
        |rotations: f64| (dim * (original_max / (rotations * 2.0 * PI)).ln()) / (2.0 * theta.ln());
    let (mut low, mut high) = (correction_dim(beta_fast), correction_dim(beta_slow));
    if truncate {
        low = low.floor();
        high = high.ceil();
    }
    (low.max(0.0), high.min(dim - 1.0))
}

/// `linear_ramp_factor(low, high, d/2)[i]`: 0 below `low`, 1 above `high`, linear between.
fn yarn_ramp(i: usize, low: f64, mut high: f64) -> f32 {
    if low == high {
        high += 0.001; // transformers' guard against a zero-width ramp
    }
    ((i as f32 - low as f32) / ((high - low) as f32)).clamp(0.0, 1.0)
}

/// RoPE tables for positions `0..t`: `(cos, sin)`, each `[t, d/2]` (transformers' `cat(freqs,
/// freqs)` has equal halves), for the rotate-half [`super::ops::apply_rope`].
pub fn tables(t: usize, d: usize, p: &RopeParams) -> (Vec<f32>, Vec<f32>) {
    let (inv, scale) = inv_freq(d, p);
    tables_from_inv(t, &inv, scale)
}

/// `cos(p · inv[i]) · scale` and `sin(…) · scale` for positions `0..t`, each `[t, inv.len()]`.
pub fn tables_from_inv(t: usize, inv: &[f32], scale: f32) -> (Vec<f32>, Vec<f32>) {
    let half = inv.len();
    let mut cos = vec![0f32; t * half];
    let mut sin = vec![0f32; t * half];
    for p in 0..t {
        for (i, &f) in inv.iter().enumerate() {
            let a = p as f32 * f;
            cos[p * half + i] = a.cos() * scale;
            sin[p * half + i] = a.sin() * scale;
        }
    }
    (cos, sin)
}

/// The tables a layer of type `lt` in `cfg` rotates by, for positions `0..t` (`[t, d/2]` each).
/// Gemma keeps [`super::ops::rope_tables`] so its outputs stay byte-identical to earlier
/// releases (its frequencies are within an ulp of [`inv_freq`]'s); every other family follows
/// transformers' `rope_parameters` here.
pub fn layer_tables(cfg: &ModelConfig, t: usize, lt: LayerType) -> (Vec<f32>, Vec<f32>) {
    let (gemma, params) = match lt {
        LayerType::Full => (cfg.rope_full, cfg.rope_params_full),
        LayerType::Sliding => (cfg.rope_sliding, cfg.rope_params_sliding),
    };
    if cfg.arch.is_gemma() {
        super::ops::rope_tables(t, cfg.head_dim, gemma.theta, gemma.linear_factor)
    } else {
        tables(t, cfg.head_dim, &params)
    }
}

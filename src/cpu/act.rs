//! The Llama family's MLP activation: `silu(gate) · up`, in f32 as torch computes `F.silu`
//! (`x / (1 + e^(-x))`) followed by the elementwise product.

use crate::checkpoint::config::Activation;
use rayon::prelude::*;

/// Elements per rayon task.
const CHUNK: usize = 1 << 14;

/// `x · sigmoid(x)`, spelled as torch's CPU kernel spells it: `x / (1 + exp(-x))`. Saturates
/// cleanly: `exp(-x)` overflows to +inf for x < -88, giving -0.
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `a = silu(gate) · up`, written into `gate` (both `[rows, intermediate]`).
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "silu_mul: gate and up differ in size");
    gate.par_chunks_mut(CHUNK)
        .zip(up.par_chunks(CHUNK))
        .for_each(|(g, u)| {
            for (g, &u) in g.iter_mut().zip(u) {
                *g = silu(*g) * u;
            }
        });
}

/// The gate activation `a` of one value (decode steps, reconstruction).
#[inline]
pub fn apply(a: Activation, x: f32) -> f32 {
    match a {
        Activation::GeluTanh => super::ops::gelu_tanh(x),
        Activation::Silu => silu(x),
    }
}

/// `d apply(a, x) / dx`, beside the forward it differentiates (`compile::reconstruct`): gelu_tanh
/// through the same tanh as the forward, SiLU as `σ(x)·(1 + x·(1 − σ(x)))`.
#[inline]
pub fn grad(a: Activation, x: f32) -> f32 {
    match a {
        Activation::GeluTanh => {
            const K: f32 = 0.797_884_6; // sqrt(2/pi)
            const C: f32 = 0.044715;
            let t = super::ops::tanh_fast(K * (x + C * x * x * x));
            0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * K * (1.0 + 3.0 * C * x * x)
        }
        Activation::Silu => {
            let s = 1.0 / (1.0 + (-x).exp());
            s * (1.0 + x * (1.0 - s))
        }
    }
}

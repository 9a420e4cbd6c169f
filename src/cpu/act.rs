//! The Llama family's MLP activation: `silu(gate) · up`, in f32 as torch computes `F.silu`
//! (`x / (1 + e^(-x))`) followed by the elementwise product.

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

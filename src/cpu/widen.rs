//! bf16 bits widened to f32: exact, so a model may hold a BF16 checkpoint's bits and widen them
//! where f32 is needed.

use rayon::prelude::*;

/// bf16 bits → f32 (exact).
pub fn widen_bf16_into(x: &[u16], out: &mut [f32]) {
    assert_eq!(x.len(), out.len());
    out.par_chunks_mut(1 << 16)
        .zip(x.par_chunks(1 << 16))
        .for_each(|(o, b)| {
            for (o, &b) in o.iter_mut().zip(b) {
                *o = f32::from_bits((b as u32) << 16);
            }
        });
}

//! bf16 ↔ f32 on the CPU (the twin of kernels/convert.cu): widening is exact, so a model may hold
//! a BF16 checkpoint's bits and widen them where f32 is needed; narrowing rounds to nearest even,
//! as the GPU engine rounds.

use rayon::prelude::*;

/// bf16 bits → f32 (exact).
pub fn widen_bf16_into(x: &[u16], out: &mut [f32]) {
    assert_eq!(x.len(), out.len());
    out.par_chunks_mut(1 << 16)
        .zip(x.par_chunks(1 << 16))
        .for_each(|(o, b)| {
            for (o, &b) in o.iter_mut().zip(b) {
                *o = widen(b);
            }
        });
}

/// bf16 bits of `v`, round-to-nearest-even (NaN stays NaN, quieted), as the GPU engine rounds:
/// the bits of `half::bf16::from_f32` (tests/cpu_bf16.rs checks every class of input), without
/// its branches, so the bf16 GEMM's packing loops vectorise. Adding 0x7fff plus the kept lsb
/// carries into the upper half exactly when the dropped half is above the midpoint, or at it
/// with an odd lsb; no finite or infinite value overflows the u32.
#[inline]
pub fn round_bits(v: f32) -> u16 {
    let x = v.to_bits();
    let rounded = x.wrapping_add(0x7fff + ((x >> 16) & 1)) >> 16;
    let quiet_nan = (x >> 16) | 0x40;
    (if x & 0x7fff_ffff > 0x7f80_0000 {
        quiet_nan
    } else {
        rounded
    }) as u16
}

/// f32 values rounded to bf16 (`round_bits`), for upload to the GPU engine.
pub fn to_bf16(x: &[f32]) -> Vec<half::bf16> {
    x.iter().map(|&v| half::bf16::from_f32(v)).collect()
}

/// bf16 bits → f32, exact. Not `half::bf16::to_f32`: that sets the quiet bit of a signalling
/// NaN (so a corrupt weight would not keep its bits) and its NaN branch keeps the widening loops
/// of the GEMV and the loaders from vectorizing.
#[inline(always)]
pub fn widen(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

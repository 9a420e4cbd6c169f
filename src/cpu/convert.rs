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

/// bf16 bits → f32 with a denormal read as a zero of its sign: the DAZ of `vdpbf16ps` and
/// `tdpbf16ps`, for the scalar models of the bf16 GEMM kernels.
pub fn widen_daz(b: u16) -> f32 {
    widen(if b & 0x7f80 == 0 { b & 0x8000 } else { b })
}

/// A denormal f32 flushed to a zero of its sign: those instructions' FTZ.
pub fn ftz(v: f32) -> f32 {
    if v.is_subnormal() {
        0f32.copysign(v)
    } else {
        v
    }
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

/// A row as the bf16 GEMM's k-pairs: `out[p] = round_bits(x[2p]) | round_bits(x[2p+1]) << 16`
/// for p < out.len(), a missing `x[2p+1]` (odd length) read as zero. `out.len()` must be
/// `x.len().div_ceil(2)`. AVX-512 where the CPU has it, the same bits either way.
pub fn round_pairs(x: &[f32], out: &mut [u32]) {
    assert_eq!(
        out.len(),
        x.len().div_ceil(2),
        "round_pairs: out is not [x.len()/2]"
    );
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F; lengths checked above.
        return unsafe { simd::round_pairs(x, out) };
    }
    for (o, pair) in out.iter_mut().zip(x.chunks(2)) {
        let hi = pair.get(1).map_or(0, |&v| round_bits(v) as u32);
        *o = round_bits(pair[0]) as u32 | hi << 16;
    }
}

/// Two rows zipped as k-pairs (the Gram's token pairs): `out[c] = round_bits(lo[c]) |
/// round_bits(hi[c]) << 16`, `hi` absent read as zeros. Slices of one length. AVX-512 where the
/// CPU has it, the same bits either way.
pub fn round_zip(lo: &[f32], hi: Option<&[f32]>, out: &mut [u32]) {
    assert_eq!(
        out.len(),
        lo.len(),
        "round_zip: out and lo differ in length"
    );
    assert!(
        hi.is_none_or(|h| h.len() == lo.len()),
        "round_zip: hi and lo differ in length"
    );
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F; lengths checked above.
        return unsafe { simd::round_zip(lo, hi, out) };
    }
    match hi {
        Some(hi) => {
            for ((o, &l), &h) in out.iter_mut().zip(lo).zip(hi) {
                *o = round_bits(l) as u32 | (round_bits(h) as u32) << 16;
            }
        }
        None => {
            for (o, &l) in out.iter_mut().zip(lo) {
                *o = round_bits(l) as u32;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    /// `round_bits` of 16 lanes (f32 bits in, bf16 bits in the low half of each lane out).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn round16(v: __m512i) -> __m512i {
        let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(v), _mm512_set1_epi32(1));
        let biased = _mm512_add_epi32(v, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
        let rounded = _mm512_srli_epi32::<16>(biased);
        let quiet_nan = _mm512_or_si512(_mm512_srli_epi32::<16>(v), _mm512_set1_epi32(0x40));
        let abs = _mm512_and_si512(v, _mm512_set1_epi32(0x7fff_ffff));
        let nan = _mm512_cmpgt_epu32_mask(abs, _mm512_set1_epi32(0x7f80_0000));
        _mm512_mask_blend_epi32(nan, rounded, quiet_nan)
    }

    /// Lanes `0..n` (n ≤ 16) of `p`, zeros past them.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load(p: *const f32, n: usize) -> __m512i {
        if n >= 16 {
            _mm512_loadu_si512(p as *const __m512i)
        } else {
            _mm512_maskz_loadu_epi32(((1u32 << n) - 1) as __mmask16, p as *const i32)
        }
    }

    /// # Safety
    /// AVX-512F; `out.len() == x.len().div_ceil(2)`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn round_pairs(x: &[f32], out: &mut [u32]) {
        let (k, o) = (x.len(), out.as_mut_ptr() as *mut u16);
        // 16 values → 16 bf16 = 8 pairs in order; an odd k's last pair gets a zero high half
        // from the zeroed lane past the end.
        let mut i = 0;
        while i < k {
            let n = (k - i).min(16);
            let r = round16(load(x.as_ptr().add(i), n));
            let lanes = n.next_multiple_of(2); // whole pairs
            _mm512_mask_cvtepi32_storeu_epi16(
                o.add(i) as *mut i16,
                ((1u32 << lanes) - 1) as __mmask16,
                r,
            );
            i += 16;
        }
    }

    /// # Safety
    /// AVX-512F; `lo`, `out` (and `hi`) of one length.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn round_zip(lo: &[f32], hi: Option<&[f32]>, out: &mut [u32]) {
        let w = lo.len();
        let mut c = 0;
        while c < w {
            let n = (w - c).min(16);
            let l = round16(load(lo.as_ptr().add(c), n));
            let v = match hi {
                Some(h) => _mm512_or_si512(
                    l,
                    _mm512_slli_epi32::<16>(round16(load(h.as_ptr().add(c), n))),
                ),
                None => l,
            };
            let dst = out.as_mut_ptr().add(c) as *mut i32;
            if n == 16 {
                _mm512_storeu_si512(dst as *mut __m512i, v);
            } else {
                _mm512_mask_storeu_epi32(dst, ((1u32 << n) - 1) as __mmask16, v);
            }
            c += 16;
        }
    }
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

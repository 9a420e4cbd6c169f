//! Elementwise loops at the CPU's full vector width. The crate is built for baseline x86-64
//! (SSE2: 4 f32 lanes) so one binary runs on any x86 server; a loop run through [`wide`] is
//! compiled a second time with AVX-512 enabled and that copy is taken where the CPU has it (16
//! lanes: `exp_fast` over a row of logits 6× faster on Zen 5). Each lane performs the same IEEE
//! operations in the same order as the scalar loop — Rust neither reassociates nor contracts
//! into FMA — so the results are the same bits; only the number of lanes changes. Reductions
//! stay sequential (a float sum is not reassociated), so loops that sum keep the sum in a pass
//! of its own and let the elementwise work vectorize.

/// Whether [`wide`] takes its AVX-512 copy.
pub fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Runs `f` compiled for AVX-512 where the CPU has it, else as built. `f`'s body is inlined
/// into the feature-enabled frame (a closure called once), so loops written directly in it
/// vectorize wider; functions it calls keep their own code unless `#[inline(always)]`.
#[inline(always)]
pub fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        #[target_feature(enable = "avx512f")]
        unsafe fn run<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: the CPU has AVX-512F (checked above), the only feature `run` enables.
        return unsafe { run(f) };
    }
    f()
}

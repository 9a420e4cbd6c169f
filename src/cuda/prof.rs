//! NVTX ranges for Nsight Systems (cargo feature `nvtx`); without the feature they compile to
//! nothing. `let _r = range("layer 3");` marks the guard's lifetime.

/// Ends its range when dropped.
#[must_use = "the range ends when this guard is dropped"]
pub struct Range(());

#[cfg(feature = "nvtx")]
pub fn range(name: impl std::fmt::Display) -> Range {
    nvtx::range_push!("{}", name);
    Range(())
}

#[cfg(not(feature = "nvtx"))]
#[inline(always)]
pub fn range(_name: impl std::fmt::Display) -> Range {
    Range(())
}

impl Drop for Range {
    #[inline(always)]
    fn drop(&mut self) {
        #[cfg(feature = "nvtx")]
        nvtx::range_pop!();
    }
}

//! KV-cache slot arithmetic shared by the CPU decoder (`crate::cpu::decode`) and the GPU one
//! (`crate::cuda::GpuDecoder` and its launchers): how many slots a layer's cache has, which slot a
//! position lives in, and which positions a query sees. Pure functions of positions and windows,
//! so both engines lay out and walk their caches identically.

/// Slots per KV head of a layer's cache and whether they form a ring (`crate::cpu::decode`'s module
/// docs): `(W, true)` for a sliding layer whose window W is below `max_len`, else `(max_len, false)`.
/// The GPU decoder (`cuda::GpuDecoder`) lays its cache out with the same function.
pub fn layer_slots(window: Option<usize>, max_len: usize) -> (usize, bool) {
    match window {
        Some(w) if w < max_len => (w, true),
        _ => (max_len, false),
    }
}

/// The slot position `pos` is stored in.
#[inline]
pub fn slot_of(pos: usize, slots: usize, ring: bool) -> usize {
    if ring {
        pos % slots
    } else {
        pos
    }
}

/// The keys a query at position `pos` sees: `(lo, n)` = positions `lo..lo + n` (`lo + n = pos + 1`),
/// the last `window` positions up to and including `pos` (all of them without a window).
#[inline]
pub fn visible_range(pos: usize, window: Option<usize>) -> (usize, usize) {
    let lo = match window {
        Some(w) => (pos + 1).saturating_sub(w),
        None => 0,
    };
    (lo, pos + 1 - lo)
}

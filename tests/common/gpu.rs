//! Helpers shared by the GPU tests (tests/cuda_*.rs), included with `#[path]` so the CPU-only
//! test helpers in `common/mod.rs` stay free of CUDA types.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use whittle::cuda::Gpu;
use whittle::model::Batch;

/// The repository root: `WHITTLE_ROOT` when set (the GPU machine runs prebuilt test binaries
/// from another checkout path), else the crate root.
pub fn root() -> PathBuf {
    std::env::var_os("WHITTLE_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// One GPU for the whole test binary, synchronising after every launch so an asynchronous
/// fault names its kernel.
pub fn gpu() -> Arc<Gpu> {
    static G: OnceLock<Arc<Gpu>> = OnceLock::new();
    G.get_or_init(|| {
        let g = Gpu::new(0).unwrap_or_else(|e| panic!("these tests need a GPU: {e}"));
        g.set_sync(true);
        eprintln!("testing on {}", g.info);
        Arc::new(g)
    })
    .clone()
}

/// BOS then pseudo-random ids, per sequence.
pub fn ids(vocab: usize, batch: Batch, bos: u32, seed: u64) -> Vec<u32> {
    let mut s = seed | 1;
    let mut v = Vec::with_capacity(batch.rows());
    for _ in 0..batch.n_seq {
        v.push(bos);
        for _ in 1..batch.seq_len {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            v.push((s % vocab as u64) as u32);
        }
    }
    v
}

//! whittle: compile a Gemma-2 / Gemma-3 transformer into a smaller dense Hugging Face checkpoint.
//!
//! Module map (docs/layout.md has the same map with the tests that cover each part):
//! - `checkpoint` — what a model folder holds: config.json as data (`config`), the one list of
//!   tensors (`registry`), memory-mapped safetensors, the tokenizer and chat template
//! - `layer`      — `Layer<M, V>`: one decoder layer's tensors in any storage, one slot per registry entry
//! - `engine`     — the interfaces between engines and their drivers (`Batch`, `Observer`,
//!   `LogitModel`, `Engine` / `Decode`, the calibration layer handle, the device Gram)
//! - `cpu`        — the CPU engine, the reference: ops, GEMM/GEMV, attention, the forward pass
//!   (`cpu::model`), KV-cache decoding (`cpu::decode`), f64 linear algebra (`cpu::linalg`)
//! - `cuda`       — the CUDA engine, its twin (feature `cuda`)
//! - `device`     — `--device auto|cpu|cuda[:N]`: which engine runs, chosen in one place
//! - `compile`    — the pipeline: plan, calibration set and statistics (`calib`), scores and
//!   re-fit (`prune`), width policy (`width`), quality ceiling search (`ceiling`), report, writer,
//!   parameter counts (`inspect`)
//! - `serve`      — running a model: perplexity / KL (`eval`), zero-shot tasks (`tasks`),
//!   generation (`generate`), serving benchmark (`bench`)
//! - `rng`, `mem`, `error` — seeded generators, heap accounting, the library's error type

pub mod checkpoint;
pub mod compile;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod device;
pub mod engine;
pub mod error;
pub mod layer;
pub mod mem;
pub mod rng;
pub mod serve;

pub use error::{Error, Result};

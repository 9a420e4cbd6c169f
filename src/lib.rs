//! whittle: compile a Gemma-2 / Gemma-3 transformer into a smaller dense Hugging Face checkpoint.
//!
//! Module map:
//! - `config`      — config.json as data, every Gemma quirk a field
//! - `registry`    — the one list of checkpoint tensors (name, shape, role)
//! - `layer`       — `Layer<M, V>`: one decoder layer's tensors in any storage, one slot per registry entry
//! - `safetensors` — memory-mapped, validated safetensors reading
//! - `tokenizer`   — tokenizer.json and text-file reading
//! - `cpu`         — reference ops (f32, rayon)
//! - `model`       — the CPU forward pass (the oracle)
//! - `eval`        — perplexity / KL / top-1 protocol
//! - `tasks`       — zero-shot tasks (ARC, HellaSwag, PIQA, LAMBADA) with lm-eval conventions
//! - `calib`       — calibration tokens, activation statistics, the layer backend trait
//! - `prune`       — neuron scores (magnitude, energy, OBS) and the least-squares repair
//! - `linalg`      — f64 Cholesky / SPD inverse / GEMM
//! - `mem`         — heap accounting (peak heap in reports)
//! - `writer`      — streaming, atomic checkpoint writer
//! - `width`       — the MLP width policy (tiers, keep ratio, rounding multiple)
//! - `compile`     — the compile plan (`CompileOptions::validate`) and pipeline
//! - `report`      — the typed compile report (whittle_report.json)
//! - `rng`         — the seeded generators (sampling, synthetic test inputs)
//! - `inspect`     — parameter and byte counts
//! - `engine`      — what the engines hand their drivers (the calibration layer handle)
//! - `device`      — `--device auto|cpu|cuda[:N]`: GPU or CPU for eval and compile
//! - `decode`      — KV-cache prefill / single-token decode, sampling
//! - `generate`    — prompt formatting, stop tokens, the generation loop, streaming text
//! - `bench`       — serving benchmark (prefill tok/s, TTFT, decode tok/s)

pub mod bench;
pub mod calib;
pub mod ceiling;
pub mod chat;
pub mod compile;
pub mod config;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod decode;
pub mod device;
pub mod engine;
pub mod error;
pub mod eval;
pub mod generate;
pub mod inspect;
pub mod layer;
pub mod linalg;
pub mod mem;
pub mod model;
pub mod prune;
pub mod registry;
pub mod report;
pub mod rng;
pub mod safetensors;
pub mod tasks;
pub mod tokenizer;
pub mod width;
pub mod writer;

pub use error::{Error, Result};

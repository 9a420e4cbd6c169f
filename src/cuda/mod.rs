//! The GPU path (cargo feature `cuda`, on by default): bf16 kernels from kernels/*.cu compiled by
//! build.rs into one embedded fatbin, driven through cudarc's driver API with the driver loaded at
//! run time, so a binary built with the feature still starts (and runs on the CPU) where there is
//! no NVIDIA driver.
//!
//! Module map:
//! - `device` — `probe` / `is_available` (never panic); `--device` is resolved in `crate::device`
//! - `gpu`    — `Gpu` (context, stream, module, function cache), `DTensor` device buffers
//! - `ops`    — one launcher file per kernel file (`ops/X.rs` ↔ kernels/X.cu), with shape and
//!   alignment preconditions; `ops::gemm::policy` picks the GEMM kernel
//! - `model`  — `GpuModel`, the forward pass mirroring `crate::cpu::model::Model` (and `eval::LogitModel`)
//! - `decode` — `GpuDecoder`, KV-cache decoding mirroring `crate::cpu::decode::Decoder` (and the
//!   `decode::Engine` that `bench` and `generate` drive)
//! - `linalg` — f64 GEMM, SPD inverse, greedy OBS and the repair product on the device (the
//!   `linalg::Solver::Cuda` side of `compile`'s scoring)
//! - `backend` — `CudaBackend`, the calibration `calib::Backend` (`whittle compile --device cuda`)
//! - `error`  — `CudaError` (reaches `crate::Error` as `Error::Cuda`)
//! - `prof`   — NVTX ranges (feature `nvtx`)
//! - `tma`    — TMA tensor maps (`cuTensorMapEncodeTiled`) for the copy-engine-fed GEMM
//!
//! docs/cuda.md describes the build, the kernels and how to check them on a GPU machine.

pub mod backend;
mod block;
pub mod decode;
pub mod device;
pub mod error;
pub mod gpu;
pub mod linalg;
pub mod model;
pub mod ops;
pub mod prof;
mod tma;

pub use backend::CudaBackend;
pub use decode::GpuDecoder;
pub use device::{is_available, probe, GpuInfo};
pub use error::CudaError;
pub use gpu::{DTensor, Gpu, FATBIN, PTXAS_REPORT};
pub use model::{GpuModel, LogitStats, MlpStats, Residency};

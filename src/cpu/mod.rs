//! The CPU engine, the reference every other path is checked against (the CUDA engine in
//! src/cuda is its twin): the forward pass (`model`) and its backward to the MLP weights (`grad`, for end-to-end distillation), KV-cache decoding (`decode`, with the slot
//! arithmetic both engines share in `kv`), plain f32 ops multi-threaded with rayon (`ops`,
//! `attention`, `act`, `bias`, `norm`, `rope`), the calibration backend (`calib`), the bf16-input GEMM that `--precision bf16`
//! puts under the projections and the LM head (`bf16`; its AMX tiles in `amx`), the decode GEMV over f32 or bf16 weights
//! (`gemv`), the one safe wrapper of the `gemm` crate (`gemm`), the bf16 ↔ f32 conversions (`convert`) and the f64 linear algebra of the re-fit
//! (`linalg`).

pub mod act;
#[clippy::msrv = "1.89"]
pub mod amx;
pub mod attention;
// The AVX-512 BF16 intrinsics are stable since Rust 1.89, so this module needs 1.89. Cargo.toml's
// rust-version stays 1.80: raising it turns newer clippy lints on over the whole crate.
#[clippy::msrv = "1.89"]
pub mod bf16;
pub mod bias;
pub mod calib;
// Its row conversions for the bf16 packers use AVX-512F intrinsics: 1.89 as for `bf16`.
#[clippy::msrv = "1.89"]
pub mod convert;
pub mod decode;
pub mod gemm;
pub mod gemv;
pub mod grad;
pub mod kv;
pub mod linalg;
pub mod model;
pub mod norm;
pub mod ops;
pub mod rope;
mod shared_out;
pub mod wide;

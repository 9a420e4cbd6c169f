//! The CPU path: plain f32 reference ops, multi-threaded with rayon, the bf16-input GEMM
//! that `--precision bf16` puts under the projections and the LM head, the decode GEMV over f32
//! or bf16 weights (`gemv`) and the bf16 ↔ f32 conversions (`convert`).

pub mod act;
pub mod attention;
// The AVX-512 BF16 intrinsics are stable since Rust 1.89, so this module needs 1.89. Cargo.toml's
// rust-version stays 1.80: raising it turns newer clippy lints on over the whole crate.
#[clippy::msrv = "1.89"]
pub mod bf16;
pub mod bias;
pub mod convert;
pub mod gemv;
pub mod kv;
pub mod norm;
pub mod ops;
pub mod rope;

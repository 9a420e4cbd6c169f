//! One launcher per kernel of kernels/*.cu, in one file per kernel file: `ops/X.rs` launches
//! the entry points of `kernels/X.cu` (the f64 linear algebra of kernels/linalg.cu stays with
//! its solver in `cuda::linalg`). Each launcher checks the shapes and preconditions its kernel
//! relies on (returning `CudaError::Precondition` naming the kernel), picks the grid and the
//! dynamic shared memory, and keeps the one `unsafe` launch local with a `SAFETY:` note. Shapes
//! in comments are row-major. `gemm::policy` decides which GEMM kernel runs (`WHITTLE_GEMM`, the
//! self-checks of the wgmma kernels). This file holds only what the launchers share; callers
//! name everything as `ops::foo`.
//!
//! Numerics match the CPU reference ops (src/cpu/ops.rs) up to bf16 storage: see each kernel
//! file's header for where values are rounded to bf16.

mod attention;
mod bias;
mod convert;
mod decode;
mod embed;
mod gemm;
mod head;
mod mlp;
mod norm;
mod rope;

pub use attention::{
    attention, attention_smem, attention_with, flash_kernel_name, flash_warps, AttnKernel,
    AttnParams,
};
pub use bias::bias_add;
pub use convert::{bf16_to_f32, f32_to_bf16};
pub use decode::{
    decode_attention, decode_attention_kernel, decode_rope_kv, gemv, gemv_act, kv_cache_write,
    plan_decode_splits, DecodeAttnParams, DecodeWorkspace, DECODE_MAX_SPLITS, GEMV_MAX_M,
};
pub use embed::embed;
pub use gemm::{
    auto_gemm_kernel, gate_up_act, gate_up_act_with, gate_up_fused, gemm_kernel_name, gemm_nt,
    gemm_nt_launch, gemm_nt_with, gram_accumulate, gram_accumulate_with, gram_symmetrize,
    kernel_summary, sm90_gemm_enabled, sm90_kernel_enabled, transpose, GemmKernel,
};
pub use head::{kl_rows, row_stats, softcap, RowStatsOut};
pub use mlp::{act_mul, scale_rows_stats, token_weights, TokenWeightMode};
pub use norm::{residual_add, rms_norm, rms_norm_inplace, rms_norm_residual};
pub use rope::{rope, ModelRope, RopeFreqs};

use super::error::{CudaError, CudaResult};
use super::gpu::{DTensor, Gpu};
use cudarc::driver::LaunchConfig;
use half::bf16;

/// Largest grid dimension y or z.
const MAX_GRID_YZ: usize = 65_535;

pub(super) fn i32_of(kernel: &'static str, what: &str, v: usize) -> CudaResult<i32> {
    i32::try_from(v).map_err(|_| CudaError::pre(kernel, format!("{what} = {v} exceeds 2^31 - 1")))
}

fn expect_shape<T>(
    kernel: &'static str,
    what: &str,
    t: &DTensor<T>,
    rows: usize,
    cols: usize,
) -> CudaResult<()> {
    if t.rows() != rows || t.cols() != cols {
        return Err(CudaError::pre(
            kernel,
            format!(
                "{what} has shape {:?}, expected [{rows}, {cols}] (rows × columns)",
                t.shape()
            ),
        ));
    }
    Ok(())
}

fn expect_len<T>(kernel: &'static str, what: &str, t: &DTensor<T>, n: usize) -> CudaResult<()> {
    if t.numel() != n {
        return Err(CudaError::pre(
            kernel,
            format!(
                "{what} has shape {:?} ({} elements), expected {n} elements",
                t.shape(),
                t.numel()
            ),
        ));
    }
    Ok(())
}

/// `x` [M, K] and `w` [N, K] of a `X·Wᵀ` product share K.
fn expect_inner(kernel: &'static str, x: &DTensor<bf16>, w: &DTensor<bf16>) -> CudaResult<()> {
    if w.cols() != x.cols() {
        return Err(CudaError::pre(
            kernel,
            format!(
                "x is {:?} but w is {:?}: inner dimensions differ",
                x.shape(),
                w.shape()
            ),
        ));
    }
    Ok(())
}

/// The outputs of a `X·Wᵀ` launcher (GEMM, GEMV): at least one given, each [m, n], and an f32
/// one where the product accumulates.
fn expect_outputs(
    kernel: &'static str,
    y_bf16: Option<&DTensor<bf16>>,
    y_f32: Option<&DTensor<f32>>,
    accumulate: bool,
    m: usize,
    n: usize,
) -> CudaResult<()> {
    if y_bf16.is_none() && y_f32.is_none() {
        return Err(CudaError::pre(kernel, "no output given"));
    }
    if accumulate && y_f32.is_none() {
        return Err(CudaError::pre(kernel, "accumulate needs an f32 output"));
    }
    if let Some(y) = y_bf16 {
        expect_shape(kernel, "y (bf16)", y, m, n)?;
    }
    if let Some(y) = y_f32 {
        expect_shape(kernel, "y (f32)", y, m, n)?;
    }
    Ok(())
}

/// Grouped-query attention: every KV head serves the same number of query heads.
fn expect_gqa(kernel: &'static str, n_heads: usize, n_kv_heads: usize) -> CudaResult<()> {
    if n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
        return Err(CudaError::pre(
            kernel,
            format!("n_heads {n_heads} is not a multiple of n_kv_heads {n_kv_heads}"),
        ));
    }
    Ok(())
}

/// The kernels' softcap argument: 0 for none, else a positive finite cap.
fn softcap_arg(kernel: &'static str, softcap: Option<f32>) -> CudaResult<f32> {
    match softcap {
        None => Ok(0.0),
        Some(c) if c > 0.0 && c.is_finite() => Ok(c),
        Some(c) => Err(CudaError::pre(
            kernel,
            format!("softcap {c} must be positive"),
        )),
    }
}

/// Device address of an optional tensor (0, the kernels' "absent", when `None`) after checking
/// that it holds `n` elements.
fn opt_ptr<T>(
    gpu: &Gpu,
    kernel: &'static str,
    what: &str,
    t: Option<&DTensor<T>>,
    n: usize,
) -> CudaResult<u64> {
    match t {
        Some(t) => {
            expect_len(kernel, what, t, n)?;
            Ok(t.ptr(gpu))
        }
        None => Ok(0),
    }
}

/// `opt_ptr` for a tensor that must have shape [rows, cols].
fn opt_ptr_shape<T>(
    gpu: &Gpu,
    kernel: &'static str,
    what: &str,
    t: Option<&DTensor<T>>,
    rows: usize,
    cols: usize,
) -> CudaResult<u64> {
    match t {
        Some(t) => {
            expect_shape(kernel, what, t, rows, cols)?;
            Ok(t.ptr(gpu))
        }
        None => Ok(0),
    }
}

pub(super) fn cfg(grid: (usize, usize, usize), block: (u32, u32, u32), smem: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid.0 as u32, grid.1 as u32, grid.2 as u32),
        block_dim: block,
        shared_mem_bytes: smem,
    }
}

/// Blocks for a grid-stride loop over n elements with 256 threads.
fn stride_blocks(n: usize) -> usize {
    n.div_ceil(256).clamp(1, 1 << 16)
}

//! Launchers of kernels/norm.cu: Gemma RMSNorm, in place or not, and fused with the residual add.

use super::{cfg, expect_len, i32_of};
use crate::cuda::error::{CudaError, CudaResult};
use crate::cuda::gpu::{DTensor, Gpu, KArg};
use crate::cuda::prof::range;
use half::bf16;

fn norm_rows(kernel: &'static str, numel: usize, w: &DTensor<f32>) -> CudaResult<(usize, usize)> {
    let cols = w.numel();
    if cols == 0 || numel % cols != 0 {
        return Err(CudaError::pre(
            kernel,
            format!("{numel} elements are not rows of the weight's {cols}"),
        ));
    }
    Ok((numel / cols, cols))
}

/// Launches `rmsnorm_bf16` (pointers x, w, out) or `rmsnorm_residual_bf16` (h, y, w): both
/// take three pointers, then (rows, cols, eps), with the row tensors rows·cols and w cols long.
fn launch_norm(
    gpu: &Gpu,
    name: &'static str,
    ptrs: [u64; 3],
    rows: usize,
    cols: usize,
    eps: f32,
) -> CudaResult<()> {
    if rows == 0 {
        return Ok(());
    }
    let args = [
        KArg::Ptr(ptrs[0]),
        KArg::Ptr(ptrs[1]),
        KArg::Ptr(ptrs[2]),
        KArg::I32(i32_of(name, "rows", rows)?),
        KArg::I32(i32_of(name, "cols", cols)?),
        KArg::F32(eps),
    ];
    // SAFETY: callers checked that both row tensors hold rows·cols elements and w holds cols;
    // one warp per row, rows >= `rows` return at once.
    unsafe { gpu.launch(name, cfg((rows.div_ceil(8), 1, 1), (256, 1, 1), 0), &args) }
}

/// Gemma RMSNorm of every row: `out = x·rsqrt(mean(x²)+eps)·(1+w)`; `w` [cols] f32, `x` and
/// `out` hold rows × cols (per-head norms: rows of head_dim).
pub fn rms_norm(
    gpu: &Gpu,
    x: &DTensor<bf16>,
    w: &DTensor<f32>,
    out: &mut DTensor<bf16>,
    eps: f32,
) -> CudaResult<()> {
    const K_NAME: &str = "rmsnorm_bf16";
    let _r = range("norm");
    let (rows, cols) = norm_rows(K_NAME, x.numel(), w)?;
    expect_len(K_NAME, "out", out, rows * cols)?;
    launch_norm(
        gpu,
        K_NAME,
        [x.ptr(gpu), w.ptr(gpu), out.ptr(gpu)],
        rows,
        cols,
        eps,
    )
}

/// In-place RMSNorm (the q/k head norms).
pub fn rms_norm_inplace(
    gpu: &Gpu,
    x: &mut DTensor<bf16>,
    w: &DTensor<f32>,
    eps: f32,
) -> CudaResult<()> {
    const K_NAME: &str = "rmsnorm_bf16";
    let _r = range("norm");
    let (rows, cols) = norm_rows(K_NAME, x.numel(), w)?;
    let p = x.ptr(gpu);
    // In place is allowed: each lane reads an element in the second pass before writing it.
    launch_norm(gpu, K_NAME, [p, w.ptr(gpu), p], rows, cols, eps)
}

/// The residual step: `h += bf16(rmsnorm(y)·(1+w))` (two roundings, as transformers' bf16 path).
pub fn rms_norm_residual(
    gpu: &Gpu,
    h: &mut DTensor<bf16>,
    y: &DTensor<bf16>,
    w: &DTensor<f32>,
    eps: f32,
) -> CudaResult<()> {
    const K_NAME: &str = "rmsnorm_residual_bf16";
    let _r = range("norm");
    let (rows, cols) = norm_rows(K_NAME, y.numel(), w)?;
    expect_len(K_NAME, "h", h, rows * cols)?;
    let ptrs = [h.ptr(gpu), y.ptr(gpu), w.ptr(gpu)];
    launch_norm(gpu, K_NAME, ptrs, rows, cols, eps)
}

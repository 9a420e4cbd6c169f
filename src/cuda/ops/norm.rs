//! Launchers of kernels/norm.cu: RMSNorm in either weight convention (`NormWeight`), in place or
//! not, fused with the residual add, and the plain residual add.

use super::{cfg, expect_len, i32_of, stride_blocks};
use crate::checkpoint::config::NormWeight;
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

/// The kernels' `plain` argument.
fn plain_arg(conv: NormWeight) -> i32 {
    match conv {
        NormWeight::OnePlus => 0,
        NormWeight::Plain => 1,
    }
}

/// Launches `rmsnorm_bf16` (pointers x, w, out) or `rmsnorm_residual_bf16` (h, y, w): both
/// take three pointers, then (rows, cols, eps, plain), with the row tensors rows·cols and w cols
/// long.
fn launch_norm(
    gpu: &Gpu,
    name: &'static str,
    ptrs: [u64; 3],
    rows: usize,
    cols: usize,
    eps: f32,
    conv: NormWeight,
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
        KArg::I32(plain_arg(conv)),
    ];
    // SAFETY: callers checked that both row tensors hold rows·cols elements and w holds cols;
    // one warp per row, rows >= `rows` return at once.
    unsafe { gpu.launch(name, cfg((rows.div_ceil(8), 1, 1), (256, 1, 1), 0), &args) }
}

/// RMSNorm of every row: `out = x̂·(1+w)` (`OnePlus`, Gemma) or `w·bf16(x̂)` (`Plain`, the Llama
/// family), `x̂ = x·rsqrt(mean(x²)+eps)`; `w` [cols] f32, `x` and `out` hold rows × cols
/// (per-head norms: rows of head_dim).
pub fn rms_norm(
    gpu: &Gpu,
    x: &DTensor<bf16>,
    w: &DTensor<f32>,
    out: &mut DTensor<bf16>,
    eps: f32,
    conv: NormWeight,
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
        conv,
    )
}

/// In-place RMSNorm (the q/k head norms).
pub fn rms_norm_inplace(
    gpu: &Gpu,
    x: &mut DTensor<bf16>,
    w: &DTensor<f32>,
    eps: f32,
    conv: NormWeight,
) -> CudaResult<()> {
    const K_NAME: &str = "rmsnorm_bf16";
    let _r = range("norm");
    let (rows, cols) = norm_rows(K_NAME, x.numel(), w)?;
    let p = x.ptr(gpu);
    // In place is allowed: each lane reads an element in the second pass before writing it.
    launch_norm(gpu, K_NAME, [p, w.ptr(gpu), p], rows, cols, eps, conv)
}

/// The residual step after a post-norm: `h = bf16(h + norm(y))` (`norm` as `rms_norm`, rounded
/// to bf16 first: two roundings, as transformers' bf16 path).
pub fn rms_norm_residual(
    gpu: &Gpu,
    h: &mut DTensor<bf16>,
    y: &DTensor<bf16>,
    w: &DTensor<f32>,
    eps: f32,
    conv: NormWeight,
) -> CudaResult<()> {
    const K_NAME: &str = "rmsnorm_residual_bf16";
    let _r = range("norm");
    let (rows, cols) = norm_rows(K_NAME, y.numel(), w)?;
    expect_len(K_NAME, "h", h, rows * cols)?;
    let ptrs = [h.ptr(gpu), y.ptr(gpu), w.ptr(gpu)];
    launch_norm(gpu, K_NAME, ptrs, rows, cols, eps, conv)
}

/// The residual step without a post-norm (the Llama family): `h = bf16(h + y)`, same shapes.
pub fn residual_add(gpu: &Gpu, h: &mut DTensor<bf16>, y: &DTensor<bf16>) -> CudaResult<()> {
    const K_NAME: &str = "residual_add_bf16";
    let _r = range("residual");
    let n = h.numel();
    expect_len(K_NAME, "y", y, n)?;
    if n == 0 {
        return Ok(());
    }
    let args = [
        KArg::Ptr(h.ptr(gpu)),
        KArg::Ptr(y.ptr(gpu)),
        KArg::I32(i32_of(K_NAME, "n", n)?),
    ];
    // SAFETY: h and y hold n elements (checked; distinct tensors, h borrowed mutably); a
    // grid-stride loop over i < n.
    unsafe { gpu.launch(K_NAME, cfg((stride_blocks(n), 1, 1), (256, 1, 1), 0), &args) }
}

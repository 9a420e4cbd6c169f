//! Launcher of kernels/bias.cu: a Linear's bias added to its f32 output, rounded to bf16 once.

use super::{cfg, expect_len, i32_of, stride_blocks};
use crate::cuda::error::{CudaError, CudaResult};
use crate::cuda::gpu::{DTensor, Gpu, KArg};
use crate::cuda::prof::range;
use half::bf16;

/// `out = bf16(y + b)` row by row: `y` [rows, C] f32 (a projection's unrounded output), `b` [C]
/// f32, `out` [rows, C] bf16 — transformers' Linear with a bias, rounded once.
pub fn bias_add(
    gpu: &Gpu,
    y: &DTensor<f32>,
    b: &DTensor<f32>,
    out: &mut DTensor<bf16>,
) -> CudaResult<()> {
    const K_NAME: &str = "bias_add_bf16";
    let _r = range("bias");
    let cols = b.numel();
    if cols == 0 || y.numel() % cols != 0 {
        return Err(CudaError::pre(
            K_NAME,
            format!("y has shape {:?}, not rows of the bias's {cols}", y.shape()),
        ));
    }
    let rows = y.numel() / cols;
    expect_len(K_NAME, "out", out, rows * cols)?;
    if rows == 0 {
        return Ok(());
    }
    let args = [
        KArg::Ptr(y.ptr(gpu)),
        KArg::Ptr(b.ptr(gpu)),
        KArg::Ptr(out.ptr(gpu)),
        KArg::I32(i32_of(K_NAME, "rows", rows)?),
        KArg::I32(i32_of(K_NAME, "cols", cols)?),
    ];
    i32_of(K_NAME, "rows·cols", rows * cols)?;
    // SAFETY: y and out hold rows·cols elements, b cols (checked); a grid-stride loop over
    // i < rows·cols reads b[i % cols].
    unsafe {
        gpu.launch(
            K_NAME,
            cfg((stride_blocks(rows * cols), 1, 1), (256, 1, 1), 0),
            &args,
        )
    }
}

//! Launcher of kernels/embed.cu: the scaled embedding gather.

use super::{cfg, expect_shape, i32_of};
use crate::cuda::error::CudaResult;
use crate::cuda::gpu::{DTensor, Gpu, KArg};
use half::bf16;

/// `out[n] = bf16(table[ids[n]] · scale)`: `table` [V, H], `ids` [n] (validated by the caller;
/// an id >= V yields a zero row, never an out-of-bounds read), `out` [n, H].
pub fn embed(
    gpu: &Gpu,
    table: &DTensor<bf16>,
    ids: &DTensor<u32>,
    out: &mut DTensor<bf16>,
    scale: f32,
) -> CudaResult<()> {
    const K_NAME: &str = "embed_bf16";
    let (v, h, n) = (table.rows(), table.cols(), ids.numel());
    expect_shape(K_NAME, "out", out, n, h)?;
    if n == 0 {
        return Ok(());
    }
    let args = [
        KArg::Ptr(table.ptr(gpu)),
        KArg::Ptr(ids.ptr(gpu)),
        KArg::Ptr(out.ptr(gpu)),
        KArg::I32(i32_of(K_NAME, "n", n)?),
        KArg::I32(i32_of(K_NAME, "H", h)?),
        KArg::I32(i32_of(K_NAME, "V", v)?),
        KArg::F32(scale),
    ];
    // SAFETY: table holds V·H, ids n, out n·H elements; rows with id >= V are zero-filled.
    unsafe { gpu.launch(K_NAME, cfg((n, 1, 1), (256, 1, 1), 0), &args) }
}

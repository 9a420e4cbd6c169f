//! Launchers of kernels/convert.cu: bf16 ↔ f32 conversion.

use super::{cfg, expect_len, stride_blocks};
use crate::cuda::error::CudaResult;
use crate::cuda::gpu::{DTensor, Gpu, KArg};
use half::bf16;

/// `y = f32(x)`, same element count.
pub fn bf16_to_f32(gpu: &Gpu, x: &DTensor<bf16>, y: &mut DTensor<f32>) -> CudaResult<()> {
    convert(gpu, "bf16_to_f32", x, y)
}

/// `y = bf16(x)` (round to nearest even), same element count.
pub fn f32_to_bf16(gpu: &Gpu, x: &DTensor<f32>, y: &mut DTensor<bf16>) -> CudaResult<()> {
    convert(gpu, "f32_to_bf16", x, y)
}

/// Launches the conversion kernel `name`, whose element types are `A` → `B` (the two callers
/// above pair each kernel with its types).
fn convert<A, B>(
    gpu: &Gpu,
    name: &'static str,
    x: &DTensor<A>,
    y: &mut DTensor<B>,
) -> CudaResult<()> {
    let n = x.numel();
    expect_len(name, "y", y, n)?;
    if n == 0 {
        return Ok(());
    }
    let args = [
        KArg::Ptr(x.ptr(gpu)),
        KArg::Ptr(y.ptr(gpu)),
        KArg::U64(n as u64),
    ];
    // SAFETY: both hold n elements of the kernel's types; grid-stride loop over n.
    unsafe { gpu.launch(name, cfg((stride_blocks(n), 1, 1), (256, 1, 1), 0), &args) }
}

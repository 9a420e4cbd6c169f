//! TMA tensor maps: the descriptors (`CUtensorMap`, built by the driver's
//! `cuTensorMapEncodeTiled`) through which Hopper's copy engine loads tiles for the tensor cores
//! (`gemm_nt_bf16_sm90_tma`). A map names a 2-D bf16 matrix, the box one copy moves, the 128-byte
//! swizzle the wgmma descriptors expect, and zero fill outside the matrix (ragged edges).

use super::error::{CudaError, CudaResult};
use cudarc::driver::sys;
use cudarc::driver::DeviceRepr;

/// A tensor map passed to a kernel by value (`const __grid_constant__ TmaMap`, kernels/common.cuh).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct TmaDesc(sys::CUtensorMap);

impl std::fmt::Debug for TmaDesc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TmaDesc(..)")
    }
}

// SAFETY: a plain 128-byte value; the driver copies it into the kernel's parameter space, where
// the kernel declares a parameter of the same size (struct TmaMap).
unsafe impl DeviceRepr for TmaDesc {}

/// Bytes of one swizzle row: a box's inner extent may not exceed it.
const SWIZZLE_BYTES: usize = 128;

/// The map of a row-major bf16 matrix `[rows, cols]` (row stride `ld` elements) at device address
/// `ptr`, copied in boxes of `box_rows × box_cols` with the 128-byte swizzle. `kernel` names the
/// kernel in errors. The driver reads nothing at `ptr` now; the matrix must outlive the launches
/// that use the map.
pub(crate) fn bf16_2d(
    kernel: &'static str,
    ptr: u64,
    rows: usize,
    cols: usize,
    ld: usize,
    box_rows: usize,
    box_cols: usize,
) -> CudaResult<TmaDesc> {
    let fail = |msg: String| Err(CudaError::pre(kernel, msg));
    if ptr % 16 != 0 {
        return fail(format!(
            "TMA needs a 16-byte aligned base address (have {ptr:#x})"
        ));
    }
    if (ld * 2) % 16 != 0 || ld < cols {
        return fail(format!(
            "TMA needs a row stride that is a multiple of 8 elements and ≥ {cols} (have {ld})"
        ));
    }
    if rows == 0 || cols == 0 || rows > 1 << 32 || cols > 1 << 32 {
        return fail(format!(
            "TMA dimensions must be in 1..=2^32 (have {rows} × {cols})"
        ));
    }
    if box_rows == 0 || box_rows > 256 || box_cols * 2 > SWIZZLE_BYTES || (box_cols * 2) % 16 != 0 {
        return fail(format!(
            "TMA box {box_rows} × {box_cols} outside the 128-byte swizzle's limits"
        ));
    }
    let dims = [cols as u64, rows as u64];
    let strides = [(ld * 2) as u64];
    let boxes = [box_cols as u32, box_rows as u32];
    let element_strides = [1u32, 1];
    let mut map = std::mem::MaybeUninit::<sys::CUtensorMap>::zeroed();
    // SAFETY: every array holds `rank` (2) entries (strides: rank - 1) and lives across the call;
    // `map` is a 128-byte, 128-aligned CUtensorMap the driver writes. The address is only
    // recorded, not dereferenced.
    unsafe {
        sys::cuTensorMapEncodeTiled(
            map.as_mut_ptr(),
            sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            2,
            ptr as *mut std::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            element_strides.as_ptr(),
            sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
        .result()
        .map_err(|e| CudaError::driver("cuTensorMapEncodeTiled", e))?;
        // SAFETY: the call succeeded, so the driver wrote the whole map (and it started zeroed).
        Ok(TmaDesc(map.assume_init()))
    }
}

//! Finding a usable GPU without ever panicking, and the `--device` choice.
//!
//! The driver library is loaded with dlopen on first use (cudarc `dynamic-loading`), so the
//! binary starts on machines without one; cudarc panics if a driver call is made with no
//! libcuda, so every entry point here checks `is_culib_present` first and also catches panics
//! (a driver older than the bindings may lack a symbol).

use super::error::{CudaError, CudaResult};
use cudarc::driver::{result, sys};
use std::fmt;

/// Oldest driver API version the kernels are built for (CUDA 13.0: driver R580).
pub const MIN_DRIVER_VERSION: i32 = 13000;

/// What `probe` learned about one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    pub ordinal: usize,
    pub name: String,
    /// (major, minor), e.g. (9, 0) for H100.
    pub compute_capability: (i32, i32),
    pub total_mem: usize,
    /// cuDriverGetVersion: 1000·major + 10·minor (13000 = CUDA 13.0).
    pub driver_version: i32,
    pub multiprocessors: i32,
    /// Largest dynamic shared memory a block may opt into, in bytes.
    pub max_smem_per_block: i32,
}

impl fmt::Display for GpuInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cuda:{} {} (sm_{}{}, {} SMs, {:.1} GiB, driver CUDA {}.{})",
            self.ordinal,
            self.name,
            self.compute_capability.0,
            self.compute_capability.1,
            self.multiprocessors,
            self.total_mem as f64 / (1u64 << 30) as f64,
            self.driver_version / 1000,
            (self.driver_version % 1000) / 10
        )
    }
}

fn attr(dev: sys::CUdevice, a: sys::CUdevice_attribute, what: &str) -> CudaResult<i32> {
    // SAFETY: `dev` came from cuDeviceGet on an initialised driver.
    unsafe { result::device::get_attribute(dev, a) }.map_err(|e| CudaError::driver(what, e))
}

fn probe_inner(ordinal: usize) -> CudaResult<GpuInfo> {
    // SAFETY: only tries to dlopen the driver library; no symbol is called.
    if !unsafe { sys::is_culib_present() } {
        return Err(CudaError::NoDriver);
    }
    let mut version = 0i32;
    // SAFETY: the library is present (checked above); the out-pointer is a valid i32.
    unsafe { sys::cuDriverGetVersion(&mut version) }
        .result()
        .map_err(|e| CudaError::driver("cuDriverGetVersion", e))?;
    if version < MIN_DRIVER_VERSION {
        return Err(CudaError::DriverTooOld {
            major: version / 1000,
            minor: (version % 1000) / 10,
        });
    }
    result::init().map_err(|e| match e.0 {
        sys::CUresult::CUDA_ERROR_NO_DEVICE => CudaError::NoDevice,
        _ => CudaError::driver("cuInit", e),
    })?;
    let count =
        result::device::get_count().map_err(|e| CudaError::driver("cuDeviceGetCount", e))? as usize;
    if count == 0 {
        return Err(CudaError::NoDevice);
    }
    if ordinal >= count {
        return Err(CudaError::BadOrdinal { ordinal, count });
    }
    let dev =
        result::device::get(ordinal as i32).map_err(|e| CudaError::driver("cuDeviceGet", e))?;
    let name =
        result::device::get_name(dev).map_err(|e| CudaError::driver("cuDeviceGetName", e))?;
    use sys::CUdevice_attribute::*;
    let major = attr(
        dev,
        CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
        "compute capability",
    )?;
    let minor = attr(
        dev,
        CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
        "compute capability",
    )?;
    if major < 8 {
        return Err(CudaError::UnsupportedGpu {
            ordinal,
            name,
            major,
            minor,
        });
    }
    let multiprocessors = attr(
        dev,
        CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
        "multiprocessor count",
    )?;
    let max_smem_per_block = attr(
        dev,
        CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
        "shared memory limit",
    )?;
    // SAFETY: `dev` came from cuDeviceGet.
    let total_mem = unsafe { result::device::total_mem(dev) }
        .map_err(|e| CudaError::driver("cuDeviceTotalMem", e))?;
    Ok(GpuInfo {
        ordinal,
        name,
        compute_capability: (major, minor),
        total_mem,
        driver_version: version,
        multiprocessors,
        max_smem_per_block,
    })
}

/// Checks that device `ordinal` can run whittle's kernels. Never panics.
pub fn probe(ordinal: usize) -> CudaResult<GpuInfo> {
    match std::panic::catch_unwind(|| probe_inner(ordinal)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(CudaError::Other(format!(
                "the CUDA driver could not be used: {msg}"
            )))
        }
    }
}

/// Is the first GPU usable? The error is the sentence to show a user. Never panics.
pub fn is_available() -> Result<GpuInfo, String> {
    probe(0).map_err(|e| e.to_string())
}

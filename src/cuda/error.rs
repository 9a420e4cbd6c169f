//! Errors of the GPU path. Each names what failed (the driver call, the kernel, the shape) and,
//! where there is one, what the user can do. They reach the library's `Error` as `Error::Cuda`
//! (same text, source kept).

use cudarc::driver::DriverError;

#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error(
        "no NVIDIA driver found (libcuda.so not loadable); use --device cpu, or run on a machine \
         with an NVIDIA GPU and driver ≥ R580 (CUDA 13.0)"
    )]
    NoDriver,

    #[error("driver supports CUDA {major}.{minor}; whittle's GPU path needs a driver ≥ R580 (CUDA 13.0)")]
    DriverTooOld { major: i32, minor: i32 },

    #[error("the NVIDIA driver is loaded but reports no CUDA device")]
    NoDevice,

    #[error("cuda:{ordinal} does not exist: {count} CUDA device(s) present (cuda:0 … cuda:{last})", last = count.saturating_sub(1))]
    BadOrdinal { ordinal: usize, count: usize },

    #[error("cuda:{ordinal} ({name}) has compute capability {major}.{minor}; whittle's kernels need 8.0 or newer (Ampere, Ada, Hopper)")]
    UnsupportedGpu {
        ordinal: usize,
        name: String,
        major: i32,
        minor: i32,
    },

    #[error("CUDA driver call {what} failed: {msg}")]
    Driver { what: String, msg: String },

    #[error("CUDA kernel {kernel} failed: {msg}")]
    Launch { kernel: &'static str, msg: String },

    #[error("CUDA kernel {kernel}: {msg}")]
    Precondition { kernel: &'static str, msg: String },

    #[error("{0}")]
    Other(String),
}

/// A readable form of a driver error: `CUDA_ERROR_OUT_OF_MEMORY (out of memory)`.
pub fn describe(e: &DriverError) -> String {
    let name = e.error_name().map(|s| s.to_string_lossy().into_owned());
    let text = e.error_string().map(|s| s.to_string_lossy().into_owned());
    match (name, text) {
        (Ok(n), Ok(t)) => format!("{n} ({t})"),
        (Ok(n), Err(_)) => n,
        _ => format!("{e:?}"),
    }
}

impl CudaError {
    pub fn driver(what: impl Into<String>, e: DriverError) -> Self {
        CudaError::Driver {
            what: what.into(),
            msg: describe(&e),
        }
    }

    pub fn launch(kernel: &'static str, e: DriverError) -> Self {
        CudaError::Launch {
            kernel,
            msg: describe(&e),
        }
    }

    pub fn pre(kernel: &'static str, msg: impl Into<String>) -> Self {
        CudaError::Precondition {
            kernel,
            msg: msg.into(),
        }
    }
}

pub type CudaResult<T> = std::result::Result<T, CudaError>;

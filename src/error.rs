//! The library's error type. Every variant names the file, tensor, shape or flag at fault and,
//! where there is one, what the user can do about it. The CLI wraps these in `anyhow` at the edge.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: not a valid config.json: {msg}")]
    Config { path: PathBuf, msg: String },

    #[error("{path}: model_type \"{model_type}\" is not supported; whittle supports {supported}")]
    UnsupportedModel {
        path: PathBuf,
        model_type: String,
        supported: &'static str,
    },

    #[error("{path}: not a valid safetensors index: {msg}")]
    Index { path: PathBuf, msg: String },

    #[error("{path}: not a valid safetensors file: {msg}")]
    SafetensorsHeader { path: PathBuf, msg: String },

    #[error("{path}: tensor \"{tensor}\": {msg}")]
    Tensor {
        path: PathBuf,
        tensor: String,
        msg: String,
    },

    #[error(
        "tensor \"{tensor}\" is missing from {dir} (looked in {files}); the checkpoint does not \
         match its config.json"
    )]
    MissingTensor {
        dir: PathBuf,
        tensor: String,
        files: String,
    },

    #[error(
        "{path}: tensor \"{tensor}\" has shape {found:?} but config.json implies {expected:?}"
    )]
    ShapeMismatch {
        path: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    #[error(
        "{path}: tensor \"{tensor}\" has dtype {dtype}; whittle reads BF16, F16 and F32 weights"
    )]
    UnsupportedDtype {
        path: PathBuf,
        tensor: String,
        dtype: String,
    },

    #[error("{path}: tokenizer: {msg}")]
    Tokenizer { path: PathBuf, msg: String },

    #[error("{path}: {msg}")]
    Text { path: PathBuf, msg: String },

    #[error("invalid argument {flag}: {msg}")]
    Arg { flag: &'static str, msg: String },

    /// A GPU-path failure, kept typed (callers can match on the `CudaError`). Transparent: the
    /// text is the `CudaError`'s own, so an error chain printed by the CLI does not repeat it.
    #[cfg(feature = "cuda")]
    #[error(transparent)]
    Cuda(#[from] crate::cuda::CudaError),

    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

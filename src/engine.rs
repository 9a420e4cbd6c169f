//! What the engines (CPU, CUDA) hand to the code that drives them, below both: the layer
//! handle a calibration backend returns from `load_layer` and takes back in its run calls, and
//! the Gram matrix a GPU backend leaves on its device.

use crate::error::{Error, Result};
use crate::layer::Layer;

/// A decoder layer's weights as the engine that loaded them holds them: returned by
/// `calib::Backend::load_layer` / `load_pruned` and passed back to the same backend's run
/// calls, so an engine never has to recognise weights it did not load.
// A handle per layer is alive at a time: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub enum EngineLayer<'w> {
    /// The caller's f32 tensors, borrowed: what the CPU engine computes from.
    Host(Layer<&'w [f32]>),
    /// Uploaded by a GPU engine: bf16 matrices, f32 norm weights.
    #[cfg(feature = "cuda")]
    Device(Layer<crate::cuda::DTensor<half::bf16>, crate::cuda::DTensor<f32>>),
}

impl<'w> EngineLayer<'w> {
    /// The host tensors, or an error naming the engine that was handed another engine's layer.
    #[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
    pub fn host(&self, engine: &str) -> Result<&Layer<&'w [f32]>> {
        match self {
            EngineLayer::Host(w) => Ok(w),
            #[cfg(feature = "cuda")]
            _ => Err(foreign(engine)),
        }
    }

    /// The device tensors, or an error naming the engine that was handed another engine's layer.
    #[cfg(feature = "cuda")]
    #[allow(clippy::type_complexity)]
    pub fn device(
        &self,
        engine: &str,
    ) -> Result<&Layer<crate::cuda::DTensor<half::bf16>, crate::cuda::DTensor<f32>>> {
        match self {
            EngineLayer::Device(w) => Ok(w),
            _ => Err(foreign(engine)),
        }
    }
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn foreign(engine: &str) -> Error {
    Error::Other(format!(
        "the {engine} engine was given a layer another engine loaded; pass each backend the \
         layers its own load_layer returned"
    ))
}

/// A full (symmetric) f32 Gram matrix [I, I] left on the GPU by the calibration
/// (`MlpStats::gram_device`), read there by the device solver.
#[cfg(feature = "cuda")]
#[derive(Clone)]
pub struct DeviceGram(pub std::sync::Arc<crate::cuda::DTensor<f32>>);

/// Without CUDA there is no device Gram matrix.
#[cfg(not(feature = "cuda"))]
#[derive(Clone)]
pub enum DeviceGram {}

impl std::fmt::Debug for DeviceGram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceGram")
    }
}

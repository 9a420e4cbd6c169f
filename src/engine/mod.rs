//! The interfaces between the engines (CPU in src/cpu, CUDA in src/cuda) and the code that
//! drives them, below both so neither side imports the other: the shape of a batch (`Batch`),
//! what a forward pass shows an observer (`Event`, `Observer`), what evaluation needs of a model
//! (`LogitModel`), what serving needs (`Engine`, `Decode`), the layer handle a calibration
//! backend returns from `load_layer` and takes back in its run calls (`EngineLayer`), and the
//! Gram matrix a GPU backend leaves on its device (`DeviceGram`); and in `calib`, what
//! calibration needs of an engine (the `Backend` trait and the statistics it accumulates).

pub mod calib;

use crate::checkpoint::config::ModelConfig;
use crate::error::{Error, Result};
use crate::layer::Layer;
use std::path::Path;

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
/// (`engine::calib::Gram::Device`), read there by the device solver.
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

// ----------------------------------------------------------------------------------- batches

/// Shape of a batch of equal-length sequences laid out row after row: `[n_seq · seq_len, H]`.
#[derive(Debug, Clone, Copy)]
pub struct Batch {
    pub n_seq: usize,
    pub seq_len: usize,
}

impl Batch {
    pub fn rows(&self) -> usize {
        self.n_seq * self.seq_len
    }
}

// ----------------------------------------------------------------------------------- observing a forward pass

/// What the forward pass shows an observer (tests compare these with transformers' hooks;
/// calibration accumulates statistics from `MlpAct`).
pub enum Event<'a> {
    /// Scaled embeddings, the input of layer 0: [N, H].
    Embeds(&'a [f32]),
    /// Input of `down_proj` in `layer`, `gelu_tanh(gate)·up`: [N, I], and `down_proj`'s output
    /// before the post-FFN norm: [N, H] (calibration weighs tokens by its RMS).
    MlpAct {
        layer: usize,
        act: &'a [f32],
        out: &'a [f32],
    },
    /// Output of decoder layer `layer`: [N, H].
    LayerOut { layer: usize, hidden: &'a [f32] },
}

pub type Observer<'o> = Option<&'o mut dyn FnMut(Event<'_>)>;

// ----------------------------------------------------------------------------------- logits (eval, tasks)

/// What the evaluation protocol needs of a model: the final-normed hidden states of a batch and
/// the logits of some of their rows.
pub trait LogitModel {
    fn cfg(&self) -> &ModelConfig;
    /// The model folder (named in error messages).
    fn dir(&self) -> &Path;
    /// All layers and the final norm: normed hidden rows [N, H] in f32.
    fn forward_hidden(&self, ids: &[u32], batch: Batch) -> Result<Vec<f32>>;
    /// Logits `[rows, V]` of normed hidden rows `[rows, H]`, final softcap applied.
    fn logits(&self, hidden: &[f32]) -> Result<Vec<f32>>;
}

// ----------------------------------------------------------------------------------- serving (bench, generate)

/// A model that serves requests: batched prefill without a cache, and KV-cache decoding. The CPU
/// `Model` (f32) and the GPU `cuda::GpuModel` (bf16) implement it; `bench` and `generate` are
/// written against it, so both engines are measured and driven by the same code.
pub trait Engine {
    fn cfg(&self) -> &ModelConfig;
    /// What runs, for reports: `whittle cpu f32`, `whittle cpu bf16` or `whittle cuda bf16`.
    fn name(&self) -> String;
    /// Where it runs: `cpu` or the GPU's description.
    fn device(&self) -> String;
    /// The GPU kernels the hot ops chose on this device (reports; `None` on the CPU).
    fn kernels(&self) -> Option<String> {
        None
    }
    /// One batched forward pass over `batch` sequences (no cache), the LM head on the last
    /// position of each sequence only, and the greedy pick of each: `[n_seq]` token ids.
    fn last_token_picks(&self, ids: &[u32], batch: Batch) -> Result<Vec<u32>>;
    /// A KV-cache decoder for one sequence of up to `max_len` positions.
    fn decoder(&self, max_len: usize) -> Result<Box<dyn Decode + '_>>;
    /// `n_lanes` independent sequences of up to `max_len` positions each, decoded together one
    /// token per lane and step. The default steps one `decoder` per lane in turn; an engine whose
    /// single-token step is bound by reading the weights (the CPU) batches the lanes into GEMMs.
    fn lanes(&self, n_lanes: usize, max_len: usize) -> Result<Box<dyn DecodeLanes + '_>> {
        let decoders = (0..n_lanes)
            .map(|_| self.decoder(max_len))
            .collect::<Result<Vec<_>>>()?;
        Ok(Box::new(SerialLanes { decoders }))
    }
}

/// Several sequences decoded side by side (`Engine::lanes`): each lane has its own cache and
/// position; a step advances any subset of the lanes by one token each.
pub trait DecodeLanes {
    /// Decodes `ids[r]` at lane `lanes[r]`'s next position, for every `r` (distinct lanes);
    /// logits `[lanes.len(), V]`, row `r` for lane `lanes[r]`.
    fn step(&mut self, lanes: &[usize], ids: &[u32]) -> Result<Vec<f32>>;
    /// The position lane `lane`'s next token takes.
    fn pos(&self, lane: usize) -> usize;
    /// Starts a new sequence in lane `lane` (keeps the allocations).
    fn reset(&mut self, lane: usize);
}

/// `DecodeLanes` from one single-sequence decoder per lane, stepped in turn.
struct SerialLanes<'e> {
    decoders: Vec<Box<dyn Decode + 'e>>,
}

impl DecodeLanes for SerialLanes<'_> {
    fn step(&mut self, lanes: &[usize], ids: &[u32]) -> Result<Vec<f32>> {
        check_lanes(lanes, ids, self.decoders.len())?;
        let mut logits = Vec::new(); // [lanes, V]
        for (&lane, &id) in lanes.iter().zip(ids) {
            logits.extend(self.decoders[lane].step(id)?);
        }
        Ok(logits)
    }
    fn pos(&self, lane: usize) -> usize {
        self.decoders[lane].pos()
    }
    fn reset(&mut self, lane: usize) {
        self.decoders[lane].reset()
    }
}

/// The `DecodeLanes::step` contract: one id per lane, lanes distinct and below `n_lanes`.
pub fn check_lanes(lanes: &[usize], ids: &[u32], n_lanes: usize) -> Result<()> {
    let mut seen = vec![false; n_lanes];
    if lanes.len() != ids.len() {
        return Err(Error::Other(format!(
            "lane step: {} lanes but {} ids (one id per lane)",
            lanes.len(),
            ids.len()
        )));
    }
    for &lane in lanes {
        if lane >= n_lanes || std::mem::replace(&mut seen[lane], true) {
            return Err(Error::Other(format!(
                "lane step: lane {lane} is out of range (0..{n_lanes}) or named twice"
            )));
        }
    }
    Ok(())
}

/// Incremental decoding of one sequence (`Decoder` on the CPU, `cuda::GpuDecoder` on a GPU).
pub trait Decode {
    /// Runs the prompt, filling the cache (which must be empty); logits `[V]` of its last token.
    fn prefill(&mut self, ids: &[u32]) -> Result<Vec<f32>>;
    /// Decodes one token at position `pos()`; its logits `[V]`.
    fn step(&mut self, id: u32) -> Result<Vec<f32>>;
    /// `argmax(prefill(ids))` (an engine may pick without handing the logits over).
    fn prefill_greedy(&mut self, ids: &[u32]) -> Result<u32> {
        Ok(crate::cpu::ops::argmax(&self.prefill(ids)?) as u32)
    }
    /// `argmax(step(id))`.
    fn step_greedy(&mut self, id: u32) -> Result<u32> {
        Ok(crate::cpu::ops::argmax(&self.step(id)?) as u32)
    }
    /// The position the next token takes.
    fn pos(&self) -> usize;
    /// Starts a new sequence (keeps the allocations).
    fn reset(&mut self);
}

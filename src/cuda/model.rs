//! The GPU forward pass: the same decoder as `crate::cpu::model` (the CPU oracle) for Gemma 2 / 3
//! and the Llama family (llama, mistral, qwen2, qwen3), in bf16 storage with f32 accumulation,
//! rounding where transformers' bf16 path rounds (embedding × bf16 sqrt(H) where the family
//! scales it, RMSNorm output — and, in the Llama family's convention, the normed value before its
//! weight —, every Linear output (after its bias), RoPE output, attention output, the activation
//! and act·up, the residual adds). Family quirks are read from the config and the layer's slots
//! (`block`). The API mirrors `Model`: `forward_hidden(ids, batch, observer)` returns
//! the final-normed hidden rows in f32 and `logits(hidden)` the soft-capped logits, so a
//! calibration or evaluation backend can hold either.
//!
//! Weights: the embedding (also the tied LM head), the final norm and, for untied checkpoints,
//! the LM head live on the device for the model's lifetime. Decoder layers are either all
//! resident (`Residency::Resident`) or streamed (`Residency::Streamed`): bf16 copies stay in host
//! memory and each layer is uploaded into one reusable set of device buffers just before it runs,
//! so only one layer's weights occupy the GPU.
//!
//! Observer: `Event::Embeds`, `Event::MlpAct` and `Event::LayerOut` are delivered exactly as the
//! CPU model delivers them (f32 host slices, so the activations are downloaded when an observer is
//! given). For calibration without downloads, `enable_mlp_stats` accumulates Σa and Σa² per neuron
//! (f64) and optionally the Gram matrix Σ a aᵀ (f32) on the device, read back by `take_mlp_stats`.

use super::block::{self, AttnScratch, DeviceLayer, KvSink};
use super::error::CudaResult;
use super::gpu::{DTensor, Gpu};
use super::ops::{self, ModelRope, RowStatsOut};
use super::prof::range;
use crate::checkpoint::config::ModelConfig;
use crate::checkpoint::registry::{self, layer_name, layer_shape};
use crate::checkpoint::safetensors::WeightStore;
use crate::cpu::model::{untied_head, Model};
use crate::engine::{Batch, Event, Observer};
use crate::error::{Error, Result};
use crate::layer::Layer;
use half::bf16;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Where decoder-layer weights live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residency {
    /// Every layer on the device (fastest; needs the whole model's bf16 bytes of GPU memory).
    Resident,
    /// One layer at a time through a reusable device buffer (host keeps bf16 copies).
    Streamed,
}

/// One layer's weights on the host, already in the device formats (bf16 matrices, f32 norms and
/// biases).
type HostLayer = Layer<Vec<bf16>, Vec<f32>>;

/// A layer's device buffers, zeroed, at `cfg`'s shapes (the streamed model's staging set).
fn alloc_layer(gpu: &Gpu, cfg: &ModelConfig) -> CudaResult<DeviceLayer> {
    Layer::try_build(
        cfg,
        |t| DTensor::zeros(gpu, &layer_shape(cfg, t)),
        |t| DTensor::zeros(gpu, &layer_shape(cfg, t)),
    )
}

/// Copies `w` into the staging buffers `d` (same shapes).
fn copy_layer(gpu: &Gpu, d: &mut DeviceLayer, w: &HostLayer) -> CudaResult<()> {
    let _r = range("upload layer");
    for (t, m) in w.mats() {
        if let Some(dm) = d.mat_mut(t) {
            dm.copy_from_host(gpu, m)?;
        }
    }
    for (t, v) in w.vecs() {
        if let Some(dv) = d.vec_mut(t) {
            dv.copy_from_host(gpu, v)?;
        }
    }
    Ok(())
}

/// `w` borrowed as slices, as `block::upload` takes it.
fn slices(w: &HostLayer) -> Layer<&[bf16], &[f32]> {
    w.as_ref().map(|_, m| &m[..], |_, v| &v[..])
}

/// Per-neuron statistics of one layer's MLP activation (the `down_proj` input).
#[derive(Debug, Clone)]
pub struct MlpStats {
    /// Tokens accumulated.
    pub count: u64,
    pub sum: Vec<f64>,   // [I]
    pub sumsq: Vec<f64>, // [I]
    /// Σ a aᵀ over tokens, [I, I] row-major, when requested.
    pub gram: Option<Vec<f32>>,
}

struct DeviceStats {
    count: u64,
    sum: DTensor<f64>,
    sumsq: DTensor<f64>,
    gram: Option<DTensor<f32>>,
}

enum Layers {
    Resident(Vec<DeviceLayer>),
    Streamed {
        host: Vec<HostLayer>,
        /// The reusable device buffers every layer is uploaded into.
        stage: Box<Mutex<DeviceLayer>>,
    },
}

/// A Gemma 2 / 3 or Llama-family model on one GPU.
pub struct GpuModel {
    pub dir: PathBuf,
    pub cfg: ModelConfig,
    gpu: Arc<Gpu>,
    embed: DTensor<bf16>,           // [V, H]
    lm_head: Option<DTensor<bf16>>, // [V, H] when untied
    final_norm: DTensor<f32>,       // [H]
    rope: ModelRope,                // [d/2] per layer type
    layers: Layers,
    stats: Mutex<Option<Vec<DeviceStats>>>,
}

use crate::cpu::convert::to_bf16;

/// A CPU model's matrix in bf16 (bf16 bits as they are).
fn mat_to_bf16(m: crate::cpu::decode::Mat<'_>) -> Vec<bf16> {
    match m {
        crate::cpu::decode::Mat::F32(x) => to_bf16(x),
        crate::cpu::decode::Mat::Bf16(x) => x.iter().map(|&b| bf16::from_bits(b)).collect(),
    }
}

/// A checkpoint tensor in bf16: BF16 bytes are taken as they are, F32/F16 rounded to nearest even.
fn read_bf16(store: &WeightStore, name: &str, shape: &[usize]) -> Result<Vec<bf16>> {
    let t = store.get_checked(name, shape)?;
    match t.bf16_bits() {
        Some(bits) => Ok(bits.into_iter().map(bf16::from_bits).collect()),
        None => Ok(to_bf16(&t.to_f32()?)),
    }
}

fn read_f32(store: &WeightStore, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    store.f32_checked(name, shape)
}

/// The embedding multiplier as transformers' bf16 path uses it: sqrt(H) rounded to bf16 where
/// the family scales its embeddings (`cfg.scale_embeddings`; 25.25 for H = 640), else 1 (exact:
/// the gather then copies the rows). `GpuModel`'s kernel and `CudaBackend::embed` both use it.
pub(super) fn embed_scale(cfg: &ModelConfig) -> f32 {
    if cfg.scale_embeddings {
        bf16::from_f64((cfg.hidden_size as f64).sqrt()).to_f32()
    } else {
        1.0
    }
}

/// Layer `l` of the checkpoint in the device formats: matrices as bf16 (BF16 bits as stored,
/// F32/F16 rounded to nearest even), norm weights and biases in f32.
pub(super) fn read_layer(store: &WeightStore, cfg: &ModelConfig, l: usize) -> Result<HostLayer> {
    Layer::try_build(
        cfg,
        |t| read_bf16(store, &layer_name(cfg, l, t), &layer_shape(cfg, t)),
        |t| read_f32(store, &layer_name(cfg, l, t), &layer_shape(cfg, t)),
    )
}

/// Scratch activations of one forward call ([N, ·] bf16).
struct Acts {
    h: DTensor<bf16>,              // [N, H] residual stream
    s: AttnScratch,                // x, y [N, H], q, k, v, att
    gate: DTensor<bf16>,           // [N, I]
    up: DTensor<bf16>,             // [N, I]
    act: DTensor<bf16>,            // [N, I]
    act_f32: Option<DTensor<f32>>, // [N, I] when an observer wants MlpAct
}

impl GpuModel {
    /// Loads a model folder straight into bf16 (no f32 copy of the weights on the host).
    pub fn load(dir: &Path, gpu: Arc<Gpu>, residency: Residency) -> Result<GpuModel> {
        let cfg = ModelConfig::from_dir(dir)?;
        let store = WeightStore::open(dir)?;
        store.check_layers(cfg.num_layers)?;
        let vh = [cfg.vocab_size, cfg.hidden_size];
        let embed = read_bf16(&store, registry::EMBED, &vh)?;
        let lm_head = if untied_head(&cfg, &store)? {
            Some(read_bf16(&store, registry::LM_HEAD, &vh)?)
        } else {
            None
        };
        let final_norm = read_f32(&store, registry::FINAL_NORM, &[cfg.hidden_size])?;
        let host = (0..cfg.num_layers)
            .map(|l| read_layer(&store, &cfg, l))
            .collect::<Result<Vec<_>>>()?;
        Self::build(
            dir.to_path_buf(),
            cfg,
            gpu,
            residency,
            &embed,
            lm_head.as_deref(),
            &final_norm,
            host,
        )
    }

    /// Uploads an already loaded CPU model (its f32 weights rounded to bf16).
    pub fn from_cpu(model: &Model, gpu: Arc<Gpu>, residency: Residency) -> Result<GpuModel> {
        let host = (0..model.cfg.num_layers)
            .map(|l| {
                (model.held_layer(l).as_ref()).map(|_, m| mat_to_bf16(m.mat()), |_, v| v.clone())
            })
            .collect();
        let lm = model.lm_head_table().map(mat_to_bf16);
        Self::build(
            model.dir.clone(),
            model.cfg.clone(),
            gpu,
            residency,
            &mat_to_bf16(model.embed_table()),
            lm.as_deref(),
            &model.final_norm,
            host,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        dir: PathBuf,
        cfg: ModelConfig,
        gpu: Arc<Gpu>,
        residency: Residency,
        embed: &[bf16],
        lm_head: Option<&[bf16]>,
        final_norm: &[f32],
        host: Vec<HostLayer>,
    ) -> Result<GpuModel> {
        let vh = [cfg.vocab_size, cfg.hidden_size];
        let embed = DTensor::from_host(&gpu, embed, &vh)?;
        let lm_head = lm_head
            .map(|w| DTensor::from_host(&gpu, w, &vh))
            .transpose()?;
        let final_norm = DTensor::from_host(&gpu, final_norm, &[cfg.hidden_size])?;
        let rope = ModelRope::new(&gpu, &cfg)?;
        let layers = match residency {
            Residency::Resident => {
                let mut v = Vec::with_capacity(host.len());
                for w in &host {
                    v.push(block::upload(&gpu, &cfg, slices(w))?);
                }
                Layers::Resident(v)
            }
            Residency::Streamed => Layers::Streamed {
                stage: Box::new(Mutex::new(alloc_layer(&gpu, &cfg)?)),
                host,
            },
        };
        Ok(GpuModel {
            dir,
            cfg,
            gpu,
            embed,
            lm_head,
            final_norm,
            rope,
            layers,
            stats: Mutex::new(None),
        })
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// Starts (or restarts) on-device MLP statistics: Σa, Σa² per neuron for every layer, and the
    /// Gram matrix too when `gram` is set ([I, I] f32 per layer: mind the memory).
    pub fn enable_mlp_stats(&self, gram: bool) -> Result<()> {
        let i = self.cfg.intermediate_size;
        let mut v = Vec::with_capacity(self.cfg.num_layers);
        for _ in 0..self.cfg.num_layers {
            v.push(DeviceStats {
                count: 0,
                sum: DTensor::zeros(&self.gpu, &[i])?,
                sumsq: DTensor::zeros(&self.gpu, &[i])?,
                gram: if gram {
                    Some(DTensor::zeros(&self.gpu, &[i, i])?)
                } else {
                    None
                },
            });
        }
        *self.stats.lock().unwrap_or_else(|p| p.into_inner()) = Some(v);
        Ok(())
    }

    /// Downloads and clears the statistics gathered since `enable_mlp_stats` (None if disabled).
    pub fn take_mlp_stats(&self) -> Result<Option<Vec<MlpStats>>> {
        let taken = self.stats.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(mut v) = taken else { return Ok(None) };
        let mut out = Vec::with_capacity(v.len());
        for s in &mut v {
            let gram = match s.gram.as_mut() {
                Some(g) => {
                    ops::gram_symmetrize(&self.gpu, g)?;
                    Some(g.to_host(&self.gpu)?)
                }
                None => None,
            };
            out.push(MlpStats {
                count: s.count,
                sum: s.sum.to_host(&self.gpu)?,
                sumsq: s.sumsq.to_host(&self.gpu)?,
                gram,
            });
        }
        Ok(Some(out))
    }

    /// The embedding multiplier as transformers' bf16 path uses it (`embed_scale`).
    pub fn embed_scale(&self) -> f32 {
        embed_scale(&self.cfg)
    }

    pub(super) fn check_ids(&self, ids: &[u32]) -> Result<()> {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.cfg.vocab_size) {
            return Err(Error::Other(format!(
                "token id {bad} is outside the model's vocabulary ({}); the tokenizer does not \
                 belong to this model",
                self.cfg.vocab_size
            )));
        }
        Ok(())
    }

    fn download_f32(&self, t: &DTensor<bf16>) -> Result<Vec<f32>> {
        Ok(t.to_host(&self.gpu)?
            .into_iter()
            .map(|v| v.to_f32())
            .collect())
    }

    /// Runs all layers and the final norm; returns the normed hidden states [N, H] (f32 values
    /// of the bf16 device tensor). Same contract and observer events as `Model::forward_hidden`.
    pub fn forward_hidden(
        &self,
        ids: &[u32],
        batch: Batch,
        mut obs: Observer<'_>,
    ) -> Result<Vec<f32>> {
        let h = self.forward_device(ids, batch, &mut obs)?;
        self.download_f32(&h)
    }

    /// `forward_hidden` leaving the result on the device ([N, H] bf16).
    pub fn forward_device(
        &self,
        ids: &[u32],
        batch: Batch,
        obs: &mut Observer<'_>,
    ) -> Result<DTensor<bf16>> {
        self.forward_device_kv(ids, batch, obs, None)
    }

    /// `forward_device`, handing every layer's K and V to `kv` (after RoPE, before attention).
    pub(super) fn forward_device_kv(
        &self,
        ids: &[u32],
        batch: Batch,
        obs: &mut Observer<'_>,
        mut kv: Option<&mut KvSink<'_>>,
    ) -> Result<DTensor<bf16>> {
        if ids.len() != batch.rows() {
            return Err(Error::Other(format!(
                "{} ids do not match the batch shape {} × {}",
                ids.len(),
                batch.n_seq,
                batch.seq_len
            )));
        }
        self.check_ids(ids)?;
        let gpu = &*self.gpu;
        let cfg = &self.cfg;
        let n = batch.rows();
        let (hd, i) = (cfg.hidden_size, cfg.intermediate_size);
        let mut a = Acts {
            h: DTensor::zeros(gpu, &[n, hd])?,
            s: AttnScratch::new(gpu, cfg, n)?,
            gate: DTensor::zeros(gpu, &[n, i])?,
            up: DTensor::zeros(gpu, &[n, i])?,
            act: DTensor::zeros(gpu, &[n, i])?,
            act_f32: if obs.is_some() {
                Some(DTensor::zeros(gpu, &[n, i])?)
            } else {
                None
            },
        };
        {
            let _r = range("embed");
            let ids_d = DTensor::from_host(gpu, ids, &[n])?;
            ops::embed(gpu, &self.embed, &ids_d, &mut a.h, self.embed_scale())?;
        }
        if let Some(f) = obs.as_mut() {
            f(Event::Embeds(&self.download_f32(&a.h)?));
        }
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        for l in 0..cfg.num_layers {
            let _r = range(format_args!("layer {l}"));
            let st = stats.as_mut().map(|v| &mut v[l]);
            let kv = kv.as_deref_mut();
            match &self.layers {
                Layers::Resident(v) => self.layer(l, &v[l], &mut a, batch, obs, st, kv)?,
                Layers::Streamed { host, stage } => {
                    let mut s = stage.lock().unwrap_or_else(|p| p.into_inner());
                    copy_layer(gpu, &mut s, &host[l])?;
                    self.layer(l, &s, &mut a, batch, obs, st, kv)?;
                }
            }
        }
        drop(stats);
        ops::rms_norm(
            gpu,
            &a.h,
            &self.final_norm,
            &mut a.s.x,
            cfg.rms_norm_eps,
            cfg.norm_weight,
        )?;
        Ok(a.s.x)
    }

    #[allow(clippy::too_many_arguments)]
    fn layer(
        &self,
        l: usize,
        w: &DeviceLayer,
        a: &mut Acts,
        batch: Batch,
        obs: &mut Observer<'_>,
        stats: Option<&mut DeviceStats>,
        kv: Option<&mut KvSink<'_>>,
    ) -> Result<()> {
        let gpu = &*self.gpu;
        let cfg = &self.cfg;
        block::attention(gpu, cfg, l, w, &self.rope, &mut a.h, &mut a.s, batch, kv)?;
        match stats {
            Some(s) => {
                block::mlp_in(gpu, cfg, w, &a.h, &mut a.s.x, &mut a.gate, &mut a.up)?;
                ops::act_mul(
                    gpu,
                    cfg.mlp_act,
                    &a.gate,
                    &a.up,
                    &mut a.act,
                    a.act_f32.as_mut(),
                    Some((&mut s.sum, &mut s.sumsq)),
                )?;
                if let Some(g) = s.gram.as_mut() {
                    ops::gram_accumulate(gpu, &a.act, g)?;
                }
                s.count += batch.rows() as u64;
            }
            None if a.act_f32.is_none() => {
                let scratch = Some((&mut a.gate, &mut a.up));
                block::mlp_act(gpu, cfg, w, &a.h, &mut a.s.x, &mut a.act, scratch)?
            }
            None => {
                block::mlp_in(gpu, cfg, w, &a.h, &mut a.s.x, &mut a.gate, &mut a.up)?;
                let f = cfg.mlp_act;
                ops::act_mul(gpu, f, &a.gate, &a.up, &mut a.act, a.act_f32.as_mut(), None)?
            }
        }
        block::mlp_down(gpu, w, &a.act, &mut a.s.y)?;
        if let (Some(f), Some(af)) = (obs.as_mut(), a.act_f32.as_ref()) {
            f(Event::MlpAct {
                layer: l,
                act: &af.to_host(gpu)?,
                out: &self.download_f32(&a.s.y)?,
            });
        }
        block::mlp_residual(gpu, cfg, w, &mut a.h, &a.s.y)?;
        if let Some(f) = obs.as_mut() {
            f(Event::LayerOut {
                layer: l,
                hidden: &self.download_f32(&a.h)?,
            });
        }
        Ok(())
    }

    /// The LM head [V, H] (the embedding when tied).
    pub(super) fn head(&self) -> &DTensor<bf16> {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// The embedding table [V, H].
    pub(super) fn embed_table(&self) -> &DTensor<bf16> {
        &self.embed
    }

    /// The final norm's weight [H].
    pub(super) fn final_norm(&self) -> &DTensor<f32> {
        &self.final_norm
    }

    /// The RoPE frequencies of both layer types.
    pub(super) fn rope(&self) -> &ModelRope {
        &self.rope
    }

    /// Runs `f` on layer `l`'s device weights (uploading them first when streamed).
    pub(super) fn with_layer<R>(
        &self,
        l: usize,
        f: impl FnOnce(&DeviceLayer) -> Result<R>,
    ) -> Result<R> {
        match &self.layers {
            Layers::Resident(v) => f(&v[l]),
            Layers::Streamed { host, stage } => {
                let mut s = stage.lock().unwrap_or_else(|p| p.into_inner());
                copy_layer(&self.gpu, &mut s, &host[l])?;
                f(&s)
            }
        }
    }

    /// Logits [rows, V] (f32, final softcap applied) of device hidden rows [rows, H].
    pub fn logits_device(&self, hidden: &DTensor<bf16>) -> Result<DTensor<f32>> {
        let gpu = &*self.gpu;
        let rows = hidden.rows();
        let mut z = DTensor::zeros(gpu, &[rows, self.cfg.vocab_size])?;
        ops::gemm_nt(gpu, hidden, self.head(), None, Some(&mut z), false)?;
        if let Some(cap) = self.cfg.final_softcap {
            ops::softcap(gpu, &mut z, cap)?;
        }
        Ok(z)
    }

    /// Logits for normed hidden rows `[rows, H]` → `[rows, V]`, final softcap applied (the rows
    /// are rounded to bf16 first; rows from `forward_hidden` already are bf16 values).
    pub fn logits(&self, hidden: &[f32]) -> Result<Vec<f32>> {
        let hd = self.cfg.hidden_size;
        if hidden.len() % hd != 0 {
            return Err(Error::Other(format!(
                "{} hidden values are not rows of {hd}",
                hidden.len()
            )));
        }
        let h = DTensor::from_host(&self.gpu, &to_bf16(hidden), &[hidden.len() / hd, hd])?;
        Ok(self.logits_device(&h)?.to_host(&self.gpu)?)
    }

    pub fn forward_logits(&self, ids: &[u32], batch: Batch) -> Result<Vec<f32>> {
        let h = self.forward_device(ids, batch, &mut None)?;
        Ok(self.logits_device(&h)?.to_host(&self.gpu)?)
    }

    /// Per-row log-sum-exp (f64), argmax and, with `targets`, target logit of the logits of
    /// device hidden rows, computed without downloading the logits.
    pub fn logit_stats(
        &self,
        hidden: &DTensor<bf16>,
        targets: Option<&[u32]>,
    ) -> Result<LogitStats> {
        let gpu = &*self.gpu;
        let rows = hidden.rows();
        let z = self.logits_device(hidden)?;
        let t = match targets {
            Some(t) => {
                if t.len() != rows {
                    return Err(Error::Other(format!("{} targets for {rows} rows", t.len())));
                }
                self.check_ids(t)?;
                Some(DTensor::from_host(gpu, t, &[rows])?)
            }
            None => None,
        };
        let mut out = RowStatsOut::new(gpu, rows)?;
        ops::row_stats(gpu, &z, t.as_ref(), &mut out)?;
        Ok(LogitStats {
            lse: out.lse.to_host(gpu)?,
            argmax: out
                .argmax
                .to_host(gpu)?
                .into_iter()
                .map(|v| v as u32)
                .collect(),
            target_logit: if t.is_some() {
                Some(out.target_logit.to_host(gpu)?)
            } else {
                None
            },
        })
    }
}

/// Per-row summaries of a logit matrix.
#[derive(Debug, Clone)]
pub struct LogitStats {
    pub lse: Vec<f64>,
    pub argmax: Vec<u32>,
    pub target_logit: Option<Vec<f32>>,
}

/// The evaluation protocol (`crate::serve::eval`) over the GPU forward pass: hidden states and logits
/// computed on the device and downloaded (bf16 hidden values, f32 logits); scoring stays on the
/// host.
impl crate::engine::LogitModel for GpuModel {
    fn cfg(&self) -> &ModelConfig {
        &self.cfg
    }
    fn dir(&self) -> &Path {
        &self.dir
    }
    fn forward_hidden(&self, ids: &[u32], batch: Batch) -> Result<Vec<f32>> {
        GpuModel::forward_hidden(self, ids, batch, None)
    }
    fn logits(&self, hidden: &[f32]) -> Result<Vec<f32>> {
        GpuModel::logits(self, hidden)
    }
}

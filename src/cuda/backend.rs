//! `CudaBackend`: the calibration `Backend` of `crate::engine::calib` on the GPU, so `whittle compile`
//! runs unchanged with `--device cuda`. The layer halves are `GpuModel::layer`'s kernel sequence
//! (same ops, same order, same shapes), so the hidden states and activations a compile sees are
//! the GPU model's bf16 values.
//!
//! Data flow:
//! - **Hidden states stay on the device.** `start` embeds the calibration ids on the host (the
//!   checkpoint's rows, rounded as `GpuModel` rounds them) and uploads them once, one bf16
//!   buffer per batch of sequences (and a second set for the reference stream of
//!   `--refit-target original`); every layer half then runs in place there. Only `hidden`
//!   (tests) downloads them.
//! - **Statistics are accumulated on the device.** `begin_stats` allocates Σa, Σa² (f64) and the
//!   Gram matrix (f32, upper block triangle, symmetrised by `take_stats`) on the GPU; each
//!   `Capture::Stats` call adds its batch there (uniform weights: fused into the activation
//!   kernel; token weights — `out`, `out-resid`, `next-norm` — `token_weights` +
//!   `scale_rows_stats`, then the Gram of the scaled rows), and only `take_stats` downloads, once
//!   per layer. The cross matrix of
//!   `--refit-target original` pairs two streams' activations and is still accumulated on the
//!   host from downloaded activations (correct, slow; not the default).
//! - The column sums use f64 atomics, so GPU statistics are not bitwise repeatable run to run
//!   (the Gram matrix is).
//! - **Weights** are uploaded by `load_layer` straight from the checkpoint (`GpuModel`'s
//!   `read_layer`: BF16 bits as stored, F32/F16 rounded to nearest even; norm weights f32) and
//!   handed back to the caller as an `EngineLayer::Device`, which the run calls take: the backend
//!   never has to recognise weights. `load_pruned` uploads the pruned MLP half (gate, up and the
//!   possibly re-fitted down rounded to bf16, the MLP norms) once after slicing. The caller
//!   drops a handle when it is done with it, so at most one layer's weights and its pruned MLP
//!   occupy the GPU.
//! - **Embeddings** (`Backend::embed`) are `bf16(bf16(e) · bf16(sqrt(H)))` (`bf16(e)` where the
//!   family does not scale them), exactly what the `embed_bf16` kernel computes for `GpuModel`,
//!   computed on the host from the checkpoint rows. The CPU backend uses f32 `e · sqrt(H)`.

use super::block::{self, AttnScratch, DeviceLayer};
use super::gpu::{DTensor, Gpu};
use super::ops::{self, ModelRope, TokenWeightMode};
use crate::checkpoint::config::ModelConfig;
use crate::checkpoint::registry::Half;
use crate::checkpoint::safetensors::WeightStore;
use crate::cpu::model::embed_rows_from_store;
use crate::engine::calib::{
    started, started_mut, Backend, Capture, Gram, HostCapture, Layout, MlpStats, StatsSpec, Stream,
    Streams, TokenWeight,
};
use crate::engine::Batch;
use crate::engine::EngineLayer;
use crate::error::{Error, Result};
use crate::layer::Layer;
use half::bf16;
use std::sync::Arc;

use crate::cpu::convert::to_bf16;

/// Statistics accumulated on the device (`StatsSpec` without the cross matrix).
struct DevCapture {
    spec: StatsSpec,
    count: u64,
    sum: DTensor<f64>,          // [I] Σ w·a
    sumsq: DTensor<f64>,        // [I] Σ w·a²
    gram: Option<DTensor<f32>>, // [I, I] Σ w·a·aᵀ, upper block triangle until taken
}

/// Where the open statistics live: the device, or (for the cross matrix, which pairs two
/// streams' activations) the host, fed with downloaded activations.
enum Capturing {
    Device(DevCapture),
    Host(HostCapture),
}

/// Runs calibration layers on one GPU (see the module comment for what travels where).
pub struct CudaBackend {
    gpu: Arc<Gpu>,
    capture: Option<Capturing>,
    streams: Option<Streams<DTensor<bf16>>>, // per batch [rows, H]
}

impl CudaBackend {
    pub fn new(gpu: Arc<Gpu>) -> CudaBackend {
        CudaBackend {
            gpu,
            capture: None,
            streams: None,
        }
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// `h += post_attn_norm(o_proj(attn(input_norm(h))))` on the device (`GpuModel::layer`; no
    /// post-norm in the Llama family).
    fn attn_device(
        gpu: &Gpu,
        cfg: &ModelConfig,
        l: usize,
        w: &DeviceLayer,
        h: &mut DTensor<bf16>,
        batch: Batch,
    ) -> Result<()> {
        let n = batch.rows();
        if h.rows() != n {
            return Err(Error::Other(format!(
                "{} hidden rows for a batch of {} × {}",
                h.rows(),
                batch.n_seq,
                batch.seq_len
            )));
        }
        let mut scratch = AttnScratch::new(gpu, cfg, n)?;
        // d/2 floats per layer type: uploaded per call, next to the layer's scratch.
        let rope = ModelRope::new(gpu, cfg)?;
        block::attention(gpu, cfg, l, w, &rope, h, &mut scratch, batch, None)
    }

    /// `h += post_ffn_norm(down(act(gate(x))·up(x)))`, `x = pre_ffn_norm(h)` (only when
    /// `write`; otherwise `h` is left as it was), recording the down_proj input as `capture`
    /// asks into `capturing`.
    #[allow(clippy::too_many_arguments)]
    fn mlp_device(
        gpu: &Gpu,
        cfg: &ModelConfig,
        w: &DeviceLayer,
        h: &mut DTensor<bf16>,
        capture: Capture,
        write: bool,
        capturing: Option<&mut Capturing>,
    ) -> Result<()> {
        let eps = cfg.rms_norm_eps;
        let (n, hd, i) = (h.rows(), cfg.hidden_size, w.gate().rows());
        let mw = w;
        let mut x = DTensor::zeros(gpu, &[n, hd])?; // [N, H]
        let mut act = DTensor::zeros(gpu, &[n, i])?; // [N, I]

        // Uniform weights on the device: the column sums come fused with the activation.
        let fused = match (capture, capturing.as_deref()) {
            (Capture::Stats, Some(Capturing::Device(d))) => {
                d.spec.token_weight == TokenWeight::Uniform
            }
            _ => false,
        };
        match (fused, capturing) {
            (true, Some(Capturing::Device(d))) => {
                let mut gate = DTensor::zeros(gpu, &[n, i])?; // [N, I]
                let mut up = DTensor::zeros(gpu, &[n, i])?; // [N, I]
                block::mlp_in(gpu, cfg, mw, h, &mut x, &mut gate, &mut up)?;
                drop(x);
                ops::act_mul(
                    gpu,
                    cfg.mlp_act,
                    &gate,
                    &up,
                    &mut act,
                    None,
                    Some((&mut d.sum, &mut d.sumsq)),
                )?;
                drop((gate, up));
                if let Some(g) = d.gram.as_mut() {
                    ops::gram_accumulate(gpu, &act, g)?;
                }
                d.count += n as u64;
                if write {
                    let mut y = DTensor::zeros(gpu, &[n, hd])?; // [N, H]
                    block::mlp_down(gpu, mw, &act, &mut y)?;
                    block::mlp_residual(gpu, cfg, mw, h, &y)?;
                }
                return Ok(());
            }
            (_, capturing) => {
                block::mlp_act(gpu, cfg, mw, h, &mut x, &mut act, None)?;
                drop(x);
                let mut y = DTensor::zeros(gpu, &[n, hd])?; // [N, H]
                block::mlp_down(gpu, mw, &act, &mut y)?;
                match (capture, capturing) {
                    (Capture::None, _) => {}
                    (_, None) => {
                        return Err(Error::Other(
                            "run_mlp asked for statistics before begin_stats".into(),
                        ))
                    }
                    (Capture::Stats, Some(Capturing::Device(d))) => {
                        // Weighted: w from y (and the input residual, still in h), then the
                        // statistics of the scaled rows.
                        let mode = match d.spec.token_weight {
                            TokenWeight::Out => TokenWeightMode::Out,
                            TokenWeight::OutResid => TokenWeightMode::OutResid,
                            TokenWeight::NextNorm => TokenWeightMode::NextNorm,
                            TokenWeight::Uniform => {
                                return Err(Error::Other(
                                    "uniform token weights take the fused path".into(),
                                ))
                            }
                        };
                        let mut wt = DTensor::zeros(gpu, &[n])?; // [N]
                        let resid = d.spec.token_weight.needs_resid().then_some(&*h);
                        ops::token_weights(gpu, mode, &y, resid, &mut wt, eps)?;
                        let mut scaled = DTensor::zeros(gpu, &[n, i])?; // [N, I]
                        ops::scale_rows_stats(
                            gpu,
                            &act,
                            &wt,
                            &mut scaled,
                            Some((&mut d.sum, &mut d.sumsq)),
                        )?;
                        if let Some(g) = d.gram.as_mut() {
                            ops::gram_accumulate(gpu, &scaled, g)?;
                        }
                        d.count += n as u64;
                    }
                    (Capture::Reference, Some(Capturing::Device(_))) => {
                        return Err(Error::Other(
                            "Capture::Reference needs statistics opened with cross".into(),
                        ))
                    }
                    (c, Some(Capturing::Host(hc))) => {
                        let wide = |t: &DTensor<bf16>| -> Result<Vec<f32>> {
                            Ok(t.to_host(gpu)?.into_iter().map(|v| v.to_f32()).collect())
                        };
                        let resid = hc
                            .spec
                            .token_weight
                            .needs_resid()
                            .then(|| wide(h))
                            .transpose()?;
                        hc.record(c, &wide(&act)?, &wide(&y)?, resid.as_deref(), hd, eps)?;
                    }
                }
                if write {
                    block::mlp_residual(gpu, cfg, mw, h, &y)?;
                }
            }
        }
        Ok(())
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> String {
        format!("{} (bf16)", self.gpu.info)
    }

    fn stream_elem_bytes(&self) -> usize {
        2 // bf16 hidden states on the device
    }

    fn solver(&self) -> crate::cpu::linalg::Solver {
        crate::cpu::linalg::Solver::Cuda(self.gpu.clone())
    }

    fn kernels(&self, cfg: &ModelConfig) -> Option<String> {
        Some(ops::kernel_summary(&self.gpu, cfg))
    }

    fn embed(&mut self, cfg: &ModelConfig, store: &WeightStore, ids: &[u32]) -> Result<Vec<f32>> {
        let mut rows = embed_rows_from_store(cfg, store, ids)?;
        // As GpuModel: the table in bf16, times sqrt(H) rounded to bf16 (1 where the family does
        // not scale), the product rounded.
        let scale = super::model::embed_scale(cfg);
        for x in &mut rows {
            *x = bf16::from_f32(bf16::from_f32(*x).to_f32() * scale).to_f32();
        }
        Ok(rows)
    }

    fn start(
        &mut self,
        cfg: &ModelConfig,
        store: &WeightStore,
        ids: &[u32],
        layout: Layout,
        reference: bool,
    ) -> Result<()> {
        self.streams = None; // free the previous run's states first
        let hd = cfg.hidden_size;
        let mut pruned = Vec::with_capacity(layout.sizes.len());
        let mut refs = Vec::new();
        for b in 0..layout.sizes.len() {
            let rows = self.embed(cfg, store, &ids[layout.tokens(b)])?; // [rows, H], bf16 values
            let up = to_bf16(&rows);
            let n = up.len() / hd;
            pruned.push(DTensor::from_host(&self.gpu, &up, &[n, hd])?);
            if reference {
                refs.push(DTensor::from_host(&self.gpu, &up, &[n, hd])?);
            }
        }
        self.streams = Some(Streams {
            layout,
            pruned,
            reference: refs,
        });
        Ok(())
    }

    fn finish(&mut self) {
        self.streams = None;
    }

    fn hidden(&self, s: Stream, b: usize) -> Result<Vec<f32>> {
        let h = started(&self.streams)?.get(s, b)?;
        Ok(h.to_host(&self.gpu)?
            .into_iter()
            .map(|x| x.to_f32())
            .collect())
    }

    fn load_layer<'w>(
        &mut self,
        cfg: &ModelConfig,
        store: &WeightStore,
        l: usize,
        _host: &'w Layer<Vec<f32>>,
    ) -> Result<EngineLayer<'w>> {
        let host = super::model::read_layer(store, cfg, l)?;
        let w = host.as_ref().map(|_, m| &m[..], |_, v| &v[..]);
        Ok(EngineLayer::Device(block::upload(&self.gpu, cfg, w)?))
    }

    fn load_pruned<'w>(
        &mut self,
        cfg: &ModelConfig,
        layer: &'w Layer<Vec<f32>>,
        mlp: &'w Layer<Vec<f32>>,
    ) -> Result<EngineLayer<'w>> {
        // Rounded to bf16 as `GpuModel::from_cpu` rounds (exact for gate and up, sliced from
        // a BF16 checkpoint's widened values).
        let half = layer.as_ref().only(|t| t.half() == Half::Mlp);
        let host = half.overlay(mlp.as_ref()).map(|_, m| to_bf16(m), |_, v| v);
        let w = host.as_ref().map(|_, m| &m[..], |_, v| &v[..]);
        Ok(EngineLayer::Device(block::upload(&self.gpu, cfg, w)?))
    }

    fn run_attention(
        &mut self,
        cfg: &ModelConfig,
        l: usize,
        w: &EngineLayer<'_>,
        s: Stream,
        b: usize,
    ) -> Result<()> {
        let wa = w.device("CUDA")?;
        let st = started_mut(&mut self.streams)?;
        let batch = st.layout.batch(b);
        let h = st.get_mut(s, b)?;
        Self::attn_device(&self.gpu, cfg, l, wa, h, batch)
    }

    fn run_mlp(
        &mut self,
        cfg: &ModelConfig,
        _l: usize,
        w: &EngineLayer<'_>,
        s: Stream,
        b: usize,
        capture: Capture,
        write: bool,
    ) -> Result<()> {
        let wm = w.device("CUDA")?;
        let h = started_mut(&mut self.streams)?.get_mut(s, b)?;
        Self::mlp_device(&self.gpu, cfg, wm, h, capture, write, self.capture.as_mut())
    }

    fn begin_stats(&mut self, spec: StatsSpec) -> Result<()> {
        self.capture = None; // free the previous layer's accumulators first
        self.capture = Some(if spec.cross {
            Capturing::Host(HostCapture::new(spec))
        } else {
            let gpu = &self.gpu;
            let i = spec.width;
            Capturing::Device(DevCapture {
                spec,
                count: 0,
                sum: DTensor::zeros(gpu, &[i])?,
                sumsq: DTensor::zeros(gpu, &[i])?,
                gram: if spec.gram {
                    Some(DTensor::zeros(gpu, &[i, i])?)
                } else {
                    None
                },
            })
        });
        Ok(())
    }

    fn take_stats(&mut self) -> Result<MlpStats> {
        match self.capture.take() {
            None => Err(Error::Other("take_stats without begin_stats".into())),
            Some(Capturing::Host(hc)) => Ok(hc.into_stats()),
            Some(Capturing::Device(mut d)) => {
                let gpu = &*self.gpu;
                let mut gram = None;
                if let Some(mut g) = d.gram.take() {
                    ops::gram_symmetrize(gpu, &mut g)?;
                    gram = Some(if d.spec.gram_on_device {
                        Gram::Device(super::linalg::device_gram(g))
                    } else {
                        Gram::Host(g.to_host(gpu)?.into_iter().map(f64::from).collect())
                    });
                }
                Ok(MlpStats {
                    width: d.spec.width,
                    count: d.count,
                    sum: d.sum.to_host(gpu)?,
                    sumsq: d.sumsq.to_host(gpu)?,
                    gram,
                    cross: None,
                    // Complete: nothing more is added on the host.
                    gram_kernel: None,
                })
            }
        }
    }
}

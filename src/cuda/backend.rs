//! `CudaBackend`: the calibration `Backend` of `crate::calib` on the GPU, so `whittle compile`
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
//!   kernel; token weights: `token_weights` + `scale_rows_stats`, then the Gram of the scaled
//!   rows), and only `take_stats` downloads, once per layer. The cross matrix of
//!   `--refit-target original` pairs two streams' activations and is still accumulated on the
//!   host from downloaded activations (correct, slow; not the default).
//! - The column sums use f64 atomics, so GPU statistics are not bitwise repeatable run to run
//!   (the Gram matrix is); the weights are still widened to f32 and uploaded per layer from the
//!   host (`LayerWeights`), which the speed issue may want to stream as bf16 instead.
//! - **Weights** come from the `&LayerWeights` argument (f32). They are rounded to bf16
//!   (nearest-even, as `GpuModel::from_cpu` rounds them; the norm weights stay f32) and uploaded
//!   once per distinct (layer index, width), then cached. Each half is uploaded when it first
//!   runs, because the pruned layer that `--sequential` re-runs needs only its MLP. The cache
//!   keeps only the current layer's entries, and a call for another layer evicts them, so at
//!   most two sets of one layer's weights (full width and pruned) occupy the GPU. An entry is
//!   checked against the addresses, lengths and a sample of the values of the weights it came
//!   from. If a caller passes different weights under the same key, they are uploaded again.
//!   This happens in compile when the pruned width equals the full width but down_proj was
//!   re-fitted.
//! - **Embeddings** (`Backend::embed`) are `bf16(bf16(e) · bf16(sqrt(H)))`, exactly what the
//!   `embed_bf16` kernel computes for `GpuModel`, computed on the host from the checkpoint rows.
//!   The CPU backend uses f32 `e · sqrt(H)`.

use super::block::{self, AttnScratch, AttnWeights, MlpWeights};
use super::error::CudaResult;
use super::gpu::{DTensor, Gpu};
use super::ops;
use crate::calib::{
    started, started_mut, Backend, Capture, HostCapture, Layout, MlpStats, StatsSpec, Stream,
    Streams, TokenWeight,
};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::model::{embed_rows_from_store, Batch, LayerWeights};
use crate::safetensors::WeightStore;
use half::bf16;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use crate::cpu::bf16::to_bf16;

/// Identity of the host weights an upload came from: buffer addresses, lengths and up to 64
/// evenly spaced values of each tensor.
fn fingerprint(parts: &[&[f32]]) -> u64 {
    let mut hs = DefaultHasher::new();
    for p in parts {
        (p.as_ptr() as usize).hash(&mut hs);
        p.len().hash(&mut hs);
        let step = (p.len() / 64).max(1);
        for v in p.iter().step_by(step) {
            v.to_bits().hash(&mut hs);
        }
    }
    hs.finish()
}

fn attn_parts(w: &LayerWeights) -> Vec<&[f32]> {
    let mut v: Vec<&[f32]> = vec![&w.input_norm, &w.q, &w.k, &w.v, &w.o, &w.post_attn_norm];
    v.extend(w.q_norm.as_deref());
    v.extend(w.k_norm.as_deref());
    v
}

fn mlp_parts(w: &LayerWeights) -> Vec<&[f32]> {
    vec![&w.pre_ffn_norm, &w.gate, &w.up, &w.down, &w.post_ffn_norm]
}

/// The attention half's weights on the device.
struct DevAttn {
    fp: u64,
    input_norm: DTensor<f32>,     // [H]
    q: DTensor<bf16>,             // [nh·d, H]
    k: DTensor<bf16>,             // [nkv·d, H]
    v: DTensor<bf16>,             // [nkv·d, H]
    o: DTensor<bf16>,             // [H, nh·d]
    q_norm: Option<DTensor<f32>>, // [d]
    k_norm: Option<DTensor<f32>>, // [d]
    post_attn_norm: DTensor<f32>, // [H]
}

impl DevAttn {
    fn weights(&self) -> AttnWeights<'_> {
        block::attn_weights!(self)
    }

    fn upload(gpu: &Gpu, cfg: &ModelConfig, w: &LayerWeights, fp: u64) -> CudaResult<DevAttn> {
        let (h, d, qd, kvd) = (cfg.hidden_size, cfg.head_dim, cfg.q_dim(), cfg.kv_dim());
        let norm = |x: &Option<Vec<f32>>| {
            x.as_ref()
                .map(|x| DTensor::from_host(gpu, x, &[d]))
                .transpose()
        };
        Ok(DevAttn {
            fp,
            input_norm: DTensor::from_host(gpu, &w.input_norm, &[h])?,
            q: DTensor::from_host(gpu, &to_bf16(&w.q), &[qd, h])?,
            k: DTensor::from_host(gpu, &to_bf16(&w.k), &[kvd, h])?,
            v: DTensor::from_host(gpu, &to_bf16(&w.v), &[kvd, h])?,
            o: DTensor::from_host(gpu, &to_bf16(&w.o), &[h, qd])?,
            q_norm: norm(&w.q_norm)?,
            k_norm: norm(&w.k_norm)?,
            post_attn_norm: DTensor::from_host(gpu, &w.post_attn_norm, &[h])?,
        })
    }
}

/// The MLP half's weights on the device, at the layer's (possibly pruned) width I.
struct DevMlp {
    fp: u64,
    pre_ffn_norm: DTensor<f32>,  // [H]
    gate: DTensor<bf16>,         // [I, H]
    up: DTensor<bf16>,           // [I, H]
    down: DTensor<bf16>,         // [H, I]
    post_ffn_norm: DTensor<f32>, // [H]
}

impl DevMlp {
    fn weights(&self) -> MlpWeights<'_> {
        block::mlp_weights!(self)
    }

    fn upload(gpu: &Gpu, cfg: &ModelConfig, w: &LayerWeights, fp: u64) -> CudaResult<DevMlp> {
        let (h, i) = (cfg.hidden_size, w.width);
        Ok(DevMlp {
            fp,
            pre_ffn_norm: DTensor::from_host(gpu, &w.pre_ffn_norm, &[h])?,
            gate: DTensor::from_host(gpu, &to_bf16(&w.gate), &[i, h])?,
            up: DTensor::from_host(gpu, &to_bf16(&w.up), &[i, h])?,
            down: DTensor::from_host(gpu, &to_bf16(&w.down), &[h, i])?,
            post_ffn_norm: DTensor::from_host(gpu, &w.post_ffn_norm, &[h])?,
        })
    }
}

/// Cached device weights of one (layer, width).
struct Entry {
    layer: usize,
    width: usize,
    attn: Option<DevAttn>,
    mlp: Option<DevMlp>,
}

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
    cache: Vec<Entry>,
    capture: Option<Capturing>,
    streams: Option<Streams<DTensor<bf16>>>, // per batch [rows, H]
}

impl CudaBackend {
    pub fn new(gpu: Arc<Gpu>) -> CudaBackend {
        CudaBackend {
            gpu,
            cache: Vec::new(),
            capture: None,
            streams: None,
        }
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// Index of the cache entry of (l, width), evicting every other layer's entries.
    fn entry(&mut self, l: usize, width: usize) -> usize {
        self.cache.retain(|e| e.layer == l);
        match self.cache.iter().position(|e| e.width == width) {
            Some(i) => i,
            None => {
                self.cache.push(Entry {
                    layer: l,
                    width,
                    attn: None,
                    mlp: None,
                });
                self.cache.len() - 1
            }
        }
    }

    fn ensure_attn(&mut self, cfg: &ModelConfig, l: usize, w: &LayerWeights) -> Result<usize> {
        let i = self.entry(l, w.width);
        let fp = fingerprint(&attn_parts(w));
        if self.cache[i].attn.as_ref().map(|a| a.fp) != Some(fp) {
            self.cache[i].attn = None; // free the stale copy before uploading the new one
            self.cache[i].attn = Some(DevAttn::upload(&self.gpu, cfg, w, fp)?);
        }
        Ok(i)
    }

    fn ensure_mlp(&mut self, cfg: &ModelConfig, l: usize, w: &LayerWeights) -> Result<usize> {
        let i = self.entry(l, w.width);
        let fp = fingerprint(&mlp_parts(w));
        if self.cache[i].mlp.as_ref().map(|m| m.fp) != Some(fp) {
            self.cache[i].mlp = None;
            self.cache[i].mlp = Some(DevMlp::upload(&self.gpu, cfg, w, fp)?);
        }
        Ok(i)
    }

    /// `h += post_attn_norm(o_proj(attn(input_norm(h))))` on the device (`GpuModel::layer`).
    fn attn_device(
        gpu: &Gpu,
        cfg: &ModelConfig,
        l: usize,
        w: &DevAttn,
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
        block::attention(gpu, cfg, l, &w.weights(), h, &mut scratch, batch, None)
    }

    /// `h += post_ffn_norm(down(gelu_tanh(gate(x))·up(x)))`, `x = pre_ffn_norm(h)` (only when
    /// `write`; otherwise `h` is left as it was), recording the down_proj input as `capture`
    /// asks into `capturing`.
    #[allow(clippy::too_many_arguments)]
    fn mlp_device(
        gpu: &Gpu,
        cfg: &ModelConfig,
        w: &DevMlp,
        h: &mut DTensor<bf16>,
        capture: Capture,
        write: bool,
        capturing: Option<&mut Capturing>,
    ) -> Result<()> {
        let eps = cfg.rms_norm_eps;
        let (n, hd, i) = (h.rows(), cfg.hidden_size, w.gate.rows());
        let mw = w.weights();
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
                block::mlp_in(gpu, cfg, &mw, h, &mut x, &mut gate, &mut up)?;
                drop(x);
                ops::gelu_mul(
                    gpu,
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
                    block::mlp_down(gpu, &mw, &act, &mut y)?;
                    block::mlp_residual(gpu, cfg, &mw, h, &y)?;
                }
                return Ok(());
            }
            (_, capturing) => {
                block::mlp_act(gpu, cfg, &mw, h, &mut x, &mut act, None)?;
                drop(x);
                let mut y = DTensor::zeros(gpu, &[n, hd])?; // [N, H]
                block::mlp_down(gpu, &mw, &act, &mut y)?;
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
                        let mut wt = DTensor::zeros(gpu, &[n])?; // [N]
                        let resid = (d.spec.token_weight == TokenWeight::OutResid).then_some(&*h);
                        ops::token_weights(gpu, &y, resid, &mut wt, eps)?;
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
                        let resid = (hc.spec.token_weight == TokenWeight::OutResid)
                            .then(|| wide(h))
                            .transpose()?;
                        hc.record(c, &wide(&act)?, &wide(&y)?, resid.as_deref(), hd, eps)?;
                    }
                }
                if write {
                    block::mlp_residual(gpu, cfg, &mw, h, &y)?;
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

    fn solver(&self) -> crate::prune::Solver {
        crate::prune::Solver::Cuda(self.gpu.clone())
    }

    fn kernels(&self, cfg: &ModelConfig) -> Option<String> {
        Some(ops::kernel_summary(&self.gpu, cfg))
    }

    fn embed(&mut self, cfg: &ModelConfig, store: &WeightStore, ids: &[u32]) -> Result<Vec<f32>> {
        let mut rows = embed_rows_from_store(cfg, store, ids)?;
        // As GpuModel: the table in bf16, times sqrt(H) rounded to bf16, the product rounded.
        let scale = bf16::from_f64((cfg.hidden_size as f64).sqrt()).to_f32();
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

    fn run_attention(
        &mut self,
        cfg: &ModelConfig,
        l: usize,
        w: &LayerWeights,
        s: Stream,
        b: usize,
    ) -> Result<()> {
        let e = self.ensure_attn(cfg, l, w)?;
        let wa = self.cache[e].attn.as_ref().expect("uploaded above");
        let st = started_mut(&mut self.streams)?;
        let batch = st.layout.batch(b);
        let h = st.get_mut(s, b)?;
        Self::attn_device(&self.gpu, cfg, l, wa, h, batch)
    }

    fn run_mlp(
        &mut self,
        cfg: &ModelConfig,
        l: usize,
        w: &LayerWeights,
        s: Stream,
        b: usize,
        capture: Capture,
        write: bool,
    ) -> Result<()> {
        let e = self.ensure_mlp(cfg, l, w)?;
        let wm = self.cache[e].mlp.as_ref().expect("uploaded above");
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
            Some(Capturing::Host(hc)) => Ok(hc.stats),
            Some(Capturing::Device(mut d)) => {
                let gpu = &*self.gpu;
                let (mut gram, mut gram_device) = (None, None);
                if let Some(mut g) = d.gram.take() {
                    ops::gram_symmetrize(gpu, &mut g)?;
                    if d.spec.gram_on_device {
                        gram_device = Some(super::linalg::device_gram(g));
                    } else {
                        gram = Some(g.to_host(gpu)?.into_iter().map(f64::from).collect());
                    }
                }
                Ok(MlpStats {
                    width: d.spec.width,
                    count: d.count,
                    sum: d.sum.to_host(gpu)?,
                    sumsq: d.sumsq.to_host(gpu)?,
                    gram,
                    cross: None,
                    gram_device,
                })
            }
        }
    }
}

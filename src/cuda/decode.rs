//! KV-cache decoding on the GPU: `GpuDecoder` mirrors the CPU `decode::Decoder` (same API, same
//! cache layout and slot mapping) over a `GpuModel`'s bf16 weights.
//!
//! # Cache
//!
//! Per layer, K and V are bf16 `[n_kv, slots, d]` on the device, K after the q/k norm and RoPE.
//! `decode::layer_slots` decides the geometry exactly as for the CPU cache: a sliding layer whose
//! window W is below `max_len` is a ring of W slots (position j in slot j % W), every other layer
//! has `max_len` slots (position j in slot j). See src/cpu/decode.rs and kernels/decode.cu.
//!
//! # Prefill
//!
//! The prompt runs through `GpuModel`'s batched forward pass (the GEMM and flash-attention
//! kernels), which hands every layer's K and V to a sink right after RoPE; the sink copies them
//! into the cache with `ops::kv_cache_write` (on a ring only the last W rows, as the CPU cache
//! does). The hidden states therefore equal `GpuModel::forward_device` on the prompt bit for bit.
//! The LM head then runs as a GEMV on the last row.
//!
//! # Step
//!
//! One token at position p, per layer: RMSNorm → q/k/v GEMVs (+ biases: the GEMV in f32, then
//! `bias_add`) → q/k norms (Gemma-3, Qwen3) → RoPE of q and k (the layer type's frequencies)
//! fused with the cache write of slot `slot_of(p)` → decode attention over the visible positions
//! (split-K, `ops::decode_attention`) → o GEMV (+ bias) → post-norm + residual (plain residual
//! add without a post-norm) → RMSNorm → the gate/up GEMV fused with act·up → down GEMV →
//! post-norm + residual (or plain). Then the final norm and the LM head GEMV with the final
//! softcap fused. Which of these a layer runs is read from the config and its slots, as
//! `block` does for the batched pass. Values are rounded to bf16 where the batched path
//! rounds them, so a step computes what the batched forward computes for that row, up to the
//! order of f32 sums (GEMV lanes vs GEMM tiles) and attention's p kept in f32 (the flash kernel
//! rounds p to bf16 before p·v).
//!
//! All work is queued on the model's one stream; `step` and `prefill` download the logits
//! (`[V]` f32), `step_greedy` and `prefill_greedy` pick on the device and download one id.

use super::block::{self, BiasScratch, DeviceLayer, Product};
use super::gpu::{DTensor, Gpu};
use super::model::GpuModel;
use super::ops::{self, DecodeAttnParams, DecodeWorkspace, RopeFreqs, RowStatsOut};
use super::prof::range;
use crate::checkpoint::config::ModelConfig;
use crate::cpu::decode::{layer_slots, slot_of};
use crate::engine::Batch;
use crate::engine::{Decode, Engine};
use crate::error::{Error, Result};
use half::bf16;

/// One layer's cache.
struct LayerKv {
    k: DTensor<bf16>, // [n_kv, slots, d]
    v: DTensor<bf16>, // [n_kv, slots, d]
    slots: usize,
    ring: bool,
    window: Option<usize>,
}

/// Scratch of one step (a single token).
struct StepBufs {
    ids: DTensor<u32>,            // [1]
    h: DTensor<bf16>,             // [1, H] residual stream
    x: DTensor<bf16>,             // [1, H] normed block input; the final-normed row
    y: DTensor<bf16>,             // [1, H] block output before its post-norm
    q: DTensor<bf16>,             // [1, nh·d]
    k: DTensor<bf16>,             // [1, nkv·d]
    v: DTensor<bf16>,             // [1, nkv·d]
    att: DTensor<bf16>,           // [1, nh·d]
    qkv_f32: Option<BiasScratch>, // [1, ·] f32 q/k/v before their biases' rounding
    y_f32: Option<DTensor<f32>>,  // [1, H] f32 o_proj output with a bias
    act: DTensor<bf16>,           // [1, I]
    logits: DTensor<f32>,         // [1, V]
    pick: RowStatsOut,            // [1] each: argmax of the logits
    ws: DecodeWorkspace,          // split-K partials [nh, splits, d], [nh, splits, 2]
}

/// Prefill + step decoding of one sequence on the GPU, over a borrowed `GpuModel`.
pub struct GpuDecoder<'m> {
    model: &'m GpuModel,
    max_len: usize,
    /// Positions written so far (the next token's position).
    len: usize,
    layers: Vec<LayerKv>,
    b: StepBufs,
    /// Split count forced on decode attention (tests); None plans it per step.
    splits: Option<usize>,
}

impl<'m> GpuDecoder<'m> {
    /// A decoder able to hold `max_len` positions (prompt + generated tokens). Allocates the
    /// cache (2 · n_kv · slots · d bf16 per layer) and the step buffers.
    pub fn new(model: &'m GpuModel, max_len: usize) -> Result<GpuDecoder<'m>> {
        let cfg = &model.cfg;
        let gpu = &**model.gpu();
        let (hd, d, nh, nkv) = (
            cfg.hidden_size,
            cfg.head_dim,
            cfg.num_heads,
            cfg.num_kv_heads,
        );
        if max_len == 0 || i32::try_from(max_len).is_err() {
            return Err(Error::Other(format!(
                "GPU decoder: max_len {max_len} must be in 1 ..= 2^31 - 1"
            )));
        }
        if ops::decode_attention_kernel(d).is_none() {
            return Err(Error::Other(format!(
                "the GPU decoder supports head_dim a multiple of 8 up to 256, this model has {d}; \
                 use --device cpu"
            )));
        }
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let window = cfg.window(l);
            let (slots, ring) = layer_slots(window, max_len);
            layers.push(LayerKv {
                k: DTensor::zeros(gpu, &[nkv, slots, d])?,
                v: DTensor::zeros(gpu, &[nkv, slots, d])?,
                slots,
                ring,
                window,
            });
        }
        let b = StepBufs {
            ids: DTensor::zeros(gpu, &[1])?,
            h: DTensor::zeros(gpu, &[1, hd])?,
            x: DTensor::zeros(gpu, &[1, hd])?,
            y: DTensor::zeros(gpu, &[1, hd])?,
            q: DTensor::zeros(gpu, &[1, nh * d])?,
            k: DTensor::zeros(gpu, &[1, nkv * d])?,
            v: DTensor::zeros(gpu, &[1, nkv * d])?,
            att: DTensor::zeros(gpu, &[1, nh * d])?,
            qkv_f32: if cfg.attn_bias.qkv {
                Some(BiasScratch {
                    q: DTensor::zeros(gpu, &[1, nh * d])?,
                    k: DTensor::zeros(gpu, &[1, nkv * d])?,
                    v: DTensor::zeros(gpu, &[1, nkv * d])?,
                })
            } else {
                None
            },
            y_f32: if cfg.attn_bias.o {
                Some(DTensor::zeros(gpu, &[1, hd])?)
            } else {
                None
            },
            act: DTensor::zeros(gpu, &[1, cfg.intermediate_size])?,
            logits: DTensor::zeros(gpu, &[1, cfg.vocab_size])?,
            pick: RowStatsOut::new(gpu, 1)?,
            ws: DecodeWorkspace::new(gpu, nh, d)?,
        };
        Ok(GpuDecoder {
            model,
            max_len,
            len: 0,
            layers,
            b,
            splits: None,
        })
    }

    pub fn model(&self) -> &'m GpuModel {
        self.model
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The position the next token takes.
    pub fn pos(&self) -> usize {
        self.len
    }

    /// Start a new sequence (keeps the allocations; stale slots are never read: every visible
    /// position is written before it is attended).
    pub fn reset(&mut self) {
        self.len = 0;
    }

    /// Slots per KV head in `layer` (`max_len`, or the window for a ring).
    pub fn slots(&self, layer: usize) -> usize {
        self.layers[layer].slots
    }

    /// Bytes of K and V storage, all layers.
    pub fn cache_bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|c| (c.k.numel() + c.v.numel()) * 2)
            .sum()
    }

    /// Forces the split-K count of decode attention (None: planned from the key and SM counts).
    /// Results agree for every count up to f32 rounding; tests use it to cover both paths.
    pub fn set_attention_splits(&mut self, splits: Option<usize>) {
        self.splits = splits;
    }

    fn gpu(&self) -> &'m Gpu {
        self.model.gpu()
    }

    fn check_room(&self, n: usize) -> Result<()> {
        if self.len + n > self.max_len {
            return Err(Error::Other(format!(
                "KV cache full: {} positions held, {n} more requested, capacity {}",
                self.len, self.max_len
            )));
        }
        Ok(())
    }

    /// Runs the prompt through every layer in one batch, filling the cache; returns the
    /// final-normed hidden states `[T, H]` on the device (equal to `GpuModel::forward_device` on
    /// the prompt).
    pub fn prefill_hidden_device(&mut self, ids: &[u32]) -> Result<DTensor<bf16>> {
        if self.len != 0 {
            return Err(Error::Other(
                "prefill needs an empty cache (call reset, or decode further tokens with step)"
                    .into(),
            ));
        }
        if ids.is_empty() {
            return Err(Error::Other("prefill of an empty prompt".into()));
        }
        self.check_room(ids.len())?;
        let model = self.model;
        let gpu = self.gpu();
        let (nkv, d) = (model.cfg.num_kv_heads, model.cfg.head_dim);
        let layers = &mut self.layers;
        let mut sink = |l: usize, k: &DTensor<bf16>, v: &DTensor<bf16>| -> Result<()> {
            let c = &mut layers[l];
            ops::kv_cache_write(gpu, k, v, &mut c.k, &mut c.v, nkv, d, c.slots, c.ring, 0)?;
            Ok(())
        };
        let batch = Batch {
            n_seq: 1,
            seq_len: ids.len(),
        };
        let h = model.forward_device_kv(ids, batch, &mut None, Some(&mut sink))?;
        self.len = ids.len();
        Ok(h)
    }

    /// `prefill_hidden_device`, downloaded (f32 values of the bf16 rows).
    pub fn prefill_hidden(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        let h = self.prefill_hidden_device(ids)?;
        Ok(h.to_host(self.gpu())?
            .into_iter()
            .map(|v| v.to_f32())
            .collect())
    }

    /// Prefill; the LM head runs on the last prompt row only, leaving its logits on the device.
    fn prefill_logits_device(&mut self, ids: &[u32]) -> Result<()> {
        let h = self.prefill_hidden_device(ids)?;
        let hd = self.model.cfg.hidden_size;
        let gpu = self.gpu();
        self.b
            .x
            .copy_from_device(gpu, 0, &h, (ids.len() - 1) * hd, hd)?;
        self.head_device()
    }

    /// Prefill, returning the logits of the last prompt position `[V]` (final softcap applied).
    pub fn prefill(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        self.prefill_logits_device(ids)?;
        Ok(self.b.logits.to_host(self.gpu())?)
    }

    /// Prefill and the greedy pick of the next token, computed on the device.
    pub fn prefill_greedy(&mut self, ids: &[u32]) -> Result<u32> {
        self.prefill_logits_device(ids)?;
        self.pick()
    }

    /// Decodes one token at position `pos()`; leaves the final-normed row in the step buffer.
    fn step_device(&mut self, id: u32) -> Result<()> {
        self.check_room(1)?;
        let model = self.model;
        model.check_ids(&[id])?;
        let gpu = self.gpu();
        let cfg = &model.cfg;
        let p = self.len;
        let splits = self.splits;
        let GpuDecoder { layers, b, .. } = self;
        b.ids.copy_from_host(gpu, &[id])?;
        {
            let _r = range("embed");
            ops::embed(
                gpu,
                model.embed_table(),
                &b.ids,
                &mut b.h,
                model.embed_scale(),
            )?;
        }
        for (l, kv) in layers.iter_mut().enumerate() {
            let _r = range(format_args!("decode layer {l}"));
            let rope = model.rope().layer(cfg, l);
            model.with_layer(l, |w| step_layer(gpu, cfg, w, rope, b, kv, p, splits))?;
        }
        let eps = cfg.rms_norm_eps;
        ops::rms_norm(
            gpu,
            &b.h,
            model.final_norm(),
            &mut b.x,
            eps,
            cfg.norm_weight,
        )?;
        self.len = p + 1;
        Ok(())
    }

    /// Decodes one token; returns the final-normed hidden state `[H]` (f32 values of bf16).
    pub fn step_hidden(&mut self, id: u32) -> Result<Vec<f32>> {
        self.step_device(id)?;
        Ok(self
            .b
            .x
            .to_host(self.gpu())?
            .into_iter()
            .map(|v| v.to_f32())
            .collect())
    }

    /// Decodes one token; returns its logits `[V]` (final softcap applied).
    pub fn step(&mut self, id: u32) -> Result<Vec<f32>> {
        self.step_device(id)?;
        self.head_device()?;
        Ok(self.b.logits.to_host(self.gpu())?)
    }

    /// Decodes one token and picks the next greedily on the device (the first index among equal
    /// maxima, as `decode::argmax`); only the id is downloaded.
    pub fn step_greedy(&mut self, id: u32) -> Result<u32> {
        self.step_device(id)?;
        self.head_device()?;
        self.pick()
    }

    /// LM head GEMV (final softcap fused) on the final-normed row in `b.x` → `b.logits`.
    fn head_device(&mut self) -> Result<()> {
        let _r = range("head");
        let model = self.model;
        let gpu = model.gpu();
        ops::gemv(
            gpu,
            &self.b.x,
            model.head(),
            None,
            Some(&mut self.b.logits),
            model.cfg.final_softcap,
        )?;
        Ok(())
    }

    fn pick(&mut self) -> Result<u32> {
        let gpu = self.gpu();
        ops::row_stats(gpu, &self.b.logits, None, &mut self.b.pick)?;
        let id = self.b.pick.argmax.to_host(gpu)?[0];
        Ok(id as u32)
    }
}

/// One decoder layer for the token at position `p` (see the module docs).
#[allow(clippy::too_many_arguments)]
fn step_layer(
    gpu: &Gpu,
    cfg: &ModelConfig,
    w: &DeviceLayer,
    rope: &RopeFreqs,
    b: &mut StepBufs,
    kv: &mut LayerKv,
    p: usize,
    splits: Option<usize>,
) -> Result<()> {
    let (eps, conv) = (cfg.rms_norm_eps, cfg.norm_weight);
    let (nh, nkv, d) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);

    // --- attention block
    ops::rms_norm(gpu, &b.h, w.input_norm(), &mut b.x, eps, conv)?;
    let gemv = Product::Gemv;
    let f = b.qkv_f32.as_mut();
    block::qkv(gpu, cfg, gemv, w, &b.x, &mut b.q, &mut b.k, &mut b.v, f)?;
    ops::decode_rope_kv(
        gpu,
        &mut b.q,
        &b.k,
        &b.v,
        &mut kv.k,
        &mut kv.v,
        nh,
        nkv,
        d,
        kv.slots,
        p,
        slot_of(p, kv.slots, kv.ring),
        rope,
    )?;
    let ap = DecodeAttnParams {
        n_heads: nh,
        n_kv_heads: nkv,
        head_dim: d,
        slots: kv.slots,
        ring: kv.ring,
        pos: p,
        window: kv.window,
        scale: cfg.attn_scale(),
        softcap: cfg.attn_softcap,
        splits,
    };
    ops::decode_attention(gpu, &b.q, &kv.k, &kv.v, &mut b.att, &mut b.ws, &ap)?;
    let y_f32 = b.y_f32.as_mut();
    block::attn_out(gpu, cfg, gemv, w, &b.att, &mut b.h, &mut b.y, y_f32)?;

    // --- MLP block
    block::pre_ffn_norm(gpu, cfg, w, &b.h, &mut b.x)?;
    ops::gemv_act(gpu, cfg.mlp_act, &b.x, w.gate(), w.up(), &mut b.act)?;
    ops::gemv(gpu, &b.act, w.down(), Some(&mut b.y), None, None)?;
    block::residual(gpu, cfg, &mut b.h, &b.y, w.post_ffn_norm())
}

impl Decode for GpuDecoder<'_> {
    fn prefill(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        GpuDecoder::prefill(self, ids)
    }
    fn step(&mut self, id: u32) -> Result<Vec<f32>> {
        GpuDecoder::step(self, id)
    }
    fn prefill_greedy(&mut self, ids: &[u32]) -> Result<u32> {
        GpuDecoder::prefill_greedy(self, ids)
    }
    fn step_greedy(&mut self, id: u32) -> Result<u32> {
        GpuDecoder::step_greedy(self, id)
    }
    fn pos(&self) -> usize {
        GpuDecoder::pos(self)
    }
    fn reset(&mut self) {
        GpuDecoder::reset(self)
    }
}

/// The serving engine over the GPU: batched prefill through `forward_device` with the LM head and
/// the greedy pick on the device (only the ids are downloaded), and `GpuDecoder`.
impl Engine for GpuModel {
    fn cfg(&self) -> &ModelConfig {
        &self.cfg
    }
    fn name(&self) -> String {
        "whittle cuda bf16".into()
    }
    fn device(&self) -> String {
        self.gpu().info.to_string()
    }
    fn kernels(&self) -> Option<String> {
        Some(ops::kernel_summary(self.gpu(), &self.cfg))
    }
    fn last_token_picks(&self, ids: &[u32], batch: Batch) -> Result<Vec<u32>> {
        let gpu = &**self.gpu();
        let (n, t, hd) = (batch.n_seq, batch.seq_len, self.cfg.hidden_size);
        let h = self.forward_device(ids, batch, &mut None)?; // [n·t, H]
        let mut last = DTensor::<bf16>::zeros(gpu, &[n, hd])?; // [n, H]
        for i in 0..n {
            last.copy_from_device(gpu, i * hd, &h, ((i + 1) * t - 1) * hd, hd)?;
        }
        Ok(self.logit_stats(&last, None)?.argmax)
    }
    fn decoder(&self, max_len: usize) -> Result<Box<dyn Decode + '_>> {
        Ok(Box::new(GpuDecoder::new(self, max_len)?))
    }
}

//! The CPU forward pass of Gemma-2 / Gemma-3 text models — the reference every other path is
//! checked against, matched to transformers fp32 eager.
//!
//! Weights are widened from the checkpoint dtype to f32 once, when a layer is loaded
//! (`LayerWeights::load`); a caller that streams layers (calibration) loads and drops one at a
//! time, a caller that evaluates many windows (`eval`) keeps them all. The decoder layer is a free
//! function over `LayerWeights` so both use the same code.

use crate::config::{LayerType, ModelConfig};
use crate::cpu::attention::{attention, AttnShape};
use crate::cpu::{bf16, ops};
use crate::decode::Mat;
use crate::error::{Error, Result};
use crate::registry::{self, layer_has, layer_name, layer_shape, LayerTensor};
use crate::safetensors::WeightStore;
use std::path::{Path, PathBuf};

/// One decoder layer's weights in f32, HF `[out, in]` layout.
#[derive(Clone)]
pub struct LayerWeights {
    pub input_norm: Vec<f32>,     // [H]
    pub q: Vec<f32>,              // [nh·d, H]
    pub k: Vec<f32>,              // [nkv·d, H]
    pub v: Vec<f32>,              // [nkv·d, H]
    pub o: Vec<f32>,              // [H, nh·d]
    pub q_norm: Option<Vec<f32>>, // [d]  (Gemma-3)
    pub k_norm: Option<Vec<f32>>, // [d]  (Gemma-3)
    pub post_attn_norm: Vec<f32>, // [H]
    pub pre_ffn_norm: Vec<f32>,   // [H]
    pub gate: Vec<f32>,           // [I, H]
    pub up: Vec<f32>,             // [I, H]
    pub down: Vec<f32>,           // [H, I]
    pub post_ffn_norm: Vec<f32>,  // [H]
    /// MLP width of this layer (pruning may change it layer by layer while compiling).
    pub width: usize,
}

impl LayerWeights {
    pub fn load(store: &WeightStore, cfg: &ModelConfig, l: usize) -> Result<LayerWeights> {
        Self::load_with(store, cfg, l, true)
    }

    /// With `matrices` false the seven matrices are left empty (norms only).
    fn load_with(
        store: &WeightStore,
        cfg: &ModelConfig,
        l: usize,
        matrices: bool,
    ) -> Result<LayerWeights> {
        let get = |t: LayerTensor| store.f32_checked(&layer_name(l, t), &layer_shape(cfg, t));
        let mat = |t: LayerTensor| if matrices { get(t) } else { Ok(Vec::new()) };
        let opt = |t: LayerTensor| -> Result<Option<Vec<f32>>> {
            if layer_has(cfg, t) {
                get(t).map(Some)
            } else {
                Ok(None)
            }
        };
        Ok(LayerWeights {
            input_norm: get(LayerTensor::InputNorm)?,
            q: mat(LayerTensor::Q)?,
            k: mat(LayerTensor::K)?,
            v: mat(LayerTensor::V)?,
            o: mat(LayerTensor::O)?,
            q_norm: opt(LayerTensor::QNorm)?,
            k_norm: opt(LayerTensor::KNorm)?,
            post_attn_norm: get(LayerTensor::PostAttnNorm)?,
            pre_ffn_norm: get(LayerTensor::PreFfnNorm)?,
            gate: mat(LayerTensor::Gate)?,
            up: mat(LayerTensor::Up)?,
            down: mat(LayerTensor::Down)?,
            post_ffn_norm: get(LayerTensor::PostFfnNorm)?,
            width: cfg.intermediate_size,
        })
    }
}

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

/// RoPE tables for one sequence length, one per layer type.
pub struct RopeCache {
    pub seq_len: usize,
    full: (Vec<f32>, Vec<f32>),    // cos, sin: [T, d/2]
    sliding: (Vec<f32>, Vec<f32>), // cos, sin: [T, d/2]
}

impl RopeCache {
    pub fn new(cfg: &ModelConfig, seq_len: usize) -> RopeCache {
        let mk = |r: crate::config::Rope| {
            ops::rope_tables(seq_len, cfg.head_dim, r.theta, r.linear_factor)
        };
        RopeCache {
            seq_len,
            full: mk(cfg.rope_full),
            sliding: mk(cfg.rope_sliding),
        }
    }

    fn get(&self, t: LayerType) -> (&[f32], &[f32]) {
        let (c, s) = match t {
            LayerType::Full => &self.full,
            LayerType::Sliding => &self.sliding,
        };
        (c, s)
    }
}

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

/// One decoder layer in place on `h` ([N, H]).
pub fn layer_forward(
    cfg: &ModelConfig,
    l: usize,
    w: &LayerWeights,
    h: &mut [f32],
    batch: Batch,
    rope: &RopeCache,
    obs: &mut Observer<'_>,
) {
    attn_block(cfg, l, w, h, batch, rope);
    mlp_block(cfg, l, w, h, obs);
}

/// The attention half of a layer: `h += post_attn_norm(o_proj(attn(input_norm(h))))`.
pub fn attn_block(
    cfg: &ModelConfig,
    l: usize,
    w: &LayerWeights,
    h: &mut [f32],
    batch: Batch,
    rope: &RopeCache,
) {
    let (n, hd, d) = (batch.rows(), cfg.hidden_size, cfg.head_dim);
    let (nh, nkv) = (cfg.num_heads, cfg.num_kv_heads);
    assert_eq!(h.len(), n * hd);
    assert_eq!(
        rope.seq_len, batch.seq_len,
        "RoPE tables built for another length"
    );

    // --- attention block
    let mut x = h.to_vec(); // [N, H]
    ops::rms_norm(&mut x, &w.input_norm, cfg.rms_norm_eps);
    let mut q = ops::linear(&x, &w.q, n, hd, nh * d); // [N, nh, d]
    let mut k = ops::linear(&x, &w.k, n, hd, nkv * d); // [N, nkv, d]
    let v = ops::linear(&x, &w.v, n, hd, nkv * d); // [N, nkv, d]
    if let (Some(qn), Some(kn)) = (&w.q_norm, &w.k_norm) {
        ops::rms_norm(&mut q, qn, cfg.rms_norm_eps);
        ops::rms_norm(&mut k, kn, cfg.rms_norm_eps);
    }
    let (cos, sin) = rope.get(cfg.layer_types[l]);
    for b in 0..batch.n_seq {
        let t = batch.seq_len;
        ops::apply_rope(
            &mut q[b * t * nh * d..(b + 1) * t * nh * d],
            t,
            nh,
            d,
            cos,
            sin,
        );
        ops::apply_rope(
            &mut k[b * t * nkv * d..(b + 1) * t * nkv * d],
            t,
            nkv,
            d,
            cos,
            sin,
        );
    }
    let att = attention(
        &q,
        &k,
        &v,
        AttnShape {
            n_seq: batch.n_seq,
            seq_len: batch.seq_len,
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: d,
            scale: cfg.attn_scale(),
            softcap: cfg.attn_softcap,
            window: cfg.window(l),
        },
    ); // [N, nh·d]
    drop((q, k, v));
    let mut y = ops::linear(&att, &w.o, n, nh * d, hd); // [N, H]
    ops::rms_norm(&mut y, &w.post_attn_norm, cfg.rms_norm_eps);
    ops::add_into(h, &y);
}

/// The MLP half of a layer: `h += post_ffn_norm(down(gelu_tanh(gate(x))·up(x)))`,
/// `x = pre_ffn_norm(h)`; the observer sees the down_proj input.
pub fn mlp_block(
    cfg: &ModelConfig,
    l: usize,
    w: &LayerWeights,
    h: &mut [f32],
    obs: &mut Observer<'_>,
) {
    let hd = cfg.hidden_size;
    assert_eq!(h.len() % hd, 0);
    let n = h.len() / hd;
    let mut x = h.to_vec(); // [N, H]
    ops::rms_norm(&mut x, &w.pre_ffn_norm, cfg.rms_norm_eps);
    let i = w.width;
    let mut a = ops::linear(&x, &w.gate, n, hd, i); // [N, I]
    let up = ops::linear(&x, &w.up, n, hd, i); // [N, I]
    ops::gelu_mul(&mut a, &up);
    drop(up);
    ops::linear_into(&a, &w.down, n, i, hd, &mut x);
    if let Some(f) = obs.as_mut() {
        f(Event::MlpAct {
            layer: l,
            act: &a,
            out: &x,
        });
    }
    let mut y = x; // [N, H]
    ops::rms_norm(&mut y, &w.post_ffn_norm, cfg.rms_norm_eps);
    ops::add_into(h, &y);
    if let Some(f) = obs.as_mut() {
        f(Event::LayerOut {
            layer: l,
            hidden: h,
        });
    }
}

/// Gather embedding rows and multiply by sqrt(H) (f32, as transformers fp32 does).
pub fn embed(cfg: &ModelConfig, table: Mat<'_>, ids: &[u32]) -> Result<Vec<f32>> {
    let hd = cfg.hidden_size;
    let scale = cfg.embed_scale_f32();
    let mut out = vec![0f32; ids.len() * hd]; // [N, H]
    for (row, &id) in out.chunks_exact_mut(hd).zip(ids) {
        let id = id as usize;
        if id >= cfg.vocab_size {
            return Err(Error::Other(format!(
                "token id {id} is outside the model's vocabulary ({}); the tokenizer does not \
                 belong to this model",
                cfg.vocab_size
            )));
        }
        match table {
            Mat::F32(t) => {
                for (o, &e) in row.iter_mut().zip(&t[id * hd..(id + 1) * hd]) {
                    *o = e * scale;
                }
            }
            Mat::Bf16(t) => {
                for (o, &e) in row.iter_mut().zip(&t[id * hd..(id + 1) * hd]) {
                    *o = crate::cpu::bf16::widen(e) * scale;
                }
            }
        }
    }
    Ok(out)
}

/// Embeddings for `ids` gathered straight from the checkpoint, widening only the rows used (the
/// full table of a 256k vocabulary is 2.4 GB in f32 at H = 2304).
pub fn embed_from_store(cfg: &ModelConfig, store: &WeightStore, ids: &[u32]) -> Result<Vec<f32>> {
    let mut out = embed_rows_from_store(cfg, store, ids)?; // [N, H]
    let scale = cfg.embed_scale_f32();
    for o in &mut out {
        *o *= scale;
    }
    Ok(out)
}

/// The embedding rows of `ids` as stored (widened to f32, not yet scaled by sqrt(H)): [N, H].
pub fn embed_rows_from_store(
    cfg: &ModelConfig,
    store: &WeightStore,
    ids: &[u32],
) -> Result<Vec<f32>> {
    let t = store.get_checked(registry::EMBED, &[cfg.vocab_size, cfg.hidden_size])?;
    let hd = cfg.hidden_size;
    let es = t.info.dtype.size();
    let mut out = vec![0f32; ids.len() * hd]; // [N, H]
    let one_row = |id: usize, row: &mut [f32]| -> Result<()> {
        let sub = crate::safetensors::TensorInfo {
            dtype: t.info.dtype,
            shape: vec![hd],
            start: t.info.start + id * hd * es,
            end: t.info.start + (id + 1) * hd * es,
        };
        crate::safetensors::TensorRef {
            name: t.name,
            file: t.file,
            info: &sub,
        }
        .read_f32_into(row)
    };
    for (o, &id) in out.chunks_exact_mut(hd).zip(ids) {
        if id as usize >= cfg.vocab_size {
            return Err(Error::Other(format!(
                "token id {id} is outside the model's vocabulary ({})",
                cfg.vocab_size
            )));
        }
        one_row(id as usize, o)?;
    }
    Ok(out)
}

/// A whole model held in memory. Computation is f32; storage is f32, except that a BF16
/// checkpoint's matrices and embedding table are kept as their bf16 bits (half the memory,
/// exact): batched passes widen one layer at a time (`layer`) and the head in row blocks, decode
/// steps read the bits directly (`decode::Mat::Bf16`). `WHITTLE_CPU_WEIGHTS=f32` holds
/// everything in f32 instead.
pub struct Model {
    pub dir: PathBuf,
    pub cfg: ModelConfig,
    embed: Table, // [V, H]
    layers: Vec<HeldLayer>,
    pub final_norm: Vec<f32>, // [H]
    lm_head: Option<Table>,   // [V, H] when untied
}

/// A matrix as the model holds it.
pub enum Table {
    F32(Vec<f32>),
    Bf16(Vec<u16>),
}

impl Table {
    fn load(store: &WeightStore, name: &str, shape: &[usize], keep_bf16: bool) -> Result<Table> {
        if keep_bf16 {
            if let Some(bits) = store.bf16_checked(name, shape)? {
                return Ok(Table::Bf16(bits));
            }
        }
        store.f32_checked(name, shape).map(Table::F32)
    }

    pub fn mat(&self) -> Mat<'_> {
        match self {
            Table::F32(x) => Mat::F32(x),
            Table::Bf16(x) => Mat::Bf16(x),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Table::F32(x) => 4 * x.len(),
            Table::Bf16(x) => 2 * x.len(),
        }
    }
}

/// One decoder layer: f32 as loaded, or norms in f32 (`base`, matrices empty) beside the
/// matrices' bf16 bits.
enum HeldLayer {
    F32(LayerWeights),
    Bf16 {
        base: LayerWeights,
        mats: PackedLayer,
    },
}

/// A layer's matrices as bf16 bits (same shapes as in [`LayerWeights`]).
pub struct PackedLayer {
    pub q: Vec<u16>,
    pub k: Vec<u16>,
    pub v: Vec<u16>,
    pub o: Vec<u16>,
    pub gate: Vec<u16>,
    pub up: Vec<u16>,
    pub down: Vec<u16>,
}

impl PackedLayer {
    fn bytes(&self) -> usize {
        2 * [
            &self.q, &self.k, &self.v, &self.o, &self.gate, &self.up, &self.down,
        ]
        .iter()
        .map(|m| m.len())
        .sum::<usize>()
    }
}

/// bf16 bits → f32 (exact).
pub fn widen_bf16_into(x: &[u16], out: &mut [f32]) {
    use rayon::prelude::*;
    assert_eq!(x.len(), out.len());
    out.par_chunks_mut(1 << 16)
        .zip(x.par_chunks(1 << 16))
        .for_each(|(o, b)| {
            for (o, &b) in o.iter_mut().zip(b) {
                *o = crate::cpu::bf16::widen(b);
            }
        });
}

fn f32_bytes(x: &[f32]) -> usize {
    4 * x.len()
}

impl Model {
    pub fn load(dir: &Path) -> Result<Model> {
        let cfg = ModelConfig::from_dir(dir)?;
        let store = WeightStore::open(dir)?;
        Self::load_from(dir, cfg, &store)
    }

    pub fn load_from(dir: &Path, cfg: ModelConfig, store: &WeightStore) -> Result<Model> {
        store.check_layers(cfg.num_layers)?;
        let keep_bf16 = std::env::var("WHITTLE_CPU_WEIGHTS").as_deref() != Ok("f32");
        let vh = [cfg.vocab_size, cfg.hidden_size];
        let embed = Table::load(store, registry::EMBED, &vh, keep_bf16)?;
        let layers = (0..cfg.num_layers)
            .map(|l| Self::load_layer(store, &cfg, l, keep_bf16))
            .collect::<Result<Vec<_>>>()?;
        let final_norm = store.f32_checked(registry::FINAL_NORM, &[cfg.hidden_size])?;
        let lm_head = if untied_head(&cfg, store)? {
            Some(Table::load(store, registry::LM_HEAD, &vh, keep_bf16)?)
        } else {
            None
        };
        Ok(Model {
            dir: dir.to_path_buf(),
            cfg,
            embed,
            layers,
            final_norm,
            lm_head,
        })
    }

    /// A layer whose seven matrices are all BF16 keeps them as bits; otherwise all f32.
    fn load_layer(
        store: &WeightStore,
        cfg: &ModelConfig,
        l: usize,
        keep_bf16: bool,
    ) -> Result<HeldLayer> {
        use LayerTensor as T;
        if keep_bf16 {
            let bits = |t: T| store.bf16_checked(&layer_name(l, t), &layer_shape(cfg, t));
            if let (Some(q), Some(k), Some(v), Some(o), Some(gate), Some(up), Some(down)) = (
                bits(T::Q)?,
                bits(T::K)?,
                bits(T::V)?,
                bits(T::O)?,
                bits(T::Gate)?,
                bits(T::Up)?,
                bits(T::Down)?,
            ) {
                return Ok(HeldLayer::Bf16 {
                    base: LayerWeights::load_with(store, cfg, l, false)?,
                    mats: PackedLayer {
                        q,
                        k,
                        v,
                        o,
                        gate,
                        up,
                        down,
                    },
                });
            }
        }
        LayerWeights::load(store, cfg, l).map(HeldLayer::F32)
    }

    /// Layer `l` with f32 matrices (widened from bf16 when held so: a copy).
    pub fn layer(&self, l: usize) -> std::borrow::Cow<'_, LayerWeights> {
        if let HeldLayer::F32(w) = &self.layers[l] {
            return std::borrow::Cow::Borrowed(w);
        }
        let mut scratch = None;
        self.layer_in(l, &mut scratch);
        std::borrow::Cow::Owned(scratch.expect("layer_in widened into the scratch"))
    }

    /// Layer `l` with f32 matrices, widened into `scratch` when held as bf16: a pass over all
    /// layers reuses one set of buffers (fresh ones per layer would fault in their pages every
    /// time).
    pub fn layer_in<'a>(
        &'a self,
        l: usize,
        scratch: &'a mut Option<LayerWeights>,
    ) -> &'a LayerWeights {
        match &self.layers[l] {
            HeldLayer::F32(w) => w,
            HeldLayer::Bf16 { base, mats } => {
                let s = scratch.get_or_insert_with(|| base.clone());
                let into = |dst: &mut Vec<f32>, src: &[u16]| {
                    dst.resize(src.len(), 0.0);
                    widen_bf16_into(src, dst);
                };
                into(&mut s.q, &mats.q);
                into(&mut s.k, &mats.k);
                into(&mut s.v, &mats.v);
                into(&mut s.o, &mats.o);
                into(&mut s.gate, &mats.gate);
                into(&mut s.up, &mats.up);
                into(&mut s.down, &mats.down);
                s.input_norm.clone_from(&base.input_norm);
                s.q_norm.clone_from(&base.q_norm);
                s.k_norm.clone_from(&base.k_norm);
                s.post_attn_norm.clone_from(&base.post_attn_norm);
                s.pre_ffn_norm.clone_from(&base.pre_ffn_norm);
                s.post_ffn_norm.clone_from(&base.post_ffn_norm);
                s.width = base.width;
                s
            }
        }
    }

    /// Layer `l` as held: its f32 weights (matrices empty when held as bf16) and the bf16
    /// matrices if any — what a decode step reads without widening.
    pub fn held_layer(&self, l: usize) -> (&LayerWeights, Option<&PackedLayer>) {
        match &self.layers[l] {
            HeldLayer::F32(w) => (w, None),
            HeldLayer::Bf16 { base, mats } => (base, Some(mats)),
        }
    }

    /// The untied LM head [V, H] as held (None when tied to the embedding table).
    pub fn lm_head_table(&self) -> Option<Mat<'_>> {
        self.lm_head.as_ref().map(Table::mat)
    }

    /// The embedding table [V, H] as held.
    pub fn embed_table(&self) -> Mat<'_> {
        self.embed.mat()
    }

    /// Bytes of weights held in memory (f32 and bf16 parts).
    pub fn held_bytes(&self) -> usize {
        let layers: usize = (0..self.layers.len())
            .map(|l| {
                let (w, p) = self.held_layer(l);
                let f: usize = [
                    &w.input_norm,
                    &w.q,
                    &w.k,
                    &w.v,
                    &w.o,
                    &w.post_attn_norm,
                    &w.pre_ffn_norm,
                    &w.gate,
                    &w.up,
                    &w.down,
                    &w.post_ffn_norm,
                ]
                .iter()
                .map(|x| f32_bytes(x))
                .sum::<usize>()
                    + w.q_norm.as_deref().map_or(0, f32_bytes)
                    + w.k_norm.as_deref().map_or(0, f32_bytes);
                f + p.map_or(0, PackedLayer::bytes)
            })
            .sum();
        layers
            + self.embed.bytes()
            + self.lm_head.as_ref().map_or(0, Table::bytes)
            + f32_bytes(&self.final_norm)
    }

    /// Runs all layers and the final norm; returns the normed hidden states [N, H].
    pub fn forward_hidden(
        &self,
        ids: &[u32],
        batch: Batch,
        mut obs: Observer<'_>,
    ) -> Result<Vec<f32>> {
        assert_eq!(ids.len(), batch.rows(), "ids do not match the batch shape");
        let rope = RopeCache::new(&self.cfg, batch.seq_len);
        let mut h = embed(&self.cfg, self.embed.mat(), ids)?;
        if let Some(f) = obs.as_mut() {
            f(Event::Embeds(&h));
        }
        let mut scratch = None;
        for l in 0..self.layers.len() {
            let w = self.layer_in(l, &mut scratch);
            layer_forward(&self.cfg, l, w, &mut h, batch, &rope, &mut obs);
        }
        ops::rms_norm(&mut h, &self.final_norm, self.cfg.rms_norm_eps);
        Ok(h)
    }

    /// The LM head matrix ([V, H]) as held: the embedding table when tied.
    pub fn head(&self) -> Mat<'_> {
        self.lm_head.as_ref().unwrap_or(&self.embed).mat()
    }

    /// Logits for normed hidden rows `[rows, H]` → `[rows, V]`, final softcap applied. A bf16
    /// head is widened a block of vocabulary rows at a time (64 MiB of f32), not whole; under
    /// `--precision bf16` its bits go to the bf16 GEMM as they are.
    pub fn logits(&self, hidden: &[f32]) -> Vec<f32> {
        let (hd, v) = (self.cfg.hidden_size, self.cfg.vocab_size);
        let rows = hidden.len() / hd;
        let mut z = match self.head() {
            Mat::F32(w) => ops::linear(hidden, w, rows, hd, v),
            Mat::Bf16(w) => {
                let block = ((64usize << 20) / (4 * hd)).clamp(1, v);
                let mut z = vec![0f32; rows * v]; // [rows, V]
                let mut wf = vec![0f32; block * hd]; // [block, H] one widened block, reused
                for v0 in (0..v).step_by(block) {
                    let n = block.min(v - v0);
                    let bits = &w[v0 * hd..(v0 + n) * hd]; // [n, H]
                    if let Some(kernel) = bf16::active() {
                        bf16::linear(
                            kernel,
                            hidden,
                            Mat::Bf16(bits),
                            rows,
                            hd,
                            n,
                            &mut z[v0..],
                            v,
                        );
                        continue;
                    }
                    let wf = &mut wf[..n * hd];
                    widen_bf16_into(bits, wf);
                    ops::linear_into_ld(hidden, wf, rows, hd, n, &mut z[v0..], v);
                }
                z
            }
        };
        if let Some(cap) = self.cfg.final_softcap {
            ops::softcap(&mut z, cap);
        }
        z
    }

    pub fn forward_logits(&self, ids: &[u32], batch: Batch) -> Result<Vec<f32>> {
        let h = self.forward_hidden(ids, batch, None)?;
        Ok(self.logits(&h))
    }
}

/// transformers ties the head whenever `tie_word_embeddings` is set. With it false the head
/// must be in the checkpoint (transformers would start from random weights without one).
pub fn untied_head(cfg: &ModelConfig, store: &WeightStore) -> Result<bool> {
    if cfg.tie_word_embeddings {
        return Ok(false);
    }
    if !store.contains(registry::LM_HEAD) {
        return Err(Error::Config {
            path: store.dir.join("config.json"),
            msg: format!(
                "\"tie_word_embeddings\": false but the checkpoint has no {}; set it to true if \
                 the head is the embedding, or add the head's weights",
                store.naming.file_name(registry::LM_HEAD)
            ),
        });
    }
    Ok(true)
}

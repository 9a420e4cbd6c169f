//! The CPU forward pass of Gemma-2 / Gemma-3 and Llama-family text models — the reference every
//! other path is checked against, matched to transformers fp32 eager. Family quirks (activation,
//! norm weight convention, post-norms, biases, RoPE scaling) are read from the config and the
//! layer's slots, never from the family's name.
//!
//! Weights are widened from the checkpoint dtype to f32 once, when a layer is loaded
//! (`load_layer`); a caller that streams layers (calibration) loads and drops one at a time, a
//! caller that evaluates many windows (`eval`) keeps them all. The decoder layer is a free
//! function over a borrowed `Layer<&[f32]>` so both use the same code.

use crate::checkpoint::config::{Activation, LayerType, ModelConfig};
use crate::checkpoint::registry::{self, layer_name, layer_shape, LayerTensor};
use crate::checkpoint::safetensors::WeightStore;
use crate::cpu::attention::{attention, AttnShape};
use crate::cpu::convert::widen_bf16_into;
use crate::cpu::gemv::Mat;
use crate::cpu::{act, bf16, bias, ops, rope};
use crate::engine::{Batch, Event, Observer};
use crate::error::{Error, Result};
use crate::layer::Layer;
use std::path::{Path, PathBuf};

/// Layer `l` of the checkpoint in f32 (widened from its dtype), HF `[out, in]` layout.
pub fn load_layer(store: &WeightStore, cfg: &ModelConfig, l: usize) -> Result<Layer<Vec<f32>>> {
    let get = |t: LayerTensor| store.f32_checked(&layer_name(cfg, l, t), &layer_shape(cfg, t));
    Layer::try_build(cfg, get, get)
}

/// RoPE tables for one sequence length, one per layer type (the forward pass, the decoder and
/// the decode lanes all rotate by these).
pub struct RopeCache {
    pub seq_len: usize,
    full: (Vec<f32>, Vec<f32>),    // cos, sin: [T, d/2]
    sliding: (Vec<f32>, Vec<f32>), // cos, sin: [T, d/2]
}

impl RopeCache {
    pub fn new(cfg: &ModelConfig, seq_len: usize) -> RopeCache {
        RopeCache {
            seq_len,
            full: rope::layer_tables(cfg, seq_len, LayerType::Full),
            sliding: rope::layer_tables(cfg, seq_len, LayerType::Sliding),
        }
    }

    /// cos, sin `[T, d/2]` of a layer type.
    pub fn get(&self, t: LayerType) -> (&[f32], &[f32]) {
        let (c, s) = match t {
            LayerType::Full => &self.full,
            LayerType::Sliding => &self.sliding,
        };
        (c, s)
    }

    /// cos, sin `[d/2]` of one position: what a decode step rotates by.
    pub fn at(&self, t: LayerType, p: usize, d: usize) -> (&[f32], &[f32]) {
        let half = d / 2;
        let (c, s) = self.get(t);
        (&c[p * half..(p + 1) * half], &s[p * half..(p + 1) * half])
    }
}

/// One decoder layer in place on `h` ([N, H]).
pub fn layer_forward(
    cfg: &ModelConfig,
    l: usize,
    w: &Layer<&[f32]>,
    h: &mut [f32],
    batch: Batch,
    rope: &RopeCache,
    obs: &mut Observer<'_>,
) {
    attn_block(cfg, l, w, h, batch, rope);
    mlp_block(cfg, l, w, h, obs);
}

/// The attention half of a layer: `h += post_attn_norm(o_proj(attn(input_norm(h))))` (Gemma),
/// `h += o_proj(attn(input_norm(h)))` without the post-norm (the Llama family).
pub fn attn_block(
    cfg: &ModelConfig,
    l: usize,
    w: &Layer<&[f32]>,
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
    let (mut q, mut k, v) = qkv(cfg, w, h, n);
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
        AttnShape::of_layer(cfg, l, batch.n_seq, batch.seq_len),
    ); // [N, nh·d]
    drop((q, k, v));
    let y = attn_out(cfg, w, &att, n); // [N, H]
    ops::add_into(h, &y);
}

/// What the attention of `n` rows (`att` [n, nh·d]) adds to the residual stream: o_proj, its
/// bias and the post-attention norm where the model has them ([n, H]).
pub fn attn_out(cfg: &ModelConfig, w: &Layer<&[f32]>, att: &[f32], n: usize) -> Vec<f32> {
    let mut y = ops::linear(att, w.o(), n, cfg.q_dim(), cfg.hidden_size); // [n, H]
    if let Some(b) = w.o_bias() {
        bias::add_bias_rows(&mut y, b);
    }
    if let Some(pn) = w.post_attn_norm() {
        norm(cfg, &mut y, pn);
    }
    y
}

/// RMSNorm of every row of `x` with the model's weight convention.
pub fn norm(cfg: &ModelConfig, x: &mut [f32], w: &[f32]) {
    crate::cpu::norm::rms_norm(x, w, cfg.rms_norm_eps, cfg.norm_weight);
}

/// The attention inputs of `n` rows of `h` ([n, H]): `input_norm`, the q/k/v projections, their
/// biases and the q/k norms where the model has them — `([n, nh·d], [n, nkv·d], [n, nkv·d])`, before RoPE.
/// Batched passes and the decoder's prefill share it so both round the same way.
pub fn qkv(
    cfg: &ModelConfig,
    w: &Layer<&[f32]>,
    h: &[f32],
    n: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (hd, d) = (cfg.hidden_size, cfg.head_dim);
    let (nh, nkv) = (cfg.num_heads, cfg.num_kv_heads);
    let mut x = h.to_vec(); // [N, H]
    norm(cfg, &mut x, w.input_norm());
    // q [N, nh, d], k and v [N, nkv, d]
    let [mut q, mut k, mut v] = ops::linears(
        &x,
        n,
        hd,
        [(w.q(), nh * d), (w.k(), nkv * d), (w.v(), nkv * d)],
    );
    if let Some((qb, kb, vb)) = w.qkv_bias() {
        bias::add_bias_rows(&mut q, qb);
        bias::add_bias_rows(&mut k, kb);
        bias::add_bias_rows(&mut v, vb);
    }
    if let (Some(qn), Some(kn)) = (w.q_norm(), w.k_norm()) {
        norm(cfg, &mut q, qn);
        norm(cfg, &mut k, kn);
    }
    (q, k, v)
}

/// The MLP half of a layer: `h += post_ffn_norm(down(act(gate(x))·up(x)))`, `x = pre_ffn_norm(h)`
/// (`act` gelu_tanh for Gemma, SiLU for the Llama family, which has no post-FFN norm); the
/// observer sees the down_proj input and output. `mlp_act` then `mlp_out`.
pub fn mlp_block(
    cfg: &ModelConfig,
    l: usize,
    w: &Layer<&[f32]>,
    h: &mut [f32],
    obs: &mut Observer<'_>,
) {
    let a = mlp_act(cfg, w, h); // [N, I]
    mlp_out(cfg, l, w, &a, h, obs);
}

/// The down_proj input of the MLP half, `act(gate(x))·up(x)` with `x = pre_ffn_norm(h)`:
/// [N, I]. Each entry is a function of its own row of x and its own rows of gate and up only
/// (the bf16 kernel and the f32 GEMM sum each output alone), so the columns of a subset of
/// neurons equal what that subset's own gate and up compute.
pub fn mlp_act(cfg: &ModelConfig, w: &Layer<&[f32]>, h: &[f32]) -> Vec<f32> {
    let hd = cfg.hidden_size;
    assert_eq!(h.len() % hd, 0);
    let n = h.len() / hd;
    let mut x = h.to_vec(); // [N, H]
    norm(cfg, &mut x, w.pre_ffn_norm());
    let i = w.width;
    let [mut a, up] = ops::linears(&x, n, hd, [(w.gate(), i), (w.up(), i)]); // [N, I] each
    act_mul(cfg, &mut a, &up);
    a
}

/// The rest of the MLP half from its down_proj input `a` [N, I]: `h += post_ffn_norm(down(a))`;
/// the observer sees `a` and down's output.
pub fn mlp_out(
    cfg: &ModelConfig,
    l: usize,
    w: &Layer<&[f32]>,
    a: &[f32],
    h: &mut [f32],
    obs: &mut Observer<'_>,
) {
    let hd = cfg.hidden_size;
    let (n, i) = (h.len() / hd, w.width);
    assert_eq!(a.len(), n * i, "mlp_out: a is not [{n}, {i}]");
    let mut y = vec![0f32; n * hd]; // [N, H]
    ops::linear_into(a, w.down(), n, i, hd, &mut y);
    if let Some(f) = obs.as_mut() {
        f(Event::MlpAct {
            layer: l,
            act: a,
            out: &y,
        });
    }
    if let Some(pn) = w.post_ffn_norm() {
        norm(cfg, &mut y, pn);
    }
    ops::add_into(h, &y);
    if let Some(f) = obs.as_mut() {
        f(Event::LayerOut {
            layer: l,
            hidden: h,
        });
    }
}

/// `gate = act(gate) · up` with the model's gate activation (both `[rows, I]`).
pub fn act_mul(cfg: &ModelConfig, gate: &mut [f32], up: &[f32]) {
    match cfg.mlp_act {
        Activation::GeluTanh => ops::gelu_mul(gate, up),
        Activation::Silu => act::silu_mul(gate, up),
    }
}

/// Gather embedding rows and multiply by sqrt(H) where the family scales them (f32, as
/// transformers fp32 does).
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
                    *o = crate::cpu::convert::widen(e) * scale;
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
        let sub = crate::checkpoint::safetensors::TensorInfo {
            dtype: t.info.dtype,
            shape: vec![hd],
            start: t.info.start + id * hd * es,
            end: t.info.start + (id + 1) * hd * es,
        };
        crate::checkpoint::safetensors::TensorRef {
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
    layers: Vec<Layer<Table, Vec<f32>>>,
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

fn f32_bytes(x: &[f32]) -> usize {
    4 * x.len()
}

/// Hidden rows a caller puts through [`Model::logits`] (and the backward through the head) at
/// once: `[LOGIT_ROWS, V]` f32 of logits, 256 MiB at V = 262144. Every call widens and packs the
/// whole [V, H] head for its GEMM, so taller calls pay that memory traffic less often (an
/// 8-window wiki-dev eval of Gemma 3 270M on Zen 5: 11.8 s at 64 rows, 10.0 s at 256).
pub const LOGIT_ROWS: usize = 256;
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

    /// A layer whose matrices are all BF16 keeps them as bits; otherwise all f32. Norms f32.
    fn load_layer(
        store: &WeightStore,
        cfg: &ModelConfig,
        l: usize,
        keep_bf16: bool,
    ) -> Result<Layer<Table, Vec<f32>>> {
        let f32s = |t: LayerTensor| store.f32_checked(&layer_name(cfg, l, t), &layer_shape(cfg, t));
        if keep_bf16 {
            let bits =
                |t: LayerTensor| store.bf16_checked(&layer_name(cfg, l, t), &layer_shape(cfg, t));
            let packed = Layer::try_build(cfg, bits, |t| f32s(t).map(Some))?;
            if packed.mats().all(|(_, m)| m.is_some()) {
                return Ok(packed.map(
                    |_, m| Table::Bf16(m.expect("checked above")),
                    |_, v| v.expect("vectors are always read"),
                ));
            }
        }
        Layer::try_build(cfg, |t| f32s(t).map(Table::F32), f32s)
    }

    /// Layer `l` in f32, widened from bf16 when held so (a copy).
    pub fn layer_f32(&self, l: usize) -> Layer<Vec<f32>> {
        self.layers[l].as_ref().map(
            |_, m| match m {
                Table::F32(x) => x.clone(),
                Table::Bf16(x) => {
                    let mut w = vec![0f32; x.len()];
                    widen_bf16_into(x, &mut w);
                    w
                }
            },
            |_, v| v.clone(),
        )
    }

    /// Layer `l` with f32 matrices, widened into `scratch` when held as bf16: a pass over all
    /// layers reuses one set of buffers (fresh ones per layer would fault in their pages every
    /// time).
    pub fn layer_in<'a>(
        &'a self,
        l: usize,
        scratch: &'a mut Option<Layer<Vec<f32>>>,
    ) -> Layer<&'a [f32]> {
        let held = &self.layers[l];
        let s = scratch.get_or_insert_with(|| Layer::empty(held.width));
        for (t, m) in held.mats() {
            if let Table::Bf16(src) = m {
                let mut dst = s.take_mat(t).unwrap_or_default();
                dst.resize(src.len(), 0.0);
                widen_bf16_into(src, &mut dst);
                s.set_mat(t, dst);
            }
        }
        let s: &'a Layer<Vec<f32>> = s;
        held.as_ref().map(
            |t, m| match m {
                Table::F32(x) => &x[..],
                Table::Bf16(_) => &s.mat(t)[..],
            },
            |_, v| &v[..],
        )
    }

    /// Layer `l` as held: f32 norms, and its matrices as f32 or bf16 bits — what a decode step
    /// reads without widening.
    pub fn held_layer(&self, l: usize) -> &Layer<Table, Vec<f32>> {
        &self.layers[l]
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
        let layers: usize = self
            .layers
            .iter()
            .map(|w| {
                w.mats().map(|(_, m)| m.bytes()).sum::<usize>()
                    + w.vecs().map(|(_, v)| f32_bytes(v)).sum::<usize>()
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
            layer_forward(&self.cfg, l, &w, &mut h, batch, &rope, &mut obs);
        }
        norm(&self.cfg, &mut h, &self.final_norm);
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

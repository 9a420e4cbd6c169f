//! Incremental decoding on the CPU: a per-layer KV cache, a prefill that is the batched forward
//! pass (op for op what `Model::forward_hidden` computes, with K and V kept), and single-token
//! steps whose matmuls are GEMVs and whose attention reads the cache. Plus greedy and
//! temperature / top-p sampling with a seeded generator.
//!
//! # Cache layout
//!
//! Each layer holds `k` and `v` as `[n_kv, slots, head_dim]` (one contiguous run of slots per KV
//! head, so a query head walks memory linearly), K stored after q/k-norm and RoPE, as the
//! attention consumes it.
//! - **Global layers** have `slots = max_len`; position `j` lives in slot `j`.
//! - **Sliding layers** are a **ring** of `slots = min(sliding_window, max_len)`; position `j`
//!   lives in slot `j % slots`. A query at position `i` sees keys `j` with `j <= i` and
//!   `i - j < W` (W keys including itself, the transformers / llama.cpp window), which are exactly
//!   the last `W` positions written, so the position being decoded overwrites the one that just
//!   left the window and no mask is needed. Attention walks the visible positions in increasing
//!   order (`j = max(0, i+1-W) ..= i`) and maps each to its slot, so the summation order is the
//!   one the full-sequence path uses.
//!
//! RoPE: the decoder and the lanes hold a `RopeCache` for `0..max_len`, the forward pass's
//! tables, so position `p` rotates by the same angles either way.
//!
//! # Numerics
//!
//! Prefill runs the very ops of `model::attn_block` / `model::mlp_block` on the whole prompt (the
//! MLP half *is* `mlp_block`), so its hidden states equal `Model::forward_hidden`'s. A step
//! computes the same arithmetic per element, but its dot products are summed in another order
//! (GEMV lanes instead of GEMM tiles): decoded logits agree with recomputing the whole sequence
//! to about 1e-6 relative (tests/decode.rs checks 1e-4 per position across the window boundary).
//!
//! A step streams every weight once, so it is memory-bound. A BF16 checkpoint's matrices are
//! held as bf16 bits (`Model`); the steps read them directly and widen each element to f32 in
//! the dot product: half the bytes, the same products in the same order, so bit-identical
//! results to f32 matrices (tests/decode.rs) at ~1.9× the tokens/s on Gemma 3 270M
//! (`WHITTLE_CPU_WEIGHTS=f32` holds f32 instead, for comparison).

use crate::checkpoint::config::ModelConfig;
use crate::cpu::attention::{attention, AttnShape};
use crate::cpu::gemv::dot_body;
pub use crate::cpu::gemv::{gemv_mat, Mat, WeightElem};
use crate::cpu::{act, bias, ops};
// The slot arithmetic is shared with the GPU decoder; re-exported so `decode::slot_of` etc. keep
// working.
pub use crate::cpu::kv::{layer_slots, slot_of, visible_range};
use crate::cpu::model::{attn_out, embed, mlp_block, qkv, Model, RopeCache, Table};
use crate::engine::{Batch, Decode, DecodeLanes, Engine};
use crate::error::{Error, Result};
use crate::layer::Layer;
use rayon::prelude::*;

// ----------------------------------------------------------------------------------- cache

/// One layer's K and V: `[n_kv, slots, head_dim]` each (see the module docs).
pub struct LayerCache {
    slots: usize,
    /// Sliding layer stored as a ring of `slots` positions.
    ring: bool,
    /// `Some(W)` on sliding layers.
    window: Option<usize>,
    k: Vec<f32>,
    v: Vec<f32>,
}

impl LayerCache {
    #[inline]
    fn slot(&self, pos: usize) -> usize {
        slot_of(pos, self.slots, self.ring)
    }
}

/// The KV cache of one sequence, every layer.
pub struct KvCache {
    pub max_len: usize,
    n_kv: usize,
    head_dim: usize,
    layers: Vec<LayerCache>,
    /// Positions written so far (the next token's position).
    len: usize,
}

impl KvCache {
    pub fn new(model: &Model, max_len: usize) -> KvCache {
        let cfg = &model.cfg;
        let (nkv, d) = (cfg.num_kv_heads, cfg.head_dim);
        let layers = (0..cfg.num_layers)
            .map(|l| {
                let window = cfg.window(l);
                let (slots, ring) = layer_slots(window, max_len);
                LayerCache {
                    slots,
                    ring,
                    window,
                    k: vec![0f32; nkv * slots * d],
                    v: vec![0f32; nkv * slots * d],
                }
            })
            .collect();
        KvCache {
            max_len,
            n_kv: nkv,
            head_dim: d,
            layers,
            len: 0,
        }
    }

    /// Positions held (the position the next token will take).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of K and V storage, all layers.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|c| (c.k.len() + c.v.len()) * 4)
            .sum()
    }

    /// Slots per KV head in `layer` (`max_len`, or the window for a ring).
    pub fn slots(&self, layer: usize) -> usize {
        self.layers[layer].slots
    }

    /// Forget every position (the storage is kept).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Stores K/V rows `[t, n_kv, d]` for positions `pos0..pos0+t` of `layer`.
    fn write(&mut self, layer: usize, pos0: usize, k: &[f32], v: &[f32]) {
        let (nkv, d) = (self.n_kv, self.head_dim);
        let c = &mut self.layers[layer];
        let t = k.len() / (nkv * d);
        // Positions that a ring would overwrite within this write are skipped.
        let first = if c.ring { t.saturating_sub(c.slots) } else { 0 };
        for r in first..t {
            let s = c.slot(pos0 + r);
            for g in 0..nkv {
                let src = (r * nkv + g) * d;
                let dst = (g * c.slots + s) * d;
                c.k[dst..dst + d].copy_from_slice(&k[src..src + d]);
                c.v[dst..dst + d].copy_from_slice(&v[src..src + d]);
            }
        }
    }
}

// ----------------------------------------------------------------------------------- decoder

/// Prefill + step decoding of one sequence over a borrowed model.
pub struct Decoder<'m> {
    model: &'m Model,
    cache: KvCache,
    rope: RopeCache, // [max_len, d/2] per layer type
}

impl<'m> Decoder<'m> {
    /// A decoder able to hold `max_len` positions (prompt + generated tokens).
    pub fn new(model: &'m Model, max_len: usize) -> Decoder<'m> {
        let cfg = &model.cfg;
        Decoder {
            model,
            cache: KvCache::new(model, max_len),
            rope: RopeCache::new(cfg, max_len),
        }
    }

    pub fn model(&self) -> &'m Model {
        self.model
    }

    pub fn cache(&self) -> &KvCache {
        &self.cache
    }

    /// The position the next token takes.
    pub fn pos(&self) -> usize {
        self.cache.len
    }

    /// Start a new sequence (keeps the allocations).
    pub fn reset(&mut self) {
        self.cache.clear();
    }

    fn rope(&self, l: usize) -> (&[f32], &[f32]) {
        self.rope.get(self.model.cfg.layer_types[l])
    }

    fn check_room(&self, n: usize) -> Result<()> {
        if self.cache.len + n > self.cache.max_len {
            return Err(Error::Other(format!(
                "KV cache full: {} positions held, {n} more requested, capacity {}",
                self.cache.len, self.cache.max_len
            )));
        }
        Ok(())
    }

    /// Runs the prompt through every layer in one batch, filling the cache; returns the
    /// final-normed hidden states `[T, H]` (equal to `Model::forward_hidden` on the prompt).
    pub fn prefill_hidden(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        if !self.cache.is_empty() {
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
        let cfg = &model.cfg;
        let mut h = embed(cfg, model.embed_table(), ids)?;
        let mut scratch = None;
        for l in 0..cfg.num_layers {
            let w = model.layer_in(l, &mut scratch);
            self.attn_prefill(l, &w, &mut h, ids.len());
            mlp_block(cfg, l, &w, &mut h, &mut None);
        }
        crate::cpu::model::norm(cfg, &mut h, &model.final_norm);
        self.cache.len = ids.len();
        Ok(h)
    }

    /// Prefill, returning the logits of the last prompt position `[V]` (the LM head runs on that
    /// row only).
    pub fn prefill(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        let h = self.prefill_hidden(ids)?;
        let hd = self.model.cfg.hidden_size;
        Ok(self.head(&h[h.len() - hd..]))
    }

    /// Decodes one token at position `pos()`; returns the final-normed hidden state `[H]`.
    pub fn step_hidden(&mut self, id: u32) -> Result<Vec<f32>> {
        self.check_room(1)?;
        let model = self.model;
        let cfg = &model.cfg;
        let p = self.cache.len;
        let mut h = embed(cfg, model.embed_table(), &[id])?;
        for l in 0..cfg.num_layers {
            let w = model.held_layer(l);
            self.attn_step(l, w, &mut h, p);
            mlp_step(cfg, w, &mut h);
        }
        norm_row(cfg, &mut h, &model.final_norm);
        self.cache.len = p + 1;
        Ok(h)
    }

    /// Decodes one token; returns its logits `[V]` (final softcap applied).
    pub fn step(&mut self, id: u32) -> Result<Vec<f32>> {
        let h = self.step_hidden(id)?;
        Ok(self.head(&h))
    }

    /// LM head (GEMV) + final softcap on one normed hidden row.
    pub fn head(&self, h: &[f32]) -> Vec<f32> {
        let cfg = &self.model.cfg;
        let mut z = gemv_mat(h, self.model.head(), cfg.hidden_size, cfg.vocab_size);
        if let Some(cap) = cfg.final_softcap {
            for v in &mut z {
                *v = (*v / cap).tanh() * cap;
            }
        }
        z
    }

    /// `model::attn_block` on a whole prompt (same ops in the same order), keeping K and V.
    fn attn_prefill(&mut self, l: usize, w: &Layer<&[f32]>, h: &mut [f32], t: usize) {
        let cfg = &self.model.cfg;
        let (d, nh, nkv) = (cfg.head_dim, cfg.num_heads, cfg.num_kv_heads);
        let (mut q, mut k, v) = qkv(cfg, w, h, t); // [T, nh, d], [T, nkv, d] ×2
        let (cos, sin) = self.rope(l);
        ops::apply_rope(&mut q, t, nh, d, cos, sin);
        ops::apply_rope(&mut k, t, nkv, d, cos, sin);
        let att = attention(&q, &k, &v, AttnShape::of_layer(cfg, l, 1, t)); // [T, nh·d]
        self.cache.write(l, 0, &k, &v);
        drop((q, k, v));
        let y = attn_out(cfg, w, &att, t); // [T, H]
        ops::add_into(h, &y);
    }

    /// The attention half of a layer for one token at position `p`, over the cache.
    fn attn_step(&mut self, l: usize, w: &Layer<Table, Vec<f32>>, h: &mut [f32], p: usize) {
        let cfg = &self.model.cfg;
        let (hd, d, nh, nkv) = (
            cfg.hidden_size,
            cfg.head_dim,
            cfg.num_heads,
            cfg.num_kv_heads,
        );
        let mut x = h.to_vec(); // [H]
        norm_row(cfg, &mut x, w.input_norm());
        let mut q = gemv_mat(&x, w.q().mat(), hd, nh * d); // [nh, d]
        let mut k = gemv_mat(&x, w.k().mat(), hd, nkv * d); // [nkv, d]
        let mut v = gemv_mat(&x, w.v().mat(), hd, nkv * d); // [nkv, d]
        if let Some((qb, kb, vb)) = w.qkv_bias() {
            bias::add_bias_rows(&mut q, qb);
            bias::add_bias_rows(&mut k, kb);
            bias::add_bias_rows(&mut v, vb);
        }
        if let (Some(qn), Some(kn)) = (w.q_norm(), w.k_norm()) {
            for row in q.chunks_exact_mut(d) {
                norm_row(cfg, row, qn);
            }
            for row in k.chunks_exact_mut(d) {
                norm_row(cfg, row, kn);
            }
        }
        {
            let (c, s) = self.rope.at(cfg.layer_types[l], p, d);
            ops::apply_rope(&mut q, 1, nh, d, c, s);
            ops::apply_rope(&mut k, 1, nkv, d, c, s);
        }
        self.cache.write(l, p, &k, &v);
        let att = attend(
            &self.cache.layers[l],
            &q,
            p,
            nh,
            nkv,
            d,
            cfg.attn_scale(),
            cfg.attn_softcap,
        ); // [nh·d]
        let mut y = gemv_mat(&att, w.o().mat(), nh * d, hd); // [H]
        if let Some(b) = w.o_bias() {
            bias::add_bias_rows(&mut y, b);
        }
        if let Some(pn) = w.post_attn_norm() {
            norm_row(cfg, &mut y, pn);
        }
        for (a, b) in h.iter_mut().zip(&y) {
            *a += b;
        }
    }
}

// ----------------------------------------------------------------------------------- lanes

/// Several sequences decoded together (`Engine::lanes`): a step runs one token of each active
/// lane as one batch — the projections, the MLP and the LM head are GEMMs over the lanes' rows,
/// so the weights are read once per step instead of once per token — while RoPE, the cache and
/// attention are per lane, at each lane's own position. Row for row it computes what
/// `Decoder::step` computes, the dot products summed in GEMM order (as the prefill does).
pub struct Lanes<'m> {
    model: &'m Model,
    caches: Vec<KvCache>,
    rope: RopeCache, // [max_len, d/2] per layer type
    /// bf16 layers widened for the GEMMs, reused from layer to layer.
    scratch: Option<Layer<Vec<f32>>>,
}

impl<'m> Lanes<'m> {
    pub fn new(model: &'m Model, n_lanes: usize, max_len: usize) -> Lanes<'m> {
        let cfg = &model.cfg;
        Lanes {
            model,
            caches: (0..n_lanes).map(|_| KvCache::new(model, max_len)).collect(),
            rope: RopeCache::new(cfg, max_len),
            scratch: None,
        }
    }

    /// One token per named lane; logits `[lanes.len(), V]`.
    pub fn step(&mut self, lanes: &[usize], ids: &[u32]) -> Result<Vec<f32>> {
        crate::engine::check_lanes(lanes, ids, self.caches.len())?;
        for &lane in lanes {
            let c = &self.caches[lane];
            if c.len + 1 > c.max_len {
                return Err(Error::Other(format!(
                    "KV cache of lane {lane} full: {} positions held, capacity {}",
                    c.len, c.max_len
                )));
            }
        }
        let model = self.model;
        let cfg = &model.cfg;
        let (n, d, nh, nkv) = (lanes.len(), cfg.head_dim, cfg.num_heads, cfg.num_kv_heads);
        let pos: Vec<usize> = lanes.iter().map(|&lane| self.caches[lane].len).collect();
        let mut h = embed(cfg, model.embed_table(), ids)?; // [n, H]
        for l in 0..cfg.num_layers {
            let w = model.layer_in(l, &mut self.scratch);
            let (mut q, mut k, v) = qkv(cfg, &w, &h, n); // [n, nh·d], [n, nkv·d] ×2
            for (r, (&lane, &p)) in lanes.iter().zip(&pos).enumerate() {
                let (c, s) = self.rope.at(cfg.layer_types[l], p, d);
                let qr = &mut q[r * nh * d..(r + 1) * nh * d];
                let kr = &mut k[r * nkv * d..(r + 1) * nkv * d];
                ops::apply_rope(qr, 1, nh, d, c, s);
                ops::apply_rope(kr, 1, nkv, d, c, s);
                self.caches[lane].write(l, p, kr, &v[r * nkv * d..(r + 1) * nkv * d]);
            }
            let mut att = vec![0f32; n * nh * d]; // [n, nh·d]
            let caches = &self.caches;
            att.par_chunks_mut(nh * d).enumerate().for_each(|(r, out)| {
                out.copy_from_slice(&attend(
                    &caches[lanes[r]].layers[l],
                    &q[r * nh * d..(r + 1) * nh * d],
                    pos[r],
                    nh,
                    nkv,
                    d,
                    cfg.attn_scale(),
                    cfg.attn_softcap,
                ))
            });
            drop((q, k, v));
            let y = attn_out(cfg, &w, &att, n); // [n, H]
            ops::add_into(&mut h, &y);
            mlp_block(cfg, l, &w, &mut h, &mut None);
        }
        crate::cpu::model::norm(cfg, &mut h, &model.final_norm);
        for &lane in lanes {
            self.caches[lane].len += 1;
        }
        Ok(model.logits(&h))
    }
}

impl DecodeLanes for Lanes<'_> {
    fn step(&mut self, lanes: &[usize], ids: &[u32]) -> Result<Vec<f32>> {
        Lanes::step(self, lanes, ids)
    }
    fn pos(&self, lane: usize) -> usize {
        self.caches[lane].len
    }
    fn reset(&mut self, lane: usize) {
        self.caches[lane].clear()
    }
}

/// Attention of one query row `q` ([nh, d], at position `p`) over the cached keys it may see:
/// `s = (q·k)·scale → softcap → softmax (f32) → Σ p·v`, keys in increasing position order.
#[allow(clippy::too_many_arguments)]
fn attend(
    c: &LayerCache,
    q: &[f32],
    p: usize,
    nh: usize,
    nkv: usize,
    d: usize,
    scale: f32,
    softcap: Option<f32>,
) -> Vec<f32> {
    let (lo, n) = visible_range(p, c.window);
    let group = nh / nkv;
    let head = |hh: usize, out: &mut [f32]| {
        let g = hh / group;
        let qh = &q[hh * d..(hh + 1) * d];
        let base = g * c.slots;
        let mut s: Vec<f32> = (lo..=p)
            .map(|j| {
                let at = (base + c.slot(j)) * d;
                dot_body(qh, &c.k[at..at + d]) * scale
            })
            .collect();
        if let Some(cap) = softcap {
            for x in &mut s {
                *x = (*x / cap).tanh() * cap;
            }
        }
        let m = s.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
        let mut sum = 0f32;
        for x in &mut s {
            *x = (*x - m).exp();
            sum += *x;
        }
        for x in &mut s {
            *x /= sum;
        }
        out.fill(0.0);
        for (j, &pj) in (lo..=p).zip(&s) {
            let at = (base + c.slot(j)) * d;
            for (o, &vv) in out.iter_mut().zip(&c.v[at..at + d]) {
                *o += pj * vv;
            }
        }
    };
    let mut out = vec![0f32; nh * d];
    if n * d * nh >= (1 << 15) {
        out.par_chunks_mut(d)
            .enumerate()
            .for_each(|(hh, o)| head(hh, o));
    } else {
        for (hh, o) in out.chunks_exact_mut(d).enumerate() {
            head(hh, o);
        }
    }
    out
}

/// RMSNorm of one row with the model's weight convention.
fn norm_row(cfg: &ModelConfig, x: &mut [f32], w: &[f32]) {
    crate::cpu::norm::rms_norm_row(x, w, cfg.rms_norm_eps, cfg.norm_weight);
}

/// The MLP half of a layer for one token (GEMVs): `h += post_ffn_norm(down(act(gate)·up))`, the
/// post-norm where the model has one.
fn mlp_step(
    cfg: &crate::checkpoint::config::ModelConfig,
    w: &Layer<Table, Vec<f32>>,
    h: &mut [f32],
) {
    let hd = cfg.hidden_size;
    let i = w.width;
    let mut x = h.to_vec();
    norm_row(cfg, &mut x, w.pre_ffn_norm());
    let mut a = gemv_mat(&x, w.gate().mat(), hd, i);
    let up = gemv_mat(&x, w.up().mat(), hd, i);
    for (g, &u) in a.iter_mut().zip(&up) {
        *g = act::apply(cfg.mlp_act, *g) * u;
    }
    let mut y = gemv_mat(&a, w.down().mat(), i, hd);
    if let Some(pn) = w.post_ffn_norm() {
        norm_row(cfg, &mut y, pn);
    }
    for (a, b) in h.iter_mut().zip(&y) {
        *a += b;
    }
}

// ----------------------------------------------------------------------------------- engines

impl Decode for Decoder<'_> {
    fn prefill(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        Decoder::prefill(self, ids)
    }
    fn step(&mut self, id: u32) -> Result<Vec<f32>> {
        Decoder::step(self, id)
    }
    fn pos(&self) -> usize {
        Decoder::pos(self)
    }
    fn reset(&mut self) {
        Decoder::reset(self)
    }
}

impl Engine for Model {
    fn cfg(&self) -> &ModelConfig {
        &self.cfg
    }
    fn name(&self) -> String {
        format!("whittle cpu {}", crate::cpu::bf16::in_use())
    }
    fn device(&self) -> String {
        "cpu".into()
    }
    fn last_token_picks(&self, ids: &[u32], batch: Batch) -> Result<Vec<u32>> {
        let (b, t) = (batch.n_seq, batch.seq_len);
        let h = self.forward_hidden(ids, batch, None)?;
        let hd = self.cfg.hidden_size;
        let last: Vec<f32> = (0..b)
            .flat_map(|i| h[((i + 1) * t - 1) * hd..(i + 1) * t * hd].iter().copied())
            .collect();
        let z = self.logits(&last);
        Ok(z.chunks_exact(self.cfg.vocab_size).map(argmax).collect())
    }
    fn decoder(&self, max_len: usize) -> Result<Box<dyn Decode + '_>> {
        Ok(Box::new(Decoder::new(self, max_len)))
    }
    fn lanes(&self, n_lanes: usize, max_len: usize) -> Result<Box<dyn DecodeLanes + '_>> {
        Ok(Box::new(Lanes::new(self, n_lanes, max_len)))
    }
}

// ----------------------------------------------------------------------------------- sampling

pub use crate::rng::Rng;

/// How the next token is chosen from the logits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// argmax (the first index on ties, as `torch.argmax`).
    Greedy,
    /// softmax(logits / temperature), restricted to the smallest set of most likely tokens whose
    /// mass reaches `top_p` (transformers' `TopPLogitsWarper`; at least one token), then drawn.
    TopP { temperature: f32, top_p: f32 },
}

impl Sampling {
    /// `temperature <= 0` means greedy; `top_p` is clamped to (0, 1].
    pub fn new(temperature: f32, top_p: f32) -> Sampling {
        if temperature <= 0.0 || !temperature.is_finite() {
            Sampling::Greedy
        } else {
            Sampling::TopP {
                temperature,
                top_p: if top_p > 0.0 && top_p <= 1.0 {
                    top_p
                } else {
                    1.0
                },
            }
        }
    }
}

/// The token of the largest logit (`cpu::ops::argmax`: the first on ties).
pub fn argmax(x: &[f32]) -> u32 {
    crate::cpu::ops::argmax(x) as u32
}

/// Picks the next token.
pub fn sample(logits: &[f32], s: Sampling, rng: &mut Rng) -> u32 {
    let (temperature, top_p) = match s {
        Sampling::Greedy => return argmax(logits),
        Sampling::TopP { temperature, top_p } => (temperature, top_p),
    };
    let m = logits.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
    let inv_t = 1.0 / temperature as f64;
    let mut probs: Vec<f64> = logits
        .iter()
        .map(|&z| ((z - m) as f64 * inv_t).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    for p in &mut probs {
        *p /= total;
    }
    if top_p >= 1.0 {
        let r = rng.next_f64();
        let mut acc = 0.0;
        for (i, &p) in probs.iter().enumerate() {
            acc += p;
            if r < acc {
                return i as u32;
            }
        }
        return argmax(logits);
    }
    // Descending probability, index order on ties: a total order, so the `k` largest sorted
    // are exactly the first `k` of the fully sorted vocabulary. Sorting a prefix that holds the
    // nucleus costs O(V) instead of O(V log V) (a 262k vocabulary's sort dominated sampling).
    let cmp = |a: &u32, b: &u32| {
        probs[*b as usize]
            .total_cmp(&probs[*a as usize])
            .then(a.cmp(b))
    };
    let mut order: Vec<u32> = (0..probs.len() as u32).collect();
    let mut k = order.len().min(256);
    loop {
        if k < order.len() {
            order.select_nth_unstable_by(k - 1, cmp);
        }
        order[..k].sort_unstable_by(cmp);
        let head: f64 = order[..k].iter().map(|&i| probs[i as usize]).sum();
        if head >= top_p as f64 || k == order.len() {
            break;
        }
        k = (k * 8).min(order.len());
    }
    // Keep token k (in descending order) while the mass before it is < top_p.
    let mut kept = 0usize;
    let mut mass = 0.0;
    for &i in &order[..k] {
        if kept > 0 && mass >= top_p as f64 {
            break;
        }
        mass += probs[i as usize];
        kept += 1;
    }
    let r = rng.next_f64() * mass;
    let mut acc = 0.0;
    for &i in &order[..kept] {
        acc += probs[i as usize];
        if r < acc {
            return i;
        }
    }
    order[kept - 1]
}

//! The backward pass of the whole CPU model, for end-to-end distillation
//! (`compile::distill`): the loss is the mean over a sequence's predicting positions of
//! KL(p_teacher ‖ p_student) of the next-token distributions — what `whittle eval` reports as
//! KL — and the gradient is taken with respect to every layer's MLP matrices (gate, up, down at
//! the pruned width). Everything else is frozen, but the gradient flows through it to the hidden
//! states: final norm, the LM head (tied or untied, final softcap), each layer's post-FFN norm,
//! activation, pre-FFN norm, residual adds, post-attention norm, o_proj, causal / sliding-window
//! GQA attention with its scale and softcap, RoPE, q/k norms, q/k/v projections and biases, and
//! the input norm.
//!
//! Memory: the forward keeps only each layer's two residual inputs ([T, H] each); the backward
//! recomputes a layer's projections and, per (head, query block), the attention probabilities,
//! as the forward computes them. The head is applied `model::LOGIT_ROWS` rows at a time, so a
//! [T, V] logit matrix never exists.
//!
//! Determinism: every product is a GEMM whose result does not depend on the thread count, and
//! every sum over tasks (key/value gradients over heads and query blocks, per-row KL) is added
//! in a fixed order, so gradients are bitwise the same for any `--threads`.

use crate::checkpoint::config::{LayerType, ModelConfig};
use crate::checkpoint::registry::LayerTensor;
use crate::cpu::attention::AttnShape;
use crate::cpu::gemv::Mat;
use crate::cpu::model::{self, RopeCache};
use crate::cpu::ops::{
    self, exp_fast, gemm_nn_strided, gemm_nt_strided, gemm_tn_strided, matmul_nn, matmul_nt,
    matmul_tn,
};
use crate::cpu::{act, bias};
use crate::engine::Batch;
use crate::error::{Error, Result};
use crate::layer::Layer;
use rayon::prelude::*;

/// Query rows per attention backward task (as the forward's blocks).
const Q_BLOCK: usize = 64;

/// The student the gradient is taken of: every layer (attention frozen, MLP at its pruned width
/// `Layer::width`), the final norm, the embedding table and the LM head in f32.
pub struct Net<'a> {
    pub cfg: &'a ModelConfig,
    pub layers: Vec<Layer<&'a [f32]>>,
    pub final_norm: &'a [f32], // [H]
    /// The embedding table as held ([V, H]).
    pub embed: Mat<'a>,
    /// The LM head ([V, H]): the embedding table widened when tied.
    pub head: &'a [f32],
}

/// One layer's MLP matrices (weights or their gradients): gate and up `[K, H]`, down `[H, K]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mlp {
    pub gate: Vec<f32>,
    pub up: Vec<f32>,
    pub down: Vec<f32>,
}

impl Mlp {
    /// Zeros shaped like `m` (a gradient buffer).
    pub fn zeros_like(m: &Mlp) -> Mlp {
        Mlp {
            gate: vec![0.0; m.gate.len()],
            up: vec![0.0; m.up.len()],
            down: vec![0.0; m.down.len()],
        }
    }

    pub fn fill(&mut self, v: f32) {
        for m in [&mut self.gate, &mut self.up, &mut self.down] {
            m.fill(v);
        }
    }
}

/// The layer `frozen` (its attention half and norms) with `mlp`'s matrices at width `mlp`'s.
pub fn with_mlp<'a>(frozen: &'a Layer<Vec<f32>>, mlp: &'a Mlp) -> Layer<&'a [f32]> {
    let mut w = frozen.view();
    w.set_mat(LayerTensor::Gate, &mlp.gate[..]);
    w.set_mat(LayerTensor::Up, &mlp.up[..]);
    w.set_mat(LayerTensor::Down, &mlp.down[..]);
    w.width = mlp.gate.len() / frozen.input_norm().len();
    w
}

/// A table as f32 (the LM head the loss multiplies by, many times: widened once).
pub fn widen_table(m: Mat<'_>) -> Vec<f32> {
    match m {
        Mat::F32(x) => x.to_vec(),
        Mat::Bf16(x) => {
            let mut w = vec![0f32; x.len()];
            crate::cpu::convert::widen_bf16_into(x, &mut w);
            w
        }
    }
}

/// The backward of RMSNorm over rows of `w.len()`: `d` holds dL/dy on entry and dL/dx on exit,
/// `x` is the norm's input. `y_j = x_j·r·s_j`, `r = (mean(x²) + eps)^-½`:
/// `dx_j = r·s_j·dy_j − (r³/n)·x_j·Σ_k dy_k·s_k·x_k`.
pub fn norm_backward(cfg: &ModelConfig, x: &[f32], w: &[f32], d: &mut [f32]) {
    let n = w.len();
    assert_eq!(x.len(), d.len());
    let eps = cfg.rms_norm_eps;
    let rows = ((1 << 14) / n).max(1);
    d.par_chunks_mut(n * rows)
        .zip(x.par_chunks(n * rows))
        .for_each(|(d, x)| {
            for (d, x) in d.chunks_exact_mut(n).zip(x.chunks_exact(n)) {
                let ms = x.iter().map(|v| v * v).sum::<f32>() / n as f32;
                let r = 1.0 / (ms + eps).sqrt();
                let mut dot = 0f32;
                for j in 0..n {
                    dot += d[j] * crate::cpu::norm::scale(cfg.norm_weight, w[j]) * x[j];
                }
                let c = r * r * r / n as f32 * dot;
                for j in 0..n {
                    let s = crate::cpu::norm::scale(cfg.norm_weight, w[j]);
                    d[j] = r * s * d[j] - c * x[j];
                }
            }
        });
}

/// RoPE's transpose: the rotation by −θ (`sin` negated), in place on `x` = [t, n_heads, d].
fn rope_backward(x: &mut [f32], t: usize, n_heads: usize, d: usize, cos: &[f32], neg_sin: &[f32]) {
    ops::apply_rope(x, t, n_heads, d, cos, neg_sin);
}

/// RoPE tables per layer type (as `RopeCache` builds them): cos, sin and −sin for the backward.
struct RopeBack {
    full: [Vec<f32>; 3],
    sliding: [Vec<f32>; 3],
}

impl RopeBack {
    fn new(cfg: &ModelConfig, t: usize) -> RopeBack {
        let make = |lt| {
            let (c, s) = crate::cpu::rope::layer_tables(cfg, t, lt);
            let neg = s.iter().map(|v| -v).collect();
            [c, s, neg]
        };
        RopeBack {
            full: make(LayerType::Full),
            sliding: make(LayerType::Sliding),
        }
    }

    fn get(&self, lt: LayerType) -> &[Vec<f32>; 3] {
        match lt {
            LayerType::Full => &self.full,
            LayerType::Sliding => &self.sliding,
        }
    }
}

/// The KL of one row of student logits `s` against teacher logits `t` (both before the final
/// softcap; capped here in place), summed in f64 by blocks. With `grad`, `s` is overwritten with
/// `inv_n · dKL/dz` for the uncapped logits z: `(p_s − p_t)·inv_n`, times the softcap's
/// derivative `1 − (z_capped/cap)²`.
fn row_kl(s: &mut [f32], t: &mut [f32], cap: Option<f32>, inv_n: f32, grad: bool) -> f64 {
    if let Some(c) = cap {
        for x in s.iter_mut().chain(t.iter_mut()) {
            *x = (*x / c).tanh() * c;
        }
    }
    // Each pass computes its exponentials into `e` and sums them in a pass of its own, in the
    // same order as a fused loop would: the exponentials vectorise (`wide`), the bits do not move.
    crate::cpu::wide::wide(|| {
        let max = |x: &[f32]| x.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
        let (ms, mt) = (max(s), max(t));
        const B: usize = 1024;
        let mut e = [0f32; B];
        let mut sum_exp = |x: &[f32], m: f32| -> f64 {
            let mut total = 0f64;
            for c in x.chunks(B) {
                let e = &mut e[..c.len()];
                for (e, &v) in e.iter_mut().zip(c) {
                    *e = exp_fast(v - m);
                }
                total += e.iter().sum::<f32>() as f64;
            }
            total
        };
        // Log-normalisers relative to each row's max: log p = (z − m) − ln Σ e^(z − m).
        let ls = sum_exp(s, ms).ln() as f32;
        let lt = sum_exp(t, mt).ln() as f32;
        let mut kl = 0f64;
        for (sc, tc) in s.chunks_mut(B).zip(t.chunks(B)) {
            let e = &mut e[..sc.len()]; // the KL terms
            for ((x, &y), e) in sc.iter_mut().zip(tc).zip(e.iter_mut()) {
                let lps = (*x - ms) - ls;
                let lpt = (y - mt) - lt;
                let pt = exp_fast(lpt);
                *e = pt * (lpt - lps);
                if grad {
                    let g = (exp_fast(lps) - pt) * inv_n;
                    *x = match cap {
                        Some(c) => {
                            let u = *x / c;
                            g * (1.0 - u * u)
                        }
                        None => g,
                    };
                }
            }
            kl += e.iter().fold(0f32, |a, &v| a + v) as f64;
        }
        kl
    })
}

/// The KL over rows of final normed hidden states (`hs` student, `ht` teacher, [rows, H]): the
/// per-row KLs summed in row order, and with `grad` dL/dhs ([rows, H]) for `L = inv_n · Σ KL`.
pub fn head_kl(
    cfg: &ModelConfig,
    head: &[f32],
    hs: &[f32],
    ht: &[f32],
    inv_n: f32,
    grad: bool,
) -> (f64, Option<Vec<f32>>) {
    let (hd, v) = (cfg.hidden_size, cfg.vocab_size);
    let rows = hs.len() / hd;
    assert_eq!(hs.len(), ht.len());
    assert_eq!(head.len(), v * hd);
    let mut dh = grad.then(|| vec![0f32; rows * hd]); // [rows, H]
    let mut total = 0f64;
    for r0 in (0..rows).step_by(model::LOGIT_ROWS) {
        let r1 = (r0 + model::LOGIT_ROWS).min(rows);
        let c = r1 - r0;
        let mut zs = vec![0f32; c * v]; // [c, V]
        let mut zt = vec![0f32; c * v]; // [c, V]
        matmul_nt(&mut zs, &hs[r0 * hd..r1 * hd], head, c, hd, v, false);
        matmul_nt(&mut zt, &ht[r0 * hd..r1 * hd], head, c, hd, v, false);
        let kls: Vec<f64> = zs
            .par_chunks_mut(v)
            .zip(zt.par_chunks_mut(v))
            .map(|(s, t)| row_kl(s, t, cfg.final_softcap, inv_n, grad))
            .collect();
        total += kls.iter().sum::<f64>();
        if let Some(dh) = &mut dh {
            // dhs [c, H] = dz [c, V] · head [V, H].
            matmul_nn(&mut dh[r0 * hd..r1 * hd], &zs, head, c, v, hd, false);
        }
    }
    (total, dh)
}

/// The student's final normed hidden states of one sequence `[T, H]`, and with `keep` each
/// layer's two residual inputs (before attention, before the MLP) and the residual before the
/// final norm.
struct Trace {
    hidden: Vec<f32>,
    ins: Vec<Vec<f32>>,
    mids: Vec<Vec<f32>>,
    last: Vec<f32>,
}

fn forward(net: &Net<'_>, ids: &[u32], keep: bool) -> Result<Trace> {
    let cfg = net.cfg;
    let t = ids.len();
    let batch = Batch {
        n_seq: 1,
        seq_len: t,
    };
    let rope = RopeCache::new(cfg, t);
    let mut h = model::embed(cfg, net.embed, ids)?; // [T, H]
    let (mut ins, mut mids) = (Vec::new(), Vec::new());
    for (l, w) in net.layers.iter().enumerate() {
        if keep {
            ins.push(h.clone());
        }
        model::attn_block(cfg, l, w, &mut h, batch, &rope);
        if keep {
            mids.push(h.clone());
        }
        model::mlp_block(cfg, l, w, &mut h, &mut None);
    }
    let last = if keep { h.clone() } else { Vec::new() };
    model::norm(cfg, &mut h, net.final_norm);
    Ok(Trace {
        hidden: h,
        ins,
        mids,
        last,
    })
}

fn check_inputs(net: &Net<'_>, ids: &[u32], teacher: &[f32]) -> Result<()> {
    let hd = net.cfg.hidden_size;
    if ids.len() < 2 || teacher.len() != ids.len() * hd || net.layers.len() != net.cfg.num_layers {
        return Err(Error::Other(format!(
            "distillation: {} ids with {} teacher values ([T, {hd}] expected) and {} layers of {}",
            ids.len(),
            teacher.len(),
            net.layers.len(),
            net.cfg.num_layers
        )));
    }
    Ok(())
}

/// The sum over the predicting positions (rows 0 .. T−1, as `whittle eval` scores) of
/// KL(teacher ‖ student) for one sequence; `teacher` is the teacher's final normed hidden states
/// of the same ids ([T, H]).
pub fn kl(net: &Net<'_>, ids: &[u32], teacher: &[f32]) -> Result<f64> {
    check_inputs(net, ids, teacher)?;
    let hd = net.cfg.hidden_size;
    let scored = (ids.len() - 1) * hd;
    let tr = forward(net, ids, false)?;
    Ok(head_kl(
        net.cfg,
        net.head,
        &tr.hidden[..scored],
        &teacher[..scored],
        1.0,
        false,
    )
    .0)
}

/// [`kl`], and `inv_n ·` its gradient with respect to every layer's MLP added into `grads`
/// (one per layer, shaped as the layer's MLP).
pub fn kl_grad(
    net: &Net<'_>,
    ids: &[u32],
    teacher: &[f32],
    inv_n: f32,
    grads: &mut [Mlp],
) -> Result<f64> {
    check_inputs(net, ids, teacher)?;
    let cfg = net.cfg;
    let hd = cfg.hidden_size;
    let t = ids.len();
    let scored = (t - 1) * hd;
    assert_eq!(grads.len(), net.layers.len());
    let tr = forward(net, ids, true)?;
    let (kl, dhf) = head_kl(
        cfg,
        net.head,
        &tr.hidden[..scored],
        &teacher[..scored],
        inv_n,
        true,
    );
    // The last row predicts nothing: its gradient is zero.
    let mut dh = dhf.expect("asked for the gradient"); // [T−1, H]
    dh.resize(t * hd, 0.0); // [T, H]
    norm_backward(cfg, &tr.last, net.final_norm, &mut dh);
    let rb = RopeBack::new(cfg, t);
    for l in (0..net.layers.len()).rev() {
        let w = &net.layers[l];
        let d = mlp_backward(cfg, w, &tr.mids[l], &dh, &mut grads[l]);
        ops::add_into(&mut dh, &d);
        // Nothing below layer 0's attention is trained.
        if l > 0 {
            let d = attn_backward(cfg, l, w, &tr.ins[l], &dh, &rb);
            ops::add_into(&mut dh, &d);
        }
    }
    Ok(kl)
}

/// The MLP half's backward: with `dh` = dL/d(its output added to the residual), accumulates the
/// MLP's weight gradients into `g` and returns dL/d(its residual input) through the MLP branch.
fn mlp_backward(
    cfg: &ModelConfig,
    w: &Layer<&[f32]>,
    hm: &[f32],
    dh: &[f32],
    g: &mut Mlp,
) -> Vec<f32> {
    let hd = cfg.hidden_size;
    let t = hm.len() / hd;
    let k = w.width;
    let mut x = hm.to_vec(); // [T, H]
    model::norm(cfg, &mut x, w.pre_ffn_norm());
    let gp = ops::linear(&x, w.gate(), t, hd, k); // [T, K]
    let up = ops::linear(&x, w.up(), t, hd, k); // [T, K]
    let a: Vec<f32> = gp
        .par_iter()
        .zip(&up)
        .map(|(&g, &u)| act::apply(cfg.mlp_act, g) * u)
        .collect(); // [T, K]
    let mut dy = dh.to_vec(); // [T, H]
    if let Some(pn) = w.post_ffn_norm() {
        let y = ops::linear(&a, w.down(), t, k, hd); // [T, H]
        norm_backward(cfg, &y, pn, &mut dy);
    }
    matmul_tn(&mut g.down, &dy, &a, t, hd, k, true);
    let mut da = vec![0f32; t * k]; // [T, K]
    matmul_nn(&mut da, &dy, w.down(), t, hd, k, false);
    let (dg, du): (Vec<f32>, Vec<f32>) = da
        .par_iter()
        .zip(&gp)
        .zip(&up)
        .map(|((&da, &g), &u)| {
            (
                da * u * act::grad(cfg.mlp_act, g),
                da * act::apply(cfg.mlp_act, g),
            )
        })
        .unzip();
    matmul_tn(&mut g.gate, &dg, &x, t, k, hd, true);
    matmul_tn(&mut g.up, &du, &x, t, k, hd, true);
    let mut dx = vec![0f32; t * hd]; // [T, H]
    matmul_nn(&mut dx, &dg, w.gate(), t, k, hd, false);
    matmul_nn(&mut dx, &du, w.up(), t, k, hd, true);
    norm_backward(cfg, hm, w.pre_ffn_norm(), &mut dx);
    dx
}

/// The attention half's backward: dL/d(its residual input) through the attention branch, for
/// `dh` = dL/d(what it adds to the residual).
fn attn_backward(
    cfg: &ModelConfig,
    l: usize,
    w: &Layer<&[f32]>,
    hi: &[f32],
    dh: &[f32],
    rb: &RopeBack,
) -> Vec<f32> {
    let (hd, d) = (cfg.hidden_size, cfg.head_dim);
    let (nh, nkv) = (cfg.num_heads, cfg.num_kv_heads);
    let (qd, kd) = (cfg.q_dim(), cfg.kv_dim());
    let t = hi.len() / hd;
    // Recompute the forward's q/k/v as `model::qkv` does, keeping the q/k norm inputs.
    let mut x = hi.to_vec(); // [T, H]
    model::norm(cfg, &mut x, w.input_norm());
    let mut q0 = ops::linear(&x, w.q(), t, hd, qd); // [T, nh·d]
    let mut k0 = ops::linear(&x, w.k(), t, hd, kd); // [T, nkv·d]
    let mut v = ops::linear(&x, w.v(), t, hd, kd); // [T, nkv·d]
    if let Some((qb, kb, vb)) = w.qkv_bias() {
        bias::add_bias_rows(&mut q0, qb);
        bias::add_bias_rows(&mut k0, kb);
        bias::add_bias_rows(&mut v, vb);
    }
    let (mut q, mut k) = (q0.clone(), k0.clone());
    let qk_norm = w.q_norm().zip(w.k_norm());
    if let Some((qn, kn)) = qk_norm {
        model::norm(cfg, &mut q, qn);
        model::norm(cfg, &mut k, kn);
    }
    let lt = cfg.layer_types[l];
    let [cos, sin, neg_sin] = rb.get(lt);
    ops::apply_rope(&mut q, t, nh, d, cos, sin);
    ops::apply_rope(&mut k, t, nkv, d, cos, sin);
    let shape = AttnShape::of_layer(cfg, l, 1, t);
    let mut dyo = dh.to_vec(); // [T, H]
    if let Some(pn) = w.post_attn_norm() {
        let att = crate::cpu::attention::attention(&q, &k, &v, shape); // [T, nh·d]
        let mut yo = ops::linear(&att, w.o(), t, qd, hd); // [T, H]
        if let Some(b) = w.o_bias() {
            bias::add_bias_rows(&mut yo, b);
        }
        norm_backward(cfg, &yo, pn, &mut dyo);
    }
    let mut datt = vec![0f32; t * qd]; // [T, nh·d]
    matmul_nn(&mut datt, &dyo, w.o(), t, hd, qd, false);
    let (mut dq, mut dk, dv) = attention_backward(&q, &k, &v, &datt, shape);
    rope_backward(&mut dq, t, nh, d, cos, neg_sin);
    rope_backward(&mut dk, t, nkv, d, cos, neg_sin);
    if let Some((qn, kn)) = qk_norm {
        norm_backward(cfg, &q0, qn, &mut dq);
        norm_backward(cfg, &k0, kn, &mut dk);
    }
    let mut dx = vec![0f32; t * hd]; // [T, H]
    matmul_nn(&mut dx, &dq, w.q(), t, qd, hd, false);
    matmul_nn(&mut dx, &dk, w.k(), t, kd, hd, true);
    matmul_nn(&mut dx, &dv, w.v(), t, kd, hd, true);
    norm_backward(cfg, hi, w.input_norm(), &mut dx);
    dx
}

/// The backward of `attention::attention` for one sequence: (dq [T, nh·d], dk, dv [T, nkv·d])
/// from `dout` [T, nh·d]. Per (head, query block) task the probabilities are recomputed exactly
/// as the forward computes them; `dS = P ⊙ (dP − rowsum(P ⊙ dP))`, through the softcap
/// (`1 − tanh²`) and the scale. Key and value gradients of the tasks are added in task order.
pub fn attention_backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dout: &[f32],
    s: AttnShape,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    assert_eq!(s.n_seq, 1, "attention_backward: one sequence at a time");
    let (t, nh, nkv, d) = (s.seq_len, s.n_heads, s.n_kv_heads, s.head_dim);
    let (q_rs, kv_rs) = (nh * d, nkv * d);
    assert_eq!(q.len(), t * q_rs);
    assert_eq!(dout.len(), t * q_rs);
    assert_eq!(k.len(), t * kv_rs);
    assert_eq!(v.len(), t * kv_rs);
    let group = nh / nkv;
    let n_blocks = t.div_ceil(Q_BLOCK);
    let tasks: Vec<(usize, usize)> = (0..nh)
        .flat_map(|h| (0..n_blocks).map(move |qb| (h, qb)))
        .collect();
    let lo_of = |i: usize| match s.window {
        Some(w) => (i + 1).saturating_sub(w),
        None => 0,
    };
    struct Part {
        dq: Vec<f32>, // [rows, d]
        dk: Vec<f32>, // [nk, d]
        dv: Vec<f32>, // [nk, d]
        j0: usize,
    }
    let parts: Vec<Part> = tasks
        .par_iter()
        .map(|&(h, qb)| {
            let i0 = qb * Q_BLOCK;
            let i1 = (i0 + Q_BLOCK).min(t);
            let rows = i1 - i0;
            let j0 = lo_of(i0);
            let nk = i1 - j0;
            let g = h / group;
            let (qv, kv, vv, dov) = (
                &q[i0 * q_rs + h * d..],
                &k[j0 * kv_rs + g * d..],
                &v[j0 * kv_rs + g * d..],
                &dout[i0 * q_rs + h * d..],
            );
            let mut p = vec![0f32; rows * nk]; // [rows, nk]
            gemm_nt_strided(qv, q_rs, kv, kv_rs, &mut p, nk, rows, nk, d, s.scale);
            // tanh(s/cap) of the visible scores, for the softcap's derivative.
            let mut th = if s.softcap.is_some() {
                vec![0f32; rows * nk]
            } else {
                Vec::new()
            };
            for r in 0..rows {
                let i = i0 + r;
                let (lo, hi) = (lo_of(i) - j0, i + 1 - j0);
                let row = &mut p[r * nk..(r + 1) * nk];
                if let Some(cap) = s.softcap {
                    for (x, u) in row[lo..hi]
                        .iter_mut()
                        .zip(&mut th[r * nk + lo..r * nk + hi])
                    {
                        *u = (*x / cap).tanh();
                        *x = *u * cap;
                    }
                }
                crate::cpu::attention::masked_softmax(row, lo, hi);
            }
            let mut ds = vec![0f32; rows * nk]; // [rows, nk]: dP, then dS
            gemm_nt_strided(dov, q_rs, vv, kv_rs, &mut ds, nk, rows, nk, d, 1.0);
            for r in 0..rows {
                let i = i0 + r;
                let (lo, hi) = (lo_of(i) - j0, i + 1 - j0);
                let pr = &p[r * nk..(r + 1) * nk];
                let dr = &mut ds[r * nk..(r + 1) * nk];
                let dot: f32 = (lo..hi).map(|j| pr[j] * dr[j]).sum();
                dr[..lo].fill(0.0);
                dr[hi..].fill(0.0);
                for j in lo..hi {
                    let mut x = pr[j] * (dr[j] - dot);
                    if s.softcap.is_some() {
                        let u = th[r * nk + j];
                        x *= 1.0 - u * u;
                    }
                    dr[j] = x * s.scale;
                }
            }
            let mut dq = vec![0f32; rows * d];
            gemm_nn_strided(&ds, nk, kv, kv_rs, &mut dq, d, rows, d, nk);
            let tn = |a: &[f32], b: &[f32]| {
                let mut out = vec![0f32; nk * d];
                gemm_tn_strided(a, nk, b, q_rs, &mut out, d, nk, d, rows, false, false);
                out
            };
            Part {
                dk: tn(&ds, qv),
                dv: tn(&p, dov),
                dq,
                j0,
            }
        })
        .collect();
    let mut dq = vec![0f32; t * q_rs];
    let mut dk = vec![0f32; t * kv_rs];
    let mut dv = vec![0f32; t * kv_rs];
    for (&(h, qb), part) in tasks.iter().zip(&parts) {
        let g = h / group;
        let i0 = qb * Q_BLOCK;
        for (r, src) in part.dq.chunks_exact(d).enumerate() {
            let at = (i0 + r) * q_rs + h * d;
            dq[at..at + d].copy_from_slice(src);
        }
        for (r, (sk, sv)) in part
            .dk
            .chunks_exact(d)
            .zip(part.dv.chunks_exact(d))
            .enumerate()
        {
            let at = (part.j0 + r) * kv_rs + g * d;
            for (o, x) in dk[at..at + d].iter_mut().zip(sk) {
                *o += x;
            }
            for (o, x) in dv[at..at + d].iter_mut().zip(sv) {
                *o += x;
            }
        }
    }
    (dq, dk, dv)
}

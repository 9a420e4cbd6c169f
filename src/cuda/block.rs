//! The transformer block's kernel sequence on the device, written once: `GpuModel`'s forward
//! pass (and through it `GpuDecoder::prefill`) and the calibration `CudaBackend` both run these,
//! so the two cannot drift apart. The order and rounding points are those of the CPU reference
//! (`crate::cpu::model`), checked by tests/cuda_model.rs and tests/cuda_backend.rs.
//!
//! Family quirks come from the config and the layer's slots, as on the CPU: the norm weight
//! convention (`cfg.norm_weight`), the gate activation (`cfg.mlp_act`), projection biases and
//! q/k norms where the layer holds them, post-norms where it holds them (else the block output
//! joins the residual stream as it is), the layer type's RoPE frequencies (`ops::ModelRope`).

use super::gpu::{DTensor, Gpu};
use super::ops::{self, AttnParams, ModelRope};
use crate::checkpoint::config::ModelConfig;
use crate::checkpoint::registry::{layer_shape, LayerTensor};
use crate::engine::Batch;
use crate::error::{Error, Result};
use crate::layer::Layer;
use half::bf16;

/// One layer's weights on the device: bf16 matrices, f32 norm weights (shapes on `Layer`'s
/// accessors). A pruned MLP half holds only the MLP slots, at its own width.
pub type DeviceLayer = Layer<DTensor<bf16>, DTensor<f32>>;

/// Receives each layer's K and V ([N, nkv·d] each; K after the q/k norm and RoPE, as attention
/// consumes them) during a forward pass: how `GpuDecoder::prefill` fills its cache.
pub(super) type KvSink<'a> = dyn FnMut(usize, &DTensor<bf16>, &DTensor<bf16>) -> Result<()> + 'a;

/// Every tensor of `host` uploaded (shapes as `cfg` and the layer's width imply).
pub(super) fn upload(
    gpu: &Gpu,
    cfg: &ModelConfig,
    host: Layer<&[bf16], &[f32]>,
) -> Result<DeviceLayer> {
    let cfg = cfg.with_intermediate_size(host.width);
    let up = |t: LayerTensor| layer_shape(&cfg, t);
    Ok(host.try_map(
        |t, m| DTensor::from_host(gpu, m, &up(t)),
        |t, v| DTensor::from_host(gpu, v, &up(t)),
    )?)
}

/// The f32 outputs of the biased projections, where `cfg`'s layers have biases (a Linear with a
/// bias is rounded to bf16 once, after the add: `linear`).
pub(super) struct BiasScratch {
    pub q: DTensor<f32>, // [N, nh·d]
    pub k: DTensor<f32>, // [N, nkv·d]
    pub v: DTensor<f32>, // [N, nkv·d]
}

/// Scratch of the attention block for N rows; `x` and `y` also serve the MLP block.
pub(super) struct AttnScratch {
    pub x: DTensor<bf16>,   // [N, H] normed block input
    pub y: DTensor<bf16>,   // [N, H] block output before its post-norm
    pub q: DTensor<bf16>,   // [N, nh·d]
    pub k: DTensor<bf16>,   // [N, nkv·d]
    pub v: DTensor<bf16>,   // [N, nkv·d]
    pub att: DTensor<bf16>, // [N, nh·d]
    /// With q/k/v biases (`cfg.attn_bias.qkv`).
    pub qkv_f32: Option<BiasScratch>,
    /// [N, H]: o_proj's f32 output with its bias (`cfg.attn_bias.o`).
    pub y_f32: Option<DTensor<f32>>,
}

impl AttnScratch {
    pub fn new(gpu: &Gpu, cfg: &ModelConfig, n: usize) -> Result<AttnScratch> {
        let (hd, qd, kvd) = (cfg.hidden_size, cfg.q_dim(), cfg.kv_dim());
        let qkv_f32 = if cfg.attn_bias.qkv {
            Some(BiasScratch {
                q: DTensor::zeros(gpu, &[n, qd])?,
                k: DTensor::zeros(gpu, &[n, kvd])?,
                v: DTensor::zeros(gpu, &[n, kvd])?,
            })
        } else {
            None
        };
        let y_f32 = if cfg.attn_bias.o {
            Some(DTensor::zeros(gpu, &[n, hd])?)
        } else {
            None
        };
        Ok(AttnScratch {
            x: DTensor::zeros(gpu, &[n, hd])?,
            y: DTensor::zeros(gpu, &[n, hd])?,
            q: DTensor::zeros(gpu, &[n, qd])?,
            k: DTensor::zeros(gpu, &[n, kvd])?,
            v: DTensor::zeros(gpu, &[n, kvd])?,
            att: DTensor::zeros(gpu, &[n, qd])?,
            qkv_f32,
            y_f32,
        })
    }
}

/// The scratch a biased projection needs and the config did not provide (a layer whose slots
/// disagree with `cfg.attn_bias`).
fn no_bias_scratch(what: &str) -> Error {
    Error::Other(format!(
        "the layer has a {what} bias the config does not declare (attention_bias / family); the \
         CUDA engine allocated no f32 scratch for it"
    ))
}

/// How a projection multiplies: a GEMM over the batch's rows (forward passes, prefill) or the
/// GEMV of one row (a decode step). Both round the same way (bf16 out of an f32 accumulation).
#[derive(Clone, Copy)]
pub(super) enum Product {
    Gemm,
    Gemv,
}

impl Product {
    fn run(
        self,
        gpu: &Gpu,
        x: &DTensor<bf16>,
        w: &DTensor<bf16>,
        out: Option<&mut DTensor<bf16>>,
        yf: Option<&mut DTensor<f32>>,
    ) -> Result<()> {
        match self {
            Product::Gemm => ops::gemm_nt(gpu, x, w, out, yf, false)?,
            Product::Gemv => ops::gemv(gpu, x, w, out, yf, None)?,
        }
        Ok(())
    }
}

/// A Linear: `out = bf16(x·Wᵀ)`, or with a bias `out = bf16(x·Wᵀ + b)` through the f32 product
/// `yf` (transformers' addmm rounds once, after the add). `x` [N, K], `w` [C, K], `b` [C], `out`
/// and `yf` [N, C].
pub(super) fn linear(
    gpu: &Gpu,
    p: Product,
    x: &DTensor<bf16>,
    w: &DTensor<bf16>,
    b: Option<&DTensor<f32>>,
    out: &mut DTensor<bf16>,
    yf: Option<&mut DTensor<f32>>,
) -> Result<()> {
    match (b, yf) {
        (None, _) => p.run(gpu, x, w, Some(out), None)?,
        (Some(b), Some(yf)) => {
            p.run(gpu, x, w, None, Some(&mut *yf))?;
            ops::bias_add(gpu, yf, b, out)?;
        }
        (Some(_), None) => return Err(no_bias_scratch("projection")),
    }
    Ok(())
}

/// The attention inputs of the rows of `x` (already `input_norm`ed): the q/k/v projections with
/// their biases (through `f`'s f32 scratch) and the q/k norms where the layer has them, before
/// RoPE. The batched block and the decode step share it, as the CPU's `qkv`.
#[allow(clippy::too_many_arguments)]
pub(super) fn qkv(
    gpu: &Gpu,
    cfg: &ModelConfig,
    p: Product,
    w: &DeviceLayer,
    x: &DTensor<bf16>,
    q: &mut DTensor<bf16>,
    k: &mut DTensor<bf16>,
    v: &mut DTensor<bf16>,
    f: Option<&mut BiasScratch>,
) -> Result<()> {
    let (qb, kb, vb) = match w.qkv_bias() {
        Some((q, k, v)) => (Some(q), Some(k), Some(v)),
        None => (None, None, None),
    };
    let mut f = f;
    linear(gpu, p, x, w.q(), qb, q, f.as_mut().map(|f| &mut f.q))?;
    linear(gpu, p, x, w.k(), kb, k, f.as_mut().map(|f| &mut f.k))?;
    linear(gpu, p, x, w.v(), vb, v, f.as_mut().map(|f| &mut f.v))?;
    if let (Some(qn), Some(kn)) = (w.q_norm(), w.k_norm()) {
        let (eps, conv) = (cfg.rms_norm_eps, cfg.norm_weight);
        ops::rms_norm_inplace(gpu, q, qn, eps, conv)?;
        ops::rms_norm_inplace(gpu, k, kn, eps, conv)?;
    }
    Ok(())
}

/// What attention's output `att` adds to the residual stream: `h += post_attn_norm(o(att))`,
/// o_proj's bias and the post-norm where the layer has them (the CPU's `attn_out` + add). `y`
/// (and `y_f32` with a bias) is scratch [N, H].
#[allow(clippy::too_many_arguments)]
pub(super) fn attn_out(
    gpu: &Gpu,
    cfg: &ModelConfig,
    p: Product,
    w: &DeviceLayer,
    att: &DTensor<bf16>,
    h: &mut DTensor<bf16>,
    y: &mut DTensor<bf16>,
    y_f32: Option<&mut DTensor<f32>>,
) -> Result<()> {
    linear(gpu, p, att, w.o(), w.o_bias(), y, y_f32)?;
    residual(gpu, cfg, h, y, w.post_attn_norm())
}

/// `x = pre_ffn_norm(h)`, the MLP block's input.
pub(super) fn pre_ffn_norm(
    gpu: &Gpu,
    cfg: &ModelConfig,
    w: &DeviceLayer,
    h: &DTensor<bf16>,
    x: &mut DTensor<bf16>,
) -> Result<()> {
    ops::rms_norm(
        gpu,
        h,
        w.pre_ffn_norm(),
        x,
        cfg.rms_norm_eps,
        cfg.norm_weight,
    )?;
    Ok(())
}

/// A block output joining the residual stream: `h = bf16(h + norm(y))` with the block's
/// post-norm (Gemma), `h = bf16(h + y)` without one (the Llama family).
pub(super) fn residual(
    gpu: &Gpu,
    cfg: &ModelConfig,
    h: &mut DTensor<bf16>,
    y: &DTensor<bf16>,
    post_norm: Option<&DTensor<f32>>,
) -> Result<()> {
    match post_norm {
        Some(pn) => ops::rms_norm_residual(gpu, h, y, pn, cfg.rms_norm_eps, cfg.norm_weight)?,
        None => ops::residual_add(gpu, h, y)?,
    }
    Ok(())
}

/// `h += post_attn_norm(o(attention(rope(q(x)), rope(k(x)), v(x))))` with `x = input_norm(h)`,
/// the projections' biases and the q/k norms where the layer has them, no post-norm where it has
/// none, layer `l`'s RoPE frequencies and window. `kv` receives K (after norm and RoPE) and V
/// before attention reads them.
#[allow(clippy::too_many_arguments)]
pub(super) fn attention(
    gpu: &Gpu,
    cfg: &ModelConfig,
    l: usize,
    w: &DeviceLayer,
    rope: &ModelRope,
    h: &mut DTensor<bf16>,
    s: &mut AttnScratch,
    batch: Batch,
    kv: Option<&mut KvSink<'_>>,
) -> Result<()> {
    let (nh, nkv, d) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
    let (eps, conv) = (cfg.rms_norm_eps, cfg.norm_weight);
    ops::rms_norm(gpu, h, w.input_norm(), &mut s.x, eps, conv)?;
    let p = Product::Gemm;
    qkv(
        gpu,
        cfg,
        p,
        w,
        &s.x,
        &mut s.q,
        &mut s.k,
        &mut s.v,
        s.qkv_f32.as_mut(),
    )?;
    ops::rope(
        gpu,
        &mut s.q,
        Some(&mut s.k),
        nh,
        nkv,
        d,
        batch.seq_len,
        rope.layer(cfg, l),
    )?;
    if let Some(f) = kv {
        f(l, &s.k, &s.v)?;
    }
    let ap = AttnParams {
        n_seq: batch.n_seq,
        seq_len: batch.seq_len,
        n_heads: nh,
        n_kv_heads: nkv,
        head_dim: d,
        scale: cfg.attn_scale(),
        softcap: cfg.attn_softcap,
        window: cfg.window(l),
    };
    ops::attention(gpu, &s.q, &s.k, &s.v, &mut s.att, &ap)?;
    attn_out(gpu, cfg, p, w, &s.att, h, &mut s.y, s.y_f32.as_mut())
}

/// The MLP block up to its activation input: `x = pre_ffn_norm(h)`, `gate = x·W_gateᵀ`,
/// `up = x·W_upᵀ` (the caller forms `act` with the statistics it needs).
pub(super) fn mlp_in(
    gpu: &Gpu,
    cfg: &ModelConfig,
    w: &DeviceLayer,
    h: &DTensor<bf16>,
    x: &mut DTensor<bf16>,
    gate: &mut DTensor<bf16>,
    up: &mut DTensor<bf16>,
) -> Result<()> {
    pre_ffn_norm(gpu, cfg, w, h, x)?;
    ops::gemm_nt(gpu, x, w.gate(), Some(gate), None, false)?;
    ops::gemm_nt(gpu, x, w.up(), Some(up), None, false)?;
    Ok(())
}

/// The MLP block up to the down_proj input without statistics: `act = f(x·W_gateᵀ) · (x·W_upᵀ)`
/// with `x = pre_ffn_norm(h)` and `f` the model's activation. One fused GEMM where the GPU has it
/// (Hopper, TMA GEMM self-checked: gate and up never reach memory), else `mlp_in` into `scratch`
/// (gate, up [N, I]; allocated here when `None`) and `act_mul`. Same values either way
/// (tests/cuda_kernels.rs).
pub(super) fn mlp_act(
    gpu: &Gpu,
    cfg: &ModelConfig,
    w: &DeviceLayer,
    h: &DTensor<bf16>,
    x: &mut DTensor<bf16>,
    act: &mut DTensor<bf16>,
    scratch: Option<(&mut DTensor<bf16>, &mut DTensor<bf16>)>,
) -> Result<()> {
    if ops::gate_up_fused(gpu, cfg.hidden_size) {
        pre_ffn_norm(gpu, cfg, w, h, x)?;
        ops::gate_up_act(gpu, cfg.mlp_act, x, w.gate(), w.up(), act)?;
        return Ok(());
    }
    let (n, i) = (h.rows(), w.gate().rows());
    let mut owned = None;
    let (gate, up) = match scratch {
        Some(s) => s,
        None => {
            let o = owned.insert((
                DTensor::zeros(gpu, &[n, i])?, // [N, I]
                DTensor::zeros(gpu, &[n, i])?, // [N, I]
            ));
            (&mut o.0, &mut o.1)
        }
    };
    mlp_in(gpu, cfg, w, h, x, gate, up)?;
    ops::act_mul(gpu, cfg.mlp_act, gate, up, act, None, None)?;
    Ok(())
}

/// `y = act·W_downᵀ` ([N, H], the down_proj output before the post-FFN norm).
pub(super) fn mlp_down(
    gpu: &Gpu,
    w: &DeviceLayer,
    act: &DTensor<bf16>,
    y: &mut DTensor<bf16>,
) -> Result<()> {
    ops::gemm_nt(gpu, act, w.down(), Some(y), None, false)?;
    Ok(())
}

/// `h += post_ffn_norm(y)`, or `h += y` without a post-FFN norm.
pub(super) fn mlp_residual(
    gpu: &Gpu,
    cfg: &ModelConfig,
    w: &DeviceLayer,
    h: &mut DTensor<bf16>,
    y: &DTensor<bf16>,
) -> Result<()> {
    residual(gpu, cfg, h, y, w.post_ffn_norm())
}

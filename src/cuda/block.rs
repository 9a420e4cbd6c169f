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
        "the layer has a {what} bias the config does not declare (attention_bias / family);          the CUDA engine allocated no f32 scratch for it"
    ))
}

/// A Linear: `out = bf16(x·Wᵀ)`, or with a bias `out = bf16(x·Wᵀ + b)` through the f32 product
/// `yf` (transformers' addmm rounds once, after the add). `x` [N, K], `w` [C, K], `b` [C], `out`
/// and `yf` [N, C].
pub(super) fn linear(
    gpu: &Gpu,
    x: &DTensor<bf16>,
    w: &DTensor<bf16>,
    b: Option<&DTensor<f32>>,
    out: &mut DTensor<bf16>,
    yf: Option<&mut DTensor<f32>>,
) -> Result<()> {
    match (b, yf) {
        (None, _) => ops::gemm_nt(gpu, x, w, Some(out), None, false)?,
        (Some(b), Some(yf)) => {
            ops::gemm_nt(gpu, x, w, None, Some(&mut *yf), false)?;
            ops::bias_add(gpu, yf, b, out)?;
        }
        (Some(_), None) => return Err(no_bias_scratch("projection")),
    }
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
    let (eps, conv) = (cfg.rms_norm_eps, cfg.norm_weight);
    let (nh, nkv, d) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
    ops::rms_norm(gpu, h, w.input_norm(), &mut s.x, eps, conv)?;
    match w.qkv_bias() {
        None => {
            ops::gemm_nt(gpu, &s.x, w.q(), Some(&mut s.q), None, false)?;
            ops::gemm_nt(gpu, &s.x, w.k(), Some(&mut s.k), None, false)?;
            ops::gemm_nt(gpu, &s.x, w.v(), Some(&mut s.v), None, false)?;
        }
        Some((qb, kb, vb)) => {
            let f = s.qkv_f32.as_mut().ok_or_else(|| no_bias_scratch("q/k/v"))?;
            linear(gpu, &s.x, w.q(), Some(qb), &mut s.q, Some(&mut f.q))?;
            linear(gpu, &s.x, w.k(), Some(kb), &mut s.k, Some(&mut f.k))?;
            linear(gpu, &s.x, w.v(), Some(vb), &mut s.v, Some(&mut f.v))?;
        }
    }
    if let (Some(qn), Some(kn)) = (w.q_norm(), w.k_norm()) {
        ops::rms_norm_inplace(gpu, &mut s.q, qn, eps, conv)?;
        ops::rms_norm_inplace(gpu, &mut s.k, kn, eps, conv)?;
    }
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
    let p = AttnParams {
        n_seq: batch.n_seq,
        seq_len: batch.seq_len,
        n_heads: nh,
        n_kv_heads: nkv,
        head_dim: d,
        scale: cfg.attn_scale(),
        softcap: cfg.attn_softcap,
        window: cfg.window(l),
    };
    ops::attention(gpu, &s.q, &s.k, &s.v, &mut s.att, &p)?;
    linear(gpu, &s.att, w.o(), w.o_bias(), &mut s.y, s.y_f32.as_mut())?;
    residual(gpu, cfg, h, &s.y, w.post_attn_norm())
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
    ops::rms_norm(
        gpu,
        h,
        w.pre_ffn_norm(),
        x,
        cfg.rms_norm_eps,
        cfg.norm_weight,
    )?;
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
        ops::rms_norm(
            gpu,
            h,
            w.pre_ffn_norm(),
            x,
            cfg.rms_norm_eps,
            cfg.norm_weight,
        )?;
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

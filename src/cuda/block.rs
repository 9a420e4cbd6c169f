//! The transformer block's kernel sequence on the device, written once: `GpuModel`'s forward
//! pass (and through it `GpuDecoder::prefill`) and the calibration `CudaBackend` both run these,
//! so the two cannot drift apart. The order and rounding points are those of the CPU reference
//! (`crate::cpu::model`), checked by tests/cuda_model.rs and tests/cuda_backend.rs.

use super::gpu::{DTensor, Gpu};
use super::ops::{self, AttnParams};
use super::GEMMA_ONLY;
use crate::checkpoint::config::ModelConfig;
use crate::checkpoint::registry::{layer_shape, LayerTensor};
use crate::engine::Batch;
use crate::error::Result;
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

/// Scratch of the attention block for N rows; `x` and `y` also serve the MLP block.
pub(super) struct AttnScratch {
    pub x: DTensor<bf16>,   // [N, H] normed block input
    pub y: DTensor<bf16>,   // [N, H] block output before its post-norm
    pub q: DTensor<bf16>,   // [N, nh·d]
    pub k: DTensor<bf16>,   // [N, nkv·d]
    pub v: DTensor<bf16>,   // [N, nkv·d]
    pub att: DTensor<bf16>, // [N, nh·d]
}

impl AttnScratch {
    pub fn new(gpu: &Gpu, cfg: &ModelConfig, n: usize) -> Result<AttnScratch> {
        let (hd, qd, kvd) = (cfg.hidden_size, cfg.q_dim(), cfg.kv_dim());
        Ok(AttnScratch {
            x: DTensor::zeros(gpu, &[n, hd])?,
            y: DTensor::zeros(gpu, &[n, hd])?,
            q: DTensor::zeros(gpu, &[n, qd])?,
            k: DTensor::zeros(gpu, &[n, kvd])?,
            v: DTensor::zeros(gpu, &[n, kvd])?,
            att: DTensor::zeros(gpu, &[n, qd])?,
        })
    }
}

/// `h += post_attn_norm(o(attention(rope(q(x)), rope(k(x)), v(x))))` with `x = input_norm(h)`,
/// the q/k norms on Gemma-3, layer `l`'s RoPE base and window. `kv` receives K (after norm and
/// RoPE) and V before attention reads them.
#[allow(clippy::too_many_arguments)]
pub(super) fn attention(
    gpu: &Gpu,
    cfg: &ModelConfig,
    l: usize,
    w: &DeviceLayer,
    h: &mut DTensor<bf16>,
    s: &mut AttnScratch,
    batch: Batch,
    kv: Option<&mut KvSink<'_>>,
) -> Result<()> {
    let eps = cfg.rms_norm_eps;
    let (nh, nkv, d) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
    ops::rms_norm(gpu, h, w.input_norm(), &mut s.x, eps)?;
    ops::gemm_nt(gpu, &s.x, w.q(), Some(&mut s.q), None, false)?;
    ops::gemm_nt(gpu, &s.x, w.k(), Some(&mut s.k), None, false)?;
    ops::gemm_nt(gpu, &s.x, w.v(), Some(&mut s.v), None, false)?;
    if let (Some(qn), Some(kn)) = (w.q_norm(), w.k_norm()) {
        ops::rms_norm_inplace(gpu, &mut s.q, qn, eps)?;
        ops::rms_norm_inplace(gpu, &mut s.k, kn, eps)?;
    }
    ops::rope(
        gpu,
        &mut s.q,
        Some(&mut s.k),
        nh,
        nkv,
        d,
        batch.seq_len,
        cfg.rope(l),
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
    ops::gemm_nt(gpu, &s.att, w.o(), Some(&mut s.y), None, false)?;
    ops::rms_norm_residual(gpu, h, &s.y, w.post_attn_norm().expect(GEMMA_ONLY), eps)?;
    Ok(())
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
    ops::rms_norm(gpu, h, w.pre_ffn_norm(), x, cfg.rms_norm_eps)?;
    ops::gemm_nt(gpu, x, w.gate(), Some(gate), None, false)?;
    ops::gemm_nt(gpu, x, w.up(), Some(up), None, false)?;
    Ok(())
}

/// The MLP block up to the down_proj input without statistics: `act = gelu_tanh(x·W_gateᵀ) ·
/// (x·W_upᵀ)` with `x = pre_ffn_norm(h)`. One fused GEMM where the GPU has it (Hopper, TMA GEMM
/// self-checked: gate and up never reach memory), else `mlp_in` into `scratch` (gate, up [N, I];
/// allocated here when `None`) and `gelu_mul`. Same values either way (tests/cuda_kernels.rs).
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
        ops::rms_norm(gpu, h, w.pre_ffn_norm(), x, cfg.rms_norm_eps)?;
        ops::gate_up_act(gpu, x, w.gate(), w.up(), act)?;
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
    ops::gelu_mul(gpu, gate, up, act, None, None)?;
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

/// `h += post_ffn_norm(y)`.
pub(super) fn mlp_residual(
    gpu: &Gpu,
    cfg: &ModelConfig,
    w: &DeviceLayer,
    h: &mut DTensor<bf16>,
    y: &DTensor<bf16>,
) -> Result<()> {
    ops::rms_norm_residual(
        gpu,
        h,
        y,
        w.post_ffn_norm().expect(GEMMA_ONLY),
        cfg.rms_norm_eps,
    )?;
    Ok(())
}

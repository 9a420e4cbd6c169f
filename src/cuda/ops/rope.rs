//! Launcher of kernels/rope.cu: rotate-half RoPE of q and k in place, and the per-layer-type
//! inverse frequencies it (and the decoder's `decode_rope_kv`) rotates by.

use super::{cfg, expect_len, i32_of, opt_ptr};
use crate::checkpoint::config::{LayerType, ModelConfig, RopeParams};
use crate::cuda::error::{CudaError, CudaResult};
use crate::cuda::gpu::{DTensor, Gpu, KArg};
use crate::cuda::prof::range;
use half::bf16;

/// One layer type's RoPE on the device: the inverse frequencies `[d/2]` (transformers' scaling
/// applied) and the factor cos and sin are multiplied by (yarn's attention factor, else 1).
pub struct RopeFreqs {
    pub inv_freq: DTensor<f32>, // [d/2]
    pub scale: f32,
}

/// RoPE of both layer types of a model, uploaded once (`rope_of` picks a layer's).
pub struct ModelRope {
    full: RopeFreqs,
    sliding: RopeFreqs,
}

impl ModelRope {
    /// The frequencies of `cfg`'s layer types from `cfg.rope_params_*`, computed on the host by
    /// the CPU engine's `cpu::rope::inv_freq` (one source of truth for every rope type).
    pub fn new(gpu: &Gpu, cfg: &ModelConfig) -> CudaResult<ModelRope> {
        let d = cfg.head_dim;
        let up = |p: &RopeParams| -> CudaResult<RopeFreqs> {
            let (inv, scale) = crate::cpu::rope::inv_freq(d, p);
            Ok(RopeFreqs {
                inv_freq: DTensor::from_host(gpu, &inv, &[inv.len()])?,
                scale,
            })
        };
        Ok(ModelRope {
            full: up(&cfg.rope_params_full)?,
            sliding: up(&cfg.rope_params_sliding)?,
        })
    }

    /// Layer `l`'s frequencies (by its type).
    pub fn layer(&self, cfg: &ModelConfig, l: usize) -> &RopeFreqs {
        match cfg.layer_types[l] {
            LayerType::Full => &self.full,
            LayerType::Sliding => &self.sliding,
        }
    }
}

/// Rotate-half RoPE in place: `q` [N, n_heads·d], `k` [N, n_kv·d] (optional), position of row n
/// = n % seq_len, with the layer's frequencies `rope` (`inv_freq` [d/2]).
#[allow(clippy::too_many_arguments)]
pub fn rope(
    gpu: &Gpu,
    q: &mut DTensor<bf16>,
    k: Option<&mut DTensor<bf16>>,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    seq_len: usize,
    rope: &RopeFreqs,
) -> CudaResult<()> {
    const K_NAME: &str = "rope_qk_bf16";
    let _r = range("rope");
    if head_dim == 0 || head_dim % 2 != 0 || n_heads == 0 || seq_len == 0 {
        return Err(CudaError::pre(
            K_NAME,
            format!("head_dim {head_dim} must be even and n_heads {n_heads}, seq_len {seq_len} positive"),
        ));
    }
    expect_len(K_NAME, "inv_freq", &rope.inv_freq, head_dim / 2)?;
    let rows = q.numel() / (n_heads * head_dim);
    expect_len(K_NAME, "q", q, rows * n_heads * head_dim)?;
    if rows % seq_len != 0 {
        return Err(CudaError::pre(
            K_NAME,
            format!("{rows} rows are not whole sequences of {seq_len}"),
        ));
    }
    let kp = opt_ptr(gpu, K_NAME, "k", k.as_deref(), rows * n_kv_heads * head_dim)?;
    let pairs = rows * head_dim / 2;
    if pairs == 0 {
        return Ok(());
    }
    let args = [
        KArg::Ptr(q.ptr(gpu)),
        KArg::Ptr(kp),
        KArg::Ptr(rope.inv_freq.ptr(gpu)),
        KArg::I32(i32_of(K_NAME, "rows", rows)?),
        KArg::I32(n_heads as i32),
        KArg::I32(n_kv_heads as i32),
        KArg::I32(head_dim as i32),
        KArg::I32(i32_of(K_NAME, "seq_len", seq_len)?),
        KArg::F32(rope.scale),
    ];
    // SAFETY: q holds rows·nh·d and k rows·nkv·d elements, inv_freq d/2 (checked); one thread per
    // (row, i < d/2).
    unsafe {
        gpu.launch(
            K_NAME,
            cfg((pairs.div_ceil(256), 1, 1), (256, 1, 1), 0),
            &args,
        )
    }
}

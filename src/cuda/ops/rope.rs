//! Launcher of kernels/rope.cu: rotate-half RoPE of q and k in place.

use super::{cfg, expect_len, i32_of, opt_ptr};
use crate::cuda::error::{CudaError, CudaResult};
use crate::cuda::gpu::{DTensor, Gpu, KArg};
use crate::cuda::prof::range;
use half::bf16;

/// Rotate-half RoPE in place: `q` [N, n_heads·d], `k` [N, n_kv·d] (optional), position of row n
/// = n % seq_len, with the layer's theta and linear factor.
#[allow(clippy::too_many_arguments)]
pub fn rope(
    gpu: &Gpu,
    q: &mut DTensor<bf16>,
    k: Option<&mut DTensor<bf16>>,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    seq_len: usize,
    rope: crate::checkpoint::config::Rope,
) -> CudaResult<()> {
    const K_NAME: &str = "rope_qk_bf16";
    let _r = range("rope");
    if head_dim == 0 || head_dim % 2 != 0 || n_heads == 0 || seq_len == 0 {
        return Err(CudaError::pre(
            K_NAME,
            format!("head_dim {head_dim} must be even and n_heads {n_heads}, seq_len {seq_len} positive"),
        ));
    }
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
        KArg::I32(i32_of(K_NAME, "rows", rows)?),
        KArg::I32(n_heads as i32),
        KArg::I32(n_kv_heads as i32),
        KArg::I32(head_dim as i32),
        KArg::I32(i32_of(K_NAME, "seq_len", seq_len)?),
        KArg::F32(rope.theta as f32),
        KArg::F32(rope.linear_factor as f32),
    ];
    // SAFETY: q holds rows·nh·d and k rows·nkv·d elements (checked); one thread per (row, i < d/2).
    unsafe {
        gpu.launch(
            K_NAME,
            cfg((pairs.div_ceil(256), 1, 1), (256, 1, 1), 0),
            &args,
        )
    }
}

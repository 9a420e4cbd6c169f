//! Launchers of kernels/attention.cu: fused causal GQA attention over whole sequences (the
//! tensor-core flash kernels and the generic scalar one).

use super::{cfg, expect_gqa, expect_len, i32_of, MAX_GRID_YZ};
use crate::cuda::error::{CudaError, CudaResult};
use crate::cuda::gpu::{DTensor, Gpu, KArg};
use crate::cuda::prof::range;
use half::bf16;

/// Dynamic shared memory of the attention kernel for head_dim `d` with `warps` warps: a Q tile of
/// 16·warps × d, K and V tiles of 64 × d.
pub const fn attention_smem(d: usize, warps: usize) -> u32 {
    ((16 * warps + 2 * 64) * d * 2) as u32
}

/// Shape and options of one attention call (mirrors `cpu::attention::AttnShape`).
#[derive(Debug, Clone, Copy)]
pub struct AttnParams {
    pub n_seq: usize,
    pub seq_len: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    pub softcap: Option<f32>,
    /// Key j is visible to query i iff `j <= i && i - j < window`.
    pub window: Option<usize>,
}

/// Which attention kernel `attention` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttnKernel {
    /// The tensor-core flash kernel when head_dim is 32, 64, 128 or 256 — with 8 warps (128 query
    /// rows per CTA) for d = 128 and 256 where a block may have its 128 KB / 64 KB of shared
    /// memory (sm_80, sm_90), else 4 — and the generic one for other head dims.
    Auto,
    /// The tensor-core flash kernel with this many warps: 4 (any of its head dims) or 8 (d = 128
    /// and 256).
    Flash(usize),
    /// The scalar one-warp-per-query kernel (any head_dim <= 512).
    Generic,
}

/// The tensor-core kernel for `head_dim` with `warps` warps, where one is instantiated.
pub fn flash_kernel_name(head_dim: usize, warps: usize) -> Option<&'static str> {
    match (head_dim, warps) {
        (32, 4) => Some("attention_fwd_d32"),
        (64, 4) => Some("attention_fwd_d64"),
        (128, 4) => Some("attention_fwd_d128"),
        (256, 4) => Some("attention_fwd_d256"),
        (128, 8) => Some("attention_fwd_d128_w8"),
        (256, 8) => Some("attention_fwd_d256_w8"),
        _ => None,
    }
}

/// The warps `AttnKernel::Auto` gives the tensor-core kernel for `head_dim` on this GPU.
pub fn flash_warps(gpu: &Gpu, head_dim: usize) -> usize {
    let fits = i64::from(gpu.info.max_smem_per_block) >= i64::from(attention_smem(head_dim, 8));
    if flash_kernel_name(head_dim, 8).is_some() && fits {
        8
    } else {
        4
    }
}

/// Fused causal GQA attention. `q`, `out`: [N, n_heads·d]; `k`, `v`: [N, n_kv·d];
/// N = n_seq · seq_len.
pub fn attention(
    gpu: &Gpu,
    q: &DTensor<bf16>,
    k: &DTensor<bf16>,
    v: &DTensor<bf16>,
    out: &mut DTensor<bf16>,
    p: &AttnParams,
) -> CudaResult<()> {
    attention_with(gpu, q, k, v, out, p, AttnKernel::Auto)
}

/// `attention` with an explicit kernel choice (tests compare the two).
pub fn attention_with(
    gpu: &Gpu,
    q: &DTensor<bf16>,
    k: &DTensor<bf16>,
    v: &DTensor<bf16>,
    out: &mut DTensor<bf16>,
    p: &AttnParams,
    kernel: AttnKernel,
) -> CudaResult<()> {
    let flash = match kernel {
        AttnKernel::Auto => {
            let w = flash_warps(gpu, p.head_dim);
            flash_kernel_name(p.head_dim, w).map(|n| (n, w))
        }
        AttnKernel::Flash(w) => match flash_kernel_name(p.head_dim, w) {
            Some(n) => Some((n, w)),
            None => {
                return Err(CudaError::pre(
                    "attention_fwd",
                    format!(
                        "no tensor-core kernel for head_dim {} with {w} warps",
                        p.head_dim
                    ),
                ))
            }
        },
        AttnKernel::Generic => None,
    };
    let name = flash.map_or("attention_fwd_generic", |f| f.0);
    if flash.is_none() && (p.head_dim == 0 || p.head_dim > 512) {
        return Err(CudaError::pre(
            name,
            format!("head_dim {} is not supported (1 … 512)", p.head_dim),
        ));
    }
    let _r = range("attention");
    expect_gqa(name, p.n_heads, p.n_kv_heads)?;
    let n = p.n_seq * p.seq_len;
    expect_len(name, "q", q, n * p.n_heads * p.head_dim)?;
    expect_len(name, "out", out, n * p.n_heads * p.head_dim)?;
    expect_len(name, "k", k, n * p.n_kv_heads * p.head_dim)?;
    expect_len(name, "v", v, n * p.n_kv_heads * p.head_dim)?;
    if n == 0 {
        return Ok(());
    }
    if p.n_heads > MAX_GRID_YZ || p.n_seq > MAX_GRID_YZ {
        return Err(CudaError::pre(
            name,
            format!(
                "{} heads × {} sequences exceed the grid",
                p.n_heads, p.n_seq
            ),
        ));
    }
    let softcap = match p.softcap {
        Some(c) if c > 0.0 => c,
        Some(c) => {
            return Err(CudaError::pre(
                name,
                format!("softcap {c} must be positive"),
            ))
        }
        None => 0.0,
    };
    // A window at least as long as the sequence is no window.
    let window = match p.window {
        Some(0) => {
            return Err(CudaError::pre(
                name,
                "sliding window 0 would hide every key",
            ))
        }
        Some(w) if w < p.seq_len => w as i32,
        _ => 0,
    };
    let (q_p, k_p, v_p, o_p) = (q.ptr(gpu), k.ptr(gpu), v.ptr(gpu), out.ptr(gpu));
    let seq = i32_of(name, "seq_len", p.seq_len)?;
    let (nh, nkv) = (p.n_heads as i32, p.n_kv_heads as i32);
    // The generic kernel takes head_dim as an argument; the flash kernels are built per head_dim.
    let (name, grid, threads, smem) = match flash {
        Some((name, warps)) => (
            name,
            (p.seq_len.div_ceil(16 * warps), p.n_heads, p.n_seq),
            32 * warps as u32,
            attention_smem(p.head_dim, warps),
        ),
        None => (name, (p.seq_len.div_ceil(4), p.n_heads, p.n_seq), 128, 0),
    };
    let mut args = vec![
        KArg::Ptr(q_p),
        KArg::Ptr(k_p),
        KArg::Ptr(v_p),
        KArg::Ptr(o_p),
        KArg::I32(seq),
        KArg::I32(nh),
        KArg::I32(nkv),
    ];
    if flash.is_none() {
        args.push(KArg::I32(p.head_dim as i32));
    }
    args.extend([KArg::F32(p.scale), KArg::F32(softcap), KArg::I32(window)]);
    // SAFETY: q/out hold N·nh·d and k/v N·nkv·d elements (checked); the kernels address rows
    // < seq_len of sequence blockIdx.z < n_seq, heads < nh (q) and h/(nh/nkv) < nkv (k, v). A
    // flash kernel's query tile is 16·warps rows and its dynamic shared memory
    // `attention_smem(d, warps)`, as the grid and smem assume; the generic one runs one warp per
    // query row (4 per block) with d <= 512 (checked).
    unsafe { gpu.launch(name, cfg(grid, (threads, 1, 1), smem), &args) }
}

//! Causal grouped-query attention for the CPU reference, in transformers' eager order:
//! `s = (q·kᵀ)·scale → softcap (Gemma-2) → mask → softmax (f32) → p·v`.
//!
//! Work is split into (sequence, head, query block) tasks. Each task computes one block of scores
//! with a GEMM over only the keys any of its queries may see (the causal prefix, cut further by
//! the sliding window), so memory is `block × keys`, never `T × T` per head at once.
//! Under `--precision bf16` the two products run on the bf16 kernel (`bf16::gemm_serial`).

use super::bf16;
use super::ops::{gemm_nn_strided, gemm_nt_strided};
use crate::checkpoint::config::ModelConfig;
use rayon::prelude::*;

const Q_BLOCK: usize = 64;

#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    /// Independent sequences, each `seq_len` rows.
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

impl AttnShape {
    /// Layer `l`'s attention over `n_seq` sequences of `seq_len` rows: heads, scale, softcap and
    /// window from the config (the forward pass, the decoder's prefill and the backward).
    pub fn of_layer(cfg: &ModelConfig, l: usize, n_seq: usize, seq_len: usize) -> AttnShape {
        AttnShape {
            n_seq,
            seq_len,
            n_heads: cfg.num_heads,
            n_kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
            scale: cfg.attn_scale(),
            softcap: cfg.attn_softcap,
            window: cfg.window(l),
        }
    }
}

/// Softmax over the visible keys `row[lo..hi]` in place, zero outside them: what the forward
/// computes and the backward recomputes, so both see the same probabilities to the bit.
pub fn masked_softmax(row: &mut [f32], lo: usize, hi: usize) {
    super::wide::wide(|| {
        let vis = &mut row[lo..hi];
        let m = vis.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
        for x in vis.iter_mut() {
            *x = super::ops::exp_fast(*x - m);
        }
        // Summed in a pass of its own (in order, as always) so the exponentials vectorise.
        let sum = vis.iter().fold(0f32, |a, &x| a + x);
        for x in vis.iter_mut() {
            *x /= sum;
        }
    });
    row[..lo].fill(0.0);
    row[hi..].fill(0.0);
}

/// `q`: [n_seq·T, n_heads, d]; `k`, `v`: [n_seq·T, n_kv, d]. Returns [n_seq·T, n_heads, d].
pub fn attention(q: &[f32], k: &[f32], v: &[f32], s: AttnShape) -> Vec<f32> {
    let (t, nh, nkv, d) = (s.seq_len, s.n_heads, s.n_kv_heads, s.head_dim);
    let q_rs = nh * d;
    let kv_rs = nkv * d;
    assert_eq!(
        q.len(),
        s.n_seq * t * q_rs,
        "attention: q is not [N, n_heads, d]"
    );
    assert_eq!(
        k.len(),
        s.n_seq * t * kv_rs,
        "attention: k is not [N, n_kv, d]"
    );
    assert_eq!(v.len(), k.len(), "attention: v differs from k");
    assert!(nh % nkv == 0);
    let group = nh / nkv;
    let n_blocks = t.div_ceil(Q_BLOCK);

    let tasks: Vec<(usize, usize, usize)> = (0..s.n_seq)
        .flat_map(|b| (0..nh).flat_map(move |h| (0..n_blocks).map(move |qb| (b, h, qb))))
        .collect();

    // Under `--precision bf16` both products take bf16 inputs with f32 sums, as the GPU kernel
    // (kernels/attention.cu) does: q, k, v rounded, and p rounded before p·v.
    let kernel = bf16::active();
    let blocks: Vec<Vec<f32>> = tasks
        .par_iter()
        .map(|&(b, h, qb)| {
            let i0 = qb * Q_BLOCK;
            let i1 = (i0 + Q_BLOCK).min(t);
            let rows = i1 - i0;
            // Keys visible to any query of the block: [j0, i1).
            let j0 = match s.window {
                Some(w) => (i0 + 1).saturating_sub(w),
                None => 0,
            };
            let nk = i1 - j0;
            let g = h / group;
            let seq_q = &q[b * t * q_rs..(b + 1) * t * q_rs];
            let seq_k = &k[b * t * kv_rs..(b + 1) * t * kv_rs];
            let seq_v = &v[b * t * kv_rs..(b + 1) * t * kv_rs];
            let mut sc = vec![0f32; rows * nk]; // [rows, nk]
            let (qh, kh) = (&seq_q[i0 * q_rs + h * d..], &seq_k[j0 * kv_rs + g * d..]);
            match kernel {
                Some(kn) => bf16::gemm_serial(
                    kn, qh, q_rs, kh, kv_rs, true, rows, nk, d, &mut sc, nk, s.scale,
                ),
                None => gemm_nt_strided(qh, q_rs, kh, kv_rs, &mut sc, nk, rows, nk, d, s.scale),
            }
            for r in 0..rows {
                let i = i0 + r;
                let row = &mut sc[r * nk..(r + 1) * nk];
                // Visible keys of query i, as indices into the row.
                let lo = match s.window {
                    Some(w) => (i + 1).saturating_sub(w),
                    None => 0,
                } - j0;
                let hi = i + 1 - j0;
                if let Some(cap) = s.softcap {
                    for x in &mut row[lo..hi] {
                        *x = (*x / cap).tanh() * cap;
                    }
                }
                masked_softmax(row, lo, hi);
            }
            let mut out = vec![0f32; rows * d]; // [rows, d]
            let vh = &seq_v[j0 * kv_rs + g * d..];
            match kernel {
                Some(kn) => {
                    bf16::gemm_serial(kn, &sc, nk, vh, kv_rs, false, rows, d, nk, &mut out, d, 1.0)
                }
                None => gemm_nn_strided(&sc, nk, vh, kv_rs, &mut out, d, rows, d, nk),
            }
            out
        })
        .collect();

    let mut o = vec![0f32; s.n_seq * t * q_rs];
    for (&(b, h, qb), blk) in tasks.iter().zip(&blocks) {
        let i0 = qb * Q_BLOCK;
        for (r, src) in blk.chunks_exact(d).enumerate() {
            let row = (b * t + i0 + r) * q_rs + h * d;
            o[row..row + d].copy_from_slice(src);
        }
    }
    o
}

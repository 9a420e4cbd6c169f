//! Launchers of kernels/decode.cu: the few-row GEMV (plain and fused with act·up), split-K
//! decode attention over the KV cache, the step's RoPE fused with the cache write, and the
//! batched cache write after a prefill.

use super::mlp::act_arg;
use super::rope::RopeFreqs;
use super::{
    cfg, expect_gqa, expect_inner, expect_len, expect_outputs, expect_shape, i32_of, softcap_arg,
    MAX_GRID_YZ,
};
use crate::checkpoint::config::Activation;
use crate::cpu::kv::visible_range;
use crate::cuda::error::{CudaError, CudaResult};
use crate::cuda::gpu::{DTensor, Gpu, KArg};
use crate::cuda::prof::range;
use half::bf16;

/// Most rows of X one GEMV launch takes (decode runs 1).
pub const GEMV_MAX_M: usize = 8;
/// Rows per GEMV block (one warp per output row).
const GEMV_ROWS_PER_BLOCK: usize = 8;

#[allow(clippy::too_many_arguments)]
fn launch_gemv(
    gpu: &Gpu,
    act: Option<Activation>,
    x: &DTensor<bf16>,
    w: &DTensor<bf16>,
    w2: Option<&DTensor<bf16>>,
    yb: u64,
    yf: u64,
    softcap: f32,
) -> CudaResult<()> {
    let (m, k, n) = (x.rows(), x.cols(), w.rows());
    let aligned = k % 8 == 0;
    let name: &'static str = match (aligned, act.is_some(), m) {
        (false, ..) => "decode_gemv_bf16_unaligned",
        (true, false, 1) => "decode_gemv_bf16_m1",
        (true, false, _) => "decode_gemv_bf16_m8",
        (true, true, 1) => "decode_gemv_act_bf16_m1",
        (true, true, _) => "decode_gemv_act_bf16_m8",
    };
    if m == 0 || n == 0 {
        return Ok(());
    }
    let args = [
        KArg::Ptr(x.ptr(gpu)),
        KArg::Ptr(w.ptr(gpu)),
        KArg::Ptr(w2.map_or(0, |t| t.ptr(gpu))),
        KArg::Ptr(yb),
        KArg::Ptr(yf),
        KArg::I32(m as i32),
        KArg::I32(i32_of(name, "N", n)?),
        KArg::I32(i32_of(name, "K", k)?),
        KArg::F32(softcap),
        KArg::I32(act.map_or(0, act_arg)),
    ];
    // SAFETY: the callers checked x [M, K] with 1 <= M <= 8, w (and w2) [N, K], every output
    // [M, N] (or null); one warp per row n < N (the rest of the last block returns at once), each
    // reading row n of w (w2) and rows < M of x, 16-byte chunks only when K % 8 == 0 (whole
    // allocations are 256-byte aligned, so every row is then 16-byte aligned).
    unsafe {
        gpu.launch(
            name,
            cfg((n.div_ceil(GEMV_ROWS_PER_BLOCK), 1, 1), (256, 1, 1), 0),
            &args,
        )
    }
}

fn gemv_check_x(kernel: &'static str, x: &DTensor<bf16>, w: &DTensor<bf16>) -> CudaResult<()> {
    expect_inner(kernel, x, w)?;
    if x.rows() > GEMV_MAX_M {
        return Err(CudaError::pre(
            kernel,
            format!(
                "x has {} rows; the GEMV takes at most {GEMV_MAX_M} (use gemm_nt)",
                x.rows()
            ),
        ));
    }
    Ok(())
}

/// `Y = X · Wᵀ` for a few rows (decode): `x` [M, K] with M <= 8, `w` [N, K] (HF Linear); writes
/// `y_bf16` and/or `y_f32` [M, N]. With `softcap`, `tanh(y/cap)·cap` is applied before storing
/// (the final logit softcap fused into the LM head). Any K; K % 8 == 0 takes the vectorised
/// kernels. Memory-bound: W is read once.
pub fn gemv(
    gpu: &Gpu,
    x: &DTensor<bf16>,
    w: &DTensor<bf16>,
    y_bf16: Option<&mut DTensor<bf16>>,
    y_f32: Option<&mut DTensor<f32>>,
    softcap: Option<f32>,
) -> CudaResult<()> {
    const K_NAME: &str = "decode_gemv_bf16";
    let _r = range("gemv");
    gemv_check_x(K_NAME, x, w)?;
    let (m, n) = (x.rows(), w.rows());
    expect_outputs(K_NAME, y_bf16.as_deref(), y_f32.as_deref(), false, m, n)?;
    let cap = softcap_arg(K_NAME, softcap)?;
    let yb = y_bf16.map_or(0, |t| t.ptr(gpu));
    let yf = y_f32.map_or(0, |t| t.ptr(gpu));
    launch_gemv(gpu, None, x, w, None, yb, yf, cap)
}

/// The MLP activation of a few rows in one pass over both weights:
/// `act = bf16(bf16(f(bf16(x·gateᵀ))) · bf16(x·upᵀ))` (`f` gelu_tanh or SiLU), rounded exactly
/// as `gemm_nt` + `act_mul` round it. `x` [M, K] (M <= 8), `gate`, `up` [N, K], `act` [M, N].
pub fn gemv_act(
    gpu: &Gpu,
    f: Activation,
    x: &DTensor<bf16>,
    gate: &DTensor<bf16>,
    up: &DTensor<bf16>,
    act: &mut DTensor<bf16>,
) -> CudaResult<()> {
    const K_NAME: &str = "decode_gemv_act_bf16";
    let _r = range("gemv");
    gemv_check_x(K_NAME, x, gate)?;
    expect_shape(K_NAME, "up", up, gate.rows(), gate.cols())?;
    expect_shape(K_NAME, "act", act, x.rows(), gate.rows())?;
    let yb = act.ptr(gpu);
    launch_gemv(gpu, Some(f), x, gate, Some(up), yb, 0, 0.0)
}

/// Most splits of one head's keys in decode attention.
pub const DECODE_MAX_SPLITS: usize = 64;
/// Fewest keys per split when the split count is planned (a block keeps 4 to 32 keys in flight).
const DECODE_MIN_CHUNK: usize = 32;

/// The decode attention kernel for `head_dim`: the smallest instantiation D ∈ {32, 64, 128, 256}
/// with head_dim <= D; None unless head_dim % 8 == 0 and 8 <= head_dim <= 256.
pub fn decode_attention_kernel(head_dim: usize) -> Option<&'static str> {
    if head_dim == 0 || head_dim % 8 != 0 {
        return None;
    }
    match head_dim {
        8..=32 => Some("decode_attention_d32"),
        33..=64 => Some("decode_attention_d64"),
        65..=128 => Some("decode_attention_d128"),
        129..=256 => Some("decode_attention_d256"),
        _ => None,
    }
}

/// `(chunk, splits)` for `n_keys >= 1` visible keys: split s takes keys
/// `[s·chunk, min(n_keys, (s+1)·chunk))`, and `1 <= splits <= DECODE_MAX_SPLITS`,
/// `(splits - 1)·chunk < n_keys <= splits·chunk`, so no split is empty. `forced` asks for a
/// split count (clamped to what the keys allow); otherwise about two blocks per SM over all
/// heads, at least `DECODE_MIN_CHUNK` keys each. (kernels/tools/simulate_decode.py copies this.)
pub fn plan_decode_splits(
    n_keys: usize,
    n_heads: usize,
    sms: usize,
    forced: Option<usize>,
) -> (usize, usize) {
    let n = n_keys.max(1);
    let want = match forced {
        Some(s) => s.clamp(1, DECODE_MAX_SPLITS.min(n)),
        None => {
            let target = (2 * sms / n_heads.max(1)).max(1);
            target
                .min(n.div_ceil(DECODE_MIN_CHUNK))
                .clamp(1, DECODE_MAX_SPLITS)
        }
    };
    let chunk = n.div_ceil(want);
    (chunk, n.div_ceil(chunk))
}

/// Split-K scratch of decode attention: partial outputs and (max, sum) per (head, split).
pub struct DecodeWorkspace {
    n_heads: usize,
    head_dim: usize,
    part_o: DTensor<f32>, // [nh, DECODE_MAX_SPLITS, d] (used as [nh, splits, d])
    part_ml: DTensor<f32>, // [nh, DECODE_MAX_SPLITS, 2] (used as [nh, splits, 2])
}

impl DecodeWorkspace {
    pub fn new(gpu: &Gpu, n_heads: usize, head_dim: usize) -> CudaResult<DecodeWorkspace> {
        Ok(DecodeWorkspace {
            n_heads,
            head_dim,
            part_o: DTensor::zeros(gpu, &[n_heads, DECODE_MAX_SPLITS, head_dim])?,
            part_ml: DTensor::zeros(gpu, &[n_heads, DECODE_MAX_SPLITS, 2])?,
        })
    }
}

/// One decode attention call: the query at position `pos` over one layer's cache.
#[derive(Debug, Clone, Copy)]
pub struct DecodeAttnParams {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Slots per KV head of the cache.
    pub slots: usize,
    /// Position j lives in slot `j % slots` (a sliding layer's ring) rather than slot j.
    pub ring: bool,
    /// Position of the query; keys `visible_range(pos, window)` are attended.
    pub pos: usize,
    pub window: Option<usize>,
    pub scale: f32,
    pub softcap: Option<f32>,
    /// Split count to use (tests); None plans it from the key count and the SM count.
    pub splits: Option<usize>,
}

/// Decode attention of one token: `q`, `out` [nh·d] (any shape of that many elements), `k_cache`,
/// `v_cache` [nkv, slots, d] holding every visible position (written by `kv_cache_write` /
/// `decode_rope_kv`). Scores: (q·k)·scale → softcap → softmax (f32) → Σ p·v, as the CPU decoder.
/// Returns the number of splits used (1: one launch; more: plus the combine kernel).
pub fn decode_attention(
    gpu: &Gpu,
    q: &DTensor<bf16>,
    k_cache: &DTensor<bf16>,
    v_cache: &DTensor<bf16>,
    out: &mut DTensor<bf16>,
    ws: &mut DecodeWorkspace,
    p: &DecodeAttnParams,
) -> CudaResult<usize> {
    const K_NAME: &str = "decode_attention";
    let _r = range("attention");
    let (nh, nkv, d) = (p.n_heads, p.n_kv_heads, p.head_dim);
    let Some(name) = decode_attention_kernel(d) else {
        return Err(CudaError::pre(
            K_NAME,
            format!("head_dim {d} is not supported (a multiple of 8, at most 256)"),
        ));
    };
    expect_gqa(name, nh, nkv)?;
    if nh > MAX_GRID_YZ {
        return Err(CudaError::pre(name, format!("{nh} heads exceed the grid")));
    }
    expect_len(name, "q", q, nh * d)?;
    expect_len(name, "out", out, nh * d)?;
    expect_len(name, "k_cache", k_cache, nkv * p.slots * d)?;
    expect_len(name, "v_cache", v_cache, nkv * p.slots * d)?;
    if ws.n_heads != nh || ws.head_dim != d {
        return Err(CudaError::pre(
            name,
            format!(
                "workspace is for {} heads of {}, the call has {nh} of {d}",
                ws.n_heads, ws.head_dim
            ),
        ));
    }
    if p.window == Some(0) {
        return Err(CudaError::pre(
            name,
            "sliding window 0 would hide every key",
        ));
    }
    let (lo, n_keys) = visible_range(p.pos, p.window);
    // Every visible position must have its own slot.
    if p.ring && n_keys > p.slots {
        return Err(CudaError::pre(
            name,
            format!(
                "{n_keys} visible keys (position {}, window {:?}) do not fit a ring of {} slots",
                p.pos, p.window, p.slots
            ),
        ));
    }
    if !p.ring && p.pos >= p.slots {
        return Err(CudaError::pre(
            name,
            format!("position {} is past the cache's {} slots", p.pos, p.slots),
        ));
    }
    let softcap = softcap_arg(name, p.softcap)?;
    let sms = gpu.info.multiprocessors.max(1) as usize;
    let (chunk, splits) = plan_decode_splits(n_keys, nh, sms, p.splits);
    let args = [
        KArg::Ptr(q.ptr(gpu)),
        KArg::Ptr(k_cache.ptr(gpu)),
        KArg::Ptr(v_cache.ptr(gpu)),
        KArg::Ptr(out.ptr(gpu)),
        KArg::Ptr(ws.part_o.ptr(gpu)),
        KArg::Ptr(ws.part_ml.ptr(gpu)),
        KArg::I32(nh as i32),
        KArg::I32(nkv as i32),
        KArg::I32(d as i32),
        KArg::I32(i32_of(name, "slots", p.slots)?),
        KArg::I32(p.ring as i32),
        KArg::I32(i32_of(name, "lo", lo)?),
        KArg::I32(i32_of(name, "n_keys", n_keys)?),
        KArg::I32(i32_of(name, "chunk", chunk)?),
        KArg::F32(p.scale),
        KArg::F32(softcap),
    ];
    // SAFETY: q/out hold nh·d and the caches nkv·slots·d elements (checked); block (s, h) reads q
    // row h, cache rows (h / (nh/nkv), slot < slots) of keys t < n_keys (slot = (lo+t) % slots on
    // a ring, lo+t < slots otherwise: checked above), and writes out row h (one split) or
    // part_o[h, s, :d] / part_ml[h, s, :2] with s < splits <= DECODE_MAX_SPLITS, within the
    // workspace allocated for nh heads of d. d % 8 == 0 keeps every 16-byte access aligned.
    unsafe { gpu.launch(name, cfg((splits, nh, 1), (128, 1, 1), 0), &args)? };
    if splits > 1 {
        const C_NAME: &str = "decode_attention_combine";
        let args = [
            KArg::Ptr(ws.part_o.ptr(gpu)),
            KArg::Ptr(ws.part_ml.ptr(gpu)),
            KArg::Ptr(out.ptr(gpu)),
            KArg::I32(d as i32),
            KArg::I32(splits as i32),
        ];
        // SAFETY: reads part_o [nh, splits, d] and part_ml [nh, splits, 2], all written by the
        // launch above (every split has at least one key), writes out [nh, d].
        unsafe { gpu.launch(C_NAME, cfg((nh, 1, 1), (256, 1, 1), 0), &args)? };
    }
    Ok(splits)
}

/// The step's RoPE and cache write: rotates `q` [nh·d] in place and `k` [nkv·d] for position
/// `pos` by the layer's frequencies (the formula of `rope`), and stores rotated k and v [nkv·d]
/// into slot `slot` of `k_cache`, `v_cache` [nkv, slots, d].
#[allow(clippy::too_many_arguments)]
pub fn decode_rope_kv(
    gpu: &Gpu,
    q: &mut DTensor<bf16>,
    k: &DTensor<bf16>,
    v: &DTensor<bf16>,
    k_cache: &mut DTensor<bf16>,
    v_cache: &mut DTensor<bf16>,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    slots: usize,
    pos: usize,
    slot: usize,
    rope: &RopeFreqs,
) -> CudaResult<()> {
    const K_NAME: &str = "decode_rope_kv_bf16";
    let _r = range("rope");
    let d = head_dim;
    if d == 0 || d % 2 != 0 {
        return Err(CudaError::pre(
            K_NAME,
            format!("head_dim {d} must be even and positive"),
        ));
    }
    if slot >= slots {
        return Err(CudaError::pre(
            K_NAME,
            format!("slot {slot} is outside the cache's {slots} slots"),
        ));
    }
    expect_len(K_NAME, "inv_freq", &rope.inv_freq, d / 2)?;
    expect_len(K_NAME, "q", q, n_heads * d)?;
    expect_len(K_NAME, "k", k, n_kv_heads * d)?;
    expect_len(K_NAME, "v", v, n_kv_heads * d)?;
    expect_len(K_NAME, "k_cache", k_cache, n_kv_heads * slots * d)?;
    expect_len(K_NAME, "v_cache", v_cache, n_kv_heads * slots * d)?;
    let args = [
        KArg::Ptr(q.ptr(gpu)),
        KArg::Ptr(k.ptr(gpu)),
        KArg::Ptr(v.ptr(gpu)),
        KArg::Ptr(k_cache.ptr(gpu)),
        KArg::Ptr(v_cache.ptr(gpu)),
        KArg::Ptr(rope.inv_freq.ptr(gpu)),
        KArg::I32(i32_of(K_NAME, "n_heads", n_heads)?),
        KArg::I32(i32_of(K_NAME, "n_kv_heads", n_kv_heads)?),
        KArg::I32(i32_of(K_NAME, "head_dim", d)?),
        KArg::I32(i32_of(K_NAME, "pos", pos)?),
        KArg::I32(slot as i32),
        KArg::I32(i32_of(K_NAME, "slots", slots)?),
        KArg::F32(rope.scale),
    ];
    // SAFETY: q holds nh·d, k and v nkv·d, the caches nkv·slots·d, inv_freq d/2 elements and
    // slot < slots (checked); one thread per pair i < d/2 touches elements i and i + d/2 of each head row.
    unsafe {
        gpu.launch(
            K_NAME,
            cfg(((d / 2).div_ceil(128), 1, 1), (128, 1, 1), 0),
            &args,
        )
    }
}

/// Fills cache slots from a prefill: `k`, `v` [T, nkv·d] (K after norm and RoPE) hold positions
/// `pos0..pos0+T`; row r goes to slot `slot_of(pos0 + r, slots, ring)` of `k_cache`, `v_cache`
/// [nkv, slots, d]. On a ring, rows that a later row of the same write would overwrite (all but
/// the last `slots`) are skipped, as the CPU cache does.
#[allow(clippy::too_many_arguments)]
pub fn kv_cache_write(
    gpu: &Gpu,
    k: &DTensor<bf16>,
    v: &DTensor<bf16>,
    k_cache: &mut DTensor<bf16>,
    v_cache: &mut DTensor<bf16>,
    n_kv_heads: usize,
    head_dim: usize,
    slots: usize,
    ring: bool,
    pos0: usize,
) -> CudaResult<()> {
    const K_NAME: &str = "decode_kv_write_bf16";
    let _r = range("kv_write");
    let (nkv, d) = (n_kv_heads, head_dim);
    if d == 0 || d % 8 != 0 || nkv == 0 || slots == 0 {
        return Err(CudaError::pre(
            K_NAME,
            format!("head_dim {d} must be a positive multiple of 8, n_kv_heads {nkv} and slots {slots} positive"),
        ));
    }
    let row = nkv * d;
    if k.numel() % row != 0 {
        return Err(CudaError::pre(
            K_NAME,
            format!("k has {} elements, not rows of {row}", k.numel()),
        ));
    }
    let t = k.numel() / row;
    expect_len(K_NAME, "v", v, t * row)?;
    expect_len(K_NAME, "k_cache", k_cache, nkv * slots * d)?;
    expect_len(K_NAME, "v_cache", v_cache, nkv * slots * d)?;
    if !ring && pos0 + t > slots {
        return Err(CudaError::pre(
            K_NAME,
            format!("positions {pos0}..{} do not fit {slots} slots", pos0 + t),
        ));
    }
    let first = if ring { t.saturating_sub(slots) } else { 0 };
    if t == first {
        return Ok(());
    }
    i32_of(K_NAME, "last position", pos0 + t)?;
    let args = [
        KArg::Ptr(k.ptr(gpu)),
        KArg::Ptr(v.ptr(gpu)),
        KArg::Ptr(k_cache.ptr(gpu)),
        KArg::Ptr(v_cache.ptr(gpu)),
        KArg::I32(nkv as i32),
        KArg::I32(d as i32),
        KArg::I32(pos0 as i32),
        KArg::I32(first as i32),
        KArg::I32(slots as i32),
        KArg::I32(ring as i32),
    ];
    // SAFETY: k and v hold T·nkv·d elements and the caches nkv·slots·d (checked); block b copies
    // row first + b < T into slot (pos0 + row) % slots (ring) or pos0 + row < slots (checked),
    // in 16-byte chunks (d % 8 == 0). Rows of one launch map to distinct slots.
    unsafe { gpu.launch(K_NAME, cfg((t - first, 1, 1), (128, 1, 1), 0), &args) }
}

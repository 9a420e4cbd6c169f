//! Launchers of kernels/gemm.cu: the bf16 tensor-core GEMM `Y = X·Wᵀ` (mma.sync, the sm_90a
//! wgmma kernel and its TMA-fed persistent sibling), the fused gate/up activation, the Gram
//! matrix `G += Aᵀ·A`, and the transpose and symmetrize helpers. Which kernel runs is
//! `policy`'s decision.

mod policy;

use super::mlp::{act_arg, act_mul};
use super::{cfg, expect_inner, expect_outputs, expect_shape, i32_of, MAX_GRID_YZ};
use crate::checkpoint::config::Activation;
use crate::cuda::error::{CudaError, CudaResult};
use crate::cuda::gpu::{DTensor, Gpu, KArg};
use crate::cuda::prof::range;
use crate::cuda::tma;
use half::bf16;
use policy::resolve_kernel;
pub use policy::{
    auto_gemm_kernel, gate_up_fused, gemm_kernel_name, kernel_summary, sm90_gemm_enabled,
    sm90_kernel_enabled, GemmKernel,
};

/// Dynamic shared memory of the GEMM kernels: 4 stages × (128 + 128) × 32 bf16.
const GEMM_SMEM: u32 = 4 * (128 + 128) * 32 * 2;
/// Dynamic shared memory of `gemm_nt_bf16_sm90`: 4 stages × (128 + 128) × 64 bf16 + 1 KB of
/// alignment slack for the 1024-byte swizzle atoms.
const GEMM_SM90_SMEM: u32 = 4 * (128 + 128) * 64 * 2 + 1024;
/// Dynamic shared memory of `gemm_nt_bf16_sm90_tma`: 4 stages × (128 + 256) × 64 bf16, 1 KB of
/// alignment slack, 8 mbarriers of 8 bytes.
const GEMM_SM90_TMA_SMEM: u32 = 4 * (128 + 256) * 64 * 2 + 1024 + 8 * 8;
const GEMM_TILE: usize = 128;
/// Column tile of `gemm_nt_bf16_sm90_tma` (its row tile is GEMM_TILE).
const GEMM_TMA_TILE_N: usize = 256;

/// `Y = X · Wᵀ` (HF Linear, no bias). `x`: [M, K], `w`: [N, K]; writes `y_bf16` [M, N] and/or
/// `y_f32` [M, N]; with `accumulate`, adds into `y_f32` instead. K % 8 == 0 takes a cp.async
/// kernel (wgmma on Hopper, else mma.sync: `GemmKernel::Auto`), any other K an
/// element-gathering variant (same tiles and MMAs as mma.sync, slower loads).
pub fn gemm_nt(
    gpu: &Gpu,
    x: &DTensor<bf16>,
    w: &DTensor<bf16>,
    y_bf16: Option<&mut DTensor<bf16>>,
    y_f32: Option<&mut DTensor<f32>>,
    accumulate: bool,
) -> CudaResult<()> {
    gemm_nt_with(gpu, x, w, y_bf16, y_f32, accumulate, GemmKernel::Auto)
}

/// `gemm_nt` with the kernel chosen by the caller (tests and benchmarks compare them).
pub fn gemm_nt_with(
    gpu: &Gpu,
    x: &DTensor<bf16>,
    w: &DTensor<bf16>,
    y_bf16: Option<&mut DTensor<bf16>>,
    y_f32: Option<&mut DTensor<f32>>,
    accumulate: bool,
    kernel: GemmKernel,
) -> CudaResult<()> {
    gemm_nt_launch(gpu, x, w, y_bf16, y_f32, accumulate, kernel, None)
}

const TMA_NAME: &str = "gemm_nt_bf16_sm90_tma";

/// What `gemm_nt_bf16_sm90_tma` computes (its `mode` argument).
#[derive(Clone, Copy, PartialEq, Eq)]
enum TmaMode {
    /// Y = X·Wᵀ.
    Plain,
    /// The Gram matrix: only tiles touching the block-upper triangle.
    Gram,
    /// act = f(X·W_gateᵀ)·(X·W_upᵀ), W = W_gate; the device address of W_up [N, K] and f.
    GateUp(u64, Activation),
}

/// Where `gemm_nt_bf16_sm90_tma` writes: device addresses of the bf16 and f32 outputs (0: none),
/// their row stride, whether f32 accumulates, and the mode.
struct TmaOut {
    yb: u64,
    yf: u64,
    ld: usize,
    accumulate: bool,
    mode: TmaMode,
}

/// Launches `gemm_nt_bf16_sm90_tma` for Y [M, N] = X [M, K] · W [N, K]ᵀ, `x` and `w` given as
/// (device address, rows) of K-contiguous bf16 matrices; at most `ctas` CTAs (default: one per
/// SM). The caller has checked the shapes, the outputs' extents and compute capability 9.0.
fn launch_tma(
    gpu: &Gpu,
    x: (u64, usize),
    w: (u64, usize),
    k: usize,
    y: TmaOut,
    ctas: Option<usize>,
) -> CudaResult<()> {
    let ((xp, m), (wp, n)) = (x, w);
    // Gate/up tiles hold 128 gate and 128 up rows: 128 output columns each.
    let (tile_n, box_n, mode) = match y.mode {
        TmaMode::Plain => (GEMM_TMA_TILE_N, GEMM_TMA_TILE_N, 0),
        TmaMode::Gram => (GEMM_TMA_TILE_N, GEMM_TMA_TILE_N, 1),
        // MODE_GATE_UP + the activation (gemm.cu).
        TmaMode::GateUp(_, f) => (GEMM_TMA_TILE_N / 2, GEMM_TMA_TILE_N / 2, 2 + act_arg(f)),
    };
    let tiles = m.div_ceil(GEMM_TILE) * n.div_ceil(tile_n);
    i32_of(TMA_NAME, "tiles", tiles)?;
    let sms = usize::try_from(gpu.info.multiprocessors)
        .unwrap_or(1)
        .max(1);
    let grid = tiles.min(ctas.unwrap_or(sms));
    let tx = tma::bf16_2d(TMA_NAME, xp, m, k, k, GEMM_TILE, 64)?;
    let tw = tma::bf16_2d(TMA_NAME, wp, n, k, k, box_n, 64)?;
    let tw2 = match y.mode {
        TmaMode::GateUp(up, _) => tma::bf16_2d(TMA_NAME, up, n, k, k, box_n, 64)?,
        _ => tw,
    };
    let args = [
        KArg::Tma(tx),
        KArg::Tma(tw),
        KArg::Tma(tw2),
        KArg::Ptr(y.yb),
        KArg::Ptr(y.yf),
        KArg::I32(i32_of(TMA_NAME, "M", m)?),
        KArg::I32(i32_of(TMA_NAME, "N", n)?),
        KArg::I32(i32_of(TMA_NAME, "K", k)?),
        KArg::I32(i32_of(TMA_NAME, "ldc", y.ld)?),
        KArg::I32(y.accumulate as i32),
        KArg::I32(mode),
    ];
    // SAFETY: the maps describe exactly x [M, K] and w (and W_up) [N, K] (the copy engine
    // zero-fills outside them); the caller guarantees each given output holds M rows of stride
    // ldc ≥ N and the epilogue is bounds-checked; compute capability 9.0 only (resolve_kernel).
    unsafe {
        gpu.launch(
            TMA_NAME,
            cfg((grid, 1, 1), (384, 1, 1), GEMM_SM90_TMA_SMEM),
            &args,
        )
    }
}

/// `act = f(x·W_gateᵀ)·(x·W_upᵀ)` (`f` gelu_tanh or SiLU) in bf16 with transformers' rounding
/// (each Linear output rounded, the activation rounded, the product rounded: exactly `gemm_nt`
/// twice then `act_mul`). `x` [M, K], `gate`, `up` [I, K], `act` [M, I]. On Hopper, once the TMA
/// GEMM passed its self-check, one fused launch (gate and up never reach memory); elsewhere the
/// three ops, with scratch for gate and up.
pub fn gate_up_act(
    gpu: &Gpu,
    f: Activation,
    x: &DTensor<bf16>,
    gate: &DTensor<bf16>,
    up: &DTensor<bf16>,
    act: &mut DTensor<bf16>,
) -> CudaResult<()> {
    gate_up_act_with(gpu, f, x, gate, up, act, GemmKernel::Auto)
}

/// `gate_up_act` with the kernel chosen by the caller: `Sm90Tma` insists on the fused launch,
/// any other kernel runs the three separate ops on it.
pub fn gate_up_act_with(
    gpu: &Gpu,
    f: Activation,
    x: &DTensor<bf16>,
    gate: &DTensor<bf16>,
    up: &DTensor<bf16>,
    act: &mut DTensor<bf16>,
    kernel: GemmKernel,
) -> CudaResult<()> {
    const K_NAME: &str = "gate_up_act";
    let (m, k, i) = (x.rows(), x.cols(), gate.rows());
    expect_shape(K_NAME, "gate", gate, i, k)?;
    expect_shape(K_NAME, "up", up, i, k)?;
    expect_shape(K_NAME, "act", act, m, i)?;
    if m == 0 || i == 0 {
        return Ok(());
    }
    if resolve_kernel(gpu, kernel, TMA_NAME, "K", k, true)? == GemmKernel::Sm90Tma {
        let _r = range("gemm");
        let y = TmaOut {
            yb: act.ptr(gpu),
            yf: 0,
            ld: i,
            accumulate: false,
            mode: TmaMode::GateUp(up.ptr(gpu), f),
        };
        return launch_tma(gpu, (x.ptr(gpu), m), (gate.ptr(gpu), i), k, y, None);
    }
    let mut g = DTensor::<bf16>::zeros(gpu, &[m, i])?; // [M, I]
    let mut u = DTensor::<bf16>::zeros(gpu, &[m, i])?; // [M, I]
    gemm_nt_with(gpu, x, gate, Some(&mut g), None, false, kernel)?;
    gemm_nt_with(gpu, x, up, Some(&mut u), None, false, kernel)?;
    act_mul(gpu, f, &g, &u, act, None, None)
}

/// `gemm_nt_with` on at most `ctas` CTAs where the kernel is persistent (the TMA kernel; `None`:
/// one per SM). Tests use few CTAs so each walks several tiles, as large GEMMs do on the device.
#[allow(clippy::too_many_arguments)]
pub fn gemm_nt_launch(
    gpu: &Gpu,
    x: &DTensor<bf16>,
    w: &DTensor<bf16>,
    y_bf16: Option<&mut DTensor<bf16>>,
    y_f32: Option<&mut DTensor<f32>>,
    accumulate: bool,
    kernel: GemmKernel,
    ctas: Option<usize>,
) -> CudaResult<()> {
    const K_NAME: &str = "gemm_nt_bf16";
    let _r = range("gemm");
    let (m, k, n) = (x.rows(), x.cols(), w.rows());
    expect_inner(K_NAME, x, w)?;
    expect_outputs(
        K_NAME,
        y_bf16.as_deref(),
        y_f32.as_deref(),
        accumulate,
        m,
        n,
    )?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    let (gm, gn) = (m.div_ceil(GEMM_TILE), n.div_ceil(GEMM_TILE));
    if gn > MAX_GRID_YZ {
        return Err(CudaError::pre(
            K_NAME,
            format!("N = {n} needs {gn} column tiles (max {MAX_GRID_YZ})"),
        ));
    }
    let (mi, ni, ki) = (
        i32_of(K_NAME, "M", m)?,
        i32_of(K_NAME, "N", n)?,
        i32_of(K_NAME, "K", k)?,
    );
    let yb = y_bf16.map_or(0, |t| t.ptr(gpu));
    let yf = y_f32.map_or(0, |t| t.ptr(gpu));
    // Whole allocations are 256-byte aligned, so rows are 16-byte aligned exactly when K % 8 == 0.
    if resolve_kernel(gpu, kernel, TMA_NAME, "K", k, true)? == GemmKernel::Sm90Tma {
        let y = TmaOut {
            yb,
            yf,
            ld: n,
            accumulate,
            mode: TmaMode::Plain,
        };
        return launch_tma(gpu, (x.ptr(gpu), m), (w.ptr(gpu), n), k, y, ctas);
    }
    let sm90 = resolve_kernel(gpu, kernel, "gemm_nt_bf16_sm90", "K", k, false)? == GemmKernel::Sm90;
    let (name, smem) = if sm90 {
        ("gemm_nt_bf16_sm90", GEMM_SM90_SMEM)
    } else if k % 8 == 0 {
        (K_NAME, GEMM_SMEM)
    } else {
        ("gemm_nt_bf16_unaligned", GEMM_SMEM)
    };
    let args = [
        KArg::Ptr(x.ptr(gpu)),
        KArg::Ptr(w.ptr(gpu)),
        KArg::Ptr(yb),
        KArg::Ptr(yf),
        KArg::I32(mi),
        KArg::I32(ni),
        KArg::I32(ki),
        KArg::I32(ki),
        KArg::I32(ki),
        KArg::I32(ni),
        KArg::I32(accumulate as i32),
    ];
    // SAFETY: x holds M·K, w N·K, each output M·N elements (checked above); all three kernels
    // read and write only within those extents (edges are bounds-checked) with lda = ldb = K,
    // ldc = N, on the same 128 × 128 tile grid; the wgmma one only on compute capability 9.0.
    unsafe { gpu.launch(name, cfg((gm, gn, 1), (256, 1, 1), smem), &args) }
}

/// `G += Aᵀ·A` for `a` [T, I] into `g` [I, I] (f32), updating only 128×128 blocks on or above
/// the block diagonal; call `gram_symmetrize` once after the last accumulation.
pub fn gram_accumulate(gpu: &Gpu, a: &DTensor<bf16>, g: &mut DTensor<f32>) -> CudaResult<()> {
    gram_accumulate_with(gpu, a, g, GemmKernel::Auto)
}

/// `gram_accumulate` with the kernel chosen by the caller. The wgmma kernels (`Auto` where one
/// passed its self-check, with T % 8 == 0) transpose `a` into a scratch [I, T] buffer and run
/// on it (`gemm_nt_bf16_sm90_tma` in Gram mode, or `gram_nt_bf16_sm90`): both wgmma operands
/// K-major, one extra pass over `a` (≈ 1/(2·I/8) of the Gram's work) for tensor cores that run
/// the rest.
pub fn gram_accumulate_with(
    gpu: &Gpu,
    a: &DTensor<bf16>,
    g: &mut DTensor<f32>,
    kernel: GemmKernel,
) -> CudaResult<()> {
    const K_NAME: &str = "gram_tn_bf16";
    let _r = range("gram");
    let (t, i) = (a.rows(), a.cols());
    expect_shape(K_NAME, "g", g, i, i)?;
    if t == 0 || i == 0 {
        return Ok(());
    }
    let gi = i.div_ceil(GEMM_TILE);
    if gi > MAX_GRID_YZ {
        return Err(CudaError::pre(K_NAME, format!("I = {i} is too wide")));
    }
    let (ti, ii) = (i32_of(K_NAME, "T", t)?, i32_of(K_NAME, "I", i)?);
    let chosen = resolve_kernel(gpu, kernel, "gram_nt_bf16_sm90", "T", t, true)?;
    if chosen == GemmKernel::Sm90Tma {
        let mut at = DTensor::<bf16>::zeros(gpu, &[i, t])?; // Aᵀ [I, T]
        transpose(gpu, a, &mut at)?;
        let y = TmaOut {
            yb: 0,
            yf: g.ptr(gpu),
            ld: i,
            accumulate: true,
            mode: TmaMode::Gram,
        };
        return launch_tma(gpu, (at.ptr(gpu), i), (at.ptr(gpu), i), t, y, None);
    }
    if chosen == GemmKernel::Sm90 {
        let mut at = DTensor::<bf16>::zeros(gpu, &[i, t])?; // Aᵀ [I, T]
        transpose(gpu, a, &mut at)?;
        let args = [
            KArg::Ptr(at.ptr(gpu)),
            KArg::Ptr(g.ptr(gpu)),
            KArg::I32(ii),
            KArg::I32(ti),
            KArg::I32(ti),
        ];
        // SAFETY: at holds I·T and g I·I elements; T % 8 == 0 keeps every 16-byte row chunk of
        // at inside or outside the matrix (cp.async); the grid is the 128-tile square of G.
        return unsafe {
            gpu.launch(
                "gram_nt_bf16_sm90",
                cfg((gi, gi, 1), (256, 1, 1), GEMM_SM90_SMEM),
                &args,
            )
        };
    }
    let name = if i % 8 == 0 {
        K_NAME
    } else {
        "gram_tn_bf16_unaligned"
    };
    let args = [
        KArg::Ptr(a.ptr(gpu)),
        KArg::Ptr(g.ptr(gpu)),
        KArg::I32(ti),
        KArg::I32(ii),
        KArg::I32(ii),
    ];
    // SAFETY: a holds T·I and g I·I elements (checked); the kernel stays within them.
    unsafe { gpu.launch(name, cfg((gi, gi, 1), (256, 1, 1), GEMM_SMEM), &args) }
}

/// `out = inᵀ` for bf16 `input` [rows, cols] into `out` [cols, rows].
pub fn transpose(gpu: &Gpu, input: &DTensor<bf16>, out: &mut DTensor<bf16>) -> CudaResult<()> {
    const K_NAME: &str = "transpose_bf16";
    let (rows, cols) = (input.rows(), input.cols());
    expect_shape(K_NAME, "out", out, cols, rows)?;
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let grid = (cols.div_ceil(32), rows.div_ceil(32), 1);
    if grid.1 > MAX_GRID_YZ {
        return Err(CudaError::pre(
            K_NAME,
            format!("{rows} rows exceed the grid"),
        ));
    }
    let args = [
        KArg::Ptr(input.ptr(gpu)),
        KArg::Ptr(out.ptr(gpu)),
        KArg::I32(i32_of(K_NAME, "rows", rows)?),
        KArg::I32(i32_of(K_NAME, "cols", cols)?),
    ];
    // SAFETY: input holds rows·cols and out cols·rows elements (checked); the kernel
    // bounds-checks both indices.
    unsafe { gpu.launch(K_NAME, cfg(grid, (32, 8, 1), 0), &args) }
}

/// Copies the computed upper block triangle of a Gram matrix onto the lower one.
pub fn gram_symmetrize(gpu: &Gpu, g: &mut DTensor<f32>) -> CudaResult<()> {
    const K_NAME: &str = "gram_symmetrize_f32";
    let i = g.cols();
    expect_shape(K_NAME, "g", g, i, i)?;
    if i == 0 {
        return Ok(());
    }
    let b = i.div_ceil(32);
    if b > MAX_GRID_YZ {
        return Err(CudaError::pre(K_NAME, format!("I = {i} is too wide")));
    }
    let args = [KArg::Ptr(g.ptr(gpu)), KArg::I32(i32_of(K_NAME, "I", i)?)];
    // SAFETY: g holds I·I elements; every thread checks r, c < I.
    unsafe { gpu.launch(K_NAME, cfg((b, b, 1), (32, 8, 1), 0), &args) }
}

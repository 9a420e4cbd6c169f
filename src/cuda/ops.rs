//! One launcher per kernel of kernels/*.cu. Each checks the shapes and preconditions its kernel
//! relies on (returning `CudaError::Precondition` naming the kernel), picks the grid, and keeps
//! the one `unsafe` launch local with a `SAFETY:` note. Shapes in comments are row-major.
//!
//! Numerics match the CPU reference ops (src/cpu/ops.rs) up to bf16 storage: see each kernel
//! file's header for where values are rounded to bf16.

use super::error::{CudaError, CudaResult};
use super::gpu::{DTensor, Gpu, KArg};
use super::prof::range;
use cudarc::driver::LaunchConfig;
use half::bf16;

/// Dynamic shared memory of the GEMM kernels: 4 stages × (128 + 128) × 32 bf16.
pub const GEMM_SMEM: u32 = 4 * (128 + 128) * 32 * 2;
/// Dynamic shared memory of `gemm_nt_bf16_sm90`: 4 stages × (128 + 128) × 64 bf16 + 1 KB of
/// alignment slack for the 1024-byte swizzle atoms.
pub const GEMM_SM90_SMEM: u32 = 4 * (128 + 128) * 64 * 2 + 1024;
/// Dynamic shared memory of `gemm_nt_bf16_sm90_tma`: 4 stages × (128 + 256) × 64 bf16, 1 KB of
/// alignment slack, 8 mbarriers of 8 bytes.
pub const GEMM_SM90_TMA_SMEM: u32 = 4 * (128 + 256) * 64 * 2 + 1024 + 8 * 8;
const GEMM_TILE: usize = 128;
/// Column tile of `gemm_nt_bf16_sm90_tma` (its row tile is GEMM_TILE).
const GEMM_TMA_TILE_N: usize = 256;
const MAX_GRID_YZ: usize = 65_535;

/// Dynamic shared memory of the attention kernel for head_dim `d` with `warps` warps: a Q tile of
/// 16·warps × d, K and V tiles of 64 × d.
pub const fn attention_smem(d: usize, warps: usize) -> u32 {
    ((16 * warps + 2 * 64) * d * 2) as u32
}

pub(super) fn i32_of(kernel: &'static str, what: &str, v: usize) -> CudaResult<i32> {
    i32::try_from(v).map_err(|_| CudaError::pre(kernel, format!("{what} = {v} exceeds 2^31 - 1")))
}

fn expect_shape<T>(
    kernel: &'static str,
    what: &str,
    t: &DTensor<T>,
    rows: usize,
    cols: usize,
) -> CudaResult<()> {
    if t.rows() != rows || t.cols() != cols {
        return Err(CudaError::pre(
            kernel,
            format!(
                "{what} has shape {:?}, expected [{rows}, {cols}] (rows × columns)",
                t.shape()
            ),
        ));
    }
    Ok(())
}

fn expect_len<T>(kernel: &'static str, what: &str, t: &DTensor<T>, n: usize) -> CudaResult<()> {
    if t.numel() != n {
        return Err(CudaError::pre(
            kernel,
            format!(
                "{what} has shape {:?} ({} elements), expected {n} elements",
                t.shape(),
                t.numel()
            ),
        ));
    }
    Ok(())
}

/// Device address of an optional tensor (0, the kernels' "absent", when `None`) after checking
/// that it holds `n` elements.
fn opt_ptr<T>(
    gpu: &Gpu,
    kernel: &'static str,
    what: &str,
    t: Option<&DTensor<T>>,
    n: usize,
) -> CudaResult<u64> {
    match t {
        Some(t) => {
            expect_len(kernel, what, t, n)?;
            Ok(t.ptr(gpu))
        }
        None => Ok(0),
    }
}

/// `opt_ptr` for a tensor that must have shape [rows, cols].
fn opt_ptr_shape<T>(
    gpu: &Gpu,
    kernel: &'static str,
    what: &str,
    t: Option<&DTensor<T>>,
    rows: usize,
    cols: usize,
) -> CudaResult<u64> {
    match t {
        Some(t) => {
            expect_shape(kernel, what, t, rows, cols)?;
            Ok(t.ptr(gpu))
        }
        None => Ok(0),
    }
}

pub(super) fn cfg(grid: (usize, usize, usize), block: (u32, u32, u32), smem: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid.0 as u32, grid.1 as u32, grid.2 as u32),
        block_dim: block,
        shared_mem_bytes: smem,
    }
}

/// Blocks for a grid-stride loop over n elements with 256 threads.
fn stride_blocks(n: usize) -> usize {
    n.div_ceil(256).clamp(1, 1 << 16)
}

// ---------------------------------------------------------------------------------------------
// GEMM

/// Which kernel `gemm_nt_with` runs (for K % 8 == 0; any other K takes the gathering variant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmKernel {
    /// On compute capability 9.0: the TMA kernel when its self-check passed, else the cp.async
    /// wgmma kernel when its self-check passed, else `MmaSync`; elsewhere `MmaSync`.
    Auto,
    /// `gemm_nt_bf16`: mma.sync m16n8k16 + ldmatrix + cp.async (sm_80 and newer).
    MmaSync,
    /// `gemm_nt_bf16_sm90`: wgmma m64n128k16 fed by cp.async (compute capability 9.0 only).
    Sm90,
    /// `gemm_nt_bf16_sm90_tma`: wgmma m64n256k16 fed by TMA, warp-specialized, persistent
    /// (compute capability 9.0 only).
    Sm90Tma,
}

/// `WHITTLE_GEMM`: `mma` keeps every GEMM on mma.sync, `wgmma` allows the cp.async wgmma kernel
/// but not the TMA one (scripts/device-check.sh sets these when a probe of a kernel fails).
fn gemm_env_allows(kernel: GemmKernel) -> bool {
    match std::env::var("WHITTLE_GEMM").as_deref() {
        Ok("mma") => kernel == GemmKernel::MmaSync,
        Ok("wgmma") => kernel != GemmKernel::Sm90Tma,
        _ => true,
    }
}

/// Does `GemmKernel::Auto` take the wgmma kernel `kernel` (`Sm90` or `Sm90Tma`) on this GPU?
/// Decided once per `Gpu` and kernel: only on compute capability 9.0 (the only SASS the wgmma
/// kernels have real code in), only where `WHITTLE_GEMM` allows it, and only if it agrees with
/// the mma.sync kernel on ragged random problems — a kernel written without a GPU to try it on
/// must not be trusted blindly; a disagreement is reported once on stderr and the next kernel
/// in line is used.
pub fn sm90_kernel_enabled(gpu: &Gpu, kernel: GemmKernel) -> bool {
    let cell = match kernel {
        GemmKernel::Sm90 => &gpu.sm90_gemm,
        GemmKernel::Sm90Tma => &gpu.sm90_tma,
        GemmKernel::Auto | GemmKernel::MmaSync => return false,
    };
    *cell.get_or_init(|| {
        if gpu.info.compute_capability != (9, 0) || !gemm_env_allows(kernel) {
            return false;
        }
        let what = match kernel {
            GemmKernel::Sm90Tma => "the sm_90a TMA + wgmma GEMM",
            _ => "the sm_90a wgmma GEMM",
        };
        match sm90_self_check(gpu, kernel) {
            Ok(None) => true,
            Ok(Some(why)) => {
                eprintln!(
                    "whittle: {what} disagrees with the mma.sync GEMM on {} ({why}); not using it",
                    gpu.info.name
                );
                false
            }
            Err(e) => {
                eprintln!("whittle: {what} could not be checked ({e}); not using it");
                false
            }
        }
    })
}

/// `sm90_kernel_enabled(gpu, GemmKernel::Sm90)`: whether the Gram matrix and, without the TMA
/// kernel, the projections run on wgmma.
pub fn sm90_gemm_enabled(gpu: &Gpu) -> bool {
    sm90_kernel_enabled(gpu, GemmKernel::Sm90)
}

/// Which kernel a GEMM-shaped launch takes, for K % 8 == 0 (`len`, the reduction length named
/// `what`, checked here): `Auto` resolves as documented at `GemmKernel`; the wgmma kernels
/// insist (an error off compute capability 9.0 or for a ragged `len`). `tma_ok`: whether this
/// operation has a TMA kernel at all.
fn resolve_kernel(
    gpu: &Gpu,
    kernel: GemmKernel,
    name: &'static str,
    what: &str,
    len: usize,
    tma_ok: bool,
) -> CudaResult<GemmKernel> {
    match kernel {
        GemmKernel::Auto if len % 8 != 0 => Ok(GemmKernel::MmaSync),
        GemmKernel::Auto if tma_ok && sm90_kernel_enabled(gpu, GemmKernel::Sm90Tma) => {
            Ok(GemmKernel::Sm90Tma)
        }
        GemmKernel::Auto if sm90_gemm_enabled(gpu) => Ok(GemmKernel::Sm90),
        GemmKernel::Auto | GemmKernel::MmaSync => Ok(GemmKernel::MmaSync),
        GemmKernel::Sm90 | GemmKernel::Sm90Tma => {
            if gpu.info.compute_capability != (9, 0)
                || len % 8 != 0
                || (kernel == GemmKernel::Sm90Tma && !tma_ok)
            {
                return Err(CudaError::pre(
                    name,
                    format!(
                        "needs compute capability 9.0 and {what} % 8 == 0 (have sm_{}{}, {what} = {len})",
                        gpu.info.compute_capability.0, gpu.info.compute_capability.1
                    ),
                ));
            }
            Ok(kernel)
        }
    }
}

/// The kernel `GemmKernel::Auto` runs for reduction length `k` on this GPU (runs the self-checks
/// on first use).
pub fn auto_gemm_kernel(gpu: &Gpu, k: usize) -> GemmKernel {
    resolve_kernel(gpu, GemmKernel::Auto, "gemm_nt_bf16", "K", k, true)
        .unwrap_or(GemmKernel::MmaSync)
}

/// The kernel function a resolved `kernel` launches for reduction length `k` (benchmark records).
pub fn gemm_kernel_name(kernel: GemmKernel, k: usize) -> &'static str {
    match kernel {
        GemmKernel::Sm90Tma => "gemm_nt_bf16_sm90_tma",
        GemmKernel::Sm90 => "gemm_nt_bf16_sm90",
        _ if k % 8 != 0 => "gemm_nt_bf16_unaligned",
        _ => "gemm_nt_bf16",
    }
}

/// Runs `kernel` and the mma.sync kernel on a 200 × 320 × 200 problem (ragged in M, N and K,
/// several k-tiles; the TMA kernel also with a single CTA walking all tiles, so its stage ring
/// wraps across tiles, in Gram mode on a 520 × 520 Gram matrix and in gate/up mode); `Some(reason)` when they differ by more than f32 summation order allows.
/// The first element of row-major `got` ([.., cols]) that differs from `want` by more than
/// `rel`·|want| + `of_max`·max|want| + 1e-5 (NaN always differs). f32 outputs of two GEMMs differ
/// by summation order only (rel 0, of_max 1e-4); bf16 outputs may also differ by one rounding
/// step of an input that landed on the other side of a tie.
fn first_mismatch(want: &[f32], got: &[f32], cols: usize, rel: f32, of_max: f32) -> Option<String> {
    let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
    want.iter()
        .zip(got)
        .position(|(a, b)| {
            let close = (a - b).abs() <= rel * a.abs() + of_max * scale + 1e-5;
            !close
        })
        .map(|i| {
            format!(
                "element ({}, {}): {} vs {}",
                i / cols,
                i % cols,
                got[i],
                want[i]
            )
        })
}

fn sm90_self_check(gpu: &Gpu, kernel: GemmKernel) -> CudaResult<Option<String>> {
    let (m, n, k) = (200usize, 320usize, 200usize);
    let mut r = crate::rng::XorShift64::from_state(0x2545_F491_4F6C_DD1D);
    let mut vals = |len: usize| -> Vec<bf16> {
        (0..len)
            .map(|_| bf16::from_f32((r.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0))
            .collect()
    };
    let x = DTensor::from_host(gpu, &vals(m * k), &[m, k])?;
    let w = DTensor::from_host(gpu, &vals(n * k), &[n, k])?;
    let mut want = DTensor::<f32>::zeros(gpu, &[m, n])?;
    gemm_nt_with(
        gpu,
        &x,
        &w,
        None,
        Some(&mut want),
        false,
        GemmKernel::MmaSync,
    )?;
    let want = want.to_host(gpu)?;
    let grids: &[Option<usize>] = if kernel == GemmKernel::Sm90Tma {
        &[None, Some(1)]
    } else {
        &[None]
    };
    for &ctas in grids {
        let mut got = DTensor::<f32>::zeros(gpu, &[m, n])?;
        gemm_nt_launch(gpu, &x, &w, None, Some(&mut got), false, kernel, ctas)?;
        if let Some(e) = first_mismatch(&want, &got.to_host(gpu)?, n, 0.0, 1e-4) {
            let grid = ctas.map_or(String::new(), |c| format!(", {c} CTA"));
            return Ok(Some(format!("{e}{grid}")));
        }
    }
    if kernel == GemmKernel::Sm90Tma {
        // Gram mode: I = 520 spans 5 row blocks and 3 column tiles, so tiles wholly below the
        // block diagonal are skipped (and mirrored by gram_symmetrize).
        let (t, i) = (64usize, 520usize);
        let a = DTensor::from_host(gpu, &vals(t * i), &[t, i])?;
        let gram = |kern| -> CudaResult<Vec<f32>> {
            let mut g = DTensor::<f32>::zeros(gpu, &[i, i])?;
            gram_accumulate_with(gpu, &a, &mut g, kern)?;
            gram_symmetrize(gpu, &mut g)?;
            g.to_host(gpu)
        };
        let (want, got) = (gram(GemmKernel::MmaSync)?, gram(GemmKernel::Sm90Tma)?);
        if let Some(e) = first_mismatch(&want, &got, i, 0.0, 1e-4) {
            return Ok(Some(format!("Gram {e}")));
        }
        // Gate/up mode (two W boxes per stage, the gelu epilogue) against gemm + gemm +
        // gelu_mul on mma.sync: 200 output columns, so the second tile is ragged.
        let (gate, up) = (
            DTensor::from_host(gpu, &vals(200 * k), &[200, k])?,
            DTensor::from_host(gpu, &vals(200 * k), &[200, k])?,
        );
        let act = |kern| -> CudaResult<Vec<f32>> {
            let mut a = DTensor::<bf16>::zeros(gpu, &[m, 200])?;
            gate_up_act_with(gpu, &x, &gate, &up, &mut a, kern)?;
            Ok(a.to_host(gpu)?.iter().map(|v| v.to_f32()).collect())
        };
        let (want, got) = (act(GemmKernel::MmaSync)?, act(GemmKernel::Sm90Tma)?);
        if let Some(e) = first_mismatch(&want, &got, 200, 1e-2, 1e-3) {
            return Ok(Some(format!("gate/up {e}")));
        }
    }
    Ok(None)
}

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
    /// act = gelu_tanh(X·W_gateᵀ)·(X·W_upᵀ), W = W_gate; the device address of W_up [N, K].
    GateUp(u64),
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
        TmaMode::GateUp(_) => (GEMM_TMA_TILE_N / 2, GEMM_TMA_TILE_N / 2, 2),
    };
    let tiles = m.div_ceil(GEMM_TILE) * n.div_ceil(tile_n);
    i32_of(TMA_NAME, "tiles", tiles)?;
    let sms = usize::try_from(gpu.info.multiprocessors)
        .unwrap_or(1)
        .max(1);
    let grid = tiles.min(ctas.unwrap_or(sms));
    let tx = super::tma::bf16_2d(TMA_NAME, xp, m, k, k, GEMM_TILE, 64)?;
    let tw = super::tma::bf16_2d(TMA_NAME, wp, n, k, k, box_n, 64)?;
    let tw2 = match y.mode {
        TmaMode::GateUp(up) => super::tma::bf16_2d(TMA_NAME, up, n, k, k, box_n, 64)?,
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

/// `act = gelu_tanh(x·W_gateᵀ)·(x·W_upᵀ)` in bf16 with transformers' rounding (each Linear output
/// rounded, the gelu rounded, the product rounded: exactly `gemm_nt` twice then `gelu_mul`).
/// `x` [M, K], `gate`, `up` [I, K], `act` [M, I]. On Hopper, once the TMA GEMM passed its
/// self-check, one fused launch (gate and up never reach memory); elsewhere the three ops, with
/// scratch for gate and up.
pub fn gate_up_act(
    gpu: &Gpu,
    x: &DTensor<bf16>,
    gate: &DTensor<bf16>,
    up: &DTensor<bf16>,
    act: &mut DTensor<bf16>,
) -> CudaResult<()> {
    gate_up_act_with(gpu, x, gate, up, act, GemmKernel::Auto)
}

/// The kernels the hot ops of `cfg`'s model choose on this GPU, for reports (`whittle_report.json`
/// `gpu_kernels`, `whittle bench --json` `kernels`): the projections' GEMM, whether gate/up is
/// fused, the Gram matrix's kernel, attention's. Runs the self-checks on first use.
pub fn kernel_summary(gpu: &Gpu, cfg: &crate::config::ModelConfig) -> String {
    let (h, i, d) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
    let gemm = gemm_kernel_name(auto_gemm_kernel(gpu, h), h);
    let gram = match auto_gemm_kernel(gpu, 8) {
        GemmKernel::Sm90Tma => "gemm_nt_bf16_sm90_tma (Gram mode)",
        GemmKernel::Sm90 => "gram_nt_bf16_sm90",
        _ if i % 8 == 0 => "gram_tn_bf16",
        _ => "gram_tn_bf16_unaligned",
    };
    let attn = flash_kernel_name(d, flash_warps(gpu, d)).unwrap_or("attention_fwd_generic");
    let fused = if gate_up_fused(gpu, h) {
        "fused with gelu·up"
    } else {
        "separate"
    };
    format!("GEMM {gemm} (gate/up {fused}), Gram {gram}, attention {attn}")
}

/// Whether `gate_up_act` runs as one fused launch for reduction length `k` on this GPU (runs the
/// self-checks on first use).
pub fn gate_up_fused(gpu: &Gpu, k: usize) -> bool {
    auto_gemm_kernel(gpu, k) == GemmKernel::Sm90Tma
}

/// `gate_up_act` with the kernel chosen by the caller: `Sm90Tma` insists on the fused launch,
/// any other kernel runs the three separate ops on it.
pub fn gate_up_act_with(
    gpu: &Gpu,
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
            mode: TmaMode::GateUp(up.ptr(gpu)),
        };
        return launch_tma(gpu, (x.ptr(gpu), m), (gate.ptr(gpu), i), k, y, None);
    }
    let mut g = DTensor::<bf16>::zeros(gpu, &[m, i])?; // [M, I]
    let mut u = DTensor::<bf16>::zeros(gpu, &[m, i])?; // [M, I]
    gemm_nt_with(gpu, x, gate, Some(&mut g), None, false, kernel)?;
    gemm_nt_with(gpu, x, up, Some(&mut u), None, false, kernel)?;
    gelu_mul(gpu, &g, &u, act, None, None)
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
    if w.cols() != k {
        return Err(CudaError::pre(
            K_NAME,
            format!(
                "x is {:?} but w is {:?}: inner dimensions differ",
                x.shape(),
                w.shape()
            ),
        ));
    }
    if y_bf16.is_none() && y_f32.is_none() {
        return Err(CudaError::pre(K_NAME, "no output given"));
    }
    if accumulate && y_f32.is_none() {
        return Err(CudaError::pre(K_NAME, "accumulate needs an f32 output"));
    }
    if let Some(y) = &y_bf16 {
        expect_shape(K_NAME, "y (bf16)", y, m, n)?;
    }
    if let Some(y) = &y_f32 {
        expect_shape(K_NAME, "y (f32)", y, m, n)?;
    }
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

// ---------------------------------------------------------------------------------------------
// Attention

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
    if p.n_kv_heads == 0 || p.n_heads % p.n_kv_heads != 0 {
        return Err(CudaError::pre(
            name,
            format!(
                "n_heads {} is not a multiple of n_kv_heads {}",
                p.n_heads, p.n_kv_heads
            ),
        ));
    }
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
    if let Some((name, warps)) = flash {
        let args = [
            KArg::Ptr(q_p),
            KArg::Ptr(k_p),
            KArg::Ptr(v_p),
            KArg::Ptr(o_p),
            KArg::I32(seq),
            KArg::I32(nh),
            KArg::I32(nkv),
            KArg::F32(p.scale),
            KArg::F32(softcap),
            KArg::I32(window),
        ];
        let grid = (p.seq_len.div_ceil(16 * warps), p.n_heads, p.n_seq);
        let smem = attention_smem(p.head_dim, warps);
        // SAFETY: q/out hold N·nh·d and k/v N·nkv·d elements (checked); the kernel addresses rows
        // < seq_len of sequence blockIdx.z < n_seq, heads < nh (q) and h/(nh/nkv) < nkv (k, v);
        // its query tile is 16·warps rows, as the grid assumes.
        unsafe { gpu.launch(name, cfg(grid, (32 * warps as u32, 1, 1), smem), &args) }
    } else {
        let args = [
            KArg::Ptr(q_p),
            KArg::Ptr(k_p),
            KArg::Ptr(v_p),
            KArg::Ptr(o_p),
            KArg::I32(seq),
            KArg::I32(nh),
            KArg::I32(nkv),
            KArg::I32(p.head_dim as i32),
            KArg::F32(p.scale),
            KArg::F32(softcap),
            KArg::I32(window),
        ];
        let grid = (p.seq_len.div_ceil(4), p.n_heads, p.n_seq);
        // SAFETY: as above; one warp per query row < seq_len, d <= 512 (checked).
        unsafe { gpu.launch(name, cfg(grid, (128, 1, 1), 0), &args) }
    }
}

// ---------------------------------------------------------------------------------------------
// Norms

fn norm_rows(kernel: &'static str, numel: usize, w: &DTensor<f32>) -> CudaResult<(usize, usize)> {
    let cols = w.numel();
    if cols == 0 || numel % cols != 0 {
        return Err(CudaError::pre(
            kernel,
            format!("{numel} elements are not rows of the weight's {cols}"),
        ));
    }
    Ok((numel / cols, cols))
}

#[allow(clippy::too_many_arguments)]
fn launch_norm(
    gpu: &Gpu,
    name: &'static str,
    x: u64,
    w: u64,
    out: u64,
    rows: usize,
    cols: usize,
    eps: f32,
) -> CudaResult<()> {
    if rows == 0 {
        return Ok(());
    }
    let args = [
        KArg::Ptr(x),
        KArg::Ptr(w),
        KArg::Ptr(out),
        KArg::I32(i32_of(name, "rows", rows)?),
        KArg::I32(i32_of(name, "cols", cols)?),
        KArg::F32(eps),
    ];
    // SAFETY: callers checked that x and out hold rows·cols elements and w holds cols; one warp
    // per row, rows >= `rows` return at once.
    unsafe { gpu.launch(name, cfg((rows.div_ceil(8), 1, 1), (256, 1, 1), 0), &args) }
}

/// Gemma RMSNorm of every row: `out = x·rsqrt(mean(x²)+eps)·(1+w)`; `w` [cols] f32, `x` and
/// `out` hold rows × cols (per-head norms: rows of head_dim).
pub fn rms_norm(
    gpu: &Gpu,
    x: &DTensor<bf16>,
    w: &DTensor<f32>,
    out: &mut DTensor<bf16>,
    eps: f32,
) -> CudaResult<()> {
    const K_NAME: &str = "rmsnorm_bf16";
    let _r = range("norm");
    let (rows, cols) = norm_rows(K_NAME, x.numel(), w)?;
    expect_len(K_NAME, "out", out, rows * cols)?;
    launch_norm(
        gpu,
        K_NAME,
        x.ptr(gpu),
        w.ptr(gpu),
        out.ptr(gpu),
        rows,
        cols,
        eps,
    )
}

/// In-place RMSNorm (the q/k head norms).
pub fn rms_norm_inplace(
    gpu: &Gpu,
    x: &mut DTensor<bf16>,
    w: &DTensor<f32>,
    eps: f32,
) -> CudaResult<()> {
    const K_NAME: &str = "rmsnorm_bf16";
    let _r = range("norm");
    let (rows, cols) = norm_rows(K_NAME, x.numel(), w)?;
    let p = x.ptr(gpu);
    // In place is allowed: each lane reads an element in the second pass before writing it.
    launch_norm(gpu, K_NAME, p, w.ptr(gpu), p, rows, cols, eps)
}

/// The residual step: `h += bf16(rmsnorm(y)·(1+w))` (two roundings, as transformers' bf16 path).
pub fn rms_norm_residual(
    gpu: &Gpu,
    h: &mut DTensor<bf16>,
    y: &DTensor<bf16>,
    w: &DTensor<f32>,
    eps: f32,
) -> CudaResult<()> {
    const K_NAME: &str = "rmsnorm_residual_bf16";
    let _r = range("norm");
    let (rows, cols) = norm_rows(K_NAME, y.numel(), w)?;
    expect_len(K_NAME, "h", h, rows * cols)?;
    // Argument order of rmsnorm_residual_bf16: (h, y, w, rows, cols, eps).
    if rows == 0 {
        return Ok(());
    }
    let args = [
        KArg::Ptr(h.ptr(gpu)),
        KArg::Ptr(y.ptr(gpu)),
        KArg::Ptr(w.ptr(gpu)),
        KArg::I32(i32_of(K_NAME, "rows", rows)?),
        KArg::I32(i32_of(K_NAME, "cols", cols)?),
        KArg::F32(eps),
    ];
    // SAFETY: h and y hold rows·cols elements, w cols (checked).
    unsafe { gpu.launch(K_NAME, cfg((rows.div_ceil(8), 1, 1), (256, 1, 1), 0), &args) }
}

// ---------------------------------------------------------------------------------------------
// RoPE

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
    rope: crate::config::Rope,
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

// ---------------------------------------------------------------------------------------------
// MLP activation

/// Device pointers of optional column statistics `(Σ, Σ²)` ([cols] f64 each; 0 when absent).
fn col_stats_ptrs(
    gpu: &Gpu,
    kernel: &'static str,
    stats: Option<(&mut DTensor<f64>, &mut DTensor<f64>)>,
    cols: usize,
) -> CudaResult<(u64, u64)> {
    match stats {
        Some((s1, s2)) => {
            expect_len(kernel, "col_sum", s1, cols)?;
            expect_len(kernel, "col_sumsq", s2, cols)?;
            Ok((s1.ptr(gpu), s2.ptr(gpu)))
        }
        None => Ok((0, 0)),
    }
}

/// Grid of the column-statistics kernels (mlp.cu): 64 columns × 128 rows per block (32, 8).
fn col_stats_grid(
    kernel: &'static str,
    rows: usize,
    cols: usize,
) -> CudaResult<(usize, usize, usize)> {
    let gy = rows.div_ceil(128);
    if gy > MAX_GRID_YZ {
        return Err(CudaError::pre(
            kernel,
            format!("{rows} rows exceed the grid"),
        ));
    }
    Ok((cols.div_ceil(64), gy, 1))
}

/// `act = gelu_tanh(gate)·up` ([rows, I] bf16), optionally also in f32, optionally adding
/// Σact and Σact² per column into `stats` ([I] f64 each).
pub fn gelu_mul(
    gpu: &Gpu,
    gate: &DTensor<bf16>,
    up: &DTensor<bf16>,
    act: &mut DTensor<bf16>,
    act_f32: Option<&mut DTensor<f32>>,
    stats: Option<(&mut DTensor<f64>, &mut DTensor<f64>)>,
) -> CudaResult<()> {
    const K_NAME: &str = "gelu_mul_stats_bf16";
    let _r = range("mlp_act");
    let (rows, cols) = (gate.rows(), gate.cols());
    expect_shape(K_NAME, "up", up, rows, cols)?;
    expect_shape(K_NAME, "act", act, rows, cols)?;
    let af = opt_ptr_shape(gpu, K_NAME, "act_f32", act_f32.as_deref(), rows, cols)?;
    let (s1, s2) = col_stats_ptrs(gpu, K_NAME, stats, cols)?;
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let grid = col_stats_grid(K_NAME, rows, cols)?;
    let args = [
        KArg::Ptr(gate.ptr(gpu)),
        KArg::Ptr(up.ptr(gpu)),
        KArg::Ptr(act.ptr(gpu)),
        KArg::Ptr(af),
        KArg::Ptr(s1),
        KArg::Ptr(s2),
        KArg::I32(i32_of(K_NAME, "rows", rows)?),
        KArg::I32(i32_of(K_NAME, "cols", cols)?),
    ];
    // SAFETY: gate, up, act (and act_f32) hold rows·cols elements, the statistics cols (checked);
    // the kernel bounds-checks every row and column.
    unsafe { gpu.launch(K_NAME, cfg(grid, (32, 8, 1), 0), &args) }
}

/// Calibration token weights (`calib::TokenWeight`): `w[r] = 1/(ms(y_r)+eps)`, divided also by
/// `ms(resid_r)+eps` when `resid` is given. `y`, `resid` [rows, H] bf16, `w` [rows] f32.
pub fn token_weights(
    gpu: &Gpu,
    y: &DTensor<bf16>,
    resid: Option<&DTensor<bf16>>,
    w: &mut DTensor<f32>,
    eps: f32,
) -> CudaResult<()> {
    const K_NAME: &str = "token_weights_bf16";
    let _r = range("token_weights");
    let (rows, cols) = (y.rows(), y.cols());
    let rp = opt_ptr_shape(gpu, K_NAME, "resid", resid, rows, cols)?;
    expect_len(K_NAME, "w", w, rows)?;
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let args = [
        KArg::Ptr(y.ptr(gpu)),
        KArg::Ptr(rp),
        KArg::Ptr(w.ptr(gpu)),
        KArg::I32(i32_of(K_NAME, "rows", rows)?),
        KArg::I32(i32_of(K_NAME, "cols", cols)?),
        KArg::F32(eps),
    ];
    // SAFETY: y (and resid) hold rows·cols elements and w rows (checked); one warp per row, rows
    // past the end return before reading.
    unsafe { gpu.launch(K_NAME, cfg((rows.div_ceil(8), 1, 1), (32, 8, 1), 0), &args) }
}

/// `out = bf16(act · sqrt(w[row]))` ([rows, I] bf16), adding Σout and Σout² per column into
/// `stats` ([I] f64 each) when given: the statistics of token-weighted activations.
pub fn scale_rows_stats(
    gpu: &Gpu,
    act: &DTensor<bf16>,
    w: &DTensor<f32>,
    out: &mut DTensor<bf16>,
    stats: Option<(&mut DTensor<f64>, &mut DTensor<f64>)>,
) -> CudaResult<()> {
    const K_NAME: &str = "scale_rows_stats_bf16";
    let _r = range("scale_rows_stats");
    let (rows, cols) = (act.rows(), act.cols());
    expect_len(K_NAME, "w", w, rows)?;
    expect_shape(K_NAME, "out", out, rows, cols)?;
    let (s1, s2) = col_stats_ptrs(gpu, K_NAME, stats, cols)?;
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let grid = col_stats_grid(K_NAME, rows, cols)?;
    let args = [
        KArg::Ptr(act.ptr(gpu)),
        KArg::Ptr(w.ptr(gpu)),
        KArg::Ptr(out.ptr(gpu)),
        KArg::Ptr(s1),
        KArg::Ptr(s2),
        KArg::I32(i32_of(K_NAME, "rows", rows)?),
        KArg::I32(i32_of(K_NAME, "cols", cols)?),
    ];
    // SAFETY: act and out hold rows·cols elements (distinct tensors, one &mut), w rows, the
    // statistics cols (checked); the kernel bounds-checks every row and column.
    unsafe { gpu.launch(K_NAME, cfg(grid, (32, 8, 1), 0), &args) }
}

// ---------------------------------------------------------------------------------------------
// Embedding, head, conversions

/// `out[n] = bf16(table[ids[n]] · scale)`: `table` [V, H], `ids` [n] (validated by the caller;
/// an id >= V yields a zero row, never an out-of-bounds read), `out` [n, H].
pub fn embed(
    gpu: &Gpu,
    table: &DTensor<bf16>,
    ids: &DTensor<u32>,
    out: &mut DTensor<bf16>,
    scale: f32,
) -> CudaResult<()> {
    const K_NAME: &str = "embed_bf16";
    let (v, h, n) = (table.rows(), table.cols(), ids.numel());
    expect_shape(K_NAME, "out", out, n, h)?;
    if n == 0 {
        return Ok(());
    }
    let args = [
        KArg::Ptr(table.ptr(gpu)),
        KArg::Ptr(ids.ptr(gpu)),
        KArg::Ptr(out.ptr(gpu)),
        KArg::I32(i32_of(K_NAME, "n", n)?),
        KArg::I32(i32_of(K_NAME, "H", h)?),
        KArg::I32(i32_of(K_NAME, "V", v)?),
        KArg::F32(scale),
    ];
    // SAFETY: table holds V·H, ids n, out n·H elements; rows with id >= V are zero-filled.
    unsafe { gpu.launch(K_NAME, cfg((n, 1, 1), (256, 1, 1), 0), &args) }
}

/// `x = tanh(x / cap)·cap` in place.
pub fn softcap(gpu: &Gpu, x: &mut DTensor<f32>, cap: f32) -> CudaResult<()> {
    const K_NAME: &str = "softcap_f32";
    if cap.is_nan() || cap <= 0.0 {
        return Err(CudaError::pre(
            K_NAME,
            format!("cap {cap} must be positive"),
        ));
    }
    let n = x.numel();
    if n == 0 {
        return Ok(());
    }
    let args = [KArg::Ptr(x.ptr(gpu)), KArg::U64(n as u64), KArg::F32(cap)];
    // SAFETY: grid-stride loop over exactly n elements of x.
    unsafe { gpu.launch(K_NAME, cfg((stride_blocks(n), 1, 1), (256, 1, 1), 0), &args) }
}

/// Per-row results of `row_stats`, each [rows].
pub struct RowStatsOut {
    pub row_max: DTensor<f32>,
    pub lse: DTensor<f64>,
    pub argmax: DTensor<i32>,
    pub target_logit: DTensor<f32>,
}

impl RowStatsOut {
    pub fn new(gpu: &Gpu, rows: usize) -> CudaResult<RowStatsOut> {
        Ok(RowStatsOut {
            row_max: DTensor::zeros(gpu, &[rows])?,
            lse: DTensor::zeros(gpu, &[rows])?,
            argmax: DTensor::zeros(gpu, &[rows])?,
            target_logit: DTensor::zeros(gpu, &[rows])?,
        })
    }
}

/// Row max, first argmax, log-sum-exp (f64) and, with `targets` [rows] (each < V), the target
/// logit of every row of `logits` [rows, V].
pub fn row_stats(
    gpu: &Gpu,
    logits: &DTensor<f32>,
    targets: Option<&DTensor<u32>>,
    out: &mut RowStatsOut,
) -> CudaResult<()> {
    const K_NAME: &str = "row_stats_f32";
    let _r = range("head");
    let (rows, v) = (logits.rows(), logits.cols());
    for (what, n) in [
        ("row_max", out.row_max.numel()),
        ("lse", out.lse.numel()),
        ("argmax", out.argmax.numel()),
        ("target_logit", out.target_logit.numel()),
    ] {
        if n != rows {
            return Err(CudaError::pre(
                K_NAME,
                format!("{what} holds {n} rows, logits {rows}"),
            ));
        }
    }
    let tp = opt_ptr(gpu, K_NAME, "targets", targets, rows)?;
    if rows == 0 || v == 0 {
        return Ok(());
    }
    let args = [
        KArg::Ptr(logits.ptr(gpu)),
        KArg::I32(i32_of(K_NAME, "rows", rows)?),
        KArg::I32(i32_of(K_NAME, "V", v)?),
        KArg::Ptr(tp),
        KArg::Ptr(out.row_max.ptr(gpu)),
        KArg::Ptr(out.lse.ptr(gpu)),
        KArg::Ptr(out.argmax.ptr(gpu)),
        KArg::Ptr(if tp != 0 {
            out.target_logit.ptr(gpu)
        } else {
            0
        }),
    ];
    // SAFETY: logits hold rows·V elements, every output rows (checked). Target ids must be < V:
    // the GPU model checks them on the host before uploading.
    unsafe { gpu.launch(K_NAME, cfg((rows, 1, 1), (512, 1, 1), 0), &args) }
}

/// KL(base ‖ model) per row, in f64: `base`, `model` [rows, V]; `lse_*` [rows] from `row_stats`.
pub fn kl_rows(
    gpu: &Gpu,
    base: &DTensor<f32>,
    model: &DTensor<f32>,
    lse_base: &DTensor<f64>,
    lse_model: &DTensor<f64>,
    kl: &mut DTensor<f64>,
) -> CudaResult<()> {
    const K_NAME: &str = "kl_rows_f32";
    let _r = range("head");
    let (rows, v) = (base.rows(), base.cols());
    expect_shape(K_NAME, "model", model, rows, v)?;
    expect_len(K_NAME, "lse_base", lse_base, rows)?;
    expect_len(K_NAME, "lse_model", lse_model, rows)?;
    expect_len(K_NAME, "kl", kl, rows)?;
    if rows == 0 || v == 0 {
        return Ok(());
    }
    let args = [
        KArg::Ptr(base.ptr(gpu)),
        KArg::Ptr(model.ptr(gpu)),
        KArg::Ptr(lse_base.ptr(gpu)),
        KArg::Ptr(lse_model.ptr(gpu)),
        KArg::I32(i32_of(K_NAME, "rows", rows)?),
        KArg::I32(i32_of(K_NAME, "V", v)?),
        KArg::Ptr(kl.ptr(gpu)),
    ];
    // SAFETY: base and model hold rows·V elements, the per-row buffers rows (checked).
    unsafe { gpu.launch(K_NAME, cfg((rows, 1, 1), (512, 1, 1), 0), &args) }
}

/// `y = f32(x)`, same element count.
pub fn bf16_to_f32(gpu: &Gpu, x: &DTensor<bf16>, y: &mut DTensor<f32>) -> CudaResult<()> {
    const K_NAME: &str = "bf16_to_f32";
    let n = x.numel();
    expect_len(K_NAME, "y", y, n)?;
    if n == 0 {
        return Ok(());
    }
    let args = [
        KArg::Ptr(x.ptr(gpu)),
        KArg::Ptr(y.ptr(gpu)),
        KArg::U64(n as u64),
    ];
    // SAFETY: both hold n elements; grid-stride loop over n.
    unsafe { gpu.launch(K_NAME, cfg((stride_blocks(n), 1, 1), (256, 1, 1), 0), &args) }
}

/// `y = bf16(x)` (round to nearest even), same element count.
pub fn f32_to_bf16(gpu: &Gpu, x: &DTensor<f32>, y: &mut DTensor<bf16>) -> CudaResult<()> {
    const K_NAME: &str = "f32_to_bf16";
    let n = x.numel();
    expect_len(K_NAME, "y", y, n)?;
    if n == 0 {
        return Ok(());
    }
    let args = [
        KArg::Ptr(x.ptr(gpu)),
        KArg::Ptr(y.ptr(gpu)),
        KArg::U64(n as u64),
    ];
    // SAFETY: both hold n elements; grid-stride loop over n.
    unsafe { gpu.launch(K_NAME, cfg((stride_blocks(n), 1, 1), (256, 1, 1), 0), &args) }
}

// ---------------------------------------------------------------------------------------------
// Decode (kernels/decode.cu): GEMV, decode attention over the KV cache, RoPE + cache write

/// Most rows of X one GEMV launch takes (decode runs 1).
pub const GEMV_MAX_M: usize = 8;
/// Rows per GEMV block (one warp per output row).
const GEMV_ROWS_PER_BLOCK: usize = 8;

#[allow(clippy::too_many_arguments)]
fn launch_gemv(
    gpu: &Gpu,
    gelu: bool,
    x: &DTensor<bf16>,
    w: &DTensor<bf16>,
    w2: Option<&DTensor<bf16>>,
    yb: u64,
    yf: u64,
    softcap: f32,
) -> CudaResult<()> {
    let (m, k, n) = (x.rows(), x.cols(), w.rows());
    let aligned = k % 8 == 0;
    let name: &'static str = match (aligned, gelu, m) {
        (false, ..) => "decode_gemv_bf16_unaligned",
        (true, false, 1) => "decode_gemv_bf16_m1",
        (true, false, _) => "decode_gemv_bf16_m8",
        (true, true, 1) => "decode_gemv_gelu_bf16_m1",
        (true, true, _) => "decode_gemv_gelu_bf16_m8",
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
    if w.cols() != x.cols() {
        return Err(CudaError::pre(
            kernel,
            format!(
                "x is {:?} but w is {:?}: inner dimensions differ",
                x.shape(),
                w.shape()
            ),
        ));
    }
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
    if y_bf16.is_none() && y_f32.is_none() {
        return Err(CudaError::pre(K_NAME, "no output given"));
    }
    if let Some(y) = &y_bf16 {
        expect_shape(K_NAME, "y (bf16)", y, m, n)?;
    }
    if let Some(y) = &y_f32 {
        expect_shape(K_NAME, "y (f32)", y, m, n)?;
    }
    let cap = match softcap {
        None => 0.0,
        Some(c) if c > 0.0 && c.is_finite() => c,
        Some(c) => {
            return Err(CudaError::pre(
                K_NAME,
                format!("softcap {c} must be positive"),
            ))
        }
    };
    let yb = y_bf16.map_or(0, |t| t.ptr(gpu));
    let yf = y_f32.map_or(0, |t| t.ptr(gpu));
    launch_gemv(gpu, false, x, w, None, yb, yf, cap)
}

/// The MLP activation of a few rows in one pass over both weights:
/// `act = bf16(bf16(gelu_tanh(bf16(x·gateᵀ))) · bf16(x·upᵀ))`, rounded exactly as
/// `gemm_nt` + `gelu_mul` round it. `x` [M, K] (M <= 8), `gate`, `up` [N, K], `act` [M, N].
pub fn gemv_gelu(
    gpu: &Gpu,
    x: &DTensor<bf16>,
    gate: &DTensor<bf16>,
    up: &DTensor<bf16>,
    act: &mut DTensor<bf16>,
) -> CudaResult<()> {
    const K_NAME: &str = "decode_gemv_gelu_bf16";
    let _r = range("gemv");
    gemv_check_x(K_NAME, x, gate)?;
    expect_shape(K_NAME, "up", up, gate.rows(), gate.cols())?;
    expect_shape(K_NAME, "act", act, x.rows(), gate.rows())?;
    let yb = act.ptr(gpu);
    launch_gemv(gpu, true, x, gate, Some(up), yb, 0, 0.0)
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
    if nkv == 0 || nh % nkv != 0 {
        return Err(CudaError::pre(
            name,
            format!("n_heads {nh} is not a multiple of n_kv_heads {nkv}"),
        ));
    }
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
    let (lo, n_keys) = crate::decode::visible_range(p.pos, p.window);
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
    let softcap = match p.softcap {
        None => 0.0,
        Some(c) if c > 0.0 && c.is_finite() => c,
        Some(c) => {
            return Err(CudaError::pre(
                name,
                format!("softcap {c} must be positive"),
            ))
        }
    };
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
/// `pos` (the formula of `rope`), and stores rotated k and v [nkv·d] into slot `slot` of
/// `k_cache`, `v_cache` [nkv, slots, d].
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
    rope: crate::config::Rope,
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
        KArg::I32(i32_of(K_NAME, "n_heads", n_heads)?),
        KArg::I32(i32_of(K_NAME, "n_kv_heads", n_kv_heads)?),
        KArg::I32(i32_of(K_NAME, "head_dim", d)?),
        KArg::I32(i32_of(K_NAME, "pos", pos)?),
        KArg::I32(slot as i32),
        KArg::I32(i32_of(K_NAME, "slots", slots)?),
        KArg::F32(rope.theta as f32),
        KArg::F32(rope.linear_factor as f32),
    ];
    // SAFETY: q holds nh·d, k and v nkv·d, the caches nkv·slots·d elements and slot < slots
    // (checked); one thread per pair i < d/2 touches elements i and i + d/2 of each head row.
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

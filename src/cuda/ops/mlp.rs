//! Launchers of kernels/mlp.cu: the act·up activation (gelu_tanh or SiLU) and the calibration
//! statistics fused with it (column sums, token weights, token-weighted activations).

use super::{cfg, expect_len, expect_shape, i32_of, opt_ptr_shape, MAX_GRID_YZ};
use crate::checkpoint::config::Activation;
use crate::cuda::error::{CudaError, CudaResult};
use crate::cuda::gpu::{DTensor, Gpu, KArg};
use crate::cuda::prof::range;
use half::bf16;

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

/// The kernels' `int` for an activation (common.cuh's `ACT_*`).
pub(super) fn act_arg(f: Activation) -> i32 {
    match f {
        Activation::GeluTanh => 0,
        Activation::Silu => 1,
    }
}

/// `act = f(gate)·up` ([rows, I] bf16; `f` gelu_tanh or SiLU, transformers' bf16 rounding),
/// optionally also in f32, optionally adding Σact and Σact² per column into `stats` ([I] f64
/// each).
pub fn act_mul(
    gpu: &Gpu,
    f: Activation,
    gate: &DTensor<bf16>,
    up: &DTensor<bf16>,
    act: &mut DTensor<bf16>,
    act_f32: Option<&mut DTensor<f32>>,
    stats: Option<(&mut DTensor<f64>, &mut DTensor<f64>)>,
) -> CudaResult<()> {
    const K_NAME: &str = "act_mul_stats_bf16";
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
        KArg::I32(act_arg(f)),
    ];
    // SAFETY: gate, up, act (and act_f32) hold rows·cols elements, the statistics cols (checked);
    // the kernel bounds-checks every row and column.
    unsafe { gpu.launch(K_NAME, cfg(grid, (32, 8, 1), 0), &args) }
}

/// How `token_weights` weighs a token (the weighted modes of `calib::TokenWeight`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenWeightMode {
    /// `1/(ms(y)+eps)`.
    Out,
    /// `1/((ms(y)+eps)·(ms(x)+eps))`, x the residual entering the MLP.
    OutResid,
    /// `1/(ms(x+y)+eps)`: what the next layer's input norm divides by without a post-FFN norm.
    NextNorm,
}

/// Calibration token weights (`calib::TokenWeight::weights` on the device): `w[r]` from the MLP
/// output `y` and, for every mode but `Out`, the residual `resid` entering the MLP (required
/// then). `y`, `resid` [rows, H] bf16, `w` [rows] f32.
pub fn token_weights(
    gpu: &Gpu,
    mode: TokenWeightMode,
    y: &DTensor<bf16>,
    resid: Option<&DTensor<bf16>>,
    w: &mut DTensor<f32>,
    eps: f32,
) -> CudaResult<()> {
    const K_NAME: &str = "token_weights_bf16";
    let _r = range("token_weights");
    let (rows, cols) = (y.rows(), y.cols());
    let mode_arg = match (mode, resid.is_some()) {
        (TokenWeightMode::Out, _) => 0,
        (TokenWeightMode::OutResid, true) => 1,
        (TokenWeightMode::NextNorm, true) => 2,
        (m, false) => {
            return Err(CudaError::pre(
                K_NAME,
                format!("mode {m:?} needs the residual entering the MLP"),
            ))
        }
    };
    let resid = resid.filter(|_| mode != TokenWeightMode::Out);
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
        KArg::I32(mode_arg),
    ];
    // SAFETY: y (and resid, present whenever the mode reads it) hold rows·cols elements and w
    // rows (checked); one warp per row, rows past the end return before reading.
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

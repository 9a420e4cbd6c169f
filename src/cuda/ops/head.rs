//! Launchers of kernels/head.cu: the final logit softcap and the per-row reductions over the
//! vocabulary (max, argmax, log-sum-exp, target logit; KL between two models).

use super::{cfg, expect_len, expect_shape, i32_of, opt_ptr, stride_blocks};
use crate::cuda::error::{CudaError, CudaResult};
use crate::cuda::gpu::{DTensor, Gpu, KArg};
use crate::cuda::prof::range;

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

//! Which GEMM kernel runs: the `WHITTLE_GEMM` override, the one-time self-check that a wgmma
//! kernel agrees with the mma.sync one before `GemmKernel::Auto` trusts it, the choice itself,
//! and the summary of the chosen kernels for reports.

use super::super::attention::{flash_kernel_name, flash_warps};
use super::{
    gate_up_act_with, gemm_nt_launch, gemm_nt_with, gram_accumulate_with, gram_symmetrize,
};
use crate::checkpoint::config::Activation;
use crate::cuda::error::{CudaError, CudaResult};
use crate::cuda::gpu::{DTensor, Gpu};
use half::bf16;

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
pub(super) fn resolve_kernel(
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

/// Runs `kernel` and the mma.sync kernel on a 200 × 320 × 200 problem (ragged in M, N and K,
/// several k-tiles; the TMA kernel also with a single CTA walking all tiles, so its stage ring
/// wraps across tiles, in Gram mode on a 520 × 520 Gram matrix and in gate/up mode);
/// `Some(reason)` when they differ by more than f32 summation order allows.
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
        // Gate/up mode (two W boxes per stage, the activation epilogue, both activations)
        // against gemm + gemm + act_mul on mma.sync: 200 output columns, so the second tile is
        // ragged.
        let (gate, up) = (
            DTensor::from_host(gpu, &vals(200 * k), &[200, k])?,
            DTensor::from_host(gpu, &vals(200 * k), &[200, k])?,
        );
        for f in [Activation::GeluTanh, Activation::Silu] {
            let act = |kern| -> CudaResult<Vec<f32>> {
                let mut a = DTensor::<bf16>::zeros(gpu, &[m, 200])?;
                gate_up_act_with(gpu, f, &x, &gate, &up, &mut a, kern)?;
                Ok(a.to_host(gpu)?.iter().map(|v| v.to_f32()).collect())
            };
            let (want, got) = (act(GemmKernel::MmaSync)?, act(GemmKernel::Sm90Tma)?);
            if let Some(e) = first_mismatch(&want, &got, 200, 1e-2, 1e-3) {
                return Ok(Some(format!("gate/up ({f:?}) {e}")));
            }
        }
    }
    Ok(None)
}

/// The kernels the hot ops of `cfg`'s model choose on this GPU, for reports (`whittle_report.json`
/// `gpu_kernels`, `whittle bench --json` `kernels`): the projections' GEMM, whether gate/up is
/// fused, the Gram matrix's kernel, attention's. Runs the self-checks on first use.
pub fn kernel_summary(gpu: &Gpu, cfg: &crate::checkpoint::config::ModelConfig) -> String {
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
        "fused with act·up"
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

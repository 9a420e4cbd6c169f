//! f64 linear algebra on the device for `compile`'s scoring and repair (kernels/linalg.cu):
//! GEMM on strided views, the SPD inverse by blocked sweeps, greedy structured OBS and the
//! least-squares repair product. The host versions in `crate::cpu::linalg` / `crate::compile::prune` are the
//! reference (tests/cuda_linalg.rs); the results agree up to rounding.

use super::error::{CudaError, CudaResult};
use super::gpu::{DTensor, Gpu, KArg};
use super::ops::{cfg, i32_of};
use super::prof::range;
use crate::engine::DeviceGram;
use std::marker::PhantomData;

/// Block width of the inverse (kernels/linalg.cu `la::SWEEP`).
const SWEEP: usize = 64;
/// Pending rank-1 OBS updates before a fold (`la::MAX_PENDING`, src/compile/prune.rs `OBS_BLOCK`).
const PENDING: usize = 32;

/// A [rows, cols] window of a row-major f64 device matrix (leading dimension `ld`), checked to
/// lie inside its tensor when made.
#[derive(Clone, Copy)]
pub struct View<'a> {
    ptr: u64,
    rows: usize,
    cols: usize,
    ld: usize,
    _t: PhantomData<&'a DTensor<f64>>,
}

fn window(
    gpu: &Gpu,
    t: &DTensor<f64>,
    r0: usize,
    c0: usize,
    rows: usize,
    cols: usize,
) -> CudaResult<(u64, usize)> {
    let (tr, tc) = (t.rows(), t.cols());
    if r0 + rows > tr || c0 + cols > tc {
        return Err(CudaError::Other(format!(
            "view [{r0}..{}, {c0}..{}] outside a matrix of shape {:?}",
            r0 + rows,
            c0 + cols,
            t.shape()
        )));
    }
    Ok((t.ptr(gpu) + ((r0 * tc + c0) * 8) as u64, tc))
}

impl<'a> View<'a> {
    pub fn of(
        gpu: &Gpu,
        t: &'a DTensor<f64>,
        r0: usize,
        c0: usize,
        rows: usize,
        cols: usize,
    ) -> CudaResult<View<'a>> {
        let (ptr, ld) = window(gpu, t, r0, c0, rows, cols)?;
        Ok(View {
            ptr,
            rows,
            cols,
            ld,
            _t: PhantomData,
        })
    }

    pub fn all(gpu: &Gpu, t: &'a DTensor<f64>) -> View<'a> {
        View {
            ptr: t.ptr(gpu),
            rows: t.rows(),
            cols: t.cols(),
            ld: t.cols(),
            _t: PhantomData,
        }
    }
}

/// A writable window (borrows its tensor mutably, so it cannot alias an input view).
pub struct ViewMut<'a> {
    v: View<'a>,
    _t: PhantomData<&'a mut DTensor<f64>>,
}

impl<'a> ViewMut<'a> {
    pub fn of(
        gpu: &Gpu,
        t: &'a mut DTensor<f64>,
        r0: usize,
        c0: usize,
        rows: usize,
        cols: usize,
    ) -> CudaResult<ViewMut<'a>> {
        let (ptr, ld) = window(gpu, t, r0, c0, rows, cols)?;
        Ok(ViewMut {
            v: View {
                ptr,
                rows,
                cols,
                ld,
                _t: PhantomData,
            },
            _t: PhantomData,
        })
    }

    pub fn all(gpu: &Gpu, t: &'a mut DTensor<f64>) -> ViewMut<'a> {
        ViewMut {
            v: View::all(gpu, t),
            _t: PhantomData,
        }
    }
}

/// `c = alpha·a·b + beta·c` (f64; beta = 0 ignores c's old contents, NaN included).
pub fn dgemm(gpu: &Gpu, a: View, b: View, c: ViewMut, alpha: f64, beta: f64) -> CudaResult<()> {
    const K_NAME: &str = "dgemm_nn_f64";
    let c = c.v;
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if b.rows != k || c.rows != m || c.cols != n {
        return Err(CudaError::pre(
            K_NAME,
            format!(
                "shapes do not chain: a [{m}, {k}] · b [{}, {n}] into c [{}, {}]",
                b.rows, c.rows, c.cols
            ),
        ));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    let grid_y = m.div_ceil(64);
    if grid_y > 65535 {
        return Err(CudaError::pre(K_NAME, format!("{m} rows exceed the grid")));
    }
    let args = [
        KArg::Ptr(a.ptr),
        KArg::Ptr(b.ptr),
        KArg::Ptr(c.ptr),
        KArg::I32(i32_of(K_NAME, "M", m)?),
        KArg::I32(i32_of(K_NAME, "N", n)?),
        KArg::I32(i32_of(K_NAME, "K", k)?),
        KArg::I32(i32_of(K_NAME, "lda", a.ld)?),
        KArg::I32(i32_of(K_NAME, "ldb", b.ld)?),
        KArg::I32(i32_of(K_NAME, "ldc", c.ld)?),
        KArg::F64(alpha),
        KArg::F64(beta),
    ];
    // SAFETY: the three views lie inside their tensors (checked when made) and the output view
    // borrows its tensor mutably, so it overlaps neither input; the kernel bounds-checks M, N, K.
    unsafe {
        gpu.launch(
            K_NAME,
            cfg((n.div_ceil(64), grid_y, 1), (256, 1, 1), 0),
            &args,
        )
    }
}

/// `dst = scale·src` over equal-shaped windows.
pub fn copy_scaled(gpu: &Gpu, src: View, dst: ViewMut, scale: f64) -> CudaResult<()> {
    const K_NAME: &str = "copy_scaled_f64";
    let d = dst.v;
    if src.rows != d.rows || src.cols != d.cols {
        return Err(CudaError::pre(
            K_NAME,
            format!(
                "source [{}, {}] and destination [{}, {}] differ",
                src.rows, src.cols, d.rows, d.cols
            ),
        ));
    }
    if d.rows == 0 || d.cols == 0 {
        return Ok(());
    }
    let args = [
        KArg::Ptr(src.ptr),
        KArg::Ptr(d.ptr),
        KArg::I32(i32_of(K_NAME, "rows", d.rows)?),
        KArg::I32(i32_of(K_NAME, "cols", d.cols)?),
        KArg::I32(i32_of(K_NAME, "lds", src.ld)?),
        KArg::I32(i32_of(K_NAME, "ldd", d.ld)?),
        KArg::F64(scale),
    ];
    // SAFETY: both windows are in bounds (checked when made) and distinct (mutable borrow).
    unsafe {
        gpu.launch(
            K_NAME,
            cfg((d.cols.div_ceil(32), d.rows.div_ceil(8), 1), (32, 8, 1), 0),
            &args,
        )
    }
}

/// In-place inverse of the SPD matrix `a` ([n, n]). `Ok(Err(p))`: not positive definite, the
/// first failing pivot at index p (the matrix then holds garbage).
pub fn spd_inverse(gpu: &Gpu, a: &mut DTensor<f64>) -> CudaResult<Result<(), usize>> {
    let _r = range("spd_inverse_f64");
    let n = a.rows();
    if a.cols() != n {
        return Err(CudaError::pre(
            "sweep_block_f64",
            format!("matrix of shape {:?} is not square", a.shape()),
        ));
    }
    if n == 0 {
        return Ok(Ok(()));
    }
    let mut pinv = DTensor::<f64>::zeros(gpu, &[SWEEP, SWEEP])?; // [nb, nb]
    let mut panel = DTensor::<f64>::zeros(gpu, &[n, SWEEP])?; // A[:, k] before the step: [n, nb]
    let mut r = DTensor::<f64>::zeros(gpu, &[SWEEP, n])?; // P⁻¹·A[k, :]: [nb, n]
    let fail = DTensor::<i32>::from_host(gpu, &[-1], &[1])?;
    for k0 in (0..n).step_by(SWEEP) {
        let nb = SWEEP.min(n - k0);
        pinv.set_shape(&[nb, nb])?;
        panel.set_shape(&[n, nb])?;
        r.set_shape(&[nb, n])?;
        {
            let blk = View::of(gpu, a, k0, k0, nb, nb)?;
            let args = [
                KArg::Ptr(blk.ptr),
                KArg::Ptr(pinv.ptr(gpu)),
                KArg::I32(nb as i32),
                KArg::I32(i32_of("sweep_block_f64", "n", n)?),
                KArg::I32(k0 as i32),
                KArg::Ptr(fail.ptr(gpu)),
            ];
            // SAFETY: the block view is inside `a`, pinv holds nb² elements, fail one i32; one CTA.
            unsafe { gpu.launch("sweep_block_f64", cfg((1, 1, 1), (256, 1, 1), 0), &args)? };
        }
        copy_scaled(
            gpu,
            View::of(gpu, a, 0, k0, n, nb)?,
            ViewMut::all(gpu, &mut panel),
            1.0,
        )?;
        dgemm(
            gpu,
            View::all(gpu, &pinv),
            View::of(gpu, a, k0, 0, nb, n)?,
            ViewMut::all(gpu, &mut r),
            1.0,
            0.0,
        )?;
        dgemm(
            gpu,
            View::all(gpu, &panel),
            View::all(gpu, &r),
            ViewMut::all(gpu, a),
            -1.0,
            1.0,
        )?;
        copy_scaled(
            gpu,
            View::all(gpu, &r),
            ViewMut::of(gpu, a, k0, 0, nb, n)?,
            1.0,
        )?;
        dgemm(
            gpu,
            View::all(gpu, &panel),
            View::all(gpu, &pinv),
            ViewMut::of(gpu, a, 0, k0, n, nb)?,
            -1.0,
            0.0,
        )?;
        copy_scaled(
            gpu,
            View::all(gpu, &pinv),
            ViewMut::of(gpu, a, k0, k0, nb, nb)?,
            1.0,
        )?;
    }
    let f = fail.to_host(gpu)?[0];
    Ok(if f >= 0 { Err(f as usize) } else { Ok(()) })
}

/// Greedy structured OBS on the device: `h` the damped Gram matrix [n, n] (host, f64), `wt` the
/// transposed down_proj [n, hidden]; removes n − k neurons and returns them in the order they
/// were removed (`prune::obs_removal_order`). `Ok(Err(p))`: h is not positive definite (pivot p).
pub fn obs_order(
    gpu: &Gpu,
    h: &[f64],
    wt: &[f64],
    n: usize,
    hidden: usize,
    k: usize,
) -> CudaResult<Result<Vec<usize>, usize>> {
    // from_host checks h against [n, n]; obs_order_device checks the rest.
    let hinv = DTensor::from_host(gpu, h, &[n, n])?;
    obs_order_device(gpu, hinv, wt, hidden, k)
}

/// `obs_order` with the damped Gram matrix `h` [n, n] already on the device (consumed: it
/// becomes H⁻¹ in place).
pub fn obs_order_device(
    gpu: &Gpu,
    mut hinv: DTensor<f64>,
    wt: &[f64],
    hidden: usize,
    k: usize,
) -> CudaResult<Result<Vec<usize>, usize>> {
    let _r = range("obs_select_f64");
    let n = hinv.rows();
    if k > n || hinv.cols() != n || wt.len() != n * hidden {
        return Err(CudaError::Other(format!(
            "obs_select: k = {k}, h {:?}, hidden = {hidden}, wt has {} elements",
            hinv.shape(),
            wt.len()
        )));
    }
    if let Err(p) = spd_inverse(gpu, &mut hinv)? {
        return Ok(Err(p));
    }
    let mut wtd = DTensor::from_host(gpu, wt, &[n, hidden])?;
    let diag = DTensor::<f64>::zeros(gpu, &[n])?;
    let norm = DTensor::<f64>::zeros(gpu, &[n])?;
    let alive = DTensor::<i32>::from_host(gpu, &vec![1; n], &[n])?;
    let us = DTensor::<f64>::zeros(gpu, &[PENDING, n])?; // [32, n]
    let vs = DTensor::<f64>::zeros(gpu, &[PENDING, hidden])?; // [32, hidden]
    let ds = DTensor::<f64>::zeros(gpu, &[PENDING])?;
    let pend = DTensor::<f64>::zeros(gpu, &[PENDING + 1])?;
    let steps = n - k;
    let removed = DTensor::<i32>::zeros(gpu, &[steps.max(1)])?;
    let mut at = DTensor::<f64>::zeros(gpu, &[n, PENDING])?; // [n, nb]
    let (ni, hi) = (i32_of("obs", "n", n)?, i32_of("obs", "hidden", hidden)?);
    let warps = |rows: usize| cfg((rows.div_ceil(8), 1, 1), (32, 8, 1), 0);
    let exact =
        |hinv: &DTensor<f64>, wtd: &DTensor<f64>, diag: &DTensor<f64>, norm: &DTensor<f64>| {
            let args = [
                KArg::Ptr(hinv.ptr(gpu)),
                KArg::Ptr(wtd.ptr(gpu)),
                KArg::Ptr(diag.ptr(gpu)),
                KArg::Ptr(norm.ptr(gpu)),
                KArg::I32(ni),
                KArg::I32(hi),
            ];
            // SAFETY: hinv [n, n], wt [n, hidden], diag and norm [n]; one warp per row j < n.
            unsafe { gpu.launch("obs_exact_f64", warps(n), &args) }
        };
    exact(&hinv, &wtd, &diag, &norm)?;
    for step in 0..steps {
        let b = step % PENDING;
        let (bi, si) = (b as i32, step as i32);
        // SAFETY (all four launches): every buffer was allocated above with the shape named in
        // kernels/linalg.cu for these n, hidden and b < 32; removed holds `steps` entries and
        // step < steps; the pick kernel runs as the single CTA it is written for.
        unsafe {
            gpu.launch(
                "obs_pick_f64",
                cfg((1, 1, 1), (1024, 1, 1), 0),
                &[
                    KArg::Ptr(norm.ptr(gpu)),
                    KArg::Ptr(diag.ptr(gpu)),
                    KArg::Ptr(alive.ptr(gpu)),
                    KArg::Ptr(removed.ptr(gpu)),
                    KArg::I32(si),
                    KArg::I32(ni),
                ],
            )?;
            gpu.launch(
                "obs_column_f64",
                cfg(((n + hidden).div_ceil(256), 1, 1), (256, 1, 1), 0),
                &[
                    KArg::Ptr(hinv.ptr(gpu)),
                    KArg::Ptr(wtd.ptr(gpu)),
                    KArg::Ptr(us.ptr(gpu)),
                    KArg::Ptr(vs.ptr(gpu)),
                    KArg::Ptr(ds.ptr(gpu)),
                    KArg::Ptr(removed.ptr(gpu)),
                    KArg::I32(si),
                    KArg::I32(bi),
                    KArg::I32(ni),
                    KArg::I32(hi),
                ],
            )?;
            gpu.launch(
                "obs_pend_f64",
                cfg((1, 1, 1), (256, 1, 1), 0),
                &[
                    KArg::Ptr(vs.ptr(gpu)),
                    KArg::Ptr(ds.ptr(gpu)),
                    KArg::Ptr(pend.ptr(gpu)),
                    KArg::I32(bi),
                    KArg::I32(hi),
                ],
            )?;
            gpu.launch(
                "obs_update_f64",
                warps(n),
                &[
                    KArg::Ptr(wtd.ptr(gpu)),
                    KArg::Ptr(us.ptr(gpu)),
                    KArg::Ptr(vs.ptr(gpu)),
                    KArg::Ptr(ds.ptr(gpu)),
                    KArg::Ptr(pend.ptr(gpu)),
                    KArg::Ptr(norm.ptr(gpu)),
                    KArg::Ptr(diag.ptr(gpu)),
                    KArg::I32(bi),
                    KArg::I32(ni),
                    KArg::I32(hi),
                ],
            )?;
        }
        if b + 1 == PENDING || step + 1 == steps {
            let nb = b + 1;
            at.set_shape(&[n, nb])?;
            // SAFETY: US [32, n], DS [32], at holds n·nb elements; one thread per row j < n.
            unsafe {
                gpu.launch(
                    "obs_fold_prep_f64",
                    cfg((n.div_ceil(256), 1, 1), (256, 1, 1), 0),
                    &[
                        KArg::Ptr(us.ptr(gpu)),
                        KArg::Ptr(ds.ptr(gpu)),
                        KArg::Ptr(at.ptr(gpu)),
                        KArg::I32(nb as i32),
                        KArg::I32(ni),
                    ],
                )?
            };
            // H⁻¹ −= at·US[:nb], Wᵀ −= at·VS[:nb].
            dgemm(
                gpu,
                View::all(gpu, &at),
                View::of(gpu, &us, 0, 0, nb, n)?,
                ViewMut::all(gpu, &mut hinv),
                -1.0,
                1.0,
            )?;
            dgemm(
                gpu,
                View::all(gpu, &at),
                View::of(gpu, &vs, 0, 0, nb, hidden)?,
                ViewMut::all(gpu, &mut wtd),
                -1.0,
                1.0,
            )?;
            exact(&hinv, &wtd, &diag, &norm)?;
        }
    }
    if steps == 0 {
        return Ok(Ok(Vec::new()));
    }
    let removed = removed.to_host(gpu)?;
    Ok(Ok(removed.iter().map(|&j| j as usize).collect()))
}

/// The repair product on the device: `wd` [hidden, n] · `ck` [n, k] · inv(`m`) ([k, k], SPD),
/// all host f64; returns [hidden, k]. `Ok(Err(p))`: m is not positive definite (pivot p).
pub fn repair_product(
    gpu: &Gpu,
    m: &[f64],
    ck: &[f64],
    wd: &[f64],
    hidden: usize,
    n: usize,
    k: usize,
) -> CudaResult<Result<Vec<f64>, usize>> {
    let minv = DTensor::from_host(gpu, m, &[k, k])?;
    let ckd = DTensor::from_host(gpu, ck, &[n, k])?;
    repair_product_device(gpu, minv, &ckd, wd, hidden)
}

/// `repair_product` with the damped kept-neuron matrix `m` [k, k] (consumed: inverted in place)
/// and C[:, K] `ckd` [n, k] already on the device.
pub fn repair_product_device(
    gpu: &Gpu,
    mut minv: DTensor<f64>,
    ckd: &DTensor<f64>,
    wd: &[f64],
    hidden: usize,
) -> CudaResult<Result<Vec<f64>, usize>> {
    let _r = range("repair_f64");
    let (n, k) = (ckd.rows(), ckd.cols());
    if minv.rows() != k || minv.cols() != k || wd.len() != hidden * n {
        return Err(CudaError::Other(format!(
            "repair: m {:?}, C[:, K] {:?}, W_down has {} elements for hidden = {hidden}",
            minv.shape(),
            ckd.shape(),
            wd.len()
        )));
    }
    if let Err(p) = spd_inverse(gpu, &mut minv)? {
        return Ok(Err(p));
    }
    let wdd = DTensor::from_host(gpu, wd, &[hidden, n])?;
    let mut wc = DTensor::<f64>::zeros(gpu, &[hidden, k])?;
    dgemm(
        gpu,
        View::all(gpu, &wdd),
        View::all(gpu, ckd),
        ViewMut::all(gpu, &mut wc),
        1.0,
        0.0,
    )?;
    let mut out = DTensor::<f64>::zeros(gpu, &[hidden, k])?;
    dgemm(
        gpu,
        View::all(gpu, &wc),
        View::all(gpu, &minv),
        ViewMut::all(gpu, &mut out),
        1.0,
        0.0,
    )?;
    Ok(Ok(out.to_host(gpu)?))
}

// ---------------------------------------------------------------------------------------------
// The Gram matrix a GPU backend leaves on the device (`Gram::Device`).

/// Wraps the backend's symmetric f32 Gram matrix [I, I] for `Gram::Device`.
pub fn device_gram(g: DTensor<f32>) -> DeviceGram {
    DeviceGram(std::sync::Arc::new(g))
}

/// diag(G) in f64 ([n]), downloaded.
pub fn gram_diag(gpu: &Gpu, g: &DTensor<f32>) -> CudaResult<Vec<f64>> {
    let n = g.rows();
    let d = DTensor::<f64>::zeros(gpu, &[n])?;
    if n > 0 {
        let args = [
            KArg::Ptr(g.ptr(gpu)),
            KArg::I32(i32_of("gram_diag_f64", "n", n)?),
            KArg::Ptr(d.ptr(gpu)),
        ];
        // SAFETY: g is [n, n] (square: checked by the callers' shapes), d holds n elements.
        unsafe {
            gpu.launch(
                "gram_diag_f64",
                cfg((n.div_ceil(256), 1, 1), (256, 1, 1), 0),
                &args,
            )?
        };
    }
    d.to_host(gpu)
}

/// `G[rows, cols]/div + diag_add·[row index == column index]` as a new f64 matrix; `None`
/// index lists mean all of 0..n.
pub fn gram_gather(
    gpu: &Gpu,
    g: &DTensor<f32>,
    rows: Option<&[usize]>,
    cols: Option<&[usize]>,
    div: f64,
    diag_add: f64,
) -> CudaResult<DTensor<f64>> {
    const K_NAME: &str = "gram_gather_f64";
    let n = g.rows();
    if g.cols() != n {
        return Err(CudaError::pre(
            K_NAME,
            format!("Gram matrix of shape {:?} is not square", g.shape()),
        ));
    }
    let upload = |ix: Option<&[usize]>| -> CudaResult<Option<DTensor<i32>>> {
        match ix {
            None => Ok(None),
            Some(v) => {
                if let Some(&bad) = v.iter().find(|&&j| j >= n) {
                    return Err(CudaError::pre(
                        K_NAME,
                        format!("index {bad} outside a {n} × {n} Gram matrix"),
                    ));
                }
                let v: Vec<i32> = v.iter().map(|&j| j as i32).collect();
                Ok(Some(DTensor::from_host(gpu, &v, &[v.len()])?))
            }
        }
    };
    let (r, c) = (rows.map_or(n, |v| v.len()), cols.map_or(n, |v| v.len()));
    let (rd, cd) = (upload(rows)?, upload(cols)?);
    let out = DTensor::<f64>::zeros(gpu, &[r, c])?;
    if r > 0 && c > 0 {
        let args = [
            KArg::Ptr(g.ptr(gpu)),
            KArg::I32(i32_of(K_NAME, "n", n)?),
            KArg::Ptr(rd.as_ref().map_or(0, |t| t.ptr(gpu))),
            KArg::Ptr(cd.as_ref().map_or(0, |t| t.ptr(gpu))),
            KArg::Ptr(out.ptr(gpu)),
            KArg::I32(i32_of(K_NAME, "rows", r)?),
            KArg::I32(i32_of(K_NAME, "cols", c)?),
            KArg::F64(div),
            KArg::F64(diag_add),
        ];
        // SAFETY: g is [n, n]; every index is < n (checked); out holds r·c elements.
        unsafe {
            gpu.launch(
                K_NAME,
                cfg((c.div_ceil(32), r.div_ceil(8), 1), (32, 8, 1), 0),
                &args,
            )?
        };
    }
    Ok(out)
}

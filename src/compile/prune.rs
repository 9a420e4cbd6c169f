//! Choosing which MLP neurons stay, and re-fitting `down_proj` over the ones that do.
//!
//! Scores (higher = keep):
//! - `magnitude`: ‖W_gate[j,:]‖·‖W_up[j,:]‖·‖W_down[:,j]‖ — weights only, no calibration.
//! - `energy`: E[a_j²]·‖W_down[:,j]‖² — the expected squared contribution of neuron j to the
//!   layer output if it were the only one removed (Wanda-style, structured).
//! - `obs`: structured Optimal Brain Surgeon on the down_proj reconstruction error. With
//!   H = E[a·aᵀ] + λI, removing neuron q costs ‖W[:,q]‖² / [H⁻¹]_qq once the others are re-fit;
//!   neurons are removed greedily one at a time, W and H⁻¹ updated after each.
//!
//! Repair: W' = W·C[:,K]·(Σ[K,K] + λI)⁻¹ with λ = damp·mean(diag Σ[K,K]), the least-squares
//! down_proj over the kept activations. Σ = E[a·aᵀ] of the stream being pruned; C = Σ in one-shot
//! mode, and C = E[a_ref·aᵀ] (original model's activations × pruned stream's) with
//! `--sequential`, so each layer is re-fit against the *original* layer's output.

use crate::checkpoint::registry::{Half, Kind, LayerTensor};
use crate::cpu::linalg::{matmul, spd_inverse};
use crate::engine::calib::{Gram, MlpStats};
use crate::error::{Error, Result};
use crate::layer::Layer;
use rayon::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Magnitude,
    Energy,
    Obs,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Magnitude => "magnitude",
            Method::Energy => "energy",
            Method::Obs => "obs",
        }
    }

    pub fn parse(s: &str) -> Result<Method> {
        match s {
            "magnitude" => Ok(Method::Magnitude),
            "energy" => Ok(Method::Energy),
            "obs" => Ok(Method::Obs),
            other => Err(Error::Arg {
                flag: "--method",
                msg: format!("unknown method \"{other}\"; choose magnitude, energy or obs"),
            }),
        }
    }

    pub fn needs_gram(self) -> bool {
        self == Method::Obs
    }
}

pub use crate::cpu::linalg::Solver;

#[cfg(feature = "cuda")]
fn gpu_err(e: crate::cuda::CudaError) -> Error {
    e.into()
}

fn not_pd(what: &str, p: usize) -> Error {
    Error::Other(format!(
        "{what} is not positive definite at neuron {p}; raise --damp"
    ))
}

fn col_norms_sq(down: &[f32], h: usize, i: usize) -> Vec<f64> {
    let mut n = vec![0f64; i];
    for r in 0..h {
        for (j, x) in down[r * i..(r + 1) * i].iter().enumerate() {
            n[j] += (*x as f64) * (*x as f64);
        }
    }
    n
}

fn row_norms(w: &[f32], rows: usize, cols: usize) -> Vec<f64> {
    (0..rows)
        .map(|r| {
            w[r * cols..(r + 1) * cols]
                .iter()
                .map(|&x| (x as f64) * (x as f64))
                .sum::<f64>()
                .sqrt()
        })
        .collect()
}

pub fn magnitude_scores(w: &Layer<Vec<f32>>, hidden: usize) -> Vec<f64> {
    let i = w.width;
    let g = row_norms(w.gate(), i, hidden);
    let u = row_norms(w.up(), i, hidden);
    let d = col_norms_sq(w.down(), hidden, i);
    (0..i).map(|j| g[j] * u[j] * d[j].sqrt()).collect()
}

pub fn energy_scores(w: &Layer<Vec<f32>>, hidden: usize, stats: &MlpStats) -> Vec<f64> {
    let d = col_norms_sq(w.down(), hidden, w.width);
    stats.mean_sq().iter().zip(&d).map(|(e, d)| e * d).collect()
}

/// The `k` highest scores, as ascending indices (ties go to the lower index: deterministic).
pub fn top_k(scores: &[f64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut kept = idx[..k].to_vec();
    kept.sort_unstable();
    kept
}

/// E[a·aᵀ] (or the cross matrix) normalised by the token count, as f64 [I, I].
fn mean_matrix(m: &[f64], count: u64) -> Vec<f64> {
    let c = count.max(1) as f64;
    m.par_iter().map(|x| x / c).collect()
}

/// W_downᵀ in f64: row j is column j of down ([H, I] f32) — [I, H].
fn down_transposed(down: &[f32], hidden: usize, n: usize) -> Vec<f64> {
    let mut wt = vec![0f64; n * hidden];
    wt.par_chunks_mut(hidden.max(1))
        .enumerate()
        .for_each(|(j, row)| {
            for (r, x) in row.iter_mut().enumerate() {
                *x = down[r * n + j] as f64;
            }
        });
    wt
}

/// The damping λ = damp·mean(diag) added to a Gram matrix's diagonal.
fn damping(diag: impl Iterator<Item = f64>, n: usize, damp: f64) -> f64 {
    let mean_diag = diag.sum::<f64>() / n as f64;
    // A dead layer (all activations zero) still needs a positive-definite matrix.
    (damp * mean_diag).max(1e-12)
}

fn damped(mut s: Vec<f64>, n: usize, damp: f64) -> Vec<f64> {
    let lambda = damping((0..n).map(|j| s[j * n + j]), n, damp);
    for j in 0..n {
        s[j * n + j] += lambda;
    }
    s
}

/// The f32 Gram matrix inside `Gram::Device`.
#[cfg(feature = "cuda")]
fn gram_on_device(dg: &crate::engine::DeviceGram) -> Result<&crate::cuda::DTensor<f32>> {
    Ok(&dg.0)
}

/// On the GPU, from the Gram matrix the calibration left there: Σ[idx, idx]/count + λI, the
/// device twin of `damped(mean_matrix(..))` (bit for bit the same values); `idx` None = all.
#[cfg(feature = "cuda")]
fn damped_on_device(
    g: &crate::cuda::Gpu,
    t: &crate::cuda::DTensor<f32>,
    count: u64,
    damp: f64,
    idx: Option<&[usize]>,
) -> Result<crate::cuda::DTensor<f64>> {
    use crate::cuda::linalg;
    let c = count.max(1) as f64;
    let diag = linalg::gram_diag(g, t).map_err(gpu_err)?;
    let lambda = match idx {
        None => damping(diag.iter().map(|d| d / c), diag.len(), damp),
        Some(ix) => damping(ix.iter().map(|&j| diag[j] / c), ix.len(), damp),
    };
    linalg::gram_gather(g, t, idx, idx, c, lambda).map_err(gpu_err)
}

/// Rank-1 OBS updates applied lazily: this many removals are kept as factors and folded into
/// H⁻¹ and W with two GEMMs, so a removal reads W once instead of rewriting H⁻¹ and W.
const OBS_BLOCK: usize = 32;

/// Greedy structured OBS: removes `width - k` neurons one at a time; returns the kept indices
/// (ascending). `obs_removal_order` gives the order in which they went.
///
/// Each removal of q updates H⁻¹ ← H⁻¹ − u·uᵀ/d and W ← W − v·uᵀ/d with u = H⁻¹[:,q],
/// d = H⁻¹_qq, v = W[:,q]. Applied eagerly that streams all of H⁻¹ ([I, I]) and W per removal.
/// Here the last ≤ `OBS_BLOCK` updates stay pending as (u, v, d): the current column q of H⁻¹
/// and W are rebuilt from them, diag(H⁻¹) and the column norms ‖W[:,j]‖² are updated in O(I)
/// and O(I·H) per removal, and the pending block is folded into H⁻¹ and W by GEMM, after which
/// the diagonal and norms are recomputed exactly (no drift across blocks).
pub fn obs_select(
    w: &Layer<Vec<f32>>,
    hidden: usize,
    stats: &MlpStats,
    k: usize,
    damp: f64,
    solver: &Solver,
) -> Result<Vec<usize>> {
    let order = obs_removal_order(w, hidden, stats, k, damp, solver)?;
    Ok(kept_after(w.width, &order))
}

/// The neurons `obs_select` removes, in the order it removes them (`width - k` entries). Every
/// pick depends only on the picks before it, so the first `width - k'` entries are exactly what
/// a run to any `k' ≥ k` removes: one run to the narrowest width selects every wider one.
pub fn obs_removal_order(
    w: &Layer<Vec<f32>>,
    hidden: usize,
    stats: &MlpStats,
    k: usize,
    damp: f64,
    solver: &Solver,
) -> Result<Vec<usize>> {
    let n = w.width;
    let wt = down_transposed(w.down(), hidden, n); // [I, H]
    const WHAT: &str = "OBS: the activation Gram matrix";
    #[cfg(feature = "cuda")]
    if let (Solver::Cuda(g), Some(dg)) = (solver, stats.gram_device()) {
        let h = damped_on_device(g, gram_on_device(dg)?, stats.count, damp, None)?;
        return crate::cuda::linalg::obs_order_device(g, h, &wt, hidden, k)
            .map_err(gpu_err)?
            .map_err(|p| not_pd(WHAT, p));
    }
    let gram = stats
        .gram_host()
        .ok_or_else(|| Error::Other("obs needs the Gram matrix".into()))?;
    let h = damped(mean_matrix(gram, stats.count), n, damp); // [I, I]
    match solver {
        Solver::Cpu => obs_order_host(&h, wt, n, hidden, k).map_err(|p| not_pd(WHAT, p)),
        #[cfg(feature = "cuda")]
        Solver::Cuda(g) => crate::cuda::linalg::obs_order(g, &h, &wt, n, hidden, k)
            .map_err(gpu_err)?
            .map_err(|p| not_pd(WHAT, p)),
    }
}

/// The neurons of a width-`n` layer left after removing `removed`, ascending.
pub fn kept_after(n: usize, removed: &[usize]) -> Vec<usize> {
    let mut alive = vec![true; n];
    removed.iter().for_each(|&j| alive[j] = false);
    (0..n).filter(|&j| alive[j]).collect()
}

/// Rows of Wᵀ whose dot products with v one task computes side by side.
const OBS_ROWS: usize = 8;

/// `⟨row_r, v⟩` for each of the ≤ OBS_ROWS rows of `rows` ([r, hidden]), each summed in index
/// order from -0.0 exactly as `iter().sum::<f64>()` sums it — the same bits — but with the rows'
/// sums interleaved, so the adds no longer wait on each other (OBS scoring of Gemma 3 270M at
/// 1408: 9.1 → 7.5 s on Zen 5, same output bytes).
#[inline]
fn dots_in_order(rows: &[f64], v: &[f64], hidden: usize) -> [f64; OBS_ROWS] {
    let mut acc = [-0.0f64; OBS_ROWS];
    let r = rows.len() / hidden;
    if r == OBS_ROWS {
        for (i, &vi) in v.iter().enumerate() {
            for (l, a) in acc.iter_mut().enumerate() {
                *a += rows[l * hidden + i] * vi;
            }
        }
    } else {
        for (a, row) in acc.iter_mut().zip(rows.chunks_exact(hidden)) {
            *a = row.iter().zip(v).map(|(x, y)| x * y).sum();
        }
    }
    acc
}

/// The host solve of `obs_removal_order`: `h` damped [n, n], `wt` = W_downᵀ [n, hidden].
/// Err(pivot) when h is not positive definite.
fn obs_order_host(
    h: &[f64],
    mut wt: Vec<f64>,
    n: usize,
    hidden: usize,
    k: usize,
) -> std::result::Result<Vec<usize>, usize> {
    let mut hinv = spd_inverse(h, n)?; // [I, I], symmetric
    let exact = |hinv: &[f64], wt: &[f64]| -> (Vec<f64>, Vec<f64>) {
        let diag = (0..n).map(|j| hinv[j * n + j]).collect();
        let norm = wt
            .par_chunks(hidden)
            .map(|c| c.iter().map(|x| x * x).sum())
            .collect();
        (diag, norm)
    };
    let (mut diag, mut norm) = exact(&hinv, &wt); // [I] each
    let mut alive = vec![true; n];
    let mut order = Vec::with_capacity(n - k);
    // Pending updates: us[b] [I], vs[b] [H], ds[b].
    let (mut us, mut vs, mut ds): (Vec<Vec<f64>>, Vec<Vec<f64>>, Vec<f64>) =
        (Vec::new(), Vec::new(), Vec::new());
    let steps = n - k;
    for step in 0..steps {
        // Cost of removing q (with the others re-fit): ‖W[:,q]‖² / [H⁻¹]_qq.
        let q = (0..n)
            .filter(|&j| alive[j])
            .map(|j| (j, norm[j] / diag[j]))
            .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))
            .map(|(j, _)| j)
            .expect("at least one neuron alive");
        alive[q] = false;
        order.push(q);
        // Current column q of H⁻¹ and of W.
        let mut u = hinv[q * n..(q + 1) * n].to_vec();
        let mut v = wt[q * hidden..(q + 1) * hidden].to_vec();
        for b in 0..ds.len() {
            let f = us[b][q] / ds[b];
            u.iter_mut().zip(&us[b]).for_each(|(x, y)| *x -= f * y);
            v.iter_mut().zip(&vs[b]).for_each(|(x, y)| *x -= f * y);
        }
        let d = u[q];
        // ⟨W[:,j], v⟩ for the current W: base rows minus the pending updates.
        let vv: f64 = v.iter().map(|x| x * x).sum();
        let pend: Vec<f64> = vs
            .iter()
            .zip(&ds)
            .map(|(vb, db)| vb.iter().zip(&v).map(|(a, b)| a * b).sum::<f64>() / db)
            .collect(); // ⟨v_b, v⟩ / d_b
        let us_ref = &us;
        let (v_ref, u_ref) = (&v, &u);
        norm.par_chunks_mut(OBS_ROWS)
            .zip(diag.par_chunks_mut(OBS_ROWS))
            .zip(wt.par_chunks(OBS_ROWS * hidden))
            .enumerate()
            .for_each(|(c, ((nc, dc), rows))| {
                let gs = dots_in_order(rows, v_ref, hidden);
                for (r, (nj, dj)) in nc.iter_mut().zip(dc.iter_mut()).enumerate() {
                    let j = c * OBS_ROWS + r;
                    let mut g = gs[r];
                    for (b, p) in pend.iter().enumerate() {
                        g -= us_ref[b][j] * p;
                    }
                    let f = u_ref[j] / d;
                    *nj += f * (f * vv - 2.0 * g);
                    *dj -= f * u_ref[j];
                }
            });
        us.push(u);
        vs.push(v);
        ds.push(d);
        if ds.len() == OBS_BLOCK || step + 1 == steps {
            fold(&mut hinv, &mut wt, &us, &vs, &ds, n, hidden);
            (us, vs, ds) = (Vec::new(), Vec::new(), Vec::new());
            (diag, norm) = exact(&hinv, &wt);
        }
    }
    Ok(order)
}

/// H⁻¹ −= Σ_b u_b·u_bᵀ/d_b and W −= Σ_b v_b·u_bᵀ/d_b (wt holds Wᵀ: wt −= Σ_b u_b·v_bᵀ/d_b), as
/// two GEMMs over the pending block.
fn fold(
    hinv: &mut [f64],
    wt: &mut [f64],
    us: &[Vec<f64>],
    vs: &[Vec<f64>],
    ds: &[f64],
    n: usize,
    hidden: usize,
) {
    let nb = ds.len();
    // A = [u_b / d_b] as [I, nb]; Uᵀ as [nb, I]; Vᵀ as [nb, H].
    let mut a = vec![0f64; n * nb];
    let mut ut = vec![0f64; nb * n];
    let mut vt = vec![0f64; nb * hidden];
    for b in 0..nb {
        for j in 0..n {
            a[j * nb + b] = us[b][j] / ds[b];
            ut[b * n + j] = us[b][j];
        }
        vt[b * hidden..(b + 1) * hidden].copy_from_slice(&vs[b]);
    }
    let du = matmul(&a, &ut, n, nb, n); // [I, I]
    hinv.par_iter_mut().zip(&du).for_each(|(x, d)| *x -= d);
    let dw = matmul(&a, &vt, n, nb, hidden); // [I, H]
    wt.par_iter_mut().zip(&dw).for_each(|(x, d)| *x -= d);
}

/// Least-squares re-fit of down_proj over the kept neurons: returns W' as f32 [H, K].
pub fn repair(
    w: &Layer<Vec<f32>>,
    hidden: usize,
    stats: &MlpStats,
    kept: &[usize],
    damp: f64,
    solver: &Solver,
) -> Result<Vec<f32>> {
    let n = w.width;
    let k = kept.len();
    const WHAT: &str = "repair: the kept neurons' Gram matrix";
    #[cfg(feature = "cuda")]
    if let (Solver::Cuda(g), Some(dg), None) = (solver, stats.gram_device(), &stats.cross) {
        use crate::cuda::linalg;
        let t = gram_on_device(dg)?;
        let m = damped_on_device(g, t, stats.count, damp, Some(kept))?; // [K, K]
        let c = stats.count.max(1) as f64;
        let ck = linalg::gram_gather(g, t, None, Some(kept), c, 0.0).map_err(gpu_err)?; // [I, K]
        let wd: Vec<f64> = w.down().par_iter().map(|&x| x as f64).collect(); // [H, I]
        let out = linalg::repair_product_device(g, m, &ck, &wd, hidden)
            .map_err(gpu_err)?
            .map_err(|p| not_pd(WHAT, kept[p]))?;
        return Ok(out.into_iter().map(|x| x as f32).collect());
    }
    let gram = stats
        .gram_host()
        .ok_or_else(|| Error::Other("repair needs the Gram matrix".into()))?;
    let cross = stats.cross.as_deref().unwrap_or(gram);
    let cnt = stats.count;
    // Σ[K,K] + λI
    let c = cnt.max(1) as f64;
    let mut skk = vec![0f64; k * k];
    skk.par_chunks_mut(k.max(1))
        .zip(kept)
        .for_each(|(row, &i)| {
            for (x, &j) in row.iter_mut().zip(kept) {
                *x = gram[i * n + j] / c;
            }
        });
    let m = damped(skk, k, damp);
    // C[:,K] [I, K]
    let mut ck = vec![0f64; n * k];
    ck.par_chunks_mut(k.max(1))
        .enumerate()
        .for_each(|(i, row)| {
            for (x, &j) in row.iter_mut().zip(kept) {
                *x = cross[i * n + j] / c;
            }
        });
    let wd: Vec<f64> = w.down().par_iter().map(|&x| x as f64).collect(); // [H, I]
    let out = match solver {
        Solver::Cpu => {
            let minv = spd_inverse(&m, k).map_err(|p| not_pd(WHAT, kept[p]))?;
            let wc = matmul(&wd, &ck, hidden, n, k); // [H, K]
            matmul(&wc, &minv, hidden, k, k) // [H, K]
        }
        #[cfg(feature = "cuda")]
        Solver::Cuda(g) => crate::cuda::linalg::repair_product(g, &m, &ck, &wd, hidden, n, k)
            .map_err(gpu_err)?
            .map_err(|p| not_pd(WHAT, kept[p]))?,
    };
    Ok(out.into_iter().map(|x| x as f32).collect())
}

/// The layer's MLP matrices cut to `kept` neurons (rows of gate/up, columns of down), down
/// replaced by `down` when given ([H, K]): a layer of width K holding only those matrices (the
/// engines take the rest from the full layer, uncopied: `Backend::load_pruned`).
pub fn slice_mlp(
    w: &Layer<Vec<f32>>,
    hidden: usize,
    kept: &[usize],
    down: Option<Vec<f32>>,
) -> Layer<Vec<f32>> {
    let n = w.width;
    let k = kept.len();
    let mut down = down;
    let mut cut = w
        .as_ref()
        .only(|t| t.half() == Half::Mlp && t.kind() == Kind::Matrix)
        .map_all(|t, m| match t {
            // The pruned dimension is down's column (input) dimension …
            LayerTensor::Down => down.take().unwrap_or_else(|| {
                let mut d = vec![0f32; hidden * k]; // [H, K]
                for r in 0..hidden {
                    for (b, &j) in kept.iter().enumerate() {
                        d[r * k + b] = m[r * n + j];
                    }
                }
                d
            }),
            // … and gate's and up's row (output) dimension.
            _ => kept
                .iter()
                .flat_map(|&j| m[j * hidden..(j + 1) * hidden].iter().copied())
                .collect(),
        });
    cut.width = k;
    cut
}

/// `len` deterministic values uniform in [-0.5, 0.5) (xorshift from `seed`): the inputs of
/// `synthetic_problem` and of the device solver's tests.
#[doc(hidden)]
pub fn synthetic_noise(len: usize, seed: u64) -> Vec<f64> {
    let mut r = crate::rng::XorShift64::new(seed);
    (0..len).map(|_| r.next_f64() - 0.5).collect()
}

/// A synthetic scoring problem for tests (the host unit tests and tests/cuda_linalg.rs): a layer
/// that has only `down` [hidden, n], and the Gram statistics of `t` = 4n correlated activations
/// a = x·M + x·diag(1 + j % 7) (x, M uniform noise from `seed`), so a few directions dominate
/// and the greedy choices are well separated.
#[doc(hidden)]
pub fn synthetic_problem(n: usize, hidden: usize, seed: u64) -> (Layer<Vec<f32>>, MlpStats) {
    let noise = synthetic_noise;
    let t = 4 * n;
    let x = noise(t * n, seed);
    let m = noise(n * n, seed + 10);
    let mut a = vec![0f64; t * n]; // [t, n]
    a.par_chunks_mut(n.max(1)).enumerate().for_each(|(r, row)| {
        for (j, v) in row.iter_mut().enumerate() {
            *v = (0..n).map(|p| x[r * n + p] * m[p * n + j]).sum::<f64>()
                + x[r * n + j] * (1.0 + (j % 7) as f64);
        }
    });
    let mut gram = vec![0f64; n * n]; // [n, n]
    gram.par_chunks_mut(n.max(1))
        .enumerate()
        .for_each(|(i, row)| {
            for (j, g) in row.iter_mut().enumerate() {
                *g = (0..t).map(|r| a[r * n + i] * a[r * n + j]).sum();
            }
        });
    let down = noise(hidden * n, seed + 20)
        .iter()
        .map(|&v| v as f32)
        .collect();
    let mut w = Layer::empty(n);
    w.set_mat(LayerTensor::Down, down);
    let stats = MlpStats {
        width: n,
        count: t as u64,
        sum: vec![0.0; n],
        sumsq: (0..n).map(|j| gram[j * n + j]).collect(),
        gram: Some(Gram::Host(gram)),
        cross: None,
        gram_kernel: None,
    };
    (w, stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The eager form of `obs_select` (every rank-1 update applied to all of H⁻¹ and W at once):
    /// the definition the lazy version must reproduce.
    fn obs_select_eager(down: &[f32], hidden: usize, n: usize, h: &[f64], k: usize) -> Vec<usize> {
        let mut hinv = spd_inverse(h, n).unwrap();
        let mut wt = vec![0f64; n * hidden];
        for r in 0..hidden {
            for j in 0..n {
                wt[j * hidden + r] = down[r * n + j] as f64;
            }
        }
        let mut alive = vec![true; n];
        for _ in 0..n - k {
            let q = (0..n)
                .filter(|&j| alive[j])
                .map(|j| {
                    let norm: f64 = wt[j * hidden..(j + 1) * hidden].iter().map(|x| x * x).sum();
                    (j, norm / hinv[j * n + j])
                })
                .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))
                .unwrap()
                .0;
            alive[q] = false;
            let hqq = hinv[q * n + q];
            let hq: Vec<f64> = hinv[q * n..(q + 1) * n].to_vec();
            let wq: Vec<f64> = wt[q * hidden..(q + 1) * hidden].to_vec();
            for j in 0..n {
                let f = hq[j] / hqq;
                for r in 0..hidden {
                    wt[j * hidden + r] -= f * wq[r];
                }
                for i in 0..n {
                    hinv[j * n + i] -= f * hq[i];
                }
            }
        }
        (0..n).filter(|&j| alive[j]).collect()
    }

    #[test]
    fn lazy_obs_selects_what_eager_obs_selects() {
        // Several folds (OBS_BLOCK = 32) and a ragged last block.
        for (n, hidden, k, seed) in [(150, 24, 40, 1u64), (97, 13, 10, 2), (64, 40, 32, 3)] {
            let (w, stats) = synthetic_problem(n, hidden, seed);
            let gram = stats.gram_host().unwrap().to_vec();
            let damp = 0.01;
            let lazy = obs_select(&w, hidden, &stats, k, damp, &Solver::Cpu).unwrap();
            let h = damped(mean_matrix(&gram, stats.count), n, damp);
            let eager = obs_select_eager(w.down(), hidden, n, &h, k);
            assert_eq!(lazy.len(), k);
            assert_eq!(lazy, eager, "n={n} hidden={hidden} k={k}");
        }
    }
}

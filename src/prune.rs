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

use crate::calib::MlpStats;
use crate::error::{Error, Result};
use crate::linalg::{matmul, spd_inverse};
use crate::model::LayerWeights;
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

pub fn magnitude_scores(w: &LayerWeights, hidden: usize) -> Vec<f64> {
    let i = w.width;
    let g = row_norms(&w.gate, i, hidden);
    let u = row_norms(&w.up, i, hidden);
    let d = col_norms_sq(&w.down, hidden, i);
    (0..i).map(|j| g[j] * u[j] * d[j].sqrt()).collect()
}

pub fn energy_scores(w: &LayerWeights, hidden: usize, stats: &MlpStats) -> Vec<f64> {
    let d = col_norms_sq(&w.down, hidden, w.width);
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
    m.iter().map(|x| x / c).collect()
}

fn damped(mut s: Vec<f64>, n: usize, damp: f64) -> Vec<f64> {
    let mean_diag = (0..n).map(|j| s[j * n + j]).sum::<f64>() / n as f64;
    // A dead layer (all activations zero) still needs a positive-definite matrix.
    let lambda = (damp * mean_diag).max(1e-12);
    for j in 0..n {
        s[j * n + j] += lambda;
    }
    s
}

/// Greedy structured OBS: removes `width - k` neurons one at a time; returns the kept indices.
pub fn obs_select(
    w: &LayerWeights,
    hidden: usize,
    stats: &MlpStats,
    k: usize,
    damp: f64,
) -> Result<Vec<usize>> {
    let n = w.width;
    let gram = stats
        .gram
        .as_ref()
        .ok_or_else(|| Error::Other("obs needs the Gram matrix".into()))?;
    let h = damped(mean_matrix(gram, stats.count), n, damp);
    let mut hinv = spd_inverse(&h, n).map_err(|p| {
        Error::Other(format!(
            "OBS: activation Gram matrix is not positive definite at neuron {p}; raise --damp"
        ))
    })?; // [I, I]
         // wt[j] = column j of W_down, as rows for contiguous updates: [I, H].
    let mut wt = vec![0f64; n * hidden];
    for r in 0..hidden {
        for j in 0..n {
            wt[j * hidden + r] = w.down[r * n + j] as f64;
        }
    }
    let mut alive = vec![true; n];
    for _ in 0..n - k {
        // Cost of removing q (with the others re-fit): ‖W[:,q]‖² / [H⁻¹]_qq.
        let q = (0..n)
            .filter(|&j| alive[j])
            .map(|j| {
                let norm: f64 = wt[j * hidden..(j + 1) * hidden].iter().map(|x| x * x).sum();
                (j, norm / hinv[j * n + j])
            })
            .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))
            .map(|(j, _)| j)
            .expect("at least one neuron alive");
        alive[q] = false;
        let hqq = hinv[q * n + q];
        let hq: Vec<f64> = (0..n).map(|j| hinv[q * n + j]).collect(); // row q of H⁻¹
        let wq: Vec<f64> = wt[q * hidden..(q + 1) * hidden].to_vec();
        // W ← W − W[:,q]·H⁻¹[q,:] / H⁻¹_qq ; H⁻¹ ← H⁻¹ − H⁻¹[:,q]·H⁻¹[q,:] / H⁻¹_qq
        wt.par_chunks_mut(hidden).enumerate().for_each(|(j, row)| {
            let f = hq[j] / hqq;
            if f != 0.0 {
                for (x, &y) in row.iter_mut().zip(&wq) {
                    *x -= f * y;
                }
            }
        });
        hinv.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
            let f = hq[i] / hqq;
            if f != 0.0 {
                for (x, &y) in row.iter_mut().zip(&hq) {
                    *x -= f * y;
                }
            }
        });
    }
    Ok((0..n).filter(|&j| alive[j]).collect())
}

/// Least-squares re-fit of down_proj over the kept neurons: returns W' as f32 [H, K].
pub fn repair(
    w: &LayerWeights,
    hidden: usize,
    stats: &MlpStats,
    kept: &[usize],
    damp: f64,
) -> Result<Vec<f32>> {
    let n = w.width;
    let k = kept.len();
    let gram = stats
        .gram
        .as_ref()
        .ok_or_else(|| Error::Other("repair needs the Gram matrix".into()))?;
    let cross = stats.cross.as_ref().unwrap_or(gram);
    let cnt = stats.count;
    // Σ[K,K] + λI
    let mut skk = vec![0f64; k * k];
    for (a, &i) in kept.iter().enumerate() {
        for (b, &j) in kept.iter().enumerate() {
            skk[a * k + b] = gram[i * n + j] / cnt as f64;
        }
    }
    let m = damped(skk, k, damp);
    let minv = spd_inverse(&m, k).map_err(|p| {
        Error::Other(format!(
            "repair: kept-neuron Gram matrix is not positive definite at {p}; raise --damp"
        ))
    })?;
    // C[:,K] [I, K]
    let mut ck = vec![0f64; n * k];
    for i in 0..n {
        for (b, &j) in kept.iter().enumerate() {
            ck[i * k + b] = cross[i * n + j] / cnt as f64;
        }
    }
    let wd: Vec<f64> = w.down.iter().map(|&x| x as f64).collect(); // [H, I]
    let wc = matmul(&wd, &ck, hidden, n, k); // [H, K]
    let out = matmul(&wc, &minv, hidden, k, k); // [H, K]
    Ok(out.into_iter().map(|x| x as f32).collect())
}

/// The layer's MLP cut to `kept` neurons (rows of gate/up, columns of down), down replaced by
/// `down` when given ([H, K]).
pub fn slice_layer(
    w: &LayerWeights,
    hidden: usize,
    kept: &[usize],
    down: Option<Vec<f32>>,
) -> LayerWeights {
    let n = w.width;
    let k = kept.len();
    let rows = |m: &[f32]| -> Vec<f32> {
        kept.iter()
            .flat_map(|&j| m[j * hidden..(j + 1) * hidden].iter().copied())
            .collect()
    };
    let down = down.unwrap_or_else(|| {
        let mut d = vec![0f32; hidden * k];
        for r in 0..hidden {
            for (b, &j) in kept.iter().enumerate() {
                d[r * k + b] = w.down[r * n + j];
            }
        }
        d
    });
    LayerWeights {
        input_norm: w.input_norm.clone(),
        q: w.q.clone(),
        k: w.k.clone(),
        v: w.v.clone(),
        o: w.o.clone(),
        q_norm: w.q_norm.clone(),
        k_norm: w.k_norm.clone(),
        post_attn_norm: w.post_attn_norm.clone(),
        pre_ffn_norm: w.pre_ffn_norm.clone(),
        gate: rows(&w.gate),
        up: rows(&w.up),
        down,
        post_ffn_norm: w.post_ffn_norm.clone(),
        width: k,
    }
}

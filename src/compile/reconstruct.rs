//! Whole-MLP reconstruction: after selection and the least-squares re-fit of one layer, a few
//! epochs of minibatch Adam refine the kept gate/up rows and down_proj columns together, through
//! the nonlinearity, so the pruned block reproduces what the full block adds to the residual
//! stream on the calibration tokens (arXiv 2510.14444 "A Free Lunch in LLM Compression";
//! Wanda++ arXiv 2503.04992). The least-squares re-fit fits down_proj alone against a weighted
//! proxy; here the loss is the exact quantity:
//!
//! `L = mean over tokens of ‖post(y_pruned) − post(y_full)‖² / H`, `y = down(act(gate(x))·up(x))`,
//! `x = pre_ffn_norm(h)`, `post` the post-FFN norm where the family has one (Gemma) and the
//! identity where the MLP output enters the residual stream as it is (the Llama family).
//!
//! A slice of the tokens is held out: the weights kept are the ones with the lowest held-out
//! loss among the starting point and the end of every epoch, each measured after rounding to
//! the checkpoint's dtype (what is written), so reconstruction never ends worse on held-out
//! tokens than the least-squares point it starts from. f32 master weights and Adam moments; the
//! minibatch order comes from a fixed seed and every product is a GEMM whose result does not
//! depend on the thread count, so the output is byte-identical for any `--threads`.

use crate::checkpoint::config::ModelConfig;
use crate::cpu::{act, model, ops};
use crate::error::{Error, Result};
use crate::layer::Layer;
use rayon::prelude::*;
use serde::Serialize;

/// How reconstruction runs (`--reconstruct`, `--recon-*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReconOptions {
    /// Passes over the training tokens (1 ..= 100).
    pub epochs: usize,
    /// Adam's step as a fraction of each matrix's RMS (each of gate, up and down moves by about
    /// this much of its typical entry per step): (0, 0.1].
    pub lr: f64,
    /// Calibration tokens used, spread evenly over the calibration set (held-out ones included).
    pub tokens: usize,
    /// Tokens per Adam step.
    pub batch: usize,
}

impl Default for ReconOptions {
    fn default() -> Self {
        ReconOptions {
            epochs: 2,
            lr: 1e-3,
            tokens: 16_384,
            batch: 256,
        }
    }
}

/// The fraction of the tokens held out for the keep-the-best check.
const HOLDOUT: f64 = 0.125;
const SEED: u64 = 0x005E_ED0F_4EC0;

impl ReconOptions {
    pub fn validate(&self) -> Result<()> {
        let bad = |flag: &'static str, msg: String| Err(Error::Arg { flag, msg });
        if !(1..=100).contains(&self.epochs) {
            return bad(
                "--recon-epochs",
                format!("{} is out of range; give 1 to 100 epochs", self.epochs),
            );
        }
        if !(self.lr > 0.0 && self.lr <= 0.1) {
            return bad(
                "--recon-lr",
                format!(
                    "{} is out of range; give a step in (0, 0.1] (a fraction of each matrix's \
                     RMS; 1e-3 is the default)",
                    self.lr
                ),
            );
        }
        if self.tokens < 64 {
            return bad(
                "--recon-tokens",
                format!("{} is too few; give at least 64 tokens", self.tokens),
            );
        }
        Ok(())
    }
}

/// What reconstruction did to one layer (the compile report).
#[derive(Debug, Clone, Serialize)]
pub struct LayerRecon {
    pub layer: usize,
    pub train_tokens: usize,
    pub heldout_tokens: usize,
    /// Training loss per epoch (mean over the epoch's steps).
    pub train_loss: Vec<f64>,
    /// Held-out loss at the least-squares starting point, then after each epoch (rounded weights).
    pub heldout_loss: Vec<f64>,
    /// 0: the starting point was kept; e ≥ 1: the weights after epoch e.
    pub kept_epoch: usize,
}

/// The pruned MLP's matrices in f32: gate and up `[K, H]`, down `[H, K]`.
#[derive(Debug, Clone, PartialEq)]
pub struct MlpWeights {
    pub gate: Vec<f32>,
    pub up: Vec<f32>,
    pub down: Vec<f32>,
}

/// The fixed inputs of one layer's reconstruction.
pub struct Problem<'a> {
    pub cfg: &'a ModelConfig,
    /// The layer at full width (pre/post-FFN norms and the full MLP, the target).
    pub full: &'a Layer<Vec<f32>>,
    /// MLP inputs: the residual rows entering the MLP on the pruned stream `[N, H]`.
    pub h: &'a [f32],
    /// The calibration sequence each row of `h` comes from `[N]`: whole sequences are held out.
    pub seq: &'a [usize],
    /// Rounds a matrix to what the checkpoint stores (the written dtype).
    pub round: &'a dyn Fn(&mut [f32]),
}

/// One MLP forward of `x` ([m, H], normed) with `p` at width k, keeping what the backward needs.
struct Forward {
    g: Vec<f32>, // [m, K] gate pre-activation
    u: Vec<f32>, // [m, K]
    a: Vec<f32>, // [m, K] act(g)·u
    y: Vec<f32>, // [m, H] down output
    o: Vec<f32>, // [m, H] post(y)
}

fn forward(cfg: &ModelConfig, post: Option<&[f32]>, p: &MlpWeights, x: &[f32]) -> Forward {
    let hd = cfg.hidden_size;
    let m = x.len() / hd;
    let k = p.gate.len() / hd;
    let g = ops::linear(x, &p.gate, m, hd, k);
    let u = ops::linear(x, &p.up, m, hd, k);
    let a: Vec<f32> = g
        .par_iter()
        .zip(&u)
        .map(|(&g, &u)| act::apply(cfg.mlp_act, g) * u)
        .collect();
    let y = ops::linear(&a, &p.down, m, k, hd);
    let mut o = y.clone();
    if let Some(w) = post {
        model::norm(cfg, &mut o, w);
    }
    Forward { g, u, a, y, o }
}

/// `mean over rows of ‖o − t‖² / H` (f64 sum).
fn loss(o: &[f32], t: &[f32], hd: usize) -> f64 {
    let s: f64 = o
        .par_iter()
        .zip(t)
        .map(|(&a, &b)| ((a - b) as f64).powi(2))
        .sum();
    debug_assert_eq!(o.len() % hd, 0);
    s / o.len().max(1) as f64
}

/// The loss on `x` against `t` and its gradient with respect to gate, up and down.
fn loss_grad(
    cfg: &ModelConfig,
    post: Option<&[f32]>,
    p: &MlpWeights,
    x: &[f32],
    t: &[f32],
) -> (f64, MlpWeights) {
    let hd = cfg.hidden_size;
    let m = x.len() / hd;
    let k = p.gate.len() / hd;
    let f = forward(cfg, post, p, x);
    let l = loss(&f.o, t, hd);
    // dL/do = 2 (o − t) / (m·H).
    let scale = 2.0 / (m * hd) as f32;
    let mut dy: Vec<f32> =
        f.o.par_iter()
            .zip(t)
            .map(|(&o, &t)| (o - t) * scale)
            .collect(); // [m, H]
    if let Some(w) = post {
        // o = y·r·s, r = (mean(y²) + eps)^-½: dy_i = r·s_i·do_i − (r³/H)·y_i·Σ_j do_j·s_j·y_j.
        let eps = cfg.rms_norm_eps;
        dy.par_chunks_mut(hd)
            .zip(f.y.par_chunks(hd))
            .for_each(|(d, y)| {
                let ms = y.iter().map(|v| v * v).sum::<f32>() / hd as f32;
                let r = 1.0 / (ms + eps).sqrt();
                let s = |j: usize| crate::cpu::norm::scale(cfg.norm_weight, w[j]);
                let dot: f32 = (0..hd).map(|j| d[j] * s(j) * y[j]).sum();
                let c = r * r * r / hd as f32 * dot;
                for j in 0..hd {
                    d[j] = r * s(j) * d[j] - c * y[j];
                }
            });
    }
    // dD [H, K] = dyᵀ·a; da [m, K] = dy·D.
    let mut dd = vec![0f32; hd * k];
    ops::matmul_tn(&mut dd, &dy, &f.a, m, hd, k, false);
    let mut da = vec![0f32; m * k];
    ops::matmul_nn(&mut da, &dy, &p.down, m, hd, k, false);
    // du = da·act(g); dg = da·u·act'(g).
    let (dg, du): (Vec<f32>, Vec<f32>) = da
        .par_iter()
        .zip(&f.g)
        .zip(&f.u)
        .map(|((&da, &g), &u)| {
            (
                da * u * act::grad(cfg.mlp_act, g),
                da * act::apply(cfg.mlp_act, g),
            )
        })
        .unzip();
    // dG, dU [K, H] = dgᵀ·x, duᵀ·x.
    let tn = |d: &[f32]| {
        let mut out = vec![0f32; k * hd];
        ops::matmul_tn(&mut out, d, x, m, k, hd, false);
        out
    };
    let grad = MlpWeights {
        gate: tn(&dg),
        up: tn(&du),
        down: dd,
    };
    (l, grad)
}

/// Adam state of one matrix, with its step size fixed from the matrix's starting RMS.
pub(crate) struct Adam {
    m: Vec<f32>,
    v: Vec<f32>,
    lr: f32,
}

impl Adam {
    pub(crate) fn new(w: &[f32], rel: f64) -> Adam {
        let rms =
            (w.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / w.len().max(1) as f64).sqrt();
        Adam {
            m: vec![0.0; w.len()],
            v: vec![0.0; w.len()],
            lr: (rel * rms) as f32,
        }
    }

    /// One Adam step `t` (1-based) with the step size scaled by `scale` (a schedule's factor;
    /// 1.0 leaves it as built).
    pub(crate) fn step(&mut self, w: &mut [f32], g: &[f32], t: i32, scale: f32) {
        const B1: f32 = 0.9;
        const B2: f32 = 0.999;
        const EPS: f32 = 1e-12;
        let (c1, c2) = (1.0 - B1.powi(t), 1.0 - B2.powi(t));
        let lr = self.lr * scale;
        w.par_iter_mut()
            .zip(&mut self.m)
            .zip(&mut self.v)
            .zip(g)
            .for_each(|(((w, m), v), &g)| {
                *m = B1 * *m + (1.0 - B1) * g;
                *v = B2 * *v + (1.0 - B2) * g * g;
                let mh = *m / c1;
                let vh = *v / c2;
                *w -= lr * mh / (vh.sqrt() + EPS);
            });
    }
}

/// The target of every row of `x`: what the full-width block adds to the residual ([m, H]).
fn target(cfg: &ModelConfig, full: &Layer<Vec<f32>>, x: &[f32]) -> Vec<f32> {
    let p = MlpWeights {
        gate: full.gate().clone(),
        up: full.up().clone(),
        down: full.down().clone(),
    };
    forward(cfg, full.post_ffn_norm().map(|v| &v[..]), &p, x).o
}

/// Refines `start` (the kept gate/up rows and the re-fit down_proj, already rounded) on the
/// problem's tokens; returns the weights to write (rounded) and what happened.
pub fn reconstruct(
    pb: &Problem<'_>,
    layer: usize,
    start: MlpWeights,
    opts: &ReconOptions,
) -> Result<(MlpWeights, LayerRecon)> {
    let cfg = pb.cfg;
    let hd = cfg.hidden_size;
    let n = pb.h.len() / hd;
    if n < 2 {
        return Err(Error::Other(format!(
            "layer {layer}: reconstruction needs calibration tokens (got {n})"
        )));
    }
    // MLP inputs: pre-FFN norm of the residual rows.
    let mut x = pb.h.to_vec(); // [N, H]
    model::norm(cfg, &mut x, pb.full.pre_ffn_norm());
    let t = target(cfg, pb.full, &x); // [N, H]
    let post = pb.full.post_ffn_norm().map(|v| &v[..]);

    let (mut train, held) = split_heldout(pb.seq, n)?;
    let gather = |rows: &[usize], src: &[f32]| -> Vec<f32> {
        rows.iter()
            .flat_map(|&r| src[r * hd..(r + 1) * hd].iter().copied())
            .collect()
    };
    let (xh, th) = (gather(&held, &x), gather(&held, &t));
    let heldout = |p: &MlpWeights| loss(&forward(cfg, post, p, &xh).o, &th, hd);

    let mut report = LayerRecon {
        layer,
        train_tokens: train.len(),
        heldout_tokens: held.len(),
        train_loss: Vec::new(),
        heldout_loss: vec![heldout(&start)],
        kept_epoch: 0,
    };
    let mut best = start.clone();
    let mut best_loss = report.heldout_loss[0];
    let mut p = start;
    let mut opt = [
        Adam::new(&p.gate, opts.lr),
        Adam::new(&p.up, opts.lr),
        Adam::new(&p.down, opts.lr),
    ];
    let mut rng = crate::rng::Rng::new(SEED ^ layer as u64);
    let mut step = 0i32;
    for epoch in 1..=opts.epochs {
        // Fisher–Yates over the training rows, seeded per layer.
        for i in (1..train.len()).rev() {
            train.swap(i, rng.below(i + 1));
        }
        let mut sum = 0f64;
        let mut steps = 0usize;
        for rows in train.chunks(opts.batch.max(1)) {
            let (xb, tb) = (gather(rows, &x), gather(rows, &t));
            let (l, g) = loss_grad(cfg, post, &p, &xb, &tb);
            step += 1;
            opt[0].step(&mut p.gate, &g.gate, step, 1.0);
            opt[1].step(&mut p.up, &g.up, step, 1.0);
            opt[2].step(&mut p.down, &g.down, step, 1.0);
            sum += l;
            steps += 1;
        }
        report.train_loss.push(sum / steps.max(1) as f64);
        let mut rounded = p.clone();
        (pb.round)(&mut rounded.gate);
        (pb.round)(&mut rounded.up);
        (pb.round)(&mut rounded.down);
        let l = heldout(&rounded);
        report.heldout_loss.push(l);
        if l < best_loss {
            best_loss = l;
            best = rounded;
            report.kept_epoch = epoch;
        }
    }
    if best
        .gate
        .iter()
        .chain(&best.up)
        .chain(&best.down)
        .any(|v| !v.is_finite())
    {
        return Err(Error::Other(format!(
            "layer {layer}: reconstruction produced non-finite weights; lower --recon-lr"
        )));
    }
    Ok((best, report))
}

/// Training and held-out rows. Whole sequences are held out — every 1/HOLDOUT-th one, so both
/// sets span the calibration set — since tokens of a sequence held out beside its other tokens
/// share their document and do not show over-fitting to the calibration text (measured: held-out
/// losses fell while the dev KL rose). With a single sequence, every 1/HOLDOUT-th row.
pub(crate) fn split_heldout(seq: &[usize], n: usize) -> Result<(Vec<usize>, Vec<usize>)> {
    if seq.len() != n {
        return Err(Error::Other(format!(
            "reconstruction: {} sequence ids for {n} rows",
            seq.len()
        )));
    }
    let every = (1.0 / HOLDOUT).round() as usize;
    let mut ids: Vec<usize> = seq.to_vec();
    ids.sort_unstable();
    ids.dedup();
    // Held-out sequences: every `every`-th, or the last one when there are fewer.
    let held_seqs: Vec<usize> = match ids.len() {
        1 => Vec::new(),
        k if k < every => vec![ids[k - 1]],
        _ => ids.iter().skip(every - 1).step_by(every).copied().collect(),
    };
    let (mut train, mut held) = (Vec::new(), Vec::new());
    for (r, q) in seq.iter().enumerate() {
        let out = if held_seqs.is_empty() {
            r % every == every - 1
        } else {
            held_seqs.binary_search(q).is_ok()
        };
        if out {
            held.push(r);
        } else {
            train.push(r);
        }
    }
    Ok((train, held))
}

/// Rows `0, s, 2s, …` of `rows` MLP-input rows, at most `max` of them: an even spread over the
/// calibration set.
pub fn spread(rows: usize, max: usize) -> Vec<usize> {
    if rows <= max {
        return (0..rows).collect();
    }
    (0..max).map(|i| i * rows / max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::config::ModelConfig;

    fn tiny(family: &str) -> ModelConfig {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(family);
        ModelConfig::from_dir(&dir).unwrap()
    }

    fn rand(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut r = crate::rng::Rng::new(seed);
        (0..n)
            .map(|_| (r.next_f64() as f32 * 2.0 - 1.0) * scale)
            .collect()
    }

    /// The analytic gradient against central finite differences (f64 loss) on a tiny layer,
    /// for both activations and with and without the post-FFN norm.
    #[test]
    fn gradient_matches_finite_differences() {
        for fam in ["tiny-gemma3", "tiny-qwen2"] {
            let cfg = tiny(fam);
            let hd = cfg.hidden_size;
            let (m, k) = (6, 8);
            let post_w = rand(hd, 7, 0.3);
            let post = cfg.norms.post_mlp.map(|_| &post_w[..]);
            let p = MlpWeights {
                gate: rand(k * hd, 1, 0.5),
                up: rand(k * hd, 2, 0.5),
                down: rand(hd * k, 3, 0.5),
            };
            let x = rand(m * hd, 4, 1.0);
            let t = rand(m * hd, 5, 0.5);
            let (_, g) = loss_grad(&cfg, post, &p, &x, &t);
            let f = |q: &MlpWeights| loss(&forward(&cfg, post, q, &x).o, &t, hd);
            let mut worst = 0f64;
            for (which, idx) in [(0, 3), (0, 77), (1, 5), (1, 200), (2, 9), (2, 301)] {
                let h = 1e-2f32;
                let mut a = p.clone();
                let mut b = p.clone();
                let (pa, pb, gv) = match which {
                    0 => (&mut a.gate, &mut b.gate, g.gate[idx]),
                    1 => (&mut a.up, &mut b.up, g.up[idx]),
                    _ => (&mut a.down, &mut b.down, g.down[idx]),
                };
                pa[idx] += h;
                pb[idx] -= h;
                let fd = (f(&a) - f(&b)) / (2.0 * h as f64);
                let err = (fd - gv as f64).abs() / (fd.abs().max(gv.abs() as f64) + 1e-6);
                worst = worst.max(err);
                assert!(
                    err < 2e-2,
                    "{fam}: matrix {which} [{idx}]: analytic {gv:e} vs finite difference {fd:e}"
                );
            }
            eprintln!("{fam}: worst relative gradient error {worst:.2e}");
        }
    }
}

#[cfg(test)]
mod fit_tests {
    use super::*;
    use crate::checkpoint::safetensors::WeightStore;

    fn fixture(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    /// Half the neurons of a tiny fixture's layer 0, sliced (no re-fit), on random residual rows.
    fn problem(name: &str) -> (ModelConfig, Layer<Vec<f32>>, Vec<f32>, MlpWeights) {
        let dir = fixture(name);
        let cfg = ModelConfig::from_dir(&dir).unwrap();
        let store = WeightStore::open(&dir).unwrap();
        let w = crate::cpu::model::load_layer(&store, &cfg, 0).unwrap();
        let hd = cfg.hidden_size;
        let kept: Vec<usize> = (0..w.width).step_by(2).collect();
        let cut = crate::compile::prune::slice_mlp(&w, hd, &kept, None);
        let start = MlpWeights {
            gate: cut.gate().clone(),
            up: cut.up().clone(),
            down: cut.down().clone(),
        };
        let mut r = crate::rng::Rng::new(11);
        let h: Vec<f32> = (0..1024 * hd)
            .map(|_| (r.next_f64() as f32 * 2.0 - 1.0) * 3.0)
            .collect();
        (cfg, w, h, start)
    }

    /// With a sane step the held-out loss goes down and the better weights are kept; with an
    /// absurd one training diverges and the starting point comes back unchanged.
    #[test]
    fn keeps_the_best_held_out_point() {
        for name in ["tiny-gemma3", "tiny-llama"] {
            let (cfg, w, h, start) = problem(name);
            let round = |_: &mut [f32]| {};
            let seq: Vec<usize> = (0..h.len() / cfg.hidden_size).map(|r| r / 64).collect();
            let pb = Problem {
                cfg: &cfg,
                full: &w,
                h: &h,
                seq: &seq,
                round: &round,
            };
            let good = ReconOptions {
                epochs: 4,
                lr: 1e-2,
                tokens: 1024,
                batch: 64,
            };
            let (p, rep) = reconstruct(&pb, 0, start.clone(), &good).unwrap();
            assert_eq!(rep.heldout_loss.len(), 5);
            assert!(rep.kept_epoch > 0, "{name}: {rep:?}");
            let best = rep.heldout_loss[rep.kept_epoch];
            assert!(best < 0.99 * rep.heldout_loss[0], "{name}: {rep:?}");
            assert_ne!(p, start);
            // The same problem again gives the same bits (seeded order).
            let (p2, _) = reconstruct(&pb, 0, start.clone(), &good).unwrap();
            assert_eq!(p, p2);

            let wild = ReconOptions {
                lr: 0.1,
                epochs: 1,
                ..good
            };
            let (q, rep) = reconstruct(&pb, 0, start.clone(), &wild).unwrap();
            if rep.kept_epoch == 0 {
                assert_eq!(
                    q, start,
                    "{name}: the starting point must come back unchanged"
                );
            } else {
                assert!(rep.heldout_loss[1] < rep.heldout_loss[0], "{name}: {rep:?}");
            }
        }
    }

    /// Whole sequences are held out (every 8th, the last when fewer than 8, rows when one).
    #[test]
    fn held_out_rows_are_whole_sequences() {
        let seq: Vec<usize> = (0..160).map(|r| r / 10).collect(); // 16 sequences of 10 rows
        let (train, held) = split_heldout(&seq, 160).unwrap();
        let held_seqs: std::collections::BTreeSet<usize> = held.iter().map(|&r| seq[r]).collect();
        assert_eq!(held_seqs.into_iter().collect::<Vec<_>>(), vec![7, 15]);
        assert_eq!((train.len(), held.len()), (140, 20));
        assert!(train.iter().all(|&r| seq[r] != 7 && seq[r] != 15));
        let (_, held) = split_heldout(&[0, 0, 1, 1, 2, 2], 6).unwrap();
        assert_eq!(held, vec![4, 5]);
        let (train, held) = split_heldout(&[3; 16], 16).unwrap();
        assert_eq!((train.len(), held), (14, vec![7, 15]));
        assert!(split_heldout(&[0, 1], 3).is_err());
    }

    #[test]
    fn options_out_of_range_name_the_flag() {
        let ok = ReconOptions::default();
        assert!(ok.validate().is_ok());
        for (o, flag) in [
            (ReconOptions { epochs: 0, ..ok }, "--recon-epochs"),
            (ReconOptions { epochs: 101, ..ok }, "--recon-epochs"),
            (ReconOptions { lr: 0.0, ..ok }, "--recon-lr"),
            (ReconOptions { lr: 0.5, ..ok }, "--recon-lr"),
            (ReconOptions { lr: f64::NAN, ..ok }, "--recon-lr"),
            (ReconOptions { tokens: 10, ..ok }, "--recon-tokens"),
        ] {
            let e = o.validate().unwrap_err().to_string();
            assert!(e.contains(flag), "{e}");
        }
    }

    #[test]
    fn spread_covers_the_set_evenly() {
        assert_eq!(spread(5, 10), vec![0, 1, 2, 3, 4]);
        assert_eq!(spread(10, 4), vec![0, 2, 5, 7]);
    }
}

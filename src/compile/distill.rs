//! End-to-end distillation (`--distill`, opt-in): after every layer of a width is pruned and
//! re-fit, minibatch Adam trains all layers' kept MLP matrices (gate, up, down) together so the
//! pruned model's next-token distributions match the original's on calibration sequences. The
//! layer-by-layer re-fit and reconstruction each match one block's output on its own; errors
//! still add up through the depth, and only a loss at the logits sees what they do there.
//!
//! Loss: the mean over the predicting positions of KL(p_original ‖ p_pruned) — what
//! `whittle eval` reports — through the whole CPU model (`cpu::grad`); attention, norms,
//! embedding and head stay frozen. The original model's final hidden states are computed once;
//! its logits are recomputed from them chunk by chunk (a [T, V] matrix is never held).
//!
//! Every 8th sequence used is held out whole (the last one when fewer than 8); the weights kept
//! are those with the lowest held-out KL among the starting point and the end of every epoch,
//! each measured after rounding to the checkpoint's dtype (what is written), so the stage never
//! ends worse on held-out calibration sequences than where it started. f32 master weights and
//! Adam moments (step: `--distill-lr` times each matrix's starting RMS, as `--recon-lr`), a
//! seeded order, GEMMs whose results do not depend on the thread count and sums in a fixed
//! order: the output is byte-identical for any `--threads`. Runs on the host whatever the
//! calibration backend (as reconstruction does).

use crate::checkpoint::config::ModelConfig;
use crate::checkpoint::registry::{Half, Kind};
use crate::checkpoint::safetensors::WeightStore;
use crate::compile::calib::CalibSet;
use crate::compile::prune::slice_mlp;
use crate::compile::reconstruct::{split_heldout, spread, Adam};
use crate::compile::writer::LayerCut;
use crate::cpu::grad::{self, Mlp, Net};
use crate::cpu::model::Model;
use crate::engine::Batch;
use crate::error::{Error, Result};
use crate::layer::Layer;
use serde::Serialize;
use std::path::Path;

/// How the step size moves over the run (`--distill-schedule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// `--distill-lr` at every step.
    Constant,
    /// Linear warm-up over the first `WARMUP` of the steps, then a half cosine from
    /// `--distill-lr` down to zero after the last step, over all epochs together.
    Cosine,
}

/// The fraction of the steps `Schedule::Cosine` warms up over.
const WARMUP: f64 = 0.1;

impl Schedule {
    pub fn name(self) -> &'static str {
        match self {
            Schedule::Constant => "constant",
            Schedule::Cosine => "cosine",
        }
    }

    pub fn parse(s: &str) -> Result<Schedule> {
        match s {
            "constant" => Ok(Schedule::Constant),
            "cosine" => Ok(Schedule::Cosine),
            other => Err(Error::Arg {
                flag: "--distill-schedule",
                msg: format!("unknown schedule \"{other}\"; choose constant or cosine"),
            }),
        }
    }

    /// The factor on the step size at step `t` (1-based) of `total`.
    pub fn factor(self, t: u64, total: u64) -> f64 {
        match self {
            Schedule::Constant => 1.0,
            Schedule::Cosine => {
                let warm = ((total as f64 * WARMUP).ceil() as u64).max(1);
                if t <= warm {
                    t as f64 / warm as f64
                } else {
                    // Reaches zero one step after the last, so every step moves the weights.
                    let x = (t - warm) as f64 / (total - warm + 1) as f64;
                    0.5 * (1.0 + (std::f64::consts::PI * x).cos())
                }
            }
        }
    }
}

/// How distillation runs (`--distill`, `--distill-*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DistillOptions {
    /// Passes over the training sequences (1 ..= 100).
    pub epochs: usize,
    /// Adam's step as a fraction of each matrix's RMS: (0, 0.1].
    pub lr: f64,
    /// Calibration tokens used, in whole sequences spread over the set (held-out ones included).
    pub tokens: usize,
    /// Sequences per Adam step (1 ..= 256).
    pub batch: usize,
    /// How the step size moves over the steps.
    pub schedule: Schedule,
}

impl Default for DistillOptions {
    fn default() -> Self {
        // Measured on Gemma 3 270M (README, Methods): 1e-3 improved held-out KL where 3e-3 and
        // 1e-2 made it worse; one epoch over 65536 tokens (the whole default calibration set)
        // beat two over 16384, which over-fit mixed calibration text.
        DistillOptions {
            epochs: 1,
            lr: 1e-3,
            tokens: 65_536,
            batch: 2,
            schedule: Schedule::Constant,
        }
    }
}

const SEED: u64 = 0xD157_111E;

impl DistillOptions {
    pub fn validate(&self) -> Result<()> {
        let bad = |flag: &'static str, msg: String| Err(Error::Arg { flag, msg });
        if !(1..=100).contains(&self.epochs) {
            return bad(
                "--distill-epochs",
                format!("{} is out of range; give 1 to 100 epochs", self.epochs),
            );
        }
        if !(self.lr > 0.0 && self.lr <= 0.1) {
            return bad(
                "--distill-lr",
                format!(
                    "{} is out of range; give a step in (0, 0.1] (a fraction of each matrix's \
                     RMS; {} is the default)",
                    self.lr,
                    DistillOptions::default().lr
                ),
            );
        }
        if self.tokens < 64 {
            return bad(
                "--distill-tokens",
                format!("{} is too few; give at least 64 tokens", self.tokens),
            );
        }
        if !(1..=256).contains(&self.batch) {
            return bad(
                "--distill-batch",
                format!("{} is out of range; give 1 to 256 sequences", self.batch),
            );
        }
        Ok(())
    }
}

/// What distillation did to one width (the compile report).
#[derive(Debug, Clone, Serialize)]
pub struct DistillReport {
    pub epochs: usize,
    pub lr: f64,
    /// `constant` or `cosine` (`Schedule::name`).
    pub schedule: &'static str,
    /// Sequences per Adam step.
    pub batch: usize,
    /// Calibration tokens used (whole sequences, held-out ones included).
    pub tokens: usize,
    pub seq_len: usize,
    pub train_sequences: usize,
    pub heldout_sequences: usize,
    /// Mean training KL per epoch (mean over its steps, before each step's update).
    pub train_kl: Vec<f64>,
    /// Held-out mean KL at the starting point, then after each epoch (rounded weights).
    pub heldout_kl: Vec<f64>,
    /// 0: the starting point was kept; e ≥ 1: the weights after epoch e.
    pub kept_epoch: usize,
    pub seconds: f64,
}

/// What every width's distillation shares: the original model (the teacher, and the frozen half
/// of every student), its head in f32, and the sequences with the teacher's final hidden states.
pub struct Teacher {
    cfg: ModelConfig,
    model: Model,
    head: Vec<f32>, // [V, H]
    ids: Vec<Vec<u32>>,
    hidden: Vec<Vec<f32>>, // [T, H] each
    train: Vec<usize>,
    held: Vec<usize>,
    seq_len: usize,
}

impl Teacher {
    /// Loads `input` and runs it on the calibration sequences distillation uses.
    pub fn new(
        input: &Path,
        cfg: &ModelConfig,
        store: &WeightStore,
        calib: &CalibSet,
        opts: &DistillOptions,
    ) -> Result<Teacher> {
        let t = calib.seq_len;
        if calib.n_seq < 2 || t < 2 {
            return Err(Error::Arg {
                flag: "--distill",
                msg: format!(
                    "needs at least 2 calibration sequences of at least 2 tokens (one is held \
                     out), got {} of {t}; give --samples 2 or more",
                    calib.n_seq
                ),
            });
        }
        let n = opts.tokens.div_ceil(t).clamp(2, calib.n_seq);
        let picked = spread(calib.n_seq, n);
        let (train, held) = split_heldout(&(0..n).collect::<Vec<_>>(), n)?;
        let model = Model::load_from(input, cfg.clone(), store)?;
        let head = grad::widen_table(model.head());
        let ids: Vec<Vec<u32>> = picked
            .iter()
            .map(|&s| calib.ids[s * t..(s + 1) * t].to_vec())
            .collect();
        let batch = Batch {
            n_seq: 1,
            seq_len: t,
        };
        let hidden = ids
            .iter()
            .map(|x| model.forward_hidden(x, batch, None))
            .collect::<Result<Vec<_>>>()?;
        Ok(Teacher {
            cfg: cfg.clone(),
            model,
            head,
            ids,
            hidden,
            train,
            held,
            seq_len: t,
        })
    }

    fn net<'a>(&'a self, frozen: &'a [Layer<Vec<f32>>], mlp: &'a [Mlp]) -> Net<'a> {
        Net {
            cfg: &self.cfg,
            layers: frozen
                .iter()
                .zip(mlp)
                .map(|(f, m)| grad::with_mlp(f, m))
                .collect(),
            final_norm: &self.model.final_norm,
            embed: self.model.embed_table(),
            head: &self.head,
        }
    }

    /// Mean KL over the held-out sequences' predicting positions.
    fn heldout_kl(&self, frozen: &[Layer<Vec<f32>>], mlp: &[Mlp]) -> Result<f64> {
        let net = self.net(frozen, mlp);
        let mut sum = 0f64;
        for &i in &self.held {
            sum += grad::kl(&net, &self.ids[i], &self.hidden[i])?;
        }
        Ok(sum / (self.held.len() * (self.seq_len - 1)).max(1) as f64)
    }
}

/// Trains the MLPs of one width's `cuts` (every layer, as the writer takes them); where an epoch
/// beats the starting point on the held-out sequences, its rounded weights replace each cut's
/// gate, up and down. `round` rounds layer l's matrices to the checkpoint's dtypes.
pub fn distill(
    teacher: &Teacher,
    cuts: &mut [LayerCut],
    round: &dyn Fn(usize, &mut Mlp),
    opts: &DistillOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<DistillReport> {
    let t0 = std::time::Instant::now();
    let cfg = &teacher.cfg;
    let hd = cfg.hidden_size;
    if cuts.len() != cfg.num_layers {
        return Err(Error::Other(format!(
            "distillation: {} layer cuts for {} layers",
            cuts.len(),
            cfg.num_layers
        )));
    }
    // The frozen half of every layer, and the starting MLPs as they would be written.
    let mut frozen = Vec::with_capacity(cfg.num_layers);
    let mut start = Vec::with_capacity(cfg.num_layers);
    for (l, cut) in cuts.iter().enumerate() {
        let full = teacher.model.layer_f32(l);
        let sliced = slice_mlp(&full, hd, &cut.kept, cut.down.clone());
        let (gate, up) = match &cut.gate_up {
            Some((g, u)) => (g.clone(), u.clone()),
            None => (sliced.gate().clone(), sliced.up().clone()),
        };
        start.push(Mlp {
            gate,
            up,
            down: sliced.down().clone(),
        });
        frozen.push(full.only(|t| !(t.half() == Half::Mlp && t.kind() == Kind::Matrix)));
    }
    let tlen = teacher.seq_len;
    let mut report = DistillReport {
        epochs: opts.epochs,
        lr: opts.lr,
        schedule: opts.schedule.name(),
        batch: opts.batch,
        tokens: teacher.ids.len() * tlen,
        seq_len: tlen,
        train_sequences: teacher.train.len(),
        heldout_sequences: teacher.held.len(),
        train_kl: Vec::new(),
        heldout_kl: vec![teacher.heldout_kl(&frozen, &start)?],
        kept_epoch: 0,
        seconds: 0.0,
    };
    let mut best: Option<Vec<Mlp>> = None;
    let mut best_kl = report.heldout_kl[0];
    let mut mlp = start;
    let mut grads: Vec<Mlp> = mlp.iter().map(Mlp::zeros_like).collect();
    let mut opt: Vec<[Adam; 3]> = mlp
        .iter()
        .map(|m| {
            [
                Adam::new(&m.gate, opts.lr),
                Adam::new(&m.up, opts.lr),
                Adam::new(&m.down, opts.lr),
            ]
        })
        .collect();
    let mut order = teacher.train.clone();
    let mut rng = crate::rng::Rng::new(SEED);
    let steps_per_epoch = order.len().div_ceil(opts.batch) as u64;
    let total = steps_per_epoch * opts.epochs as u64;
    let mut step = 0i32;
    for epoch in 1..=opts.epochs {
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i + 1));
        }
        let mut sum = 0f64;
        let mut steps = 0usize;
        for seqs in order.chunks(opts.batch) {
            progress(step as u64, total);
            for g in &mut grads {
                g.fill(0.0);
            }
            let n = seqs.len() * (tlen - 1);
            let inv_n = 1.0 / n as f32;
            let mut kl = 0f64;
            {
                let net = teacher.net(&frozen, &mlp);
                for &i in seqs {
                    kl += grad::kl_grad(
                        &net,
                        &teacher.ids[i],
                        &teacher.hidden[i],
                        inv_n,
                        &mut grads,
                    )?;
                }
            }
            step += 1;
            let scale = opts.schedule.factor(step as u64, total) as f32;
            for ((w, g), o) in mlp.iter_mut().zip(&grads).zip(&mut opt) {
                o[0].step(&mut w.gate, &g.gate, step, scale);
                o[1].step(&mut w.up, &g.up, step, scale);
                o[2].step(&mut w.down, &g.down, step, scale);
            }
            sum += kl / n as f64;
            steps += 1;
        }
        report.train_kl.push(sum / steps.max(1) as f64);
        let mut rounded = mlp.clone();
        for (l, m) in rounded.iter_mut().enumerate() {
            round(l, m);
        }
        let kl = teacher.heldout_kl(&frozen, &rounded)?;
        report.heldout_kl.push(kl);
        if kl < best_kl {
            best_kl = kl;
            best = Some(rounded);
            report.kept_epoch = epoch;
        }
    }
    progress(total, total);
    if let Some(best) = best {
        if best.iter().any(|m| {
            m.gate
                .iter()
                .chain(&m.up)
                .chain(&m.down)
                .any(|v| !v.is_finite())
        }) {
            return Err(Error::Other(
                "distillation produced non-finite weights; lower --distill-lr".into(),
            ));
        }
        for (cut, m) in cuts.iter_mut().zip(best) {
            cut.down = Some(m.down);
            cut.gate_up = Some((m.gate, m.up));
        }
    }
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_out_of_range_name_the_flag() {
        let ok = DistillOptions::default();
        assert!(ok.validate().is_ok());
        for (o, flag) in [
            (DistillOptions { epochs: 0, ..ok }, "--distill-epochs"),
            (DistillOptions { epochs: 101, ..ok }, "--distill-epochs"),
            (DistillOptions { lr: 0.0, ..ok }, "--distill-lr"),
            (DistillOptions { lr: 0.2, ..ok }, "--distill-lr"),
            (DistillOptions { lr: f64::NAN, ..ok }, "--distill-lr"),
            (DistillOptions { tokens: 10, ..ok }, "--distill-tokens"),
            (DistillOptions { batch: 0, ..ok }, "--distill-batch"),
        ] {
            let e = o.validate().unwrap_err().to_string();
            assert!(e.contains(flag), "{e}");
        }
    }

    /// Cosine: rises linearly to 1 over the first tenth of the steps, then falls strictly to a
    /// last step still above zero; constant is 1 throughout.
    #[test]
    fn cosine_warms_up_then_decays_to_near_zero() {
        for total in [1u64, 2, 7, 56, 112] {
            let f: Vec<f64> = (1..=total)
                .map(|t| Schedule::Cosine.factor(t, total))
                .collect();
            let warm = ((total as f64 * WARMUP).ceil() as usize).max(1);
            assert_eq!(f[warm - 1], 1.0, "{total}: {f:?}");
            assert!(f[..warm].windows(2).all(|w| w[0] < w[1]), "{f:?}");
            assert!(f[warm - 1..].windows(2).all(|w| w[0] > w[1]), "{f:?}");
            assert!(f.iter().all(|&x| x > 0.0 && x <= 1.0), "{f:?}");
            if total >= 56 {
                assert!(f[total as usize - 1] < 0.01, "{f:?}");
                assert!((f[0] - 1.0 / warm as f64).abs() < 1e-12);
            }
            assert!((1..=total).all(|t| Schedule::Constant.factor(t, total) == 1.0));
        }
        assert_eq!(Schedule::parse("cosine").unwrap(), Schedule::Cosine);
        let e = Schedule::parse("linear").unwrap_err().to_string();
        assert!(
            e.contains("--distill-schedule") && e.contains("constant or cosine"),
            "{e}"
        );
    }
}

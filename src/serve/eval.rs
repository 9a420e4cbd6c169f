//! Perplexity, KL to a base model and top-1 agreement with the project's protocol:
//! tokenize the whole text without special tokens, cut consecutive non-overlapping chunks of
//! `seq - 1` tokens, prefix each with BOS, score every predicted position, keep the first
//! `windows` chunks; PPL = exp(mean NLL). With a base model: mean KL(base ‖ model) over the same
//! positions and the rate at which both argmaxes agree.
//!
//! The LM head is applied in row chunks so a 256k-vocabulary logit matrix never exists for a
//! whole window; log-softmax sums are accumulated in f64.
//!
//! The protocol runs over any `LogitModel`: the CPU `Model` (f32, below) and, with the `cuda`
//! feature, `cuda::GpuModel` (bf16 weights and activations, f32 logits; implemented in
//! src/cuda/model.rs). The scoring itself (log-softmax, KL, argmax) always runs on the host in
//! f64, so the two differ only by what the forward pass computes.

use crate::checkpoint::config::ModelConfig;
use crate::cpu::model::Model;
use crate::cpu::model::LOGIT_ROWS;
use crate::engine::{Batch, LogitModel};
use crate::error::{Error, Result};
use rayon::prelude::*;
use std::path::Path;

impl LogitModel for Model {
    fn cfg(&self) -> &ModelConfig {
        &self.cfg
    }
    fn dir(&self) -> &Path {
        &self.dir
    }
    fn forward_hidden(&self, ids: &[u32], batch: Batch) -> Result<Vec<f32>> {
        Model::forward_hidden(self, ids, batch, None)
    }
    fn logits(&self, hidden: &[f32]) -> Result<Vec<f32>> {
        Ok(Model::logits(self, hidden))
    }
}

/// Cuts `ids` into `seq`-token windows, each BOS + `seq-1` text tokens.
pub fn make_windows(
    ids: &[u32],
    seq: usize,
    max_windows: Option<usize>,
    bos: u32,
    text_path: &Path,
) -> Result<Vec<Vec<u32>>> {
    if seq < 2 {
        return Err(Error::Arg {
            flag: "--seq",
            msg: format!("{seq} is too short: a window needs BOS plus at least one scored token"),
        });
    }
    if max_windows == Some(0) {
        return Err(Error::Arg {
            flag: "--windows",
            msg: "must be at least 1".into(),
        });
    }
    let chunk = seq - 1;
    if ids.len() < chunk {
        return Err(Error::Text {
            path: text_path.to_path_buf(),
            msg: format!(
                "too short: {} tokens, but one window of --seq {seq} needs {chunk} text tokens; \
                 give more text or a smaller --seq",
                ids.len()
            ),
        });
    }
    let n = ids.len() / chunk;
    let n = max_windows.map_or(n, |m| m.min(n));
    Ok(ids
        .chunks_exact(chunk)
        .take(n)
        .map(|c| {
            let mut w = Vec::with_capacity(seq);
            w.push(bos);
            w.extend_from_slice(c);
            w
        })
        .collect())
}

#[derive(Debug, Default, Clone, Copy)]
pub struct EvalStats {
    pub nll_sum: f64,
    /// The base model's NLL over the same positions (with a base; for the PPL ratio).
    pub base_nll_sum: f64,
    pub kl_sum: f64,
    pub top1_agree: u64,
    pub tokens: u64,
}

impl EvalStats {
    pub fn ppl(&self) -> f64 {
        (self.nll_sum / self.tokens as f64).exp()
    }
    pub fn mean_nll(&self) -> f64 {
        self.nll_sum / self.tokens as f64
    }
    pub fn base_ppl(&self) -> f64 {
        (self.base_nll_sum / self.tokens as f64).exp()
    }
    pub fn mean_kl(&self) -> f64 {
        self.kl_sum / self.tokens as f64
    }
    pub fn top1_rate(&self) -> f64 {
        self.top1_agree as f64 / self.tokens as f64
    }
    fn add(&mut self, o: &EvalStats) {
        self.nll_sum += o.nll_sum;
        self.base_nll_sum += o.base_nll_sum;
        self.kl_sum += o.kl_sum;
        self.top1_agree += o.top1_agree;
        self.tokens += o.tokens;
    }
}

/// log Σ exp(x) with the max subtracted; the sum in f64.
pub(crate) fn log_sum_exp(x: &[f32]) -> (f32, f64) {
    let m = x.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
    let s: f64 = x.iter().map(|&v| (v - m).exp() as f64).sum();
    (m, m as f64 + s.ln())
}

pub(crate) use crate::cpu::ops::argmax;

/// Scores one window. `base` adds KL(base ‖ model) and top-1 agreement.
pub fn score_window(
    model: &dyn LogitModel,
    base: Option<&dyn LogitModel>,
    window: &[u32],
) -> Result<EvalStats> {
    let t = window.len();
    let batch = Batch {
        n_seq: 1,
        seq_len: t,
    };
    let h = model.forward_hidden(window, batch)?; // [T, H]
    let hb = base.map(|b| b.forward_hidden(window, batch)).transpose()?; // [T, H]
    let hd = model.cfg().hidden_size;
    let v = model.cfg().vocab_size;
    let mut total = EvalStats::default();
    // Row p predicts window[p + 1]; the last row predicts nothing.
    let scored = t - 1;
    for r0 in (0..scored).step_by(LOGIT_ROWS) {
        let r1 = (r0 + LOGIT_ROWS).min(scored);
        let z = model.logits(&h[r0 * hd..r1 * hd])?; // [rows, V]
        let zb = match (base, &hb) {
            (Some(b), Some(hb)) => Some(b.logits(&hb[r0 * hd..r1 * hd])?), // [rows, V]
            _ => None,
        };
        let part = (r0..r1)
            .into_par_iter()
            .map(|p| {
                let row = &z[(p - r0) * v..(p - r0 + 1) * v];
                let (_, lse) = log_sum_exp(row);
                let target = window[p + 1] as usize;
                let mut s = EvalStats {
                    nll_sum: lse - row[target] as f64,
                    tokens: 1,
                    ..Default::default()
                };
                if let Some(zb) = &zb {
                    let rb = &zb[(p - r0) * v..(p - r0 + 1) * v];
                    let (_, lseb) = log_sum_exp(rb);
                    let mut kl = 0f64;
                    for (&a, &b) in rb.iter().zip(row) {
                        let lpb = a as f64 - lseb;
                        let lpm = b as f64 - lse;
                        kl += lpb.exp() * (lpb - lpm);
                    }
                    s.kl_sum = kl;
                    s.base_nll_sum = lseb - rb[target] as f64;
                    s.top1_agree = (argmax(rb) == argmax(row)) as u64;
                }
                s
            })
            .reduce(EvalStats::default, |mut a, b| {
                a.add(&b);
                a
            });
        total.add(&part);
    }
    Ok(total)
}

/// Scores every window, calling `progress` after each.
pub fn evaluate(
    model: &dyn LogitModel,
    base: Option<&dyn LogitModel>,
    windows: &[Vec<u32>],
    mut progress: impl FnMut(usize),
) -> Result<EvalStats> {
    if let Some(b) = base {
        if b.cfg().vocab_size != model.cfg().vocab_size {
            return Err(Error::Arg {
                flag: "--base",
                msg: format!(
                    "{} has vocabulary {} but {} has {}; KL needs the same vocabulary",
                    b.dir().display(),
                    b.cfg().vocab_size,
                    model.dir().display(),
                    model.cfg().vocab_size
                ),
            });
        }
    }
    let mut total = EvalStats::default();
    for (i, w) in windows.iter().enumerate() {
        total.add(&score_window(model, base, w)?);
        progress(i + 1);
    }
    Ok(total)
}

//! The layer loop of a compile. For each layer, on each calibration stream: the statistics pass
//! (`Layers::stats`), the selection of every width that stream serves (`select_widths`), then per
//! width the re-fit, the optional reconstruction and — sequentially — the pruned MLP's run that
//! carries the stream on to the next layer (`Layers::cut`). What comes out is one `LayerCut` per
//! layer and width, with the per-layer reports; distillation and writing follow in `compile_batch`.

use crate::checkpoint::config::ModelConfig;
use crate::checkpoint::registry::{layer_name, LayerTensor};
use crate::checkpoint::safetensors::{Dtype, WeightStore};
use crate::compile::calib::CalibSet;
use crate::compile::prune::{
    energy_scores, kept_after, magnitude_scores, obs_removal_order, repair, slice_mlp, top_k,
    Method,
};
use crate::compile::reconstruct::{LayerRecon, MlpWeights};
use crate::compile::report::{LayerReport, Timings};
use crate::compile::writer::{round_to_dtype, LayerCut};
use crate::compile::{Plan, Progress};
use crate::cpu::linalg::Solver;
use crate::engine::calib::{Backend, Capture, MlpStats, StatsSpec, Stream, TokenWeight};
use crate::error::{Error, Result};
use crate::layer::Layer;
use std::time::Instant;

/// What the layer loop reads: the model, the checked options, the calibration set split into
/// `batches`, the widths, and how statistics are taken and solved.
pub(crate) struct Layers<'a> {
    pub cfg: &'a ModelConfig,
    pub store: &'a WeightStore,
    pub plan: &'a Plan,
    pub calib: Option<&'a CalibSet>,
    /// Calibration batches each backend holds (0 without calibration).
    pub batches: usize,
    /// Every target's width, in target order.
    pub ks: &'a [usize],
    pub token_weight: TokenWeight,
    pub solver: &'a Solver,
}

/// Every width's layers, in target order: what is written, and what the report says of them.
pub(crate) struct Pruned {
    pub cuts: Vec<Vec<LayerCut>>,
    pub layers: Vec<Vec<LayerReport>>,
    pub recon: Vec<Vec<LayerRecon>>,
}

impl Layers<'_> {
    /// Runs every layer on every backend (`backends[s]` is stream s: one per width sequentially,
    /// one shared by every width one-shot), adding to `t`'s calibrate, score, repair and
    /// reconstruct times.
    pub fn run(
        &self,
        backends: &mut [&mut dyn Backend],
        progress: Progress<'_>,
        t: &mut Timings,
    ) -> Result<Pruned> {
        let (cfg, widths) = (self.cfg, self.ks.len());
        let n_streams = backends.len();
        let mut out = Pruned {
            cuts: (0..widths)
                .map(|_| Vec::with_capacity(cfg.num_layers))
                .collect(),
            layers: vec![Vec::new(); widths],
            recon: vec![Vec::new(); widths],
        };
        let stage = |s: usize| {
            if n_streams > 1 {
                format!("layers (width {})", self.ks[s])
            } else {
                "layers".to_string()
            }
        };
        for l in 0..cfg.num_layers {
            let w = crate::cpu::model::load_layer(self.store, cfg, l)?;
            // One statistics set per stream; one-shot shares one across every width.
            for (s, backend) in backends.iter_mut().enumerate() {
                progress(&stage(s), l as u64, cfg.num_layers as u64);
                let t0 = Instant::now();
                let stats = match self.calib {
                    Some(_) => self.stats(&mut **backend, l, &w)?,
                    None => MlpStats::new(w.width, false, false),
                };
                check_stats(l, &stats)?;
                t.calibrate += t0.elapsed().as_secs_f64();
                // The widths this statistics set serves.
                let mine: Vec<usize> = if n_streams > 1 {
                    vec![s]
                } else {
                    (0..widths).collect()
                };
                let my_ks: Vec<usize> = mine.iter().map(|&i| self.ks[i]).collect();
                let t0 = Instant::now();
                let damp = self.plan.damp;
                let method = self.plan.method;
                let kept = select_widths(
                    method,
                    &w,
                    cfg.hidden_size,
                    &stats,
                    &my_ks,
                    damp,
                    self.solver,
                )?;
                t.score += t0.elapsed().as_secs_f64();
                for (&i, kept) in mine.iter().zip(kept) {
                    let (cut, recon) = self.cut(&mut **backend, l, &w, &stats, kept, t)?;
                    out.layers[i].push(layer_report(l, &cut.kept, &stats));
                    out.recon[i].extend(recon);
                    out.cuts[i].push(cut);
                }
            }
        }
        for s in 0..n_streams {
            progress(&stage(s), cfg.num_layers as u64, cfg.num_layers as u64);
        }
        Ok(out)
    }

    /// Layer `l`'s statistics on one backend's stream (sequential: attention, then the MLP,
    /// whose input is kept so only the MLP runs again once the neurons are chosen).
    fn stats(&self, backend: &mut dyn Backend, l: usize, w: &Layer<Vec<f32>>) -> Result<MlpStats> {
        let (cfg, plan) = (self.cfg, self.plan);
        let cross = plan.cross();
        let we = backend.load_layer(cfg, self.store, l, w)?;
        backend.begin_stats(StatsSpec {
            width: w.width,
            gram: plan.needs_gram(),
            cross: cross && plan.repair,
            token_weight: self.token_weight,
            // The solver runs where the calibration ran (`Backend::solver`).
            gram_on_device: true,
            keep_acts: plan.keeps_acts(),
        })?;
        for b in 0..self.batches {
            if plan.sequential {
                if cross {
                    backend.run_layer(cfg, l, &we, Stream::Reference, b, Capture::Reference)?;
                }
                backend.run_attention(cfg, l, &we, Stream::Pruned, b)?;
                backend.run_mlp(cfg, l, &we, Stream::Pruned, b, Capture::Stats, false)?;
            } else {
                backend.run_layer(cfg, l, &we, Stream::Pruned, b, Capture::Stats)?;
            }
        }
        backend.take_stats()
    }

    /// One width's layer `l` from its kept neurons: the re-fit down_proj, the reconstruction's
    /// gate / up / down where asked for (with its report), and — sequentially — the pruned MLP
    /// run over every batch, so the stream holds this layer's pruned output.
    fn cut(
        &self,
        backend: &mut dyn Backend,
        l: usize,
        w: &Layer<Vec<f32>>,
        stats: &MlpStats,
        kept: Vec<usize>,
        t: &mut Timings,
    ) -> Result<(LayerCut, Option<LayerRecon>)> {
        let (cfg, plan) = (self.cfg, self.plan);
        let hd = cfg.hidden_size;
        let dtype = |t: LayerTensor| self.dtype(l, t);
        let t0 = Instant::now();
        let mut down = if plan.repair {
            let mut d = repair(w, hd, stats, &kept, plan.damp, self.solver)?;
            if d.iter().any(|x| !x.is_finite()) {
                return Err(Error::Other(format!(
                    "layer {l}: the re-fit down_proj holds non-finite values (NaN or Inf); raise \
                     --damp or pass --no-repair"
                )));
            }
            // Continue with exactly what will be written.
            round_to_dtype(&mut d, dtype(LayerTensor::Down)?);
            Some(d)
        } else {
            None
        };
        t.repair += t0.elapsed().as_secs_f64();
        let mut gate_up = None;
        let mut recon = None;
        if let (Some(ro), Some(c)) = (&plan.reconstruct, self.calib) {
            let t0 = Instant::now();
            // [n, H]; the rows' sequences as `mlp_inputs` picked them below.
            let h = mlp_inputs(&*backend, hd, self.batches, c.tokens(), ro.tokens)?;
            let seq: Vec<usize> = crate::compile::reconstruct::spread(c.tokens(), ro.tokens)
                .iter()
                .map(|&r| r / c.seq_len)
                .collect();
            let cut = slice_mlp(w, hd, &kept, down.take());
            let start = MlpWeights {
                gate: cut.gate().clone(),
                up: cut.up().clone(),
                down: cut.down().clone(),
            };
            let dt = dtype(LayerTensor::Gate)?;
            let round = |x: &mut [f32]| round_to_dtype(x, dt);
            let pb = crate::compile::reconstruct::Problem {
                cfg,
                full: w,
                h: &h,
                seq: &seq,
                round: &round,
            };
            let (best, rep) = crate::compile::reconstruct::reconstruct(&pb, l, start, ro)?;
            down = Some(best.down);
            gate_up = Some((best.gate, best.up));
            recon = Some(rep);
            t.reconstruct += t0.elapsed().as_secs_f64();
        }
        if plan.sequential && self.calib.is_some() {
            let t0 = Instant::now();
            let mut cut = slice_mlp(w, hd, &kept, down.clone());
            if let Some((g, u)) = &gate_up {
                cut.set_mat(LayerTensor::Gate, g.clone());
                cut.set_mat(LayerTensor::Up, u.clone());
            }
            let wp = backend.load_pruned(cfg, w, &cut)?;
            for b in 0..self.batches {
                if gate_up.is_none() {
                    backend.run_pruned_mlp(cfg, l, &wp, &kept, b)?;
                } else {
                    let (s, c) = (Stream::Pruned, Capture::None);
                    backend.run_mlp(cfg, l, &wp, s, b, c, true)?;
                }
            }
            t.calibrate += t0.elapsed().as_secs_f64();
        }
        let cut = LayerCut {
            kept,
            down,
            gate_up,
        };
        Ok((cut, recon))
    }

    /// The checkpoint dtype of layer `l`'s tensor `t` (what the re-fit weights are rounded to).
    pub fn dtype(&self, l: usize, t: LayerTensor) -> Result<Dtype> {
        let name = layer_name(self.cfg, l, t);
        self.store.get(&name).map(|t| t.info.dtype)
    }
}

/// NaN / Inf activations (from a corrupt weight or an overflow) would otherwise surface as a
/// misleading "not positive definite" or as NaN written into OUT.
fn check_stats(layer: usize, st: &MlpStats) -> Result<()> {
    let bad = |v: &[f64]| v.iter().any(|x| !x.is_finite());
    if bad(&st.sum)
        || bad(&st.sumsq)
        || st.gram_host().is_some_and(bad)
        || st.cross.as_deref().is_some_and(bad)
    {
        return Err(Error::Other(format!(
            "layer {layer}: the calibration statistics of the MLP are not finite (NaN or Inf): \
             the activations overflowed or an input weight is corrupt"
        )));
    }
    Ok(())
}

fn layer_report(l: usize, kept: &[usize], stats: &MlpStats) -> LayerReport {
    let mean_sq = stats.mean_sq();
    let kept_energy: f64 = kept.iter().map(|&j| mean_sq[j]).sum();
    let total_energy: f64 = mean_sq.iter().sum();
    LayerReport {
        layer: l,
        kept: kept.to_vec(),
        kept_activation_energy: (stats.count > 0 && total_energy > 0.0)
            .then(|| kept_energy / total_energy),
    }
}

/// The kept neurons of one layer at every width in `ks`, each exactly what a single-width run
/// selects: scores are computed once; OBS runs once, to the narrowest width, and each wider
/// width keeps what was not yet removed at its step count (`obs_removal_order`).
fn select_widths(
    method: Method,
    w: &Layer<Vec<f32>>,
    hd: usize,
    stats: &MlpStats,
    ks: &[usize],
    damp: f64,
    solver: &Solver,
) -> Result<Vec<Vec<usize>>> {
    Ok(match method {
        Method::Magnitude => {
            let s = magnitude_scores(w, hd);
            ks.iter().map(|&k| top_k(&s, k)).collect()
        }
        Method::Energy => {
            let s = energy_scores(w, hd, stats);
            ks.iter().map(|&k| top_k(&s, k)).collect()
        }
        Method::Obs => {
            let kmin = ks.iter().copied().min().unwrap_or(w.width);
            let order = obs_removal_order(w, hd, stats, kmin, damp, solver)?;
            ks.iter()
                .map(|&k| kept_after(w.width, &order[..w.width - k]))
                .collect()
        }
    })
}

/// At most `max` rows of the pruned stream's hidden states ([rows, H] each batch, `total` rows
/// in all), spread evenly over every batch: the MLP inputs reconstruction trains on (called
/// between the statistics pass and the pruned MLP's run, when the stream holds them).
fn mlp_inputs(
    backend: &dyn Backend,
    hd: usize,
    nb: usize,
    total: usize,
    max: usize,
) -> Result<Vec<f32>> {
    let pick = crate::compile::reconstruct::spread(total, max);
    let mut out = Vec::with_capacity(pick.len() * hd); // [n, H]
    let (mut next, mut base) = (0usize, 0usize);
    for b in 0..nb {
        let h = backend.hidden(Stream::Pruned, b)?; // [rows, H]
        let rows = h.len() / hd;
        while next < pick.len() && pick[next] < base + rows {
            let r = pick[next] - base;
            out.extend_from_slice(&h[r * hd..(r + 1) * hd]);
            next += 1;
        }
        base += rows;
    }
    if next != pick.len() || base != total {
        return Err(Error::Other(format!(
            "reconstruction: the calibration stream holds {base} rows, {total} expected"
        )));
    }
    Ok(out)
}

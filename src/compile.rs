//! `whittle compile`: calibrate layer by layer, score MLP neurons, keep the best `K` per layer,
//! re-fit down_proj, write a dense checkpoint.
//!
//! Layer streaming: the hidden states of every calibration token live in the backend between
//! layers ([n_seq·T, H]: f32 in RAM on the CPU, bf16 on the GPU; twice with `--refit-target
//! original`); only one layer's weights are widened at a time, so peak memory is one layer + the
//! activations (+ the [I, I] statistics) whatever the depth.

use crate::calib::{Backend, CalibSet, Capture, Layout, MlpStats, StatsSpec, Stream, TokenWeight};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::model::LayerWeights;
use crate::prune::{
    energy_scores, magnitude_scores, obs_select, repair, slice_layer, top_k, Method,
};
use crate::registry::{layer_name, registry, LayerTensor};
use crate::safetensors::WeightStore;
use crate::writer::{round_to_dtype, write_model, LayerCut};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Instant;

/// Named widths, as fractions of 72 (on gemma-2-2b's 9216: 7936, 7296, 6528, 4864).
pub const TIERS: &[(&str, usize)] = &[
    ("default", 62),
    ("production", 57),
    ("throughput", 51),
    ("experimental", 38),
];

#[derive(Debug, Clone, PartialEq)]
pub enum Width {
    Tier(String),
    KeepRatio(f64),
    Size(usize),
}

#[derive(Debug, Clone)]
pub struct CompileOptions {
    pub method: Method,
    pub sequential: bool,
    /// With `sequential`: re-fit each pruned MLP against the original model's layer output
    /// (`true`: Σ a_orig·a_prunedᵀ) or against the full-width layer on the pruned stream
    /// (`false`, the SparseGPT-style target).
    pub target_original: bool,
    pub repair: bool,
    pub damp: f64,
    /// How calibration tokens are weighed in the statistics.
    pub token_weight: TokenWeight,
    pub width: Width,
    pub multiple_of: usize,
    pub force: bool,
    /// Calibration sequences per backend call.
    pub batch_seqs: usize,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            method: Method::Obs,
            sequential: true,
            target_original: false,
            repair: true,
            damp: 0.001,
            token_weight: TokenWeight::Out,
            width: Width::Tier("throughput".into()),
            multiple_of: 128,
            force: false,
            batch_seqs: 8,
        }
    }
}

/// The chosen width and the rounding multiple actually used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolvedWidth {
    pub width: usize,
    pub multiple: usize,
}

/// Resolves the requested width for an MLP of `n` neurons. The multiple is clamped for small
/// models to the largest power of two ≤ n/16 (so a 96-wide test model rounds to 4, not 128).
pub fn resolve_width(n: usize, w: &Width, multiple_of: usize) -> Result<ResolvedWidth> {
    if multiple_of == 0 {
        return Err(Error::Arg {
            flag: "--multiple-of",
            msg: "must be at least 1".into(),
        });
    }
    let cap = (n / 16).max(1);
    let pow2 = 1usize << (usize::BITS - 1 - cap.leading_zeros());
    let m = multiple_of.min(pow2);
    let target = match w {
        Width::Tier(t) => {
            let (_, num) = TIERS
                .iter()
                .find(|(name, _)| name == t)
                .ok_or_else(|| Error::Arg {
                    flag: "--tier",
                    msg: format!(
                        "unknown tier \"{t}\"; choose {}",
                        TIERS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                    ),
                })?;
            n as f64 * *num as f64 / 72.0
        }
        Width::KeepRatio(r) => {
            if !(*r > 0.0 && *r <= 1.0) {
                return Err(Error::Arg {
                    flag: "--keep-ratio",
                    msg: format!("{r} is outside (0, 1]"),
                });
            }
            n as f64 * r
        }
        Width::Size(s) => {
            if *s == 0 || *s > n {
                return Err(Error::Arg {
                    flag: "--intermediate-size",
                    msg: format!("{s} is outside 1..={n} (the model's intermediate_size)"),
                });
            }
            *s as f64
        }
    };
    let width = ((target / m as f64).round() as usize * m).min(n);
    if width == 0 {
        return Err(Error::Arg {
            flag: match w {
                Width::Tier(_) => "--tier",
                Width::KeepRatio(_) => "--keep-ratio",
                Width::Size(_) => "--intermediate-size",
            },
            msg: format!(
                "the width rounds to 0 at a multiple of {m} (MLP width {n}); keep more neurons"
            ),
        });
    }
    Ok(ResolvedWidth { width, multiple: m })
}

/// `--damp` must lie in [1e-9, 1]. The ridge it sets is damp × the mean activation energy of
/// the kept neurons: at 1 it already equals that energy, so the re-fit is shrunk about halfway
/// to zero for an average neuron (measured best: 1e-3, see README); far above, the output is
/// silently much worse (1e300: KL 0.49 vs 0.18 on the tiny model). Below 1e-9 the ridge is
/// under f64 rounding of a Gram matrix's diagonal and no longer regularises anything.
pub fn check_damp(damp: f64) -> Result<()> {
    if !(1e-9..=1.0).contains(&damp) {
        return Err(Error::Arg {
            flag: "--damp",
            msg: format!("{damp:?} is outside [1e-9, 1] (a fraction of the mean activation energy; 0.001 is the default)"),
        });
    }
    Ok(())
}

/// NaN / Inf activations (from a corrupt weight or an overflow) would otherwise surface as a
/// misleading "not positive definite" or as NaN written into OUT.
fn check_stats(layer: usize, st: &MlpStats) -> Result<()> {
    let bad = |v: &[f64]| v.iter().any(|x| !x.is_finite());
    if bad(&st.sum)
        || bad(&st.sumsq)
        || st.gram.as_deref().is_some_and(bad)
        || st.cross.as_deref().is_some_and(bad)
    {
        return Err(Error::Other(format!(
            "layer {layer}: the calibration statistics of the MLP are not finite (NaN or Inf): \
             the activations overflowed or an input weight is corrupt"
        )));
    }
    Ok(())
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Timings {
    pub calibrate: f64,
    pub score: f64,
    pub repair: f64,
    pub write: f64,
}

pub struct Outcome {
    pub report: Value,
    pub width: ResolvedWidth,
}

/// Progress callback: (stage, done, total).
pub type Progress<'a> = &'a mut dyn FnMut(&str, u64, u64);

fn params(cfg: &ModelConfig, untied: bool) -> u64 {
    registry(cfg, untied).iter().map(|s| s.numel() as u64).sum()
}

#[allow(clippy::too_many_arguments)]
pub fn compile(
    input: &Path,
    output: &Path,
    calib: Option<&CalibSet>,
    opts: &CompileOptions,
    backend: &mut dyn Backend,
    progress: Progress<'_>,
) -> Result<Outcome> {
    let cfg = ModelConfig::from_dir(input)?;
    let store = WeightStore::open(input)?;
    store.check_layers(cfg.num_layers)?;
    // Fail on the destination before spending minutes calibrating.
    let dest = crate::writer::check_destination(input, output, opts.force)?;
    let rw = resolve_width(cfg.intermediate_size, &opts.width, opts.multiple_of)?;
    check_damp(opts.damp)?;
    let k = rw.width;
    let hd = cfg.hidden_size;
    let need_calib = opts.method != Method::Magnitude || opts.repair;
    let need_gram = opts.method.needs_gram() || opts.repair;
    let calib = match (need_calib, calib) {
        (true, None) => {
            return Err(Error::Arg {
                flag: "--calib",
                msg: format!(
                    "method {} with repair needs calibration text",
                    opts.method.name()
                ),
            })
        }
        (true, Some(c)) => Some(c),
        (false, _) => None,
    };
    if let Some(c) = calib {
        if c.n_seq == 0 {
            return Err(Error::Arg {
                flag: "--calib",
                msg: "no calibration sequences".into(),
            });
        }
    }
    let untied = crate::model::untied_head(&cfg, &store)?;
    let new_cfg = cfg.with_intermediate_size(k);
    let (other_params, other_bytes) = crate::inspect::passthrough(&store, &cfg, untied);
    let (p0, p1) = (
        params(&cfg, untied) + other_params,
        params(&new_cfg, untied) + other_params,
    );
    let bytes_before: u64 = other_bytes
        + registry(&cfg, untied)
            .iter()
            .map(|s| {
                store
                    .get(&s.name)
                    .map(|t| (t.info.end - t.info.start) as u64)
            })
            .sum::<Result<u64>>()?;
    let (p_after, mlp_bytes_after) =
        crate::inspect::sizes_at_width(&store, &cfg, p0, bytes_before, k)?;
    debug_assert_eq!(p_after, p1);
    crate::writer::check_room(&dest, mlp_bytes_after)?;

    let mut t = Timings::default();
    let down_dtype = |l: usize| {
        store
            .get(&layer_name(l, LayerTensor::Down))
            .map(|t| t.info.dtype)
    };

    // Hidden states of all calibration tokens, held by the backend: the pruned stream, and for
    // `--refit-target original` the original model's stream beside it.
    let t0 = Instant::now();
    let cross = opts.sequential && opts.target_original;
    let nb = match calib {
        Some(c) => {
            let layout = Layout::new(c.n_seq, c.seq_len, opts.batch_seqs);
            let nb = layout.sizes.len();
            backend.start(&cfg, &store, &c.ids, layout, cross)?;
            nb
        }
        None => 0,
    };
    t.calibrate += t0.elapsed().as_secs_f64();

    let solver = backend.solver();
    let mut cuts = Vec::with_capacity(cfg.num_layers);
    let mut layer_reports = Vec::new();
    for l in 0..cfg.num_layers {
        progress("layers", l as u64, cfg.num_layers as u64);
        let w = LayerWeights::load(&store, &cfg, l)?;
        let n = w.width;
        let t0 = Instant::now();
        let stats = match calib {
            Some(_) => {
                backend.begin_stats(StatsSpec {
                    width: n,
                    gram: need_gram,
                    cross: cross && opts.repair,
                    token_weight: opts.token_weight,
                    // The solver runs where the calibration ran (`Backend::solver`).
                    gram_on_device: true,
                })?;
                for b in 0..nb {
                    if opts.sequential {
                        if cross {
                            backend.run_layer(
                                &cfg,
                                l,
                                &w,
                                Stream::Reference,
                                b,
                                Capture::Reference,
                            )?;
                        }
                        // The pruned stream's post-attention residual is kept: once this
                        // layer's neurons are chosen, only its MLP has to run again.
                        backend.run_attention(&cfg, l, &w, Stream::Pruned, b)?;
                        backend.run_mlp(&cfg, l, &w, Stream::Pruned, b, Capture::Stats, false)?;
                    } else {
                        backend.run_layer(&cfg, l, &w, Stream::Pruned, b, Capture::Stats)?;
                    }
                }
                backend.take_stats()?
            }
            None => MlpStats::new(n, false, false),
        };
        check_stats(l, &stats)?;
        t.calibrate += t0.elapsed().as_secs_f64();

        let t0 = Instant::now();
        let kept = match opts.method {
            Method::Magnitude => top_k(&magnitude_scores(&w, hd), k),
            Method::Energy => top_k(&energy_scores(&w, hd, &stats), k),
            Method::Obs => obs_select(&w, hd, &stats, k, opts.damp, &solver)?,
        };
        t.score += t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        let down = if opts.repair {
            let mut d = repair(&w, hd, &stats, &kept, opts.damp, &solver)?;
            if d.iter().any(|x| !x.is_finite()) {
                return Err(Error::Other(format!(
                    "layer {l}: the re-fit down_proj holds non-finite values (NaN or Inf); raise \
                     --damp or pass --no-repair"
                )));
            }
            // Continue with exactly what will be written.
            round_to_dtype(&mut d, down_dtype(l)?);
            Some(d)
        } else {
            None
        };
        t.repair += t0.elapsed().as_secs_f64();

        if opts.sequential && calib.is_some() {
            let t0 = Instant::now();
            let wp = slice_layer(&w, hd, &kept, down.clone());
            for b in 0..nb {
                backend.run_mlp(&cfg, l, &wp, Stream::Pruned, b, Capture::None, true)?;
            }
            t.calibrate += t0.elapsed().as_secs_f64();
        }
        let mean_sq = stats.mean_sq();
        let kept_energy: f64 = kept.iter().map(|&j| mean_sq[j]).sum();
        let total_energy: f64 = mean_sq.iter().sum();
        layer_reports.push(json!({
            "layer": l,
            "kept": kept,
            "kept_activation_energy": if stats.count > 0 && total_energy > 0.0 { json!(kept_energy / total_energy) } else { Value::Null },
        }));
        cuts.push(LayerCut { kept, down });
    }
    progress("layers", cfg.num_layers as u64, cfg.num_layers as u64);
    backend.finish();

    let gib = crate::inspect::GIB;
    let mut report = json!({
        "whittle_version": env!("CARGO_PKG_VERSION"),
        "input": input.display().to_string(),
        "model_type": cfg.model_type(),
        "method": opts.method.name(),
        "sequential": opts.sequential,
        "sequential_target": if !opts.sequential { Value::Null } else if opts.target_original { json!("original") } else { json!("layer") },
        "repair": opts.repair,
        "damp": opts.damp,
        "token_weight": opts.token_weight.name(),
        "width_request": match &opts.width {
            Width::Tier(t) => json!({"tier": t}),
            Width::KeepRatio(r) => json!({"keep_ratio": r}),
            Width::Size(s) => json!({"intermediate_size": s}),
        },
        "multiple_of": rw.multiple,
        "intermediate_size_before": cfg.intermediate_size,
        "intermediate_size_after": k,
        "params_before": p0,
        "params_after": p1,
        "weight_bytes_before": bytes_before,
        "weight_bytes_after": mlp_bytes_after,
        "weight_gib_before": bytes_before as f64 / gib,
        "weight_gib_after": mlp_bytes_after as f64 / gib,
        "passthrough_params": other_params,
        "passthrough_bytes": other_bytes,
        "calibration": calib.map(|c| json!({
            "sequences": c.n_seq,
            "seq_len": c.seq_len,
            "tokens": c.tokens(),
            "sources": c.sources.iter().map(|s| json!({
                "path": s.path.display().to_string(),
                "weight": s.weight,
                "sequences": s.sequences,
                "tokens": s.tokens,
            })).collect::<Vec<_>>(),
        })),
        "backend": backend.name(),
        "gpu_kernels": backend.kernels(&cfg),
        "solver": solver.name(),
        "layers": layer_reports,
    });
    let t0 = Instant::now();
    let total = bytes_before;
    let finish = |report: &mut Value, t: &mut Timings| {
        t.write = t0.elapsed().as_secs_f64();
        report["timings_s"] = json!({
            "calibrate": t.calibrate, "score": t.score, "repair": t.repair, "write": t.write,
        });
        let mib = |b: f64| b / (1u64 << 20) as f64;
        report["peak_rss_mib"] = json!(crate::mem::peak_rss_bytes().map(|b| mib(b as f64)));
        report["peak_heap_mib"] = json!(crate::mem::peak_heap_bytes().map(|b| mib(b as f64)));
    };
    let ws = write_model(
        &dest,
        &store,
        &cfg,
        &cuts,
        k,
        || {
            let mut r = report.clone();
            let mut tt = t;
            finish(&mut r, &mut tt);
            r
        },
        |b| progress("write", b.min(total), total),
    )?;
    debug_assert_eq!(ws.weight_bytes, mlp_bytes_after);
    finish(&mut report, &mut t);
    Ok(Outcome { report, width: rw })
}

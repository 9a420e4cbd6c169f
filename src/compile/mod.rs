//! `whittle compile`: calibrate layer by layer, score MLP neurons, keep the best `K` per layer,
//! re-fit down_proj, write a dense checkpoint.
//!
//! Layer streaming: the hidden states of every calibration token live in the backend between
//! layers ([n_seq·T, H]: f32 in RAM on the CPU, bf16 on the GPU; twice with `--refit-target
//! original`); only one layer's weights are widened at a time, so peak memory is one layer + the
//! activations (+ the [I, I] statistics) whatever the depth.

pub mod calib;
pub mod ceiling;
pub mod distill;
pub mod inspect;
mod layers;
pub mod prune;
pub mod reconstruct;
pub mod report;
pub mod selfgen;
pub mod width;
pub mod writer;

use crate::checkpoint::config::ModelConfig;
use crate::checkpoint::registry::{registry, LayerTensor};
use crate::checkpoint::safetensors::WeightStore;
use crate::compile::calib::CalibSet;
use crate::compile::distill::{DistillOptions, DistillReport};
use crate::compile::layers::{Layers, Pruned};
use crate::compile::prune::Method;
use crate::compile::reconstruct::ReconOptions;
use crate::compile::report::{
    BatchReport, CalibrationReport, CompileReport, Timings, WidthRequest,
};
use crate::compile::writer::{round_to_dtype, write_model, LayerCut};
use crate::engine::calib::{Backend, Layout, TokenWeight};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub use crate::compile::width::{resolve_width, ResolvedWidth, Width, TIERS};

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
    /// How calibration tokens are weighed in the statistics (None: the family's default,
    /// `TokenWeight::default_for`).
    pub token_weight: Option<TokenWeight>,
    pub width: Width,
    pub multiple_of: usize,
    pub force: bool,
    /// Calibration sequences per backend call.
    pub batch_seqs: usize,
    /// `--max-kl` / `--max-ppl-ratio`: search the narrowest width within this (`ceiling::search`).
    pub ceiling: Option<crate::compile::width::Ceiling>,
    /// `--reconstruct`: refine each pruned MLP by Adam after the re-fit (`reconstruct`).
    pub reconstruct: Option<ReconOptions>,
    /// `--distill`: train every layer's MLP against the original's logits after the layer loop
    /// (`distill`).
    pub distill: Option<DistillOptions>,
    /// Sequential: keep each layer's MLP activations from its statistics pass until the pruned
    /// stream advances, so gate and up do not run again for the kept neurons, at this many
    /// bytes a value (`Backend::kept_activation_bytes`: 4 f32, 2 bf16; 0: run them again).
    /// tokens × I × this more at the peak (`run_memory_bytes`); the output is the same either way.
    pub kept_act_bytes: usize,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            method: Method::Obs,
            sequential: true,
            target_original: false,
            repair: true,
            damp: 0.001,
            token_weight: None,
            width: Width::Tier("throughput".into()),
            multiple_of: crate::compile::width::DEFAULT_MULTIPLE_OF,
            reconstruct: None,
            distill: None,
            force: false,
            batch_seqs: 8,
            ceiling: None,
            kept_act_bytes: 4,
        }
    }
}

impl CompileOptions {
    /// Checks every option once, before any model or text is read: the ridge (`check_damp`),
    /// the rounding multiple, the quality ceiling. The pipeline (`compile_batch`,
    /// `ceiling::search`) takes only the checked `Plan`.
    pub fn validate(&self) -> Result<Plan> {
        check_damp(self.damp)?;
        crate::compile::width::check_multiple_of(self.multiple_of)?;
        if let Some(c) = self.ceiling {
            c.validate()?;
        }
        if let Some(r) = &self.reconstruct {
            r.validate()?;
            if !self.sequential {
                return Err(Error::Arg {
                    flag: "--reconstruct",
                    msg: "reconstruction refines each layer on the pruned model's own stream; \
                          drop --one-shot"
                        .into(),
                });
            }
        }
        if let Some(d) = &self.distill {
            d.validate()?;
            if self.ceiling.is_some() {
                return Err(Error::Arg {
                    flag: "--distill",
                    msg: "not with --max-kl / --max-ppl-ratio (every probe of the search would \
                          distill); find the width first, then compile it with --distill"
                        .into(),
                });
            }
        }
        Ok(Plan { opts: self.clone() })
    }
}

/// Compile options that passed `CompileOptions::validate` (read them through `Deref`).
#[derive(Debug, Clone)]
pub struct Plan {
    opts: CompileOptions,
}

impl std::ops::Deref for Plan {
    type Target = CompileOptions;
    fn deref(&self) -> &CompileOptions {
        &self.opts
    }
}

impl Plan {
    /// Whether the run reads calibration text: every method but magnitude, and any re-fit.
    pub fn needs_calib(&self) -> bool {
        self.method != Method::Magnitude
            || self.repair
            || self.reconstruct.is_some()
            || self.distill.is_some()
    }

    /// Whether the statistics hold the [I, I] Gram matrix (OBS, or the re-fit).
    pub fn needs_gram(&self) -> bool {
        self.method.needs_gram() || self.repair
    }

    /// `--refit-target original`: the original model's stream runs beside the pruned one.
    pub fn cross(&self) -> bool {
        self.sequential && self.target_original
    }

    /// Keep layer activations at `bytes` a value where the backend can
    /// (`Backend::kept_activation_bytes`) and memory allows, 0 to run gate and up again; nothing
    /// else about the run changes.
    pub fn set_kept_act_bytes(&mut self, bytes: usize) {
        self.opts.kept_act_bytes = bytes;
    }

    /// Whether a layer's activations are kept for the pruned stream's advance: sequential, and
    /// not re-run anyway because reconstruction changes gate and up.
    pub fn keeps_acts(&self) -> bool {
        self.kept_act_bytes > 0 && self.sequential && self.reconstruct.is_none()
    }
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

pub struct Outcome {
    pub report: CompileReport,
    pub width: ResolvedWidth,
}

/// Progress callback: (stage, done, total).
pub type Progress<'a> = &'a mut dyn FnMut(&str, u64, u64);

fn params(cfg: &ModelConfig, untied: bool) -> u64 {
    registry(cfg, untied).iter().map(|s| s.numel() as u64).sum()
}

/// One output of a compile run: the width asked for and the folder it is written to.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub width: Width,
    pub output: PathBuf,
}

/// Compiles `input` to the one width `opts.width`, written to `output`.
pub fn compile(
    input: &Path,
    output: &Path,
    calib: Option<&CalibSet>,
    plan: &Plan,
    backend: &mut dyn Backend,
    progress: Progress<'_>,
) -> Result<Outcome> {
    let targets = [Target {
        width: plan.width.clone(),
        output: output.to_path_buf(),
    }];
    let mut outs = compile_batch(input, &targets, calib, plan, &mut [backend], progress)?;
    Ok(outs.remove(0))
}

/// How many calibration streams (and so backends) `compile_batch` needs for `targets`:
/// `--sequential` keeps one pruned stream per width (each width's layers < l differ), one-shot
/// calibrates the original model once for all of them.
pub fn streams_needed(plan: &Plan, targets: usize, has_calib: bool) -> usize {
    if plan.sequential && has_calib {
        targets
    } else {
        1
    }
}

/// Resolves every target's width for an MLP of `n` neurons; two targets that land on the same
/// width are refused (they would be the same checkpoint twice).
pub fn resolve_targets(
    n: usize,
    targets: &[Target],
    multiple_of: usize,
) -> Result<Vec<ResolvedWidth>> {
    let mut out: Vec<ResolvedWidth> = Vec::with_capacity(targets.len());
    for (i, t) in targets.iter().enumerate() {
        let rw = resolve_width(n, &t.width, multiple_of).map_err(|e| match e {
            Error::Arg { flag, msg } if targets.len() > 1 => Error::Arg {
                flag: match flag {
                    "--intermediate-size" => "--widths",
                    "--keep-ratio" => "--keep-ratios",
                    f => f,
                },
                msg,
            },
            e => e,
        })?;
        if let Some(j) = out.iter().position(|o| o.width == rw.width) {
            return Err(Error::Arg {
                flag: "--widths",
                msg: format!(
                    "{} and {} both resolve to width {} (multiple of {}); ask for each width once",
                    describe_width(&targets[j].width),
                    describe_width(&targets[i].width),
                    rw.width,
                    rw.multiple
                ),
            });
        }
        out.push(rw);
    }
    Ok(out)
}

/// A width request as the user wrote it (messages).
pub fn describe_width(w: &Width) -> String {
    match w {
        Width::Tier(t) => format!("tier {t}"),
        Width::KeepRatio(r) => format!("keep ratio {r}"),
        Width::Size(s) => format!("width {s}"),
    }
}

/// What a compile run holds at its peak, in bytes: the calibration hidden states of every
/// stream (`stream_elem` bytes a value: 4 on the CPU, 2 on the GPU; the original model's stream
/// beside each with `--refit-target original`), one layer's f64 statistics ([I, I] Gram, and the
/// cross matrix with it), one layer's weights widened to f32, what every layer's cut holds until
/// the writer runs (the re-fit down_proj [H, K] of each of the `widths`, and with
/// `--reconstruct` its gate and up too), reconstruction's token matrices, what `--distill`
/// holds, and one layer's MLP activations when they are kept (`Plan::keeps_acts`, at the
/// backend's `kept_activation_bytes`, which the caller sets). The memory-mapped input
/// is not counted (the kernel pages it in and out).
pub fn run_memory_bytes(
    cfg: &ModelConfig,
    calib_tokens: usize,
    plan: &Plan,
    streams: usize,
    stream_elem: usize,
    widths: &[usize],
) -> u64 {
    let (h, i) = (cfg.hidden_size as u64, cfg.intermediate_size as u64);
    let per_cut = u64::from(plan.repair) + if plan.reconstruct.is_some() { 2 } else { 0 };
    let cuts: u64 = widths
        .iter()
        .map(|&k| cfg.num_layers as u64 * per_cut * 4 * h * k as u64)
        .sum();
    // Inputs, targets and one forward's activations of the reconstruction tokens.
    let recon = plan
        .reconstruct
        .map_or(0, |r| 3 * 4 * h * r.tokens.min(calib_tokens) as u64);
    let cross = plan.cross();
    let per_stream = calib_tokens as u64 * h * stream_elem as u64 * if cross { 2 } else { 1 };
    // One stream's layer activations at a time (freed as that stream advances).
    let acts = if plan.keeps_acts() {
        plan.kept_act_bytes as u64 * calib_tokens as u64 * i
    } else {
        0
    };
    let stats = if plan.needs_gram() {
        8 * i * i * if cross && plan.repair { 2 } else { 1 }
    } else {
        8 * i
    };
    let attn = (cfg.num_heads + 2 * cfg.num_kv_heads) as u64 * cfg.head_dim as u64 * h
        + cfg.num_heads as u64 * cfg.head_dim as u64 * h;
    let layer = 4 * (3 * i * h + attn);
    // `--distill`: the original model (2 bytes a parameter as held from bf16), its head widened
    // to f32, every layer's attention in f32, six copies of the widest width's MLPs (start,
    // master, two Adam moments, gradient, best), the teacher's hidden states and two chunks of
    // logits.
    let distill = plan.distill.map_or(0, |d| {
        let (l, v) = (cfg.num_layers as u64, cfg.vocab_size as u64);
        let kmax = widths.iter().copied().max().unwrap_or(0) as u64;
        2 * params(cfg, false)
            + 4 * v * h
            + l * 4 * attn
            + l * 6 * 4 * 3 * h * kmax
            + 4 * h * d.tokens.min(calib_tokens) as u64
            + 2 * 4 * crate::cpu::model::LOGIT_ROWS as u64 * v
    });
    streams as u64 * per_stream + acts + stats + layer + cuts + recon + distill
}

/// Parameters and weight bytes of the whole input checkpoint, and of the tensors it only copies.
struct FullSizes {
    untied: bool,
    params: u64,
    bytes: u64,
    other_params: u64,
    other_bytes: u64,
}

fn full_sizes(store: &WeightStore, cfg: &ModelConfig) -> Result<FullSizes> {
    let untied = crate::cpu::model::untied_head(cfg, store)?;
    let (other_params, other_bytes) = crate::compile::inspect::passthrough(store, cfg, untied);
    let bytes = other_bytes
        + registry(cfg, untied)
            .iter()
            .map(|s| {
                store
                    .get(&s.name)
                    .map(|t| (t.info.end - t.info.start) as u64)
            })
            .sum::<Result<u64>>()?;
    Ok(FullSizes {
        untied,
        params: params(cfg, untied) + other_params,
        bytes,
        other_params,
        other_bytes,
    })
}

/// The widest MLP — the full width or a multiple of the rounding multiple — whose checkpoint
/// holds at most `max_bytes` of weights and `max_params` parameters (exact: what `compile`
/// writes, `inspect::sizes_at_width`).
pub fn widest_within(
    store: &WeightStore,
    cfg: &ModelConfig,
    max_bytes: Option<u64>,
    max_params: Option<u64>,
    multiple_of: usize,
) -> Result<ResolvedWidth> {
    let n = cfg.intermediate_size;
    let m = resolve_width(n, &Width::Size(n), multiple_of)?.multiple;
    let full = full_sizes(store, cfg)?;
    let fits = |w: usize| -> Result<(bool, u64, u64)> {
        let (p, b) =
            crate::compile::inspect::sizes_at_width(store, cfg, full.params, full.bytes, w)?;
        Ok((
            max_bytes.map_or(true, |x| b <= x) && max_params.map_or(true, |x| p <= x),
            p,
            b,
        ))
    };
    let candidates = std::iter::once(n).chain((1..=n / m).rev().map(|j| j * m).filter(|&w| w < n));
    for w in candidates {
        if fits(w)?.0 {
            return Ok(ResolvedWidth {
                width: w,
                multiple: m,
            });
        }
    }
    let (_, p_min, b_min) = fits(m)?;
    let (_, p_zero, b_zero) = fits(0)?;
    let gib = crate::compile::inspect::GIB;
    let (flag, msg) = match (max_bytes, max_params) {
        (Some(x), _) if b_min > x => (
            "--max-gib",
            format!(
                "{:.4} GiB is below the smallest compile: width {m} holds {:.4} GiB, and what pruning \
                 never touches (embedding, attention, norms) is {:.4} GiB alone",
                x as f64 / gib,
                b_min as f64 / gib,
                b_zero as f64 / gib
            ),
        ),
        (_, Some(x)) => (
            "--max-params",
            format!(
                "{x} is below the smallest compile: width {m} has {p_min} parameters, and what \
                 pruning never touches (embedding, attention, norms) has {p_zero}"
            ),
        ),
        _ => ("--max-gib", "no width fits".to_string()),
    };
    Err(Error::Arg { flag, msg })
}

/// Compiles `input` to every width of `targets` in one run, each written to its own folder
/// (atomically, with its own report), each byte-identical to a single-width compile with the
/// same options. One-shot: the original model is calibrated once for all widths. Sequential:
/// `backends[t]` holds width t's pruned stream; each layer's weights are loaded once and run on
/// every stream. `backends` needs `streams_needed(..)` entries.
pub fn compile_batch(
    input: &Path,
    targets: &[Target],
    calib: Option<&CalibSet>,
    opts: &Plan,
    backends: &mut [&mut dyn Backend],
    progress: Progress<'_>,
) -> Result<Vec<Outcome>> {
    let cfg = ModelConfig::from_dir(input)?;
    let store = WeightStore::open(input)?;
    if targets.is_empty() {
        return Err(Error::Arg {
            flag: "--widths",
            msg: "no width to compile to".into(),
        });
    }
    store.check_layers(cfg.num_layers)?;
    // Fail on the destination before spending minutes calibrating.
    let dests = targets
        .iter()
        .map(|t| crate::compile::writer::check_destination(input, &t.output, opts.force))
        .collect::<Result<Vec<_>>>()?;
    let rws = resolve_targets(cfg.intermediate_size, targets, opts.multiple_of)?;
    let ks: Vec<usize> = rws.iter().map(|r| r.width).collect();
    let calib = match (opts.needs_calib(), calib) {
        (true, None) if opts.distill.is_some() => {
            return Err(Error::Arg {
                flag: "--distill",
                msg: "distillation trains on calibration text; give --calib FILE or --calib-ids"
                    .into(),
            })
        }
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
    let n_streams = streams_needed(opts, targets.len(), calib.is_some());
    if backends.len() < n_streams {
        return Err(Error::Other(format!(
            "compile_batch: {} widths sequentially need {n_streams} backends, got {}",
            targets.len(),
            backends.len()
        )));
    }
    let backends = &mut backends[..n_streams];
    let FullSizes {
        untied,
        params: p0,
        bytes: bytes_before,
        other_params,
        other_bytes,
    } = full_sizes(&store, &cfg)?;
    // Every output goes beside the others: room for all of them, checked before calibrating.
    let mut room = 0u64;
    for (dest, &k) in dests.iter().zip(&ks) {
        room += crate::compile::inspect::sizes_at_width(&store, &cfg, p0, bytes_before, k)?.1;
        crate::compile::writer::check_room(dest, room)?;
    }
    let mut t = Timings::default();
    // Hidden states of all calibration tokens, held by each backend: the pruned stream, and for
    // `--refit-target original` the original model's stream beside it.
    let t0 = Instant::now();
    let cross = opts.cross();
    let nb = match calib {
        Some(c) => {
            let layout = Layout::new(c.n_seq, c.seq_len, opts.batch_seqs);
            let nb = layout.sizes.len();
            for b in backends.iter_mut() {
                b.start(&cfg, &store, &c.ids, layout.clone(), cross)?;
            }
            nb
        }
        None => 0,
    };
    t.calibrate += t0.elapsed().as_secs_f64();

    let token_weight = opts
        .token_weight
        .unwrap_or_else(|| TokenWeight::default_for(&cfg));
    let solver = backends[0].solver();
    let layers = Layers {
        cfg: &cfg,
        store: &store,
        plan: opts,
        calib,
        batches: nb,
        ks: &ks,
        token_weight,
        solver: &solver,
    };
    let Pruned {
        mut cuts,
        layers: mut layer_reports,
        recon: mut recon_reports,
    } = layers.run(backends, &mut *progress, &mut t)?;
    for b in backends.iter_mut() {
        b.finish();
    }
    let mut distill_reports = match (&opts.distill, calib) {
        (Some(dopt), Some(c)) => {
            let t0 = Instant::now();
            let r = distill_widths(input, &layers, c, dopt, &mut cuts, progress)?;
            t.distill += t0.elapsed().as_secs_f64();
            r.into_iter().map(Some).collect()
        }
        _ => vec![None; targets.len()],
    };

    let gib = crate::compile::inspect::GIB;
    let batch = (targets.len() > 1).then(|| BatchReport {
        widths: ks.clone(),
        outputs: targets
            .iter()
            .map(|t| t.output.display().to_string())
            .collect(),
        streams: n_streams,
        note: "timings, peak heap and RSS are the whole run's, shared by every width",
    });
    let calibration = calib.map(CalibrationReport::of);
    // A self-generated set is saved with each output, so the compile can be repeated with
    // `--calib-ids` (and the text read).
    let extras = calib.map(CalibSet::saved_files).unwrap_or_default();
    let mut outcomes = Vec::with_capacity(targets.len());
    for (i, (target, cuts)) in targets.iter().zip(cuts).enumerate() {
        let (rw, k) = (rws[i], ks[i]);
        let new_cfg = cfg.with_intermediate_size(k);
        let p1 = params(&new_cfg, untied) + other_params;
        let (p_after, mlp_bytes_after) =
            crate::compile::inspect::sizes_at_width(&store, &cfg, p0, bytes_before, k)?;
        debug_assert_eq!(p_after, p1);
        let mut report = CompileReport {
            whittle_version: env!("CARGO_PKG_VERSION"),
            input: input.display().to_string(),
            model_type: cfg.model_type(),
            method: opts.method.name(),
            sequential: opts.sequential,
            sequential_target: opts.sequential.then_some(if opts.target_original {
                "original"
            } else {
                "layer"
            }),
            repair: opts.repair,
            damp: opts.damp,
            token_weight: token_weight.name(),
            width_request: WidthRequest::from(&target.width),
            multiple_of: rw.multiple,
            intermediate_size_before: cfg.intermediate_size,
            intermediate_size_after: k,
            params_before: p0,
            params_after: p1,
            weight_bytes_before: bytes_before,
            weight_bytes_after: mlp_bytes_after,
            weight_gib_before: bytes_before as f64 / gib,
            weight_gib_after: mlp_bytes_after as f64 / gib,
            passthrough_params: other_params,
            passthrough_bytes: other_bytes,
            calibration: calibration.clone(),
            backend: backends[0].name(),
            gpu_kernels: backends[0].kernels(&cfg),
            cpu_gemm: crate::cpu::bf16::describe(),
            solver: solver.name(),
            layers: std::mem::take(&mut layer_reports[i]),
            batch: batch.clone(),
            ceiling: None,
            reconstruction: opts
                .reconstruct
                .map(|r| crate::compile::report::ReconReport {
                    epochs: r.epochs,
                    lr: r.lr,
                    tokens: r.tokens,
                    batch: r.batch,
                    layers: std::mem::take(&mut recon_reports[i]),
                }),
            distillation: distill_reports[i].take(),
            timings_s: t,
            peak_rss_mib: None,
            peak_heap_mib: None,
        };
        let t0 = Instant::now();
        let total = bytes_before;
        let finish = |report: &mut CompileReport, t: &mut Timings| {
            t.write += t0.elapsed().as_secs_f64();
            report.timings_s = *t;
            let mib = |b: f64| b / (1u64 << 20) as f64;
            report.peak_rss_mib = crate::mem::peak_rss_bytes().map(|b| mib(b as f64));
            report.peak_heap_mib = crate::mem::peak_heap_bytes().map(|b| mib(b as f64));
        };
        let ws = write_model(
            &dests[i],
            &store,
            &cfg,
            &cuts,
            k,
            &extras,
            || {
                let mut r = report.clone();
                let mut tt = t;
                finish(&mut r, &mut tt);
                r.to_json()
            },
            |b| progress("write", b.min(total), total),
        )?;
        debug_assert_eq!(ws.weight_bytes, mlp_bytes_after);
        finish(&mut report, &mut t);
        outcomes.push(Outcome { report, width: rw });
    }
    Ok(outcomes)
}

/// Distillation of every width's layers (`--distill`), one after the other against one teacher:
/// each width's report, in target order.
fn distill_widths(
    input: &Path,
    layers: &Layers<'_>,
    calib: &CalibSet,
    opts: &DistillOptions,
    cuts: &mut [Vec<LayerCut>],
    progress: Progress<'_>,
) -> Result<Vec<DistillReport>> {
    let (cfg, ks) = (layers.cfg, layers.ks);
    let teacher = crate::compile::distill::Teacher::new(input, cfg, layers.store, calib, opts)?;
    let dtypes = (0..cfg.num_layers)
        .map(|l| {
            Ok::<_, Error>([
                layers.dtype(l, LayerTensor::Gate)?,
                layers.dtype(l, LayerTensor::Up)?,
                layers.dtype(l, LayerTensor::Down)?,
            ])
        })
        .collect::<Result<Vec<_>>>()?;
    let round = |l: usize, m: &mut crate::cpu::grad::Mlp| {
        round_to_dtype(&mut m.gate, dtypes[l][0]);
        round_to_dtype(&mut m.up, dtypes[l][1]);
        round_to_dtype(&mut m.down, dtypes[l][2]);
    };
    let mut reports = Vec::with_capacity(cuts.len());
    for (i, cuts) in cuts.iter_mut().enumerate() {
        let name = if ks.len() > 1 {
            format!("distill (width {})", ks[i])
        } else {
            "distill".to_string()
        };
        let mut prog = |done: u64, total: u64| progress(&name, done, total);
        reports.push(crate::compile::distill::distill(
            &teacher, cuts, &round, opts, &mut prog,
        )?);
    }
    Ok(reports)
}

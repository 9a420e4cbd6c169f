//! `compile --max-kl X` / `--max-ppl-ratio R`: the narrowest MLP width whose compile stays within
//! a quality ceiling, measured on a held-out slice of the *calibration* sources (every
//! `stride`-th sequence, excluded from the statistics; never an evaluation set).
//!
//! The candidates are the multiples of the rounding multiple below the full width. Quality is
//! taken as monotone in the width, so a binary search over the candidates needs about log2(C)
//! compiles (C = 15 for Gemma 3 270M: 4–5); each probe is a complete compile in the run's own mode
//! (sequential by default) into a scratch folder beside OUT, evaluated against the original model
//! on the held-out slice. The search ends with two measured neighbours — the chosen width within
//! the ceiling and the next narrower one beyond it — and the chosen probe's folder becomes OUT,
//! its report carrying the measured curve.

use crate::checkpoint::config::ModelConfig;
use crate::compile::calib::CalibSet;
use crate::compile::report::{CeilingReport, HeldOutReport};
use crate::compile::width::Point;
use crate::compile::{compile_batch, resolve_width, Outcome, Plan, Progress, Target, Width};
use crate::engine::calib::Backend;
use crate::engine::LogitModel;
use crate::error::{Error, Result};
use crate::serve::eval::evaluate;
use std::path::{Path, PathBuf};

/// Sequences of a calibration set moved out of it for the ceiling's evaluation.
pub struct HeldOut {
    pub windows: Vec<Vec<u32>>,
}

/// Moves `n` sequences, evenly spaced (every ⌊n_seq/n⌋-th from the last), out of `set` so the
/// held-out slice draws on every source in proportion; the source counts are updated.
pub fn hold_out(set: &mut CalibSet, n: usize) -> Result<HeldOut> {
    if n == 0 || n >= set.n_seq {
        return Err(Error::Arg {
            flag: "--holdout",
            msg: format!(
                "{n} held-out sequences of {} calibration sequences; hold out at least 1 and leave some to calibrate on (raise --samples)",
                set.n_seq
            ),
        });
    }
    let stride = set.n_seq / n;
    let picked: Vec<usize> = (0..n).map(|i| set.n_seq - 1 - i * stride).collect();
    let seq = set.seq_len;
    let mut windows = Vec::with_capacity(n);
    let mut kept = Vec::with_capacity((set.n_seq - n) * seq);
    // Source of sequence s: sources are laid out one after the other.
    let mut bounds = Vec::new();
    let mut acc = 0;
    for s in &set.sources {
        acc += s.sequences;
        bounds.push(acc);
    }
    for s in 0..set.n_seq {
        let row = &set.ids[s * seq..(s + 1) * seq];
        if picked.contains(&s) {
            windows.push(row.to_vec());
            if let Some(src) = bounds.iter().position(|&b| s < b) {
                set.sources[src].sequences -= 1;
                set.sources[src].tokens -= seq;
            }
        } else {
            kept.extend_from_slice(row);
        }
    }
    windows.reverse();
    set.ids = kept;
    set.n_seq -= n;
    Ok(HeldOut { windows })
}

/// What the search found: the compile written to OUT and the curve.
pub struct Found {
    pub outcome: Outcome,
    pub curve: Vec<Point>,
}

/// Loads a model folder for evaluation on the run's device.
pub type Loader<'a> = &'a dyn Fn(&Path) -> Result<Box<dyn LogitModel>>;

/// Finds the narrowest width within `plan.ceiling` (see the module comment) and writes it to
/// `out`. `make_backend` gives a fresh calibration backend per probe.
#[allow(clippy::too_many_arguments)]
pub fn search(
    input: &Path,
    out: &Path,
    calib: &CalibSet,
    held: &HeldOut,
    opts: &Plan,
    make_backend: &mut dyn FnMut() -> Box<dyn Backend>,
    load: Loader<'_>,
    progress: Progress<'_>,
) -> Result<Found> {
    let ceiling = opts.ceiling.ok_or_else(|| {
        Error::Other("ceiling::search: the plan has no quality ceiling".to_string())
    })?;
    let cfg = ModelConfig::from_dir(input)?;
    let dest = crate::compile::writer::check_destination(input, out, opts.force)?;
    let n = cfg.intermediate_size;
    let m = resolve_width(n, &Width::Size(n), opts.multiple_of)?.multiple;
    let candidates: Vec<usize> = (1..=n / m).map(|j| j * m).filter(|&w| w < n).collect();
    if candidates.is_empty() {
        return Err(Error::Arg {
            flag: ceiling.flag(),
            msg: format!("MLP width {n} has no narrower multiple of {m} to try"),
        });
    }
    let base = load(input)?;
    let base_stats = evaluate(&*base, None, &held.windows, |_| {})?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = out
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let scratch = Scratch(parent.join(format!(".{name}.whittle-search-{}", std::process::id())));
    std::fs::create_dir_all(&scratch.0).map_err(|e| Error::io(&scratch.0, e))?;

    let mut curve: Vec<Point> = Vec::new();
    let mut outcomes: Vec<(usize, Outcome, PathBuf)> = Vec::new();
    let mut probe = |w: usize, curve: &mut Vec<Point>, progress: Progress<'_>| -> Result<bool> {
        let dir = scratch.0.join(format!("width-{w}"));
        let mut backend = make_backend();
        let target = [Target {
            width: Width::Size(w),
            output: dir.clone(),
        }];
        let mut o = compile_batch(
            input,
            &target,
            Some(calib),
            opts,
            &mut [&mut *backend],
            progress,
        )?;
        let model = load(&dir)?;
        let st = evaluate(&*model, Some(&*base), &held.windows, |_| {})?;
        let p = Point {
            width: w,
            kl: st.mean_kl(),
            ppl_ratio: (st.mean_nll() - base_stats.mean_nll()).exp(),
            top1_agree: st.top1_rate(),
            how: "measured",
            within: false,
        };
        let within = ceiling.of(&p) <= ceiling.limit();
        eprintln!(
            "{}: width {w}: KL {:.4}, PPL ratio {:.4} on the held-out slice: {}",
            ceiling.flag(),
            p.kl,
            p.ppl_ratio,
            if within { "within" } else { "beyond" }
        );
        curve.push(Point { within, ..p });
        if within {
            outcomes.push((w, o.remove(0), dir));
        } else {
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        Ok(within)
    };
    // Binary search for the first candidate within the ceiling; `hi` starts past the end (the
    // full width, which is the original model).
    let (mut lo, mut hi) = (0usize, candidates.len());
    let widest = candidates.len() - 1;
    if !probe(candidates[widest], &mut curve, progress)? {
        let p = &curve[0];
        return Err(Error::Arg {
            flag: ceiling.flag(),
            msg: format!(
                "no pruned width meets {} {}: the widest, {} of {n}, gives KL {:.4} and PPL ratio {:.4} on the held-out calibration slice (the best achievable here); raise the ceiling or calibrate on more text",
                ceiling.flag(),
                ceiling.limit(),
                p.width,
                p.kl,
                p.ppl_ratio
            ),
        });
    }
    hi = hi.min(widest);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if probe(candidates[mid], &mut curve, progress)? {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let chosen = candidates[hi];
    curve.sort_by_key(|p| p.width);
    let (_, mut outcome, dir) = outcomes
        .into_iter()
        .find(|(w, _, _)| *w == chosen)
        .ok_or_else(|| Error::Other(format!("{}: width {chosen} was not kept", ceiling.flag())))?;
    outcome.report.ceiling = Some(CeilingReport {
        flag: ceiling.flag(),
        limit: ceiling.limit(),
        held_out: HeldOutReport {
            sequences: held.windows.len(),
            tokens: held.windows.iter().map(|w| w.len() - 1).sum::<usize>(),
        },
        base_ppl: base_stats.ppl(),
        chosen,
        curve: curve.clone(),
    });
    let rp = dir.join("whittle_report.json");
    let text = serde_json::to_string_pretty(&outcome.report.to_json())
        .map_err(|e| Error::Other(e.to_string()))?;
    std::fs::write(&rp, text).map_err(|e| Error::io(&rp, e))?;
    crate::compile::writer::install(&dir, &dest)?;
    Ok(Found { outcome, curve })
}

/// The search's scratch folder, removed with whatever probes it still holds.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

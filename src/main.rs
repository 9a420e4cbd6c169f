//! The `whittle` command line. Library errors are wrapped in `anyhow` here; progress goes to
//! stderr, results to stdout.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;
use whittle::checkpoint::chat::ChatTemplate;
use whittle::checkpoint::tokenizer::{read_text, Tokenizer};
use whittle::cpu::model::Model;
use whittle::serve::eval::{evaluate, make_windows};

#[global_allocator]
static ALLOC: whittle::mem::CountingAlloc = whittle::mem::CountingAlloc;

#[derive(Parser)]
#[command(
    name = "whittle",
    version,
    about = "Compile a Gemma-2/3 or Llama-family model into a smaller dense Hugging Face checkpoint"
)]
struct Cli {
    /// Worker threads for the CPU path (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Where eval, compile, bench and generate run: auto (the GPU when a driver and a device are
    /// there, else the CPU), cpu, cuda or cuda:N. bench --forward runs on the CPU for now.
    #[arg(
        long,
        global = true,
        default_value = "auto",
        value_name = "auto|cpu|cuda[:N]"
    )]
    device: whittle::device::DeviceChoice,
    /// Arithmetic of the CPU engine's projections and LM head: f32 (the reference, equal to
    /// transformers fp32) or bf16 (inputs rounded to bf16, f32 accumulation, on CPUs with
    /// AVX-512 BF16; f32 elsewhere). Default: f32, except `compile` on AMD CPUs with AVX-512
    /// BF16 (Zen 4/5), where bf16 is faster with KL within 1% (README, "CPU bf16 GEMM"). The
    /// GPU is always bf16.
    #[arg(long, global = true, value_name = "f32|bf16")]
    precision: Option<whittle::cpu::bf16::Precision>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Perplexity of MODEL on a text file (and KL / top-1 agreement against --base).
    Eval(EvalArgs),
    /// Architecture, layer types, parameter counts and weight bytes of a model folder.
    Inspect {
        model: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Calibrate, score and remove MLP neurons, re-fit, and write a smaller dense checkpoint.
    Compile(CompileArgs),
    /// Serving benchmark (weights, parameters, chat prefill tok/s, RAG TTFT, decode tok/s) as a
    /// markdown table; `--against` measures a second model interleaved; `--forward` measures
    /// forward throughput with and without the LM head on text windows instead.
    Bench(BenchArgs),
    /// Generate text from a prompt with the KV-cache decoder (greedy, or temperature / top-p).
    Generate(GenerateArgs),
}

#[derive(Args)]
struct WindowArgs {
    /// UTF-8 text to evaluate on.
    #[arg(long)]
    text: PathBuf,
    /// Window length in tokens, BOS included.
    #[arg(long, default_value_t = 512)]
    seq: usize,
    /// Use only the first N windows (default: every full window in the text).
    #[arg(long)]
    windows: Option<usize>,
}

#[derive(Args)]
struct EvalArgs {
    model: PathBuf,
    /// UTF-8 text to evaluate on: FILE, or NAME=FILE, repeatable (one report row per text).
    #[arg(long, value_name = "[NAME=]FILE")]
    text: Vec<whittle::serve::tasks::NamedText>,
    /// Window length in tokens, BOS included.
    #[arg(long, default_value_t = 512)]
    seq: usize,
    /// Use only the first N windows of each text (default: every full window).
    #[arg(long)]
    windows: Option<usize>,
    /// Zero-shot tasks, comma-separated: arc_easy, arc_challenge, hellaswag, piqa, lambada
    /// (lm-eval-harness's prompts and metrics; data from scripts/get-tasks.py).
    #[arg(long, value_name = "LIST")]
    tasks: Option<String>,
    /// Score only the first N items of each task.
    #[arg(long)]
    limit: Option<usize>,
    /// Where the task data lives (scripts/get-tasks.py writes it).
    #[arg(long, default_value = "data/tasks")]
    tasks_dir: PathBuf,
    /// Also write MODEL's per-item scores as JSON Lines ({"task", "item", "lls", "greedy"}), the
    /// format scripts/hf_tasks.py --items-out writes (scripts/tasks-check.sh compares them).
    #[arg(long, value_name = "FILE")]
    items_out: Option<PathBuf>,
    /// Reference model for KL(base ‖ model) and top-1 agreement.
    #[arg(long)]
    base: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct CompileArgs {
    /// Input model folder (Hugging Face layout).
    model: PathBuf,
    /// Output folder (written atomically; refused if it exists unless --force).
    #[arg(short, long)]
    output: PathBuf,
    /// Calibration text, optionally weighted: FILE or FILE:WEIGHT (repeatable). A .jsonl file
    /// holds conversations ({"messages": [{"role", "content"}, ...]}, rendered in Gemma's chat
    /// format) or {"text": ...} documents, one per line. `self` (or `self:WEIGHT`) has the model
    /// write its own calibration text, sampled from BOS (see --calib-seed); the ids used are
    /// saved with the output as calibration-ids.safetensors. A file named self is ./self.
    #[arg(long, num_args = 1..)]
    calib: Vec<whittle::compile::calib::CalibSource>,
    /// `--calib self`: the sampling seed (the same seed gives the same text).
    #[arg(long, default_value_t = 0)]
    calib_seed: u64,
    /// `--calib self`: sampling temperature, > 0.
    #[arg(long, default_value_t = 1.0)]
    calib_temperature: f32,
    /// `--calib self`: nucleus (top-p) mass, in (0, 1].
    #[arg(long, default_value_t = 0.95)]
    calib_top_p: f32,
    /// Pre-tokenized calibration: safetensors with an integer input_ids [n, seq] (BOS included).
    #[arg(long, conflicts_with = "calib")]
    calib_ids: Option<PathBuf>,
    /// Calibration sequences (default 128, or as many as the text holds if fewer; a number given
    /// here must fit in the text).
    #[arg(long, conflicts_with = "calib_ids")]
    samples: Option<usize>,
    /// Calibration sequence length, BOS included.
    #[arg(long, default_value_t = 512, conflicts_with = "calib_ids")]
    seq: usize,
    /// Neuron score: obs, energy or magnitude (obs + sequential measured best on Gemma 3 270M,
    /// see README).
    #[arg(long, default_value = "obs", value_parser = lib_parser(whittle::compile::prune::Method::parse))]
    method: whittle::compile::prune::Method,
    /// Calibrate layer l on the already-pruned layers < l and re-fit against that stream (the
    /// default).
    #[arg(long, conflicts_with = "one_shot")]
    sequential: bool,
    /// Calibrate every layer on the original model (faster, slightly lower quality).
    #[arg(long)]
    one_shot: bool,
    /// With --sequential, what each pruned MLP is re-fit to reproduce: `layer` (the full-width
    /// layer on the pruned model's own activations) or `original` (the original model's layer
    /// output, through the cross-covariance of both models' activations).
    #[arg(long, value_enum, default_value = "layer", conflicts_with_all = ["one_shot", "no_repair"])]
    refit_target: RefitTarget,
    /// Keep the surviving down_proj columns as they are (no least-squares re-fit).
    #[arg(long)]
    no_repair: bool,
    /// Ridge for OBS and repair, as a fraction of the mean activation energy.
    #[arg(long, default_value_t = 0.001)]
    damp: f64,
    /// How calibration tokens are weighed: `out` (÷ each token's MLP-output mean square, which
    /// the post-FFN RMSNorm divides out; Gemma's default, measured best there), `next-norm`
    /// (÷ the mean square of the residual after the MLP's add, which the next layer's norm
    /// divides out; the Llama family's default), `uniform` (the down_proj output error itself)
    /// or `out-resid` (÷ both the output's and the residual's mean squares).
    #[arg(long, value_parser = lib_parser(whittle::engine::calib::TokenWeight::parse))]
    token_weight: Option<whittle::engine::calib::TokenWeight>,
    /// Named width: default (62/72), production (57/72), throughput (51/72), experimental (38/72).
    /// `all` or a comma list (`default,throughput`) compiles several in one run: -o is then a
    /// folder holding one output folder per tier, named by the tier.
    #[arg(long, conflicts_with_all = ["keep_ratio", "intermediate_size", "widths", "keep_ratios", "max_gib", "max_params"])]
    tier: Option<String>,
    /// Fraction of MLP neurons to keep, in (0, 1].
    #[arg(long, conflicts_with_all = ["intermediate_size", "widths", "keep_ratios", "max_gib", "max_params"])]
    keep_ratio: Option<f64>,
    /// Exact MLP width to keep.
    #[arg(long, conflicts_with_all = ["widths", "keep_ratios", "max_gib", "max_params"])]
    intermediate_size: Option<usize>,
    /// Several exact widths in one run (comma list, e.g. 1792,1408,1024): -o is a folder holding
    /// one output folder per width, named width-N.
    #[arg(long, value_delimiter = ',', num_args = 1.., conflicts_with_all = ["keep_ratios", "max_gib", "max_params"])]
    widths: Vec<usize>,
    /// Several keep ratios in one run (comma list): one output folder per ratio, named keep-R.
    #[arg(long, value_delimiter = ',', num_args = 1.., conflicts_with_all = ["max_gib", "max_params"])]
    keep_ratios: Vec<f64>,
    /// The widest MLP (a multiple of --multiple-of) whose checkpoint holds at most this many GiB
    /// of weights (exact, from the tensors' dtypes).
    #[arg(long)]
    max_gib: Option<f64>,
    /// The widest MLP (a multiple of --multiple-of) with at most this many parameters.
    #[arg(long)]
    max_params: Option<u64>,
    /// The narrowest width (a multiple of --multiple-of) whose mean KL to the original, on a
    /// held-out slice of the calibration text (--holdout sequences, not calibrated on), is at
    /// most this. Found by binary search, one complete compile per probe (see README).
    #[arg(long, conflicts_with_all = ["tier", "keep_ratio", "intermediate_size", "widths", "keep_ratios", "max_gib", "max_params", "max_ppl_ratio"])]
    max_kl: Option<f64>,
    /// Like --max-kl, with the perplexity ratio (compiled / original) on the held-out slice.
    #[arg(long, conflicts_with_all = ["tier", "keep_ratio", "intermediate_size", "widths", "keep_ratios", "max_gib", "max_params"])]
    max_ppl_ratio: Option<f64>,
    /// With --max-kl / --max-ppl-ratio: calibration sequences held out for the measurement, read
    /// beyond --samples (default: --samples / 8, at least 1).
    #[arg(long)]
    holdout: Option<usize>,
    /// Memory the run may hold (e.g. 16G): a several-width sequential run keeps one calibration
    /// stream per width and is refused up front when the estimate does not fit. Default: what
    /// the machine has available.
    #[arg(long, value_name = "BYTES")]
    max_memory: Option<String>,
    /// Round the width to a multiple of this (clamped for small models).
    #[arg(long, default_value_t = 128)]
    multiple_of: usize,
    /// Replace an existing output folder.
    #[arg(long)]
    force: bool,
    /// Calibration sequences per batch.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// After each layer's re-fit, refine its kept gate, up and down together by a few epochs of
    /// Adam against what the full MLP adds to the residual stream on the calibration tokens
    /// (held-out tokens decide which epoch is kept; never worse there than the re-fit).
    #[arg(long, conflicts_with = "one_shot")]
    reconstruct: bool,
    /// --reconstruct: passes over the training tokens (1 to 100).
    #[arg(long, default_value_t = 2, requires = "reconstruct")]
    recon_epochs: usize,
    /// --reconstruct: Adam's step, a fraction of each matrix's RMS, in (0, 0.1].
    #[arg(long, default_value_t = 1e-3, requires = "reconstruct")]
    recon_lr: f64,
    /// --reconstruct: calibration tokens used per layer (spread over the set; 1 in 8 held out).
    #[arg(long, default_value_t = 16384, requires = "reconstruct")]
    recon_tokens: usize,
    /// After all layers are pruned, train every layer's kept gate, up and down together by Adam
    /// so the compiled model's next-token distributions match the original's (KL) on
    /// calibration sequences (held-out sequences decide which epoch is kept; never worse there
    /// than without it). CPU, several times a compile's cost (README, Methods).
    #[arg(long)]
    distill: bool,
    /// --distill: calibration tokens used, in whole sequences spread over the set (1 in 8
    /// sequences held out).
    #[arg(long, default_value_t = 65536, requires = "distill")]
    distill_tokens: usize,
    /// --distill: passes over the training sequences (1 to 100).
    #[arg(long, default_value_t = 1, requires = "distill")]
    distill_epochs: usize,
    /// --distill: Adam's step, a fraction of each matrix's RMS, in (0, 0.1].
    #[arg(long, default_value_t = 1e-3, requires = "distill")]
    distill_lr: f64,
    /// --distill: calibration sequences per Adam step (1 to 256).
    #[arg(long, default_value_t = 2, requires = "distill")]
    distill_batch: usize,
    /// --distill: the step size over the run — constant, or cosine (linear warm-up over the
    /// first tenth of the steps, then down to zero at the end).
    #[arg(long, default_value = "constant", requires = "distill",
          value_parser = lib_parser(whittle::compile::distill::Schedule::parse))]
    distill_schedule: whittle::compile::distill::Schedule,
}

/// `--refit-target`: what a sequentially pruned MLP is re-fit to reproduce.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RefitTarget {
    Layer,
    Original,
}

/// A clap value parser from a library parser: the library's message (it lists the choices),
/// without the flag clap already names.
fn lib_parser<T: Clone + Send + Sync + 'static>(
    parse: fn(&str) -> whittle::Result<T>,
) -> impl Fn(&str) -> std::result::Result<T, String> + Clone + Send + Sync + 'static {
    move |s: &str| {
        parse(s).map_err(|e| match e {
            whittle::Error::Arg { msg, .. } => msg,
            e => e.to_string(),
        })
    }
}

#[derive(Args)]
struct BenchArgs {
    model: PathBuf,
    /// Second model measured in the same run, interleaved; the table adds MODEL / AGAINST ratios.
    #[arg(long, conflicts_with = "forward")]
    against: Option<PathBuf>,
    /// Print one JSON object instead of the markdown table.
    #[arg(long)]
    json: bool,
    /// Prompt text (tokenized and tiled to each length; default: a built-in paragraph set).
    #[arg(long)]
    prompt_file: Option<PathBuf>,
    /// Small shapes and few repeats (smoke test): 2×128 prefill, 256 RAG, 64+32 decode, 5 runs.
    #[arg(long)]
    quick: bool,
    /// TTFT runs (default 30; 5 with --quick).
    #[arg(long)]
    runs: Option<usize>,
    /// Repeats of the prefill and decode measurements (default 3; 2 with --quick).
    #[arg(long)]
    repeats: Option<usize>,
    /// Untimed warm-up passes per model (default 1).
    #[arg(long)]
    warmup: Option<usize>,
    /// Chat prefill batch (default 8).
    #[arg(long)]
    prefill_batch: Option<usize>,
    /// Chat prefill prompt length, BOS included (default 512).
    #[arg(long)]
    prefill_len: Option<usize>,
    /// RAG prompt length for TTFT (default 2048).
    #[arg(long)]
    rag_len: Option<usize>,
    /// Decode prompt length (default 512).
    #[arg(long)]
    decode_prompt: Option<usize>,
    /// Greedy tokens timed in the decode measurement (default 128).
    #[arg(long)]
    decode_tokens: Option<usize>,
    /// Forward-pass mode: tokens/s of the batch-1 forward with and without the LM head over
    /// --text windows (keys no_head_tok_s, with_head_tok_s in --json).
    #[arg(long, requires = "text")]
    forward: bool,
    /// --forward: UTF-8 text cut into windows.
    #[arg(long, requires = "forward")]
    text: Option<PathBuf>,
    /// --forward: window length in tokens, BOS included.
    #[arg(long, default_value_t = 512)]
    seq: usize,
    /// --forward: use only the first N windows (default: every full window in the text).
    #[arg(long)]
    windows: Option<usize>,
}

#[derive(Args)]
struct GenerateArgs {
    model: PathBuf,
    /// Prompt text (BOS is prepended).
    #[arg(long)]
    prompt: String,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Send the prompt as one user turn through the model's chat template (Gemma's turn format
    /// for a Gemma folder without one). Default: on when the model ships a chat template
    /// (instruction-tuned checkpoints).
    #[arg(long, overrides_with = "no_chat")]
    chat: bool,
    /// Send the prompt as it is, even when the model has a chat template.
    #[arg(long, overrides_with = "chat")]
    no_chat: bool,
    /// Do not stop at EOS / <end_of_turn>: always generate --max-new-tokens tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// Print one JSON object (prompt ids, generated ids, text, timings) instead of streaming text.
    #[arg(long)]
    json: bool,
}

fn progress(n: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(n as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:>10} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

fn load_windows(model_dir: &std::path::Path, win: &WindowArgs, bos: u32) -> Result<Vec<Vec<u32>>> {
    let tok = Tokenizer::from_dir(model_dir)?;
    let ids = match win.windows {
        None => tok.encode(&read_text(&win.text)?)?,
        // Only what N windows need: a token is rarely longer than 16 bytes, so start there
        // and read more (cut at a line end) until enough tokens lie well before the cut.
        Some(n) => {
            let need = n.saturating_mul(win.seq.saturating_sub(1));
            let mut bytes = need.saturating_mul(16).max(1 << 16);
            loop {
                let (text, whole) =
                    whittle::checkpoint::tokenizer::read_text_prefix(&win.text, bytes)?;
                let ids = tok.encode(&text)?;
                if whole || ids.len() >= need.saturating_add(64) {
                    break ids;
                }
                bytes = bytes.saturating_mul(4);
            }
        }
    };
    let windows = make_windows(&ids, win.seq, win.windows, bos, &win.text)?;
    if let Some(n) = win.windows {
        if windows.len() < n {
            eprintln!(
                "note: {} holds only {} full windows of {} tokens; using {}",
                win.text.display(),
                windows.len(),
                win.seq,
                windows.len()
            );
        }
    }
    Ok(windows)
}

/// `eval --tasks` and/or several `--text`: one capability report (markdown table or JSON).
fn cmd_eval_report(a: EvalArgs, device: whittle::device::DeviceChoice) -> Result<()> {
    use whittle::serve::tasks;
    // Everything the user gave is checked before a model is loaded.
    let names = a.tasks.as_deref().map(tasks::parse_list).transpose()?;
    let task_data = names
        .iter()
        .flatten()
        .map(|n| tasks::load(n, &a.tasks_dir, a.limit))
        .collect::<Result<Vec<_>, _>>()?;
    let texts = a
        .text
        .iter()
        .map(|t| {
            read_text(&t.path)?;
            Ok(t.clone())
        })
        .collect::<Result<Vec<_>>>()?;

    let dev = open_device(device, None)?;
    let dirs: Vec<&std::path::Path> = std::iter::once(a.model.as_path())
        .chain(a.base.as_deref())
        .collect();
    let mut models = dev.load_eval_models(&dirs)?;
    let base = if a.base.is_some() { models.pop() } else { None };
    let model = models.pop().context("no model loaded")?;
    let bos = model.cfg().bos_token_id;
    let tok = Tokenizer::from_dir(&a.model)?;

    let mut out = json!({ "model": a.model.display().to_string() });
    if let Some(b) = &a.base {
        out["base"] = json!(b.display().to_string());
    }
    let mut rows: Vec<[String; 4]> = Vec::new();
    let fmt = |v: f64, e: f64| format!("{v:.4} ± {e:.4}");
    let mut task_json = serde_json::Map::new();
    let mut items_out = a
        .items_out
        .as_ref()
        .map(|p| {
            std::fs::File::create(p)
                .map(std::io::BufWriter::new)
                .with_context(|| format!("creating --items-out {}", p.display()))
        })
        .transpose()?;
    for task in &task_data {
        let reqs = tasks::requests(task, &tok, bos)?;
        let run = |m: &dyn whittle::engine::LogitModel, who: &str| {
            let pb = progress(reqs.len(), &format!("{} {who}", task.name));
            let t = Instant::now();
            let sc = tasks::score(m, &reqs, task.items.len(), |i| pb.set_position(i as u64))?;
            pb.finish_and_clear();
            anyhow::Ok((tasks::metrics(task, &sc), t.elapsed().as_secs_f64(), sc))
        };
        let (res, secs, scores) = run(&*model, "model")?;
        if let Some(f) = &mut items_out {
            use std::io::Write;
            for (i, s) in scores.iter().enumerate() {
                let line = json!({"task": task.name, "item": i, "lls": s.lls, "greedy": s.greedy});
                writeln!(f, "{line}").with_context(|| format!("writing {:?}", a.items_out))?;
            }
        }
        let based = base
            .as_deref()
            .map(|b| run(b, "base").map(|(r, s, _)| (r, s)))
            .transpose()?;
        let mut j = json!({ "items": res.items, "requests": reqs.len(), "seconds": secs,
                            "items_per_s": res.items as f64 / secs });
        for (k, &(name, v, e)) in res.metrics.iter().enumerate() {
            j[name] = json!(v);
            j[format!("{name}_stderr")] = json!(e);
            let mut row = [
                format!("{} {name} ({} items)", task.name, res.items),
                String::new(),
                fmt(v, e),
                String::new(),
            ];
            if let Some((br, bsecs)) = &based {
                let (_, bv, be) = br.metrics[k];
                j["base"][name] = json!(bv);
                j["base"][format!("{name}_stderr")] = json!(be);
                j["base"]["seconds"] = json!(bsecs);
                j["delta"][name] = json!(v - bv);
                row[1] = fmt(bv, be);
                row[3] = format!("{:+.4}", v - bv);
            }
            rows.push(row);
        }
        task_json.insert(task.name.clone(), j);
    }
    if !task_json.is_empty() {
        out["tasks"] = serde_json::Value::Object(task_json);
    }
    let mut text_json = serde_json::Map::new();
    for t in &texts {
        let win = WindowArgs {
            text: t.path.clone(),
            seq: a.seq,
            windows: a.windows,
        };
        let windows = load_windows(&a.model, &win, bos)?;
        let pb = progress(windows.len(), &format!("text {}", t.name));
        let st = evaluate(&*model, base.as_deref(), &windows, |i| {
            pb.set_position(i as u64)
        })?;
        pb.finish_and_clear();
        let mut j = json!({ "path": t.path.display().to_string(), "windows": windows.len(),
                            "tokens": st.tokens, "ppl": st.ppl() });
        let mut ppl_row = [
            format!("{} ppl", t.name),
            String::new(),
            format!("{:.4}", st.ppl()),
            String::new(),
        ];
        if base.is_some() {
            let ratio = st.ppl() / st.base_ppl();
            j["base_ppl"] = json!(st.base_ppl());
            j["ppl_ratio"] = json!(ratio);
            j["kl"] = json!(st.mean_kl());
            j["top1_agree"] = json!(st.top1_rate());
            ppl_row[1] = format!("{:.4}", st.base_ppl());
            ppl_row[3] = format!("×{ratio:.4}");
            rows.push(ppl_row);
            rows.push([
                format!("{} KL(base ‖ model)", t.name),
                String::new(),
                format!("{:.4}", st.mean_kl()),
                String::new(),
            ]);
            rows.push([
                format!("{} top-1 agreement", t.name),
                String::new(),
                format!("{:.4}", st.top1_rate()),
                String::new(),
            ]);
        } else {
            rows.push(ppl_row);
        }
        text_json.insert(t.name.clone(), j);
    }
    if !text_json.is_empty() {
        out["texts"] = serde_json::Value::Object(text_json);
        out["seq"] = json!(a.seq);
    }
    if a.json {
        println!("{out}");
        return Ok(());
    }
    match &a.base {
        Some(b) => {
            println!("| | base {} | {} | Δ |", b.display(), a.model.display());
            println!("|---|---|---|---|");
            for r in &rows {
                println!("| {} | {} | {} | {} |", r[0], r[1], r[2], r[3]);
            }
        }
        None => {
            println!("| | {} |", a.model.display());
            println!("|---|---|");
            for r in &rows {
                println!("| {} | {} |", r[0], r[2]);
            }
        }
    }
    Ok(())
}

fn load_model(dir: &std::path::Path) -> Result<Model> {
    let t = Instant::now();
    let m = Model::load(dir).with_context(|| format!("loading model {}", dir.display()))?;
    eprintln!(
        "loaded {} in {:.1}s (cpu, {})",
        dir.display(),
        t.elapsed().as_secs_f64(),
        whittle::cpu::bf16::in_use()
    );
    Ok(m)
}

/// Resolves `--device` (CPU-only for commands without a GPU path) and says on stderr which.
fn open_device(
    choice: whittle::device::DeviceChoice,
    cpu_only: Option<&str>,
) -> Result<whittle::device::Device> {
    use whittle::device::Device;
    let dev = match cpu_only {
        Some(what) => Device::open_cpu_only(choice, what)?,
        None => Device::open(choice)?,
    };
    eprintln!("device: {}", dev.describe());
    Ok(dev)
}

fn cmd_eval(a: EvalArgs, device: whittle::device::DeviceChoice) -> Result<()> {
    if a.text.is_empty() && a.tasks.is_none() {
        anyhow::bail!("eval needs --text [NAME=]FILE (repeatable), --tasks LIST, or both");
    }
    whittle::serve::tasks::check_text_names(&a.text)?;
    if a.tasks.is_some() || a.text.len() > 1 {
        return cmd_eval_report(a, device);
    }
    let text = a.text[0].path.clone();
    let win = WindowArgs {
        text,
        seq: a.seq,
        windows: a.windows,
    };
    let dev = open_device(device, None)?;
    let dirs: Vec<&std::path::Path> = std::iter::once(a.model.as_path())
        .chain(a.base.as_deref())
        .collect();
    let mut models = dev.load_eval_models(&dirs)?;
    let base = if a.base.is_some() { models.pop() } else { None };
    let model = models.pop().context("no model loaded")?;
    let windows = load_windows(&a.model, &win, model.cfg().bos_token_id)?;
    let pb = progress(windows.len(), "eval");
    let t = Instant::now();
    let st = evaluate(&*model, base.as_deref(), &windows, |i| {
        pb.set_position(i as u64)
    })?;
    pb.finish_and_clear();
    anyhow::ensure!(
        st.mean_nll().is_finite() && (a.base.is_none() || st.mean_kl().is_finite()),
        "{}: the model's logits are not finite (NaN or Inf){}; a weight is corrupt or the \
         activations overflow",
        a.model.display(),
        if a.base.is_some() {
            " or the base model's are not"
        } else {
            ""
        }
    );
    let secs = t.elapsed().as_secs_f64();
    let mut out = json!({
        "model": a.model.display().to_string(),
        "text": win.text.display().to_string(),
        "seq": win.seq,
        "windows": windows.len(),
        "tokens": st.tokens,
        "nll": st.mean_nll(),
        "ppl": st.ppl(),
        "seconds": secs,
    });
    if let Some(b) = &a.base {
        out["base"] = json!(b.display().to_string());
        out["kl"] = json!(st.mean_kl());
        out["top1_agree"] = json!(st.top1_rate());
    }
    if a.json {
        println!("{out}");
    } else {
        println!("model       {}", a.model.display());
        println!(
            "text        {} ({} windows × {} tokens, {} scored)",
            win.text.display(),
            windows.len(),
            win.seq,
            st.tokens
        );
        println!(
            "perplexity  {:.4}  (mean NLL {:.5})",
            st.ppl(),
            st.mean_nll()
        );
        if let Some(b) = &a.base {
            println!("vs base     {}", b.display());
            println!("KL          {:.5}", st.mean_kl());
            println!("top-1 agree {:.4}", st.top1_rate());
        }
        println!("time        {secs:.1}s");
    }
    Ok(())
}

fn cmd_bench(a: BenchArgs, device: whittle::device::DeviceChoice) -> Result<()> {
    if a.forward {
        open_device(device, Some("bench --forward"))?;
        return cmd_bench_forward(a);
    }
    let dev = open_device(device, None)?;
    use whittle::serve::bench::{self, Protocol, Subject};
    let mut p = if a.quick {
        Protocol::quick()
    } else {
        Protocol::standard()
    };
    let set = |dst: &mut usize, v: Option<usize>| {
        if let Some(v) = v {
            *dst = v;
        }
    };
    set(&mut p.runs, a.runs);
    set(&mut p.repeats, a.repeats);
    set(&mut p.warmup, a.warmup);
    set(&mut p.prefill_batch, a.prefill_batch);
    set(&mut p.prefill_len, a.prefill_len);
    set(&mut p.rag_len, a.rag_len);
    set(&mut p.decode_prompt, a.decode_prompt);
    set(&mut p.decode_tokens, a.decode_tokens);
    p.validate()?;
    let text = match &a.prompt_file {
        Some(f) => read_text(f)?,
        None => bench::DEFAULT_PROMPT.to_string(),
    };
    let dirs: Vec<&std::path::Path> = std::iter::once(a.model.as_path())
        .chain(a.against.as_deref())
        .collect();
    let mut subjects = Vec::new();
    for (dir, engine) in dirs.iter().zip(dev.load_engines(&dirs)?) {
        let max = engine.cfg().max_positions();
        for (flag, len) in [
            ("--prefill-len", p.prefill_len),
            ("--rag-len", p.rag_len),
            (
                "--decode-prompt + --decode-tokens",
                p.decode_prompt.saturating_add(p.decode_tokens),
            ),
        ] {
            anyhow::ensure!(
                len <= max,
                "{flag}: {len} positions, but {} holds at most {max} (max_position_embeddings)",
                dir.display()
            );
        }
        subjects.push(Subject::new(dir, engine, &text)?);
    }
    if subjects.len() == 2 && subjects[0].label == subjects[1].label {
        for s in &mut subjects {
            s.label = s.dir.display().to_string();
        }
    }
    let total = subjects.len() * (p.warmup + 2 * p.repeats + p.runs);
    let pb = progress(total, "bench");
    let t = Instant::now();
    let measured = bench::run(&subjects, &p, |what| {
        pb.set_message(what.to_string());
        pb.inc(1);
    })?;
    pb.finish_and_clear();
    let report = bench::report_json(&subjects, &measured, &p);
    eprintln!("bench finished in {:.1}s", t.elapsed().as_secs_f64());
    if a.json {
        println!("{report}");
    } else {
        print!("{}", bench::report_markdown(&report));
    }
    Ok(())
}

fn cmd_bench_forward(a: BenchArgs) -> Result<()> {
    let model = load_model(&a.model)?;
    let win = WindowArgs {
        text: a.text.clone().context("--forward needs --text FILE")?,
        seq: a.seq,
        windows: a.windows,
    };
    let windows = load_windows(&a.model, &win, model.cfg.bos_token_id)?;
    let pb = progress(windows.len() * 2, "bench");
    let (no_head, with_head) =
        whittle::serve::bench::forward_throughput(&model, &windows, || pb.inc(1))?;
    pb.finish_and_clear();
    let out = json!({
        "model": a.model.display().to_string(),
        "seq": win.seq,
        "windows": windows.len(),
        "threads": rayon::current_num_threads(),
        "cpu_gemm": whittle::cpu::bf16::describe(),
        "no_head_tok_s": no_head,
        "with_head_tok_s": with_head,
    });
    if a.json {
        println!("{out}");
    } else {
        println!("forward, no LM head   {no_head:>10.1} tokens/s");
        println!("forward, with LM head {with_head:>10.1} tokens/s");
        println!(
            "({} windows × {} tokens, {} threads)",
            windows.len(),
            win.seq,
            rayon::current_num_threads()
        );
    }
    Ok(())
}

fn cmd_generate(a: GenerateArgs, device: whittle::device::DeviceChoice) -> Result<()> {
    use std::io::Write;
    use whittle::checkpoint::chat::has_own_template;
    use whittle::cpu::decode::Sampling;
    use whittle::serve::generate::{
        generate, prompt_ids, stop_tokens, GenOptions, StopReason, TextStream,
    };
    anyhow::ensure!(
        a.top_p > 0.0 && a.top_p <= 1.0,
        "--top-p must be in (0, 1], got {}",
        a.top_p
    );
    anyhow::ensure!(
        a.temperature >= 0.0 && a.temperature.is_finite(),
        "--temperature must be a number >= 0, got {}",
        a.temperature
    );
    let dev = open_device(device, None)?;
    let engine = dev
        .load_engines(&[a.model.as_path()])?
        .pop()
        .context("no model loaded")?;
    let tok = Tokenizer::from_dir(&a.model)?;
    let chat = if a.chat || a.no_chat {
        a.chat
    } else {
        let auto = has_own_template(&a.model);
        if auto {
            eprintln!(
                "chat template found: rendering the prompt with it (--no-chat to send it as is)"
            );
        }
        auto
    };
    // A chat prompt is the rendered template's own ids, BOS included where the template writes
    // it, as transformers' apply_chat_template(tokenize=True) gives them; plain text gets BOS.
    let (text, ids) = if chat {
        let template =
            ChatTemplate::for_model(&a.model, engine.cfg().arch)?.with_context(|| {
                format!(
                    "--chat: {} has no chat template (chat_template.jinja, chat_template.json or \
                     \"chat_template\" in tokenizer_config.json); leave out --chat to send the \
                     prompt as it is",
                    a.model.display()
                )
            })?;
        let text = template
            .user_turn(&a.prompt)
            .map_err(|e| anyhow::anyhow!("--chat: {e}"))?;
        let ids = tok.encode(&text)?;
        anyhow::ensure!(
            !ids.is_empty(),
            "--chat: {} rendered the prompt as no tokens at all",
            template.origin
        );
        (text, ids)
    } else {
        let ids = prompt_ids(&tok, engine.cfg().bos_token_id, &a.prompt)?;
        (a.prompt.clone(), ids)
    };
    let max = engine.cfg().max_positions();
    anyhow::ensure!(
        ids.len().saturating_add(a.max_new_tokens) <= max,
        "--max-new-tokens {} with a {}-token prompt needs {} positions, but {} holds at most {max} \
         (max_position_embeddings); ask for at most {}",
        a.max_new_tokens,
        ids.len(),
        ids.len().saturating_add(a.max_new_tokens),
        a.model.display(),
        max.saturating_sub(ids.len())
    );
    let stop = if a.ignore_eos {
        Vec::new()
    } else {
        stop_tokens(&a.model, Some(&tok))?
    };
    let opts = GenOptions {
        max_new_tokens: a.max_new_tokens,
        sampling: Sampling::new(a.temperature, a.top_p),
        seed: a.seed,
        stop: stop.clone(),
    };
    let mut stream = TextStream::new(&tok);
    let stdout = std::io::stdout();
    let out = generate(&*engine, &ids, &opts, |id| {
        if !a.json && !stop.contains(&id) {
            let piece = stream.push(id)?;
            let mut lock = stdout.lock();
            let _ = lock.write_all(piece.as_bytes());
            let _ = lock.flush();
        }
        Ok(())
    })?;
    let shown: Vec<u32> = out
        .tokens
        .iter()
        .copied()
        .filter(|t| !stop.contains(t))
        .collect();
    if a.json {
        let j = json!({
            "model": a.model.display().to_string(),
            "engine": engine.name(),
            "prompt": text,
            "prompt_ids": ids,
            "tokens": out.tokens,
            "text": tok.decode(&shown)?,
            "stop": match out.stop { StopReason::Stop(t) => json!(t), StopReason::MaxTokens => json!("max_new_tokens") },
            "stop_tokens": stop,
            "sampling": format!("{:?}", opts.sampling),
            "seed": a.seed,
            "ttft_s": out.prefill_s,
            "decode_s": out.decode_s,
            "decode_tok_s": out.decode_tok_s(),
        });
        println!("{j}");
    } else {
        let rest = stream.finish()?;
        println!("{rest}");
        eprintln!(
            "[{} prompt tokens, first token after {:.2}s; {} tokens generated, {:.1} tok/s decode; stopped: {}]",
            ids.len(),
            out.prefill_s,
            out.tokens.len(),
            out.decode_tok_s(),
            match out.stop {
                StopReason::Stop(t) => format!("stop token {t}"),
                StopReason::MaxTokens => "max_new_tokens".into(),
            }
        );
    }
    Ok(())
}

/// The compile targets the width flags ask for, and whether -o is a folder of several outputs.
fn compile_targets(
    a: &CompileArgs,
    cfg: &whittle::checkpoint::config::ModelConfig,
) -> Result<(Vec<whittle::compile::Target>, bool)> {
    use whittle::compile::{Target, Width, TIERS};
    // Several widths: one output folder each under -o, named by the request.
    let several = |widths: Vec<Width>| -> Result<(Vec<Target>, bool)> {
        let targets = widths
            .into_iter()
            .map(|width| Target {
                output: a.output.join(match &width {
                    Width::Tier(n) => n.clone(),
                    Width::Size(w) => format!("width-{w}"),
                    Width::KeepRatio(r) => format!("keep-{r}"),
                }),
                width,
            })
            .collect();
        Ok((targets, true))
    };
    if let Some(t) = &a.tier {
        let names: Vec<String> = if t.trim() == "all" {
            TIERS.iter().map(|(n, _)| n.to_string()).collect()
        } else {
            t.split(',').map(|s| s.trim().to_string()).collect()
        };
        anyhow::ensure!(
            names.iter().all(|n| !n.is_empty()),
            "--tier {t:?}: an empty name in the list; write tiers as default,throughput or all"
        );
        if names.len() > 1 || t.trim() == "all" {
            return several(names.into_iter().map(Width::Tier).collect());
        }
        let one = Target {
            width: Width::Tier(names[0].clone()),
            output: a.output.clone(),
        };
        return Ok((vec![one], false));
    }
    if !a.widths.is_empty() {
        return several(a.widths.iter().map(|&w| Width::Size(w)).collect());
    }
    if !a.keep_ratios.is_empty() {
        return several(a.keep_ratios.iter().map(|&r| Width::KeepRatio(r)).collect());
    }
    let width = if a.max_gib.is_some() || a.max_params.is_some() {
        let store = whittle::checkpoint::safetensors::WeightStore::open(&a.model)?;
        let max_bytes = match a.max_gib {
            Some(g) => {
                anyhow::ensure!(
                    g.is_finite() && g > 0.0,
                    "--max-gib {g}: give a positive number of GiB"
                );
                Some((g * whittle::compile::inspect::GIB) as u64)
            }
            None => None,
        };
        let rw =
            whittle::compile::widest_within(&store, cfg, max_bytes, a.max_params, a.multiple_of)?;
        Width::Size(rw.width)
    } else {
        match (a.keep_ratio, a.intermediate_size) {
            (Some(r), _) => Width::KeepRatio(r),
            (_, Some(n)) => Width::Size(n),
            _ => Width::Tier("throughput".into()),
        }
    };
    Ok((
        vec![Target {
            width,
            output: a.output.clone(),
        }],
        false,
    ))
}

/// Held-out calibration sequences of a quality-ceiling run (None without a ceiling).
fn ceiling_holdout(a: &CompileArgs) -> Option<usize> {
    (a.max_kl.is_some() || a.max_ppl_ratio.is_some())
        .then(|| a.holdout.unwrap_or((a.samples.unwrap_or(128) / 8).max(1)))
}

/// `compile --max-kl / --max-ppl-ratio`: hold out part of the calibration set, search the width.
fn compile_to_ceiling(
    a: &CompileArgs,
    dev: &whittle::device::Device,
    ceiling: whittle::compile::width::Ceiling,
    plan: &whittle::compile::Plan,
    calib: Option<whittle::compile::calib::CalibSet>,
) -> Result<()> {
    let mut calib = calib.context("a quality ceiling is measured on held-out calibration text: give --calib FILE (or --calib-ids)")?;
    // A pre-tokenized set is what it is: its default slice is an eighth of it.
    let n = match (a.holdout, &a.calib_ids) {
        (Some(h), _) => h,
        (None, Some(_)) => (calib.n_seq / 8).max(1),
        (None, None) => ceiling_holdout(a).unwrap_or(1),
    };
    let held = whittle::compile::ceiling::hold_out(&mut calib, n)?;
    eprintln!(
        "{}: {} calibration sequences, {} held out to measure each probe",
        ceiling.flag(),
        calib.n_seq,
        held.windows.len()
    );
    let t = Instant::now();
    let load =
        |d: &std::path::Path| -> whittle::error::Result<Box<dyn whittle::engine::LogitModel>> {
            Ok(dev.load_eval_models(&[d])?.remove(0))
        };
    let pb = progress(0, "probe");
    let found = whittle::compile::ceiling::search(
        &a.model,
        &a.output,
        &calib,
        &held,
        plan,
        &mut || dev.backend(),
        &load,
        &mut |stage, done, total| {
            if stage.starts_with("layers") {
                pb.set_length(total);
                pb.set_position(done);
            }
        },
    )?;
    pb.finish_and_clear();
    println!(
        "| width | KL | PPL ratio | top-1 agree | {} {} |",
        ceiling.flag(),
        ceiling.limit()
    );
    println!("|---:|---:|---:|---:|---|");
    for p in &found.curve {
        println!(
            "| {} | {:.4} | {:.4} | {:.4} | {} |",
            p.width,
            p.kl,
            p.ppl_ratio,
            p.top1_agree,
            if p.within { "within" } else { "beyond" }
        );
    }
    let r = &found.outcome.report;
    println!(
        "wrote {}: intermediate_size {} → {} ({} probes, {:.1}s)",
        a.output.display(),
        r.intermediate_size_before,
        r.intermediate_size_after,
        found.curve.len(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `--calib self`: `n` sequences of `--seq` ids the model samples from BOS, on the compile's
/// device; the model is loaded for this and dropped before calibration.
fn self_calibration(
    a: &CompileArgs,
    dev: &whittle::device::Device,
    cfg: &whittle::checkpoint::config::ModelConfig,
    tok: &Tokenizer,
    n: usize,
) -> whittle::Result<whittle::compile::calib::Generated> {
    use whittle::compile::selfgen::{generate_sequences, SelfGenOptions};
    let bos = cfg.bos_token_id;
    if bos as usize >= tok.vocab_size().min(cfg.vocab_size) {
        return Err(whittle::Error::Arg {
            flag: "--calib",
            msg: format!(
                "self: the model's BOS id {bos} (bos_token_id in {}) is not in its tokenizer's \
                 vocabulary ({} tokens), so there is nothing to start sampling from; give a \
                 calibration file instead",
                a.model.join("config.json").display(),
                tok.vocab_size()
            ),
        });
    }
    let stop = whittle::serve::generate::stop_tokens(&a.model, Some(tok))?;
    let engines = dev.load_engines(&[&a.model])?;
    let o = SelfGenOptions {
        seed: a.calib_seed,
        temperature: a.calib_temperature,
        top_p: a.calib_top_p,
    };
    eprintln!(
        "--calib self: sampling {n} sequences of {} tokens (seed {}, temperature {}, top-p {})",
        a.seq, o.seed, o.temperature, o.top_p
    );
    let (ids, report) = generate_sequences(&*engines[0], n, a.seq, bos, &stop, &o, |done| {
        if done % 8 == 0 || done == n {
            eprintln!("  generated {done}/{n} sequences");
        }
    })?;
    let mut text = String::new();
    for (i, seq) in ids.chunks(a.seq).enumerate() {
        text += &format!("=== sequence {i}\n{}\n", tok.decode(seq)?);
    }
    Ok(whittle::compile::calib::Generated { ids, report, text })
}

fn cmd_compile(a: CompileArgs, device: whittle::device::DeviceChoice) -> Result<()> {
    let dev = open_device(device, None)?;
    use whittle::compile::{compile_batch, resolve_targets, streams_needed, CompileOptions};
    let cfg = whittle::checkpoint::config::ModelConfig::from_dir(&a.model)?;
    let (targets, several) = compile_targets(&a, &cfg)?;
    let opts = CompileOptions {
        kept_act_bytes: 4,
        method: a.method,
        sequential: !a.one_shot,
        target_original: a.refit_target == RefitTarget::Original,
        repair: !a.no_repair,
        damp: a.damp,
        token_weight: a.token_weight,
        width: targets[0].width.clone(),
        multiple_of: a.multiple_of,
        force: a.force,
        batch_seqs: a.batch,
        ceiling: match (a.max_kl, a.max_ppl_ratio) {
            (Some(x), _) => Some(whittle::compile::width::Ceiling::Kl(x)),
            (_, Some(r)) => Some(whittle::compile::width::Ceiling::PplRatio(r)),
            _ => None,
        },
        reconstruct: a
            .reconstruct
            .then_some(whittle::compile::reconstruct::ReconOptions {
                epochs: a.recon_epochs,
                lr: a.recon_lr,
                tokens: a.recon_tokens,
                ..Default::default()
            }),
        distill: a
            .distill
            .then_some(whittle::compile::distill::DistillOptions {
                epochs: a.distill_epochs,
                lr: a.distill_lr,
                tokens: a.distill_tokens,
                batch: a.distill_batch,
                schedule: a.distill_schedule,
            }),
    };
    let opts = opts.validate()?;
    // Validate widths and destinations before reading any calibration text.
    let rws = resolve_targets(cfg.intermediate_size, &targets, opts.multiple_of)?;
    let mut targets = targets;
    for (t, rw) in targets.iter_mut().zip(&rws) {
        if let whittle::compile::Width::Size(w) = t.width {
            if w != rw.width {
                eprintln!(
                    "width {w} is not a multiple of {} (--multiple-of): compiling width {}",
                    rw.multiple, rw.width
                );
                if several {
                    // Folders are named by the width they hold.
                    t.output = a.output.join(format!("width-{}", rw.width));
                }
            }
        }
    }
    if several {
        anyhow::ensure!(
            !a.output.exists() || a.output.is_dir(),
            "-o {}: with several widths -o is a folder to hold one output folder per width, and this is a file",
            a.output.display()
        );
        std::fs::create_dir_all(&a.output)
            .with_context(|| format!("creating the output folder {}", a.output.display()))?;
    }
    for t in &targets {
        whittle::compile::writer::check_destination(&a.model, &t.output, a.force)?;
    }
    let needs_calib = opts.needs_calib();
    let calib = if let Some(p) = &a.calib_ids {
        Some(whittle::compile::calib::CalibSet::from_ids_file(
            p,
            cfg.vocab_size,
        )?)
    } else if !a.calib.is_empty() {
        let tok = Tokenizer::from_dir(&a.model)?;
        let chat = ChatTemplate::for_model(&a.model, cfg.arch)?;
        let mut gen = |n: usize| self_calibration(&a, &dev, &cfg, &tok, n);
        let c = whittle::compile::calib::CalibSet::from_texts(
            &tok,
            chat.as_ref(),
            &a.calib,
            a.samples.unwrap_or(128) + ceiling_holdout(&a).unwrap_or(0),
            a.seq,
            cfg.bos_token_id,
            Some(&mut gen),
        )?;
        if let Some(n) = a.samples {
            let n = n + ceiling_holdout(&a).unwrap_or(0);
            anyhow::ensure!(
                c.n_seq == n,
                "--samples {n}: the calibration text holds only {} sequences of {} tokens; ask \
                 for at most {}, or give more text",
                c.n_seq,
                a.seq,
                c.n_seq
            );
        }
        Some(c)
    } else if a.distill {
        return Err(whittle::Error::Arg {
            flag: "--distill",
            msg: "distillation trains on calibration text; give --calib FILE or --calib-ids".into(),
        }
        .into());
    } else if needs_calib {
        anyhow::bail!(
            "--calib FILE (or --calib-ids) is required for --method {}{}; only --method magnitude --no-repair runs without calibration",
            opts.method.name(),
            if opts.repair { " with repair" } else { "" }
        );
    } else {
        None
    };
    if let Some(ceiling) = opts.ceiling {
        return compile_to_ceiling(&a, &dev, ceiling, &opts, calib);
    }
    anyhow::ensure!(
        a.holdout.is_none(),
        "--holdout is for --max-kl / --max-ppl-ratio: without a quality ceiling every sequence calibrates"
    );
    let n_streams = streams_needed(&opts, targets.len(), calib.is_some());
    let mut backends: Vec<Box<dyn whittle::engine::calib::Backend>> =
        (0..n_streams).map(|_| dev.backend()).collect();
    let tokens = calib.as_ref().map_or(0, |c| c.tokens());
    let mut opts = opts;
    opts.set_kept_act_bytes(backends[0].kept_activation_bytes());
    let need_of = |opts: &whittle::compile::Plan| {
        whittle::compile::run_memory_bytes(
            &cfg,
            tokens,
            opts,
            n_streams,
            backends[0].stream_elem_bytes(),
            &rws.iter().map(|r| r.width).collect::<Vec<_>>(),
        )
    };
    let mut need = need_of(&opts);
    let budget = match &a.max_memory {
        Some(m) => Some((
            whittle::mem::parse_bytes(m).with_context(|| {
                format!("--max-memory {m:?}: give a size such as 16G, 512M or a byte count")
            })?,
            "--max-memory",
        )),
        None if !dev.is_gpu() => whittle::mem::available_bytes().map(|b| (b, "available memory")),
        None => None,
    };
    if let Some((b, what)) = budget {
        if need > b && opts.keeps_acts() {
            // Run gate and up again instead of keeping a layer's activations.
            opts.set_kept_act_bytes(0);
            need = need_of(&opts);
        }
        let gib = |x: u64| x as f64 / whittle::compile::inspect::GIB;
        anyhow::ensure!(
            need <= b,
            "this run needs about {:.2} GiB ({n_streams} calibration stream(s) of {tokens} tokens × hidden {}{}), more than the {} ({:.2} GiB); compile fewer widths per run, use --one-shot (one stream for all widths), fewer --samples, or raise --max-memory",
            gib(need),
            cfg.hidden_size,
            if n_streams > 1 { ", one per width with --sequential" } else { "" },
            what,
            gib(b)
        );
    }
    let widths: Vec<String> = rws.iter().map(|r| r.width.to_string()).collect();
    eprintln!(
        "compiling {} → {}: MLP {} → {} (multiple of {}), method {}{}{}, calibration {} tokens{}",
        a.model.display(),
        a.output.display(),
        cfg.intermediate_size,
        widths.join(", "),
        rws[0].multiple,
        opts.method.name(),
        if opts.sequential {
            ", sequential"
        } else {
            ", one-shot"
        },
        if opts.repair { ", repair" } else { "" },
        tokens,
        if several {
            format!(
                "; {} width(s), {n_streams} stream(s), ~{:.2} GiB",
                targets.len(),
                need as f64 / whittle::compile::inspect::GIB
            )
        } else {
            String::new()
        }
    );
    let layers_pb = progress(cfg.num_layers, "layers");
    let mut write_pb: Option<ProgressBar> = None;
    let mut distill_pb: Option<ProgressBar> = None;
    let t = Instant::now();
    // The trait objects' 'static bound shortened to the borrow's, as the library's slice takes.
    fn borrow<'a>(
        b: &'a mut Box<dyn whittle::engine::calib::Backend>,
    ) -> &'a mut (dyn whittle::engine::calib::Backend + 'a) {
        &mut **b
    }
    let mut refs: Vec<&mut dyn whittle::engine::calib::Backend> =
        backends.iter_mut().map(borrow).collect();
    let outs = compile_batch(
        &a.model,
        &targets,
        calib.as_ref(),
        &opts,
        &mut refs,
        &mut |stage, done, total| {
            if stage.starts_with("layers") {
                layers_pb.set_message(stage.to_string());
                layers_pb.set_position(done);
            } else if stage.starts_with("distill") {
                let pb = distill_pb.get_or_insert_with(|| {
                    layers_pb.finish_and_clear();
                    let pb = ProgressBar::new(total);
                    pb.set_style(
                        ProgressStyle::with_template(
                            "{msg:>10} [{bar:30}] {pos}/{len} Adam steps {elapsed_precise}",
                        )
                        .expect("static template")
                        .progress_chars("=> "),
                    );
                    pb
                });
                pb.set_message(stage.to_string());
                pb.set_length(total);
                pb.set_position(done);
            } else {
                if let Some(pb) = distill_pb.take() {
                    pb.finish_and_clear();
                }
                let pb = write_pb.get_or_insert_with(|| {
                    layers_pb.finish_and_clear();
                    let pb = ProgressBar::new(total);
                    pb.set_style(
                        ProgressStyle::with_template(
                            "{msg:>10} [{bar:30}] {bytes}/{total_bytes} {elapsed_precise}",
                        )
                        .expect("static template")
                        .progress_chars("=> "),
                    );
                    pb.set_message("write");
                    pb
                });
                if done == 0 {
                    pb.reset();
                }
                pb.set_position(done);
            }
        },
    )?;
    layers_pb.finish_and_clear();
    if let Some(pb) = distill_pb {
        pb.finish_and_clear();
    }
    if let Some(pb) = write_pb {
        pb.finish_and_clear();
    }
    for (target, out) in targets.iter().zip(&outs) {
        let r = &out.report;
        println!(
            "wrote {}: intermediate_size {} → {}, parameters {} → {} ({:.1}% fewer), weights {:.3} → {:.3} GiB in {:.1}s, peak heap {:.0} MiB (RSS {:.0} MiB)",
            target.output.display(),
            r.intermediate_size_before,
            r.intermediate_size_after,
            r.params_before,
            r.params_after,
            r.params_saved_pct(),
            r.weight_gib_before,
            r.weight_gib_after,
            t.elapsed().as_secs_f64(),
            r.peak_heap_mib.unwrap_or(f64::NAN),
            r.peak_rss_mib.unwrap_or(f64::NAN)
        );
        if let Some(d) = &r.distillation {
            println!(
                "  distill: held-out KL {:.4} → {:.4} (epoch {} of {} kept; {} + {} sequences of {}) in {:.1}s",
                d.heldout_kl[0],
                d.heldout_kl[d.kept_epoch],
                d.kept_epoch,
                d.epochs,
                d.train_sequences,
                d.heldout_sequences,
                d.seq_len,
                d.seconds
            );
        }
    }
    Ok(())
}

/// The causes joined by ": ", each said once: a library error already prints its source (the
/// OS error after the path), which anyhow's chain would repeat.
fn error_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let c = cause.to_string();
        if out.ends_with(&c) {
            continue;
        }
        if !out.is_empty() {
            out += ": ";
        }
        out += &c;
    }
    out
}

/// Errors go to stderr as one line per cause (no backtrace, whatever RUST_BACKTRACE says), exit 1.
fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The forward pass allocates activation buffers of a few MB per op; glibc would hand each back
/// to the kernel (mmap/munmap) and fault it in again, zeroed, on the next call — ~5% of a CPU
/// forward. Keeping freed memory in the heap makes the next buffer of that size free to take.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets glibc malloc parameters; called once before any threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20); // glibc's maximum on 64-bit
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// Threads beyond 4× the cores only add switching (rayon starts them all up front and each
/// holds a stack): 10,000 threads hang a run. The floor of 64 keeps scripts that pin a count
/// working on small machines.
fn max_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (4 * cores).max(64)
}

fn run(cli: Cli) -> Result<()> {
    tune_allocator();
    whittle::mem::install_sigbus_handler();
    if let Some(n) = cli.threads {
        anyhow::ensure!(n > 0, "--threads must be at least 1");
        anyhow::ensure!(
            n <= max_threads(),
            "--threads {n} is more than {} (4 × the {} cores, at least 64); more threads than \
             cores only slow a run down",
            max_threads(),
            std::thread::available_parallelism().map_or(1, |n| n.get())
        );
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("setting up the thread pool")?;
    }
    use whittle::cpu::bf16::{self, Precision};
    bf16::set_precision(cli.precision.unwrap_or(match cli.cmd {
        Cmd::Compile(_) => Precision::compile_default(),
        _ => Precision::F32,
    }));
    match cli.cmd {
        Cmd::Eval(a) => cmd_eval(a, cli.device),
        Cmd::Inspect { model, json } => {
            let s = whittle::compile::inspect::summarize(&model)?;
            if json {
                println!("{}", s.to_json());
            } else {
                print!("{}", s.to_text());
            }
            Ok(())
        }
        Cmd::Bench(a) => cmd_bench(a, cli.device),
        Cmd::Generate(a) => cmd_generate(a, cli.device),
        Cmd::Compile(a) => cmd_compile(a, cli.device),
    }
}

//! The `whittle` command line. Library errors are wrapped in `anyhow` here; progress goes to
//! stderr, results to stdout.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;
use whittle::eval::{evaluate, make_windows};
use whittle::model::Model;
use whittle::tokenizer::{read_text, Tokenizer};

#[global_allocator]
static ALLOC: whittle::mem::CountingAlloc = whittle::mem::CountingAlloc;

#[derive(Parser)]
#[command(
    name = "whittle",
    version,
    about = "Compile a Gemma-2/3 model into a smaller dense Hugging Face checkpoint"
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
    text: Vec<whittle::tasks::NamedText>,
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
    /// format) or {"text": ...} documents, one per line.
    #[arg(long, num_args = 1..)]
    calib: Vec<whittle::calib::CalibSource>,
    /// Pre-tokenized calibration: safetensors with an integer input_ids [n, seq] (BOS included).
    #[arg(long, conflicts_with = "calib")]
    calib_ids: Option<PathBuf>,
    /// Calibration sequences.
    #[arg(long, default_value_t = 128)]
    samples: usize,
    /// Calibration sequence length, BOS included.
    #[arg(long, default_value_t = 512)]
    seq: usize,
    /// Neuron score: obs, energy or magnitude (obs + sequential measured best on Gemma 3 270M,
    /// see README).
    #[arg(long, default_value = "obs")]
    method: String,
    /// Calibrate layer l on the already-pruned layers < l and re-fit against that stream (the
    /// default).
    #[arg(long, overrides_with = "one_shot")]
    sequential: bool,
    /// Calibrate every layer on the original model (faster, slightly lower quality).
    #[arg(long, overrides_with = "sequential")]
    one_shot: bool,
    /// With --sequential, what each pruned MLP is re-fit to reproduce: `layer` (the full-width
    /// layer on the pruned model's own activations) or `original` (the original model's layer
    /// output, through the cross-covariance of both models' activations).
    #[arg(long, default_value = "layer", value_parser = ["layer", "original"])]
    refit_target: String,
    /// Keep the surviving down_proj columns as they are (no least-squares re-fit).
    #[arg(long)]
    no_repair: bool,
    /// Ridge for OBS and repair, as a fraction of the mean activation energy.
    #[arg(long, default_value_t = 0.001)]
    damp: f64,
    /// How calibration tokens are weighed: `out` (default: ÷ each token's MLP-output mean
    /// square, which the post-FFN RMSNorm divides out; measured best), `uniform` (the down_proj
    /// output error itself) or `out-resid` (also ÷ the residual's mean square).
    #[arg(long, default_value = "out", value_parser = ["uniform", "out", "out-resid"])]
    token_weight: String,
    /// Named width: default (62/72), production (57/72), throughput (51/72), experimental (38/72).
    #[arg(long, conflicts_with_all = ["keep_ratio", "intermediate_size"])]
    tier: Option<String>,
    /// Fraction of MLP neurons to keep, in (0, 1].
    #[arg(long, conflicts_with = "intermediate_size")]
    keep_ratio: Option<f64>,
    /// Exact MLP width to keep.
    #[arg(long)]
    intermediate_size: Option<usize>,
    /// Round the width to a multiple of this (clamped for small models).
    #[arg(long, default_value_t = 128)]
    multiple_of: usize,
    /// Replace an existing output folder.
    #[arg(long)]
    force: bool,
    /// Calibration sequences per batch.
    #[arg(long, default_value_t = 8)]
    batch: usize,
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
    #[arg(long)]
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
    /// Wrap the prompt in Gemma's chat turn format (`<start_of_turn>user ... <start_of_turn>model`).
    /// Default: on when the model ships a chat template (instruction-tuned checkpoints).
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
    let text = read_text(&win.text)?;
    let ids = tok.encode(&text)?;
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
    use whittle::tasks;
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
        let run = |m: &dyn whittle::eval::LogitModel, who: &str| {
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
        "loaded {} in {:.1}s (cpu, f32)",
        dir.display(),
        t.elapsed().as_secs_f64()
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
    whittle::tasks::check_text_names(&a.text)?;
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
    use whittle::bench::{self, Protocol, Subject};
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
    let (no_head, with_head) = whittle::bench::forward_throughput(&model, &windows, || pb.inc(1))?;
    pb.finish_and_clear();
    let out = json!({
        "model": a.model.display().to_string(),
        "seq": win.seq,
        "windows": windows.len(),
        "threads": rayon::current_num_threads(),
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
    use whittle::decode::Sampling;
    use whittle::generate::{
        chat_prompt, generate, has_chat_template, prompt_ids, stop_tokens, GenOptions, StopReason,
        TextStream,
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
        let auto = has_chat_template(&a.model);
        if auto {
            eprintln!("chat template found: wrapping the prompt in Gemma turns (--no-chat to send it as is)");
        }
        auto
    };
    let text = if chat {
        chat_prompt(&a.prompt)
    } else {
        a.prompt.clone()
    };
    let ids = prompt_ids(&tok, engine.cfg().bos_token_id, &text)?;
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

fn cmd_compile(a: CompileArgs, device: whittle::device::DeviceChoice) -> Result<()> {
    let dev = open_device(device, None)?;
    use whittle::compile::{compile, CompileOptions, Width};
    let width = match (&a.tier, a.keep_ratio, a.intermediate_size) {
        (Some(t), _, _) => Width::Tier(t.clone()),
        (_, Some(r), _) => Width::KeepRatio(r),
        (_, _, Some(n)) => Width::Size(n),
        _ => Width::Tier("throughput".into()),
    };
    let opts = CompileOptions {
        method: whittle::prune::Method::parse(&a.method)?,
        sequential: !a.one_shot,
        target_original: a.refit_target == "original",
        repair: !a.no_repair,
        damp: a.damp,
        token_weight: whittle::calib::TokenWeight::parse(&a.token_weight)?,
        width,
        multiple_of: a.multiple_of,
        force: a.force,
        batch_seqs: a.batch,
    };
    anyhow::ensure!(
        a.damp > 0.0 && a.damp.is_finite(),
        "--damp must be a positive number"
    );
    let cfg = whittle::config::ModelConfig::from_dir(&a.model)?;
    // Validate width and destination before reading any calibration text.
    let rw = whittle::compile::resolve_width(cfg.intermediate_size, &opts.width, opts.multiple_of)?;
    whittle::writer::check_destination(&a.model, &a.output, a.force)?;
    let needs_calib = opts.method != whittle::prune::Method::Magnitude || opts.repair;
    let calib = if let Some(p) = &a.calib_ids {
        Some(whittle::calib::CalibSet::from_ids_file(p, cfg.vocab_size)?)
    } else if !a.calib.is_empty() {
        let tok = Tokenizer::from_dir(&a.model)?;
        Some(whittle::calib::CalibSet::from_texts(
            &tok,
            &a.calib,
            a.samples,
            a.seq,
            cfg.bos_token_id,
        )?)
    } else if needs_calib {
        anyhow::bail!(
            "--calib FILE (or --calib-ids) is required for --method {}{}; only --method magnitude --no-repair runs without calibration",
            a.method,
            if opts.repair { " with repair" } else { "" }
        );
    } else {
        None
    };
    eprintln!(
        "compiling {} → {}: MLP {} → {} (multiple of {}), method {}{}{}, calibration {} tokens",
        a.model.display(),
        a.output.display(),
        cfg.intermediate_size,
        rw.width,
        rw.multiple,
        opts.method.name(),
        if opts.sequential {
            ", sequential"
        } else {
            ", one-shot"
        },
        if opts.repair { ", repair" } else { "" },
        calib.as_ref().map_or(0, |c| c.tokens())
    );
    let mut backend = dev.backend();
    let layers_pb = progress(cfg.num_layers, "layers");
    let mut write_pb: Option<ProgressBar> = None;
    let t = Instant::now();
    let out = compile(
        &a.model,
        &a.output,
        calib.as_ref(),
        &opts,
        &mut *backend,
        &mut |stage, done, total| {
            if stage == "layers" {
                layers_pb.set_position(done);
            } else {
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
                pb.set_position(done);
            }
        },
    )?;
    layers_pb.finish_and_clear();
    if let Some(pb) = write_pb {
        pb.finish_and_clear();
    }
    let r = &out.report;
    println!(
        "wrote {}: intermediate_size {} → {}, parameters {} → {} ({:.1}% fewer), weights {:.3} → {:.3} GiB in {:.1}s, peak heap {:.0} MiB (RSS {:.0} MiB)",
        a.output.display(),
        r["intermediate_size_before"],
        r["intermediate_size_after"],
        r["params_before"],
        r["params_after"],
        100.0 * (1.0 - r["params_after"].as_f64().unwrap_or(0.0) / r["params_before"].as_f64().unwrap_or(1.0)),
        r["weight_gib_before"].as_f64().unwrap_or(0.0),
        r["weight_gib_after"].as_f64().unwrap_or(0.0),
        t.elapsed().as_secs_f64(),
        r["peak_heap_mib"].as_f64().unwrap_or(f64::NAN),
        r["peak_rss_mib"].as_f64().unwrap_or(f64::NAN)
    );
    Ok(())
}

/// Errors go to stderr as one line per cause (no backtrace, whatever RUST_BACKTRACE says), exit 1.
fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
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

fn run(cli: Cli) -> Result<()> {
    tune_allocator();
    if let Some(n) = cli.threads {
        anyhow::ensure!(n > 0, "--threads must be at least 1");
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("setting up the thread pool")?;
    }
    match cli.cmd {
        Cmd::Eval(a) => cmd_eval(a, cli.device),
        Cmd::Inspect { model, json } => {
            let s = whittle::inspect::summarize(&model)?;
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

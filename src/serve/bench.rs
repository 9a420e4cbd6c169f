//! `whittle bench`: the serving figures of a model card, measured on a `decode::Engine`: the CPU
//! path (`Model`, f32) or the GPU path (`cuda::GpuModel`, bf16), whichever `--device` selects.
//! The measuring functions are the same for both; each figure ends with the greedy token id on
//! the host, so asynchronous GPU work is complete when the clock stops.
//!
//! # Protocol
//!
//! Prompts are cut from one text (default: `src/bench_prompt.txt`, compiled in; `--prompt-file`
//! replaces it), tokenized once per model without special tokens and tiled (repeated end to end)
//! to any length. Every prompt is BOS + `len - 1` text tokens; sequence `b` of a batch starts
//! `b · (n_text / batch)` tokens into the tiled text, so the sequences of a batch differ.
//!
//! | figure | what is timed | repeats |
//! |---|---|---|
//! | weights GiB, parameters | exact, from the checkpoint's tensor bytes / shapes (`inspect::summarize`) | – |
//! | chat prefill tok/s | `prefill_batch` (8) × `prefill_len` (512) prompts in one batched forward, **no KV cache**, LM head on the **last position of each sequence only**, greedy token picked; tok/s = 8·512 / wall time | `repeats` (3): median, min–max |
//! | RAG TTFT | 1 × `rag_len` (2048) prompt: cache allocation + prefill (filling the KV cache) + LM head on the last position + greedy pick = time to the first token | `runs` (30): p50, p95, min–max |
//! | decode tok/s | 1 × `decode_prompt` (512) prefill (not timed; its token is not counted), then `decode_tokens` (128) greedy single-token steps over the KV cache, each step = forward + LM head + argmax; tok/s = 128 / time of the steps | `repeats` (3): median, min–max |
//!
//! Before any timing, every model runs each measurement once untimed per `warmup` (1; the decode
//! warm-up is 8 steps). With `--against`, both models are loaded and measured **interleaved**
//! (A then B for each repeat of each figure), so drift on a shared machine hits both alike; the
//! ratio column is MODEL / AGAINST for every row (above 1 is faster for tok/s, slower for TTFT).
//! Percentiles interpolate linearly between order statistics (numpy's default), as
//! `scripts/bench_hf.py` does for transformers.
//!
//! `--quick` shrinks the shapes (2 × 128 prefill, 256-token RAG, 64 + 32 decode, 5 runs,
//! 2 repeats) for smoke tests; the JSON records the shapes used.

use crate::checkpoint::tokenizer::Tokenizer;
use crate::compile::inspect::{Summary, GIB};
use crate::cpu::model::Model;
use crate::engine::Batch;
use crate::engine::Engine;
use crate::error::{Error, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The default prompt text (original prose, ~4.5 KB), tiled to the lengths needed.
pub const DEFAULT_PROMPT: &str = include_str!("bench_prompt.txt");

/// Decode steps run by the warm-up.
const WARMUP_DECODE_STEPS: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protocol {
    pub prefill_batch: usize,
    pub prefill_len: usize,
    pub rag_len: usize,
    pub decode_prompt: usize,
    pub decode_tokens: usize,
    /// TTFT runs.
    pub runs: usize,
    /// Repeats of the prefill and decode measurements.
    pub repeats: usize,
    pub warmup: usize,
}

impl Protocol {
    pub fn standard() -> Protocol {
        Protocol {
            prefill_batch: 8,
            prefill_len: 512,
            rag_len: 2048,
            decode_prompt: 512,
            decode_tokens: 128,
            runs: 30,
            repeats: 3,
            warmup: 1,
        }
    }

    pub fn quick() -> Protocol {
        Protocol {
            prefill_batch: 2,
            prefill_len: 128,
            rag_len: 256,
            decode_prompt: 64,
            decode_tokens: 32,
            runs: 5,
            repeats: 2,
            warmup: 1,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let pos = |flag: &'static str, v: usize, min: usize| {
            if v < min {
                Err(Error::Arg {
                    flag,
                    msg: format!("must be at least {min}"),
                })
            } else {
                Ok(())
            }
        };
        pos("--prefill-batch", self.prefill_batch, 1)?;
        pos("--prefill-len", self.prefill_len, 2)?;
        pos("--rag-len", self.rag_len, 2)?;
        pos("--decode-prompt", self.decode_prompt, 2)?;
        pos("--decode-tokens", self.decode_tokens, 1)?;
        pos("--runs", self.runs, 1)?;
        pos("--repeats", self.repeats, 1)?;
        Ok(())
    }

    pub fn to_json(&self) -> Value {
        json!({
            "prefill_batch": self.prefill_batch,
            "prefill_len": self.prefill_len,
            "prefill_cache": false,
            "prefill_lm_head": "last position of each sequence",
            "rag_len": self.rag_len,
            "decode_prompt": self.decode_prompt,
            "decode_tokens": self.decode_tokens,
            "runs": self.runs,
            "repeats": self.repeats,
            "warmup": self.warmup,
        })
    }
}

/// One model under test: its engine (weights on a device), size summary and tokenized prompt
/// text.
pub struct Subject {
    pub dir: PathBuf,
    pub label: String,
    pub engine: Box<dyn Engine>,
    pub summary: Summary,
    /// The prompt text's tokens (no BOS), at least one.
    pub text_ids: Vec<u32>,
}

impl Subject {
    pub fn new(dir: &Path, engine: Box<dyn Engine>, prompt_text: &str) -> Result<Subject> {
        let summary = crate::compile::inspect::summarize(dir)?;
        let tok = Tokenizer::from_dir(dir)?;
        let text_ids = tok.encode(prompt_text)?;
        if text_ids.is_empty() {
            return Err(Error::Other(
                "the benchmark prompt text has no tokens".into(),
            ));
        }
        let label = dir
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.display().to_string());
        Ok(Subject {
            dir: dir.to_path_buf(),
            label,
            engine,
            summary,
            text_ids,
        })
    }

    /// BOS + `len - 1` tokens of the tiled text starting at `offset`.
    pub fn prompt(&self, offset: usize, len: usize) -> Vec<u32> {
        let n = self.text_ids.len();
        let mut ids = Vec::with_capacity(len);
        ids.push(self.engine.cfg().bos_token_id);
        ids.extend((0..len.saturating_sub(1)).map(|i| self.text_ids[(offset + i) % n]));
        ids
    }
}

/// Chat prefill: one batched forward without cache, LM head on each sequence's last position;
/// returns tokens/s.
pub fn measure_prefill(s: &Subject, p: &Protocol) -> Result<f64> {
    let (b, t) = (p.prefill_batch, p.prefill_len);
    let stride = s.text_ids.len() / b;
    let ids: Vec<u32> = (0..b).flat_map(|i| s.prompt(i * stride, t)).collect();
    let t0 = Instant::now();
    let picked = s.engine.last_token_picks(
        &ids,
        Batch {
            n_seq: b,
            seq_len: t,
        },
    )?;
    let secs = t0.elapsed().as_secs_f64();
    std::hint::black_box(picked);
    Ok((b * t) as f64 / secs)
}

/// Time to first token for one `rag_len` prompt, seconds.
pub fn measure_ttft(s: &Subject, p: &Protocol) -> Result<f64> {
    let ids = s.prompt(0, p.rag_len);
    let t0 = Instant::now();
    let mut dec = s.engine.decoder(p.rag_len + 1)?;
    let tok = dec.prefill_greedy(&ids)?;
    let secs = t0.elapsed().as_secs_f64();
    std::hint::black_box(tok);
    Ok(secs)
}

/// Greedy decode of `steps` tokens after a `decode_prompt` prefill; returns steps/s.
pub fn measure_decode(s: &Subject, p: &Protocol, steps: usize) -> Result<f64> {
    let ids = s.prompt(0, p.decode_prompt);
    let mut dec = s.engine.decoder(p.decode_prompt + steps)?;
    let mut tok = dec.prefill_greedy(&ids)?;
    let t0 = Instant::now();
    for _ in 0..steps {
        tok = dec.step_greedy(tok)?;
    }
    let secs = t0.elapsed().as_secs_f64();
    std::hint::black_box(tok);
    Ok(steps as f64 / secs)
}

/// Raw timings of one model.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    pub prefill_tok_s: Vec<f64>,
    pub ttft_s: Vec<f64>,
    pub decode_tok_s: Vec<f64>,
}

/// Runs the protocol on every subject, interleaved; `progress` gets a short description of each
/// measurement before it starts.
pub fn run(
    subjects: &[Subject],
    p: &Protocol,
    mut progress: impl FnMut(&str),
) -> Result<Vec<Measured>> {
    p.validate()?;
    let mut m = vec![Measured::default(); subjects.len()];
    for w in 0..p.warmup {
        for s in subjects {
            progress(&format!("warm-up {}/{} {}", w + 1, p.warmup, s.label));
            measure_prefill(s, p)?;
            measure_ttft(s, p)?;
            measure_decode(s, p, WARMUP_DECODE_STEPS.min(p.decode_tokens))?;
        }
    }
    for r in 0..p.repeats {
        for (s, m) in subjects.iter().zip(&mut m) {
            progress(&format!("prefill {}/{} {}", r + 1, p.repeats, s.label));
            m.prefill_tok_s.push(measure_prefill(s, p)?);
        }
    }
    for r in 0..p.runs {
        for (s, m) in subjects.iter().zip(&mut m) {
            progress(&format!("ttft {}/{} {}", r + 1, p.runs, s.label));
            m.ttft_s.push(measure_ttft(s, p)?);
        }
    }
    for r in 0..p.repeats {
        for (s, m) in subjects.iter().zip(&mut m) {
            progress(&format!("decode {}/{} {}", r + 1, p.repeats, s.label));
            m.decode_tok_s.push(measure_decode(s, p, p.decode_tokens)?);
        }
    }
    Ok(m)
}

/// Linear-interpolation percentile (numpy's default), `q` in [0, 1].
pub fn percentile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let x = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (x.floor() as usize, x.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (x - lo as f64)
}

fn spread(values: &[f64], scale: f64) -> Value {
    let v: Vec<f64> = values.iter().map(|x| x * scale).collect();
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    json!({
        "median": percentile(&v, 0.5),
        "p50": percentile(&v, 0.5),
        "p95": percentile(&v, 0.95),
        "min": min,
        "max": max,
        "mean": v.iter().sum::<f64>() / v.len() as f64,
        "n": v.len(),
        "values": v,
    })
}

/// One model's figures as JSON (the shape `scripts/bench_hf.py` writes too).
pub fn model_json(s: &Subject, m: &Measured) -> Value {
    json!({
        "model": s.dir.display().to_string(),
        "label": s.label,
        "weight_bytes": s.summary.weight_bytes,
        "weight_gib": s.summary.weight_bytes as f64 / GIB,
        "params": s.summary.total_params,
        "prefill_tok_s": spread(&m.prefill_tok_s, 1.0),
        "ttft_ms": spread(&m.ttft_s, 1e3),
        "decode_tok_s": spread(&m.decode_tok_s, 1.0),
    })
}

/// The figures compared in the ratio column: (JSON key, getter on a model's JSON).
type Row = (&'static str, fn(&Value) -> f64);

const ROWS: [Row; 6] = [
    ("weight_gib", |v| {
        v["weight_gib"].as_f64().unwrap_or(f64::NAN)
    }),
    ("params", |v| v["params"].as_f64().unwrap_or(f64::NAN)),
    ("prefill_tok_s", |v| {
        v["prefill_tok_s"]["median"].as_f64().unwrap_or(f64::NAN)
    }),
    ("ttft_p50_ms", |v| {
        v["ttft_ms"]["p50"].as_f64().unwrap_or(f64::NAN)
    }),
    ("ttft_p95_ms", |v| {
        v["ttft_ms"]["p95"].as_f64().unwrap_or(f64::NAN)
    }),
    ("decode_tok_s", |v| {
        v["decode_tok_s"]["median"].as_f64().unwrap_or(f64::NAN)
    }),
];

/// The whole report: protocol, engine, per-model figures, and MODEL/AGAINST ratios when two.
pub fn report_json(subjects: &[Subject], measured: &[Measured], p: &Protocol) -> Value {
    let models: Vec<Value> = subjects
        .iter()
        .zip(measured)
        .map(|(s, m)| model_json(s, m))
        .collect();
    let (engine, device, kernels) = subjects
        .first()
        .map(|s| (s.engine.name(), s.engine.device(), s.engine.kernels()))
        .unwrap_or_else(|| ("whittle cpu f32".into(), "cpu".into(), None));
    let mut out = json!({
        "engine": engine,
        "device": device,
        "kernels": kernels,
        "cpu_gemm": crate::cpu::bf16::describe(),
        "version": env!("CARGO_PKG_VERSION"),
        "threads": rayon::current_num_threads(),
        "protocol": p.to_json(),
        "models": models,
    });
    if models.len() == 2 {
        let r: serde_json::Map<String, Value> = ROWS
            .iter()
            .map(|(k, f)| (k.to_string(), json!(f(&models[0]) / f(&models[1]))))
            .collect();
        out["ratios"] = Value::Object(r);
    }
    out
}

/// A markdown table (model-card style) of a `report_json` value; works for `bench_hf.py`'s JSON
/// too.
pub fn report_markdown(report: &Value) -> String {
    let p = &report["protocol"];
    let u = |k: &str| p[k].as_u64().unwrap_or(0);
    let models = report["models"].as_array().cloned().unwrap_or_default();
    let two = models.len() == 2;
    let mut s = String::new();
    s += "| |";
    for m in &models {
        s += &format!(" {} |", m["label"].as_str().unwrap_or("?"));
    }
    if two {
        s += " ratio |";
    }
    s += "\n|---|";
    for _ in &models {
        s += "---:|";
    }
    if two {
        s += "---:|";
    }
    s += "\n";
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let rng = |v: &Value, d: usize| {
        format!(
            "{:.*} ({:.*}–{:.*})",
            d,
            f(&v["median"]),
            d,
            f(&v["min"]),
            d,
            f(&v["max"])
        )
    };
    let labels = [
        "weights (GiB)".to_string(),
        "parameters".to_string(),
        format!(
            "chat prefill, tok/s ({} × {}, no cache)",
            u("prefill_batch"),
            u("prefill_len")
        ),
        format!("RAG TTFT p50, ms (1 × {})", u("rag_len")),
        format!("RAG TTFT p95, ms ({} runs)", u("runs")),
        format!(
            "decode, tok/s (1 × {} + {})",
            u("decode_prompt"),
            u("decode_tokens")
        ),
    ];
    let cell = |row: usize, m: &Value| -> String {
        let t = &m["ttft_ms"];
        match row {
            0 => format!("{:.4}", f(&m["weight_gib"])),
            1 => format!("{:.1} M", f(&m["params"]) / 1e6),
            2 => rng(&m["prefill_tok_s"], 1),
            3 => format!(
                "{:.1} ({:.1}–{:.1})",
                f(&t["p50"]),
                f(&t["min"]),
                f(&t["max"])
            ),
            4 => format!("{:.1}", f(&t["p95"])),
            _ => rng(&m["decode_tok_s"], 2),
        }
    };
    for (i, label) in labels.iter().enumerate() {
        s += &format!("| {label} |");
        for m in &models {
            s += &format!(" {} |", cell(i, m));
        }
        if two {
            let k = ROWS[i].0;
            s += &format!(" {:.3} |", report["ratios"][k].as_f64().unwrap_or(f64::NAN));
        }
        s += "\n";
    }
    let device = match report["device"].as_str() {
        Some(d) if d != "cpu" => format!(" on {d}"),
        _ => String::new(),
    };
    s +=
        &format!(
        "\n{}{device}, {} threads; tok/s and TTFT as median or p50 (min–max) over {} repeats / {} runs; \
         prefill LM head on the last position only{}.\n",
        report["engine"].as_str().unwrap_or("?"),
        report["threads"],
        u("repeats"),
        u("runs"),
        if two { "; ratio = first / second model" } else { "" }
    );
    s
}

/// Forward-pass throughput over evaluation windows, batch 1: hidden states only, then with the
/// LM head on every position (full logits). One untimed warm-up window first. Returns
/// (no_head tok/s, with_head tok/s) counting every position of every window.
pub fn forward_throughput(
    model: &Model,
    windows: &[Vec<u32>],
    mut tick: impl FnMut(),
) -> Result<(f64, f64)> {
    let Some(first) = windows.first() else {
        return Err(Error::Other("no windows to benchmark".into()));
    };
    let seq = first.len();
    let batch = Batch {
        n_seq: 1,
        seq_len: seq,
    };
    model.forward_hidden(first, batch, None)?;
    let tokens = (windows.len() * seq) as f64;
    let t = Instant::now();
    for w in windows {
        std::hint::black_box(model.forward_hidden(w, batch, None)?);
        tick();
    }
    let no_head = tokens / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for w in windows {
        std::hint::black_box(model.forward_logits(w, batch)?);
        tick();
    }
    let with_head = tokens / t.elapsed().as_secs_f64();
    Ok((no_head, with_head))
}

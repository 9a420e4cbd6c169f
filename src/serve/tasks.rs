//! Zero-shot downstream tasks with lm-eval-harness's conventions (read from its source,
//! `lm_eval/tasks/{arc,piqa,hellaswag,lambada}` and `lm_eval/api/{task,model,metrics}.py`):
//!
//! - **Prompts.** ARC: `"Question: {question}\nAnswer:"`, choices `choices.text`, gold the index
//!   of `answerKey` in `choices.label`. PIQA: `"Question: {goal}\nAnswer:"`, choices
//!   `[sol1, sol2]`. HellaSwag: `preprocess(activity_label + ": " + ctx_a + " " +
//!   capitalize(ctx_b))`, choices `preprocess(ending)` (strip, `" [title]"` → `". "`, drop
//!   `[...]`, `"  "` → `" "`). LAMBADA (lambada_openai): the document split at its last `' '`,
//!   the last word the target.
//! - **Requests.** Each choice is scored as the continuation `" " + choice` (the target
//!   delimiter) of the context. As HFLM's `_encode_pair`: trailing whitespace of the context
//!   moves to the continuation; the context is tokenized alone and the context + continuation
//!   string whole, and the continuation's tokens are the whole's past the context's length. BOS
//!   is prepended (Gemma's tokenizer adds it, so lm-eval feeds it).
//! - **Metrics.** `acc`: argmax of the summed continuation log-likelihood is gold; `acc_norm`:
//!   the same divided by the choice's length in characters (`completion_len`, no delimiter);
//!   first index wins ties, as `np.argmax`. LAMBADA `acc`: every continuation token is the
//!   argmax (greedy); `perplexity` = exp(−mean log-likelihood) over documents. Standard error of
//!   a mean: sample standard deviation / √n (lm-eval's `mean_stderr`). LAMBADA perplexity's
//!   stderr is the delta method, ppl · mean_stderr(ll) (lm-eval bootstraps it instead).
//!
//! # Scoring
//! Requests of many items run in one right-padded batch (causal attention: padding after a
//! sequence cannot change its rows). The LM head, most of a small Gemma's arithmetic at a
//! 262k vocabulary, runs only on the rows that predict continuation tokens, and the context's
//! last row, which predicts every choice's first token, once per item. The body still runs the
//! context once per choice. Log-softmax in f64 on the host, as `eval`.
//!
//! Data: JSON Lines from scripts/get-tasks.py, a header line with the item count then the
//! dataset's raw documents.

use crate::checkpoint::tokenizer::Tokenizer;
use crate::cpu::model::LOGIT_ROWS;
use crate::engine::Batch;
use crate::engine::LogitModel;
use crate::error::{Error, Result};
use crate::serve::eval::{argmax, log_sum_exp};
use rayon::prelude::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The tasks whittle knows, in report order.
pub const KNOWN: [&str; 5] = ["arc_easy", "arc_challenge", "hellaswag", "piqa", "lambada"];

/// The command that fetches the task data (named in errors).
pub const FETCH: &str = ".venv/bin/python scripts/get-tasks.py data/tasks";

/// One document as prompt and choices; LAMBADA has one "choice", its last word.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub context: String,
    pub choices: Vec<String>,
    pub gold: usize,
}

#[derive(Debug, Clone)]
pub struct Task {
    pub name: String,
    pub path: PathBuf,
    pub items: Vec<Item>,
}

impl Task {
    /// LAMBADA is scored by greedy last-word match and perplexity, not a choice.
    pub fn is_last_word(&self) -> bool {
        self.name == "lambada"
    }
}

fn unknown_task(t: &str) -> Error {
    Error::Arg {
        flag: "--tasks",
        msg: format!("unknown task \"{t}\"; known tasks: {}", KNOWN.join(", ")),
    }
}

/// Parses `--tasks a,b,c`: known names, each once.
pub fn parse_list(s: &str) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for t in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if !KNOWN.contains(&t) {
            return Err(unknown_task(t));
        }
        if !out.iter().any(|o| o == t) {
            out.push(t.to_string());
        }
    }
    if out.is_empty() {
        return Err(Error::Arg {
            flag: "--tasks",
            msg: format!("no task named; known tasks: {}", KNOWN.join(", ")),
        });
    }
    Ok(out)
}

/// Python's `str.capitalize`: first character upper case, the rest lower case.
fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f
            .to_uppercase()
            .chain(c.flat_map(char::to_lowercase))
            .collect(),
        None => String::new(),
    }
}

/// lm-eval's HellaSwag `preprocess`.
pub fn hellaswag_preprocess(text: &str) -> String {
    let t = text.trim().replace(" [title]", ". ");
    // re.sub(r"\[.*?\]", "", t): shortest bracketed runs; `.` does not cross a newline.
    let mut out = String::with_capacity(t.len());
    let mut rest = t.as_str();
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        match after.find([']', '\n']) {
            Some(close) if after.as_bytes()[close] == b']' => {
                out.push_str(&rest[..open]);
                rest = &after[close + 1..];
            }
            _ => {
                // No match from this '[': keep it and search on after it.
                out.push_str(&rest[..open + 1]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out.replace("  ", " ")
}

fn field<'a>(doc: &'a Value, key: &str, ctx: &dyn Fn(String) -> Error) -> Result<&'a Value> {
    doc.get(key)
        .ok_or_else(|| ctx(format!("missing field \"{key}\"")))
}

fn str_field<'a>(doc: &'a Value, key: &str, ctx: &dyn Fn(String) -> Error) -> Result<&'a str> {
    field(doc, key, ctx)?
        .as_str()
        .ok_or_else(|| ctx(format!("field \"{key}\" is not a string")))
}

fn str_list(v: &Value, key: &str, ctx: &dyn Fn(String) -> Error) -> Result<Vec<String>> {
    let a = v
        .as_array()
        .ok_or_else(|| ctx(format!("field \"{key}\" is not a list")))?;
    a.iter()
        .map(|x| {
            x.as_str()
                .map(str::to_string)
                .ok_or_else(|| ctx(format!("field \"{key}\" holds a non-string")))
        })
        .collect()
}

/// One raw document of `task` as an `Item`.
pub fn make_item(task: &str, doc: &Value, ctx: &dyn Fn(String) -> Error) -> Result<Item> {
    let item = match task {
        "arc_easy" | "arc_challenge" => {
            let q = str_field(doc, "question", ctx)?;
            let ch = field(doc, "choices", ctx)?;
            let text = str_list(field(ch, "text", ctx)?, "choices.text", ctx)?;
            let labels = str_list(field(ch, "label", ctx)?, "choices.label", ctx)?;
            let key = str_field(doc, "answerKey", ctx)?;
            let gold = labels.iter().position(|l| l == key).ok_or_else(|| {
                ctx(format!(
                    "answerKey \"{key}\" is not among the labels {labels:?}"
                ))
            })?;
            Item {
                context: format!("Question: {q}\nAnswer:"),
                choices: text,
                gold,
            }
        }
        "piqa" => Item {
            context: format!("Question: {}\nAnswer:", str_field(doc, "goal", ctx)?),
            choices: vec![
                str_field(doc, "sol1", ctx)?.to_string(),
                str_field(doc, "sol2", ctx)?.to_string(),
            ],
            gold: field(doc, "label", ctx)?
                .as_u64()
                .ok_or_else(|| ctx("field \"label\" is not a non-negative integer".into()))?
                as usize,
        },
        "hellaswag" => {
            let c = format!(
                "{} {}",
                str_field(doc, "ctx_a", ctx)?,
                capitalize(str_field(doc, "ctx_b", ctx)?)
            );
            let query = format!("{}: {c}", str_field(doc, "activity_label", ctx)?);
            let endings = str_list(field(doc, "endings", ctx)?, "endings", ctx)?;
            let label = str_field(doc, "label", ctx)?;
            Item {
                context: hellaswag_preprocess(&query),
                choices: endings.iter().map(|e| hellaswag_preprocess(e)).collect(),
                gold: label
                    .parse()
                    .map_err(|_| ctx(format!("label \"{label}\" is not an integer")))?,
            }
        }
        "lambada" => {
            let text = str_field(doc, "text", ctx)?;
            let (context, last) = text
                .rsplit_once(' ')
                .ok_or_else(|| ctx("text has no space to split off its last word".into()))?;
            Item {
                context: context.to_string(),
                choices: vec![last.to_string()],
                gold: 0,
            }
        }
        _ => return Err(unknown_task(task)),
    };
    if item.choices.is_empty() || item.gold >= item.choices.len() {
        return Err(ctx(format!(
            "gold answer {} out of range of {} choices",
            item.gold,
            item.choices.len()
        )));
    }
    Ok(item)
}

/// Reads `dir/<name>.jsonl` (first `limit` items).
pub fn load(name: &str, dir: &Path, limit: Option<usize>) -> Result<Task> {
    if !KNOWN.contains(&name) {
        return Err(unknown_task(name));
    }
    if limit == Some(0) {
        return Err(Error::Arg {
            flag: "--limit",
            msg: "must be at least 1 (it is the number of items per task)".into(),
        });
    }
    let path = dir.join(format!("{name}.jsonl"));
    if !path.exists() {
        return Err(Error::Text {
            path,
            msg: format!("task data not found; fetch it with `{FETCH}` (or pass --tasks-dir)"),
        });
    }
    let raw = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let text = String::from_utf8(raw).map_err(|e| Error::Text {
        path: path.clone(),
        msg: format!(
            "not UTF-8 (invalid byte at offset {}); the file is corrupt, delete it and run `{FETCH}`",
            e.utf8_error().valid_up_to()
        ),
    })?;
    let corrupt = |line: usize, msg: String| Error::Text {
        path: path.clone(),
        msg: format!("line {line}: {msg}; the file is corrupt, delete it and run `{FETCH}`"),
    };
    let mut lines = text.lines();
    let header: Value = serde_json::from_str(lines.next().unwrap_or(""))
        .map_err(|e| corrupt(1, format!("not a whittle task header ({e})")))?;
    if header.get("whittle_tasks").and_then(Value::as_u64) != Some(1)
        || header.get("task").and_then(Value::as_str) != Some(name)
    {
        return Err(corrupt(
            1,
            format!("header {header} is not a version-1 header for task \"{name}\""),
        ));
    }
    let n = header
        .get("items")
        .and_then(Value::as_u64)
        .ok_or_else(|| corrupt(1, "header has no item count".into()))? as usize;
    let want = limit.map_or(n, |l| l.min(n));
    let mut items = Vec::with_capacity(want);
    let mut count = 0usize;
    for (i, line) in lines.enumerate() {
        let lineno = i + 2;
        count += 1;
        if items.len() == want {
            continue;
        }
        let doc: Value =
            serde_json::from_str(line).map_err(|e| corrupt(lineno, format!("not JSON ({e})")))?;
        let ctx = |m: String| corrupt(lineno, m);
        items.push(make_item(name, &doc, &ctx)?);
    }
    if count != n {
        return Err(corrupt(
            count + 1,
            format!("the header promises {n} items but the file holds {count} (truncated?)"),
        ));
    }
    Ok(Task {
        name: name.to_string(),
        path,
        items,
    })
}

/// One (context, continuation) request as tokens: `ids = context ‖ continuation`.
#[derive(Debug, Clone)]
pub struct Request {
    pub item: usize,
    pub choice: usize,
    pub ids: Vec<u32>,
    /// Tokens of the context, BOS included (≥ 1).
    pub ctx_len: usize,
}

/// `_encode_pair`: trailing context whitespace moved to the continuation; the whole string
/// tokenized and the context's token count split off.
pub fn encode_pair(
    tok: &Tokenizer,
    bos: u32,
    context: &str,
    continuation: &str,
) -> Result<(Vec<u32>, usize)> {
    let trimmed = context.trim_end();
    let cont = format!("{}{continuation}", &context[trimmed.len()..]);
    let mut ctx_ids = vec![bos];
    ctx_ids.extend(tok.encode(trimmed)?);
    let mut whole = vec![bos];
    whole.extend(tok.encode(&format!("{trimmed}{cont}"))?);
    let n = ctx_ids.len();
    if whole.len() <= n {
        return Err(Error::Tokenizer {
            path: tok.path.clone(),
            msg: format!("continuation {cont:?} of context {trimmed:?} has no tokens of its own"),
        });
    }
    // lm-eval feeds the context's own tokens, then the whole's tail.
    let mut ids = ctx_ids;
    ids.extend_from_slice(&whole[n..]);
    Ok((ids, n))
}

/// Every request of `task`, choices in order.
pub fn requests(task: &Task, tok: &Tokenizer, bos: u32) -> Result<Vec<Request>> {
    let per_item: Vec<Result<Vec<Request>>> = task
        .items
        .par_iter()
        .enumerate()
        .map(|(i, it)| {
            it.choices
                .iter()
                .enumerate()
                .map(|(c, ch)| {
                    let (ids, ctx_len) = encode_pair(tok, bos, &it.context, &format!(" {ch}"))?;
                    Ok(Request {
                        item: i,
                        choice: c,
                        ids,
                        ctx_len,
                    })
                })
                .collect()
        })
        .collect();
    let mut out = Vec::new();
    for r in per_item {
        out.extend(r?);
    }
    Ok(out)
}

/// Per item and choice: summed continuation log-likelihood and whether greedy decoding
/// reproduces the continuation.
#[derive(Debug, Clone, Default)]
pub struct ItemScores {
    pub lls: Vec<f64>,
    pub greedy: Vec<bool>,
}

/// Padded tokens per forward (rows of hidden state held at once).
const BATCH_TOKENS: usize = 4096;
/// One row to put through the LM head and what it scores: `(request index, token)` pairs.
struct Row {
    hidden: usize,
    targets: Vec<(usize, u32)>,
}

/// Scores every request; `progress` gets the number of requests done.
pub fn score(
    model: &dyn LogitModel,
    reqs: &[Request],
    n_items: usize,
    mut progress: impl FnMut(usize),
) -> Result<Vec<ItemScores>> {
    let cfg = model.cfg();
    let (hd, v) = (cfg.hidden_size, cfg.vocab_size);
    let mut out: Vec<ItemScores> = vec![ItemScores::default(); n_items];
    for r in reqs {
        let s = &mut out[r.item];
        if s.lls.len() <= r.choice {
            s.lls.resize(r.choice + 1, 0.0);
            s.greedy.resize(r.choice + 1, true);
        }
    }
    // The request whose context row scores every choice's first token: each item's first.
    let mut first_of: Vec<Option<usize>> = vec![None; n_items];
    for (k, r) in reqs.iter().enumerate() {
        first_of[r.item].get_or_insert(k);
    }
    let mut choices_of: Vec<Vec<usize>> = vec![Vec::new(); n_items];
    for (k, r) in reqs.iter().enumerate() {
        choices_of[r.item].push(k);
    }
    // Longest first, so a batch's padding is small.
    let mut order: Vec<usize> = (0..reqs.len()).collect();
    order.sort_by_key(|&k| std::cmp::Reverse(reqs[k].ids.len()));
    let mut done = 0;
    let mut i = 0;
    while i < order.len() {
        let len = reqs[order[i]].ids.len();
        let n_seq = (BATCH_TOKENS / len).max(1).min(order.len() - i);
        let batch_reqs = &order[i..i + n_seq];
        let pad = cfg.bos_token_id;
        let mut ids = Vec::with_capacity(n_seq * len);
        for &k in batch_reqs {
            ids.extend_from_slice(&reqs[k].ids);
            ids.resize(ids.len() + len - reqs[k].ids.len(), pad);
        }
        let h = model.forward_hidden(
            &ids,
            Batch {
                n_seq,
                seq_len: len,
            },
        )?; // [n_seq · len, H]
        let mut rows = Vec::new();
        for (s, &k) in batch_reqs.iter().enumerate() {
            let r = &reqs[k];
            let base = s * len;
            if first_of[r.item] == Some(k) {
                let targets = choices_of[r.item]
                    .iter()
                    .map(|&c| (c, reqs[c].ids[reqs[c].ctx_len]))
                    .collect();
                rows.push(Row {
                    hidden: base + r.ctx_len - 1,
                    targets,
                });
            }
            // Row p predicts ids[p + 1].
            for p in r.ctx_len..r.ids.len() - 1 {
                rows.push(Row {
                    hidden: base + p,
                    targets: vec![(k, r.ids[p + 1])],
                });
            }
        }
        for chunk in rows.chunks(LOGIT_ROWS) {
            let mut hs = Vec::with_capacity(chunk.len() * hd);
            for row in chunk {
                hs.extend_from_slice(&h[row.hidden * hd..(row.hidden + 1) * hd]);
            }
            let z = model.logits(&hs)?; // [rows, V]
            let scored: Vec<Vec<(usize, f64, bool)>> = chunk
                .par_iter()
                .enumerate()
                .map(|(j, row)| {
                    let zr = &z[j * v..(j + 1) * v];
                    let (_, lse) = log_sum_exp(zr);
                    let top = argmax(zr);
                    row.targets
                        .iter()
                        .map(|&(k, t)| (k, zr[t as usize] as f64 - lse, top == t as usize))
                        .collect()
                })
                .collect();
            for (k, lp, greedy) in scored.into_iter().flatten() {
                let r = &reqs[k];
                let s = &mut out[r.item];
                s.lls[r.choice] += lp;
                s.greedy[r.choice] &= greedy;
            }
        }
        i += n_seq;
        done += n_seq;
        progress(done);
    }
    Ok(out)
}

/// Mean and lm-eval's `mean_stderr` (sample standard deviation / √n; 0 for one item).
pub fn mean_stderr(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let m = x.iter().sum::<f64>() / n;
    if x.len() < 2 {
        return (m, 0.0);
    }
    let var = x.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (n - 1.0);
    (m, (var / n).sqrt())
}

/// First index of the largest value (`np.argmax`).
fn first_argmax(x: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, v) in x.enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0
}

/// A task's metrics: name → (value, stderr).
#[derive(Debug, Clone)]
pub struct TaskResult {
    pub task: String,
    pub items: usize,
    pub metrics: Vec<(&'static str, f64, f64)>,
}

/// lm-eval's per-document metrics, aggregated.
pub fn metrics(task: &Task, scores: &[ItemScores]) -> TaskResult {
    let mut metrics = Vec::new();
    if task.is_last_word() {
        let acc: Vec<f64> = scores.iter().map(|s| s.greedy[0] as u8 as f64).collect();
        let ll: Vec<f64> = scores.iter().map(|s| s.lls[0]).collect();
        let (a, ae) = mean_stderr(&acc);
        let (m, me) = mean_stderr(&ll);
        let ppl = (-m).exp();
        metrics.push(("acc", a, ae));
        metrics.push(("ppl", ppl, ppl * me));
    } else {
        let (mut acc, mut acc_norm) = (Vec::new(), Vec::new());
        for (it, s) in task.items.iter().zip(scores) {
            let pred = first_argmax(s.lls.iter().copied());
            let pred_norm = first_argmax(
                s.lls
                    .iter()
                    .zip(&it.choices)
                    .map(|(l, c)| l / c.chars().count() as f64),
            );
            acc.push((pred == it.gold) as u8 as f64);
            acc_norm.push((pred_norm == it.gold) as u8 as f64);
        }
        let (a, ae) = mean_stderr(&acc);
        let (n, ne) = mean_stderr(&acc_norm);
        metrics.push(("acc", a, ae));
        metrics.push(("acc_norm", n, ne));
    }
    TaskResult {
        task: task.name.clone(),
        items: scores.len(),
        metrics,
    }
}

/// `--text NAME=FILE` (or a bare FILE, named by its file stem).
#[derive(Debug, Clone)]
pub struct NamedText {
    pub name: String,
    pub path: PathBuf,
}

impl std::str::FromStr for NamedText {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.split_once('=') {
            Some((n, p)) if !n.is_empty() && !n.contains(['/', '\\']) && !p.is_empty() => {
                Ok(NamedText {
                    name: n.to_string(),
                    path: PathBuf::from(p),
                })
            }
            _ => {
                let path = PathBuf::from(s);
                let name = path
                    .file_stem()
                    .map(|x| x.to_string_lossy().into_owned())
                    .unwrap_or_else(|| s.to_string());
                Ok(NamedText { name, path })
            }
        }
    }
}

/// Rejects a text name given twice.
pub fn check_text_names(texts: &[NamedText]) -> Result<()> {
    for (i, t) in texts.iter().enumerate() {
        if let Some(o) = texts[..i].iter().find(|o| o.name == t.name) {
            return Err(Error::Arg {
                flag: "--text",
                msg: format!(
                    "the name \"{}\" is given twice ({} and {}); name each text once, as NAME=FILE",
                    t.name,
                    o.path.display(),
                    t.path.display()
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hellaswag_preprocess_follows_lm_eval() {
        assert_eq!(
            hellaswag_preprocess("  How to cook [title] Boil water. [step] Stir  it. "),
            "How to cook. Boil water. Stir it."
        );
        assert_eq!(hellaswag_preprocess("a [b\nc] d"), "a [b\nc] d");
        // Three spaces left by the two removals; one non-overlapping pass of "  " → " " leaves
        // two, as Python's str.replace does.
        assert_eq!(hellaswag_preprocess("a [x] [y] b"), "a  b");
        assert_eq!(capitalize("tHE man"), "The man");
    }

    #[test]
    fn mean_stderr_is_sample_std_over_sqrt_n() {
        let (m, se) = mean_stderr(&[1.0, 0.0, 1.0, 1.0]);
        assert!((m - 0.75).abs() < 1e-12);
        // sample variance 0.25, / 4 → 0.0625, sqrt → 0.25
        assert!((se - 0.25).abs() < 1e-12);
    }

    #[test]
    fn named_text_parses_both_forms() {
        let t: NamedText = "es=data/dev-es.txt".parse().unwrap();
        assert_eq!(
            (t.name.as_str(), t.path.to_str()),
            ("es", Some("data/dev-es.txt"))
        );
        let t: NamedText = "data/dev.txt".parse().unwrap();
        assert_eq!(t.name, "dev");
        let t: NamedText = "dir/a=b.txt".parse().unwrap();
        assert_eq!(t.path.to_str(), Some("dir/a=b.txt"));
    }
}

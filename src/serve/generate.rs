//! Text generation over a KV-cache decoder (`decode::Engine`: the CPU `Model` or, with
//! `--device cuda`, `cuda::GpuModel`): the prompt's ids (BOS + text; chat prompts are rendered
//! by `checkpoint::chat`), the stop-token set, the prefill + step loop with sampling, and
//! incremental detokenization for streaming.
//!
//! Stop tokens are the union of `config.json`'s `eos_token_id` and `generation_config.json`'s
//! (each an int or a list), plus `<end_of_turn>` when the tokenizer has it. Generation stops
//! after emitting one of them (the stop token is part of the returned ids, as in
//! `transformers.generate`, but is not printed) or after `max_new_tokens`.

use crate::checkpoint::chat::read_json;
use crate::checkpoint::tokenizer::Tokenizer;
use crate::cpu::decode::{sample, Rng, Sampling};
use crate::engine::Engine;
use crate::error::Result;
use serde_json::Value;
use std::path::Path;
use std::time::Instant;

/// BOS + the tokens of `text` (special-token strings such as `<start_of_turn>` are recognised).
pub fn prompt_ids(tok: &Tokenizer, bos: u32, text: &str) -> Result<Vec<u32>> {
    let mut ids = vec![bos];
    ids.extend(tok.encode(text)?);
    Ok(ids)
}

fn json_ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_u64)
            .map(|x| x as u32)
            .collect(),
        _ => Vec::new(),
    }
}

/// The stop-token set of a model folder (see the module docs), in first-seen order.
pub fn stop_tokens(model_dir: &Path, tok: Option<&Tokenizer>) -> Result<Vec<u32>> {
    let mut out: Vec<u32> = Vec::new();
    let mut add = |ids: Vec<u32>| {
        for i in ids {
            if !out.contains(&i) {
                out.push(i);
            }
        }
    };
    if let Some(c) = read_json(&model_dir.join("config.json"))? {
        add(json_ids(c.get("eos_token_id")));
        if let Some(tc) = c.get("text_config") {
            add(json_ids(tc.get("eos_token_id")));
        }
    }
    if let Some(g) = read_json(&model_dir.join("generation_config.json"))? {
        add(json_ids(g.get("eos_token_id")));
    }
    if let Some(t) = tok {
        if let Some(id) = t.token_to_id("<end_of_turn>") {
            add(vec![id]);
        }
    }
    if out.is_empty() {
        if let Some(id) = tok.and_then(|t| t.token_to_id("<eos>")) {
            out.push(id);
        }
    }
    Ok(out)
}

#[derive(Debug, Clone)]
pub struct GenOptions {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    pub seed: u64,
    /// Tokens that end generation (emitted, then stop). Empty: run to `max_new_tokens`.
    pub stop: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A stop token was generated (it is the last id of `tokens`).
    Stop(u32),
    MaxTokens,
}

#[derive(Debug, Clone)]
pub struct GenOutput {
    /// Generated ids (the stop token included when one ended generation).
    pub tokens: Vec<u32>,
    pub stop: StopReason,
    /// Prompt processing up to the first sampled token (time to first token).
    pub prefill_s: f64,
    /// All decode steps after the first token.
    pub decode_s: f64,
}

impl GenOutput {
    /// Decode throughput: tokens produced by steps / their time.
    pub fn decode_tok_s(&self) -> f64 {
        let steps = self.tokens.len().saturating_sub(1);
        if steps == 0 || self.decode_s <= 0.0 {
            0.0
        } else {
            steps as f64 / self.decode_s
        }
    }
}

/// Generates up to `opts.max_new_tokens` tokens after `prompt` on `engine` (a `&Model` works);
/// `on_token` sees every generated id as soon as it is chosen (stop token included). Greedy
/// decoding picks through `Decode::prefill_greedy` / `step_greedy`, so a GPU engine downloads
/// only the chosen id; sampling downloads the logits.
pub fn generate(
    engine: &dyn Engine,
    prompt: &[u32],
    opts: &GenOptions,
    mut on_token: impl FnMut(u32) -> Result<()>,
) -> Result<GenOutput> {
    let mut out = GenOutput {
        tokens: Vec::new(),
        stop: StopReason::MaxTokens,
        prefill_s: 0.0,
        decode_s: 0.0,
    };
    if opts.max_new_tokens == 0 {
        return Ok(out);
    }
    let mut rng = Rng::new(opts.seed);
    let t0 = Instant::now();
    let mut dec = engine.decoder(prompt.len() + opts.max_new_tokens)?;
    let mut next = match opts.sampling {
        Sampling::Greedy => dec.prefill_greedy(prompt)?,
        s => sample(&dec.prefill(prompt)?, s, &mut rng),
    };
    out.prefill_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    loop {
        out.tokens.push(next);
        on_token(next)?;
        if opts.stop.contains(&next) {
            out.stop = StopReason::Stop(next);
            break;
        }
        if out.tokens.len() >= opts.max_new_tokens {
            break;
        }
        next = match opts.sampling {
            Sampling::Greedy => dec.step_greedy(next)?,
            s => sample(&dec.step(next)?, s, &mut rng),
        };
    }
    out.decode_s = t1.elapsed().as_secs_f64();
    Ok(out)
}

/// Incremental detokenization for streaming (the algorithm of text-generation-inference's
/// `decode_token`): the ids after `prefix` are decoded together with a few already-printed ids
/// before them, and only the text past the already-printed part is handed out, so tokenizer
/// decoders that treat the first token of a slice specially (leading-space stripping) and
/// multi-token UTF-8 characters (held back while the text ends in U+FFFD) come out right. Each
/// push decodes a short slice, not the whole text.
pub struct TextStream<'t> {
    tok: &'t Tokenizer,
    ids: Vec<u32>,
    /// Start of the slice decoded for context.
    prefix: usize,
    /// Ids before this are printed.
    read: usize,
}

impl<'t> TextStream<'t> {
    pub fn new(tok: &'t Tokenizer) -> TextStream<'t> {
        TextStream {
            tok,
            ids: Vec::new(),
            prefix: 0,
            read: 0,
        }
    }

    /// Adds one id; returns the text that became final (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let before = self.tok.decode(&self.ids[self.prefix..self.read])?;
        let now = self.tok.decode(&self.ids[self.prefix..])?;
        if now.len() > before.len() && !now.ends_with('\u{FFFD}') {
            if let Some(new) = now.get(before.len()..) {
                let new = new.to_string();
                self.prefix = self.read;
                self.read = self.ids.len();
                return Ok(new);
            }
        }
        Ok(String::new())
    }

    /// Whatever is still held back at the end (an incomplete UTF-8 sequence comes out as U+FFFD).
    pub fn finish(&mut self) -> Result<String> {
        let before = self.tok.decode(&self.ids[self.prefix..self.read])?;
        let now = self.tok.decode(&self.ids[self.prefix..])?;
        self.prefix = self.read;
        self.read = self.ids.len();
        Ok(now.get(before.len()..).unwrap_or("").to_string())
    }
}

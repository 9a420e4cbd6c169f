//! Calibration without data (`--calib self[:WEIGHT]`): the model writes its own calibration
//! sequences, sampled from BOS, so what decides which neurons survive resembles what the model
//! was trained on — every language and kind of text it knows, in proportion — rather than one
//! corpus (Ji et al., ICLR 2025, arXiv 2410.17711).
//!
//! Each sequence is a stream of documents: a document is sampled from BOS until a stop token (or
//! the room left), its tokens (stop token excluded) are appended, and the next document starts
//! from BOS again — the way a text file's documents are concatenated and cut into sequences.
//! Every document's sampler is seeded from (seed, sequence, document), so a seed gives the same
//! ids whatever the thread count.

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::serve::generate::{generate, GenOptions};
use serde::Serialize;

/// Sampling for self-generated calibration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SelfGenOptions {
    pub seed: u64,
    pub temperature: f32,
    pub top_p: f32,
}

impl Default for SelfGenOptions {
    fn default() -> Self {
        // Plain sampling from the model's distribution (T = 1), the low-probability tail cut:
        // T < 1 collapses onto a few repetitive documents, top-p 1 lets in junk tokens.
        SelfGenOptions {
            seed: 0,
            temperature: 1.0,
            top_p: 0.95,
        }
    }
}

/// What was generated (the compile report).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SelfGenReport {
    pub seed: u64,
    pub temperature: f64,
    pub top_p: f64,
    pub sequences: usize,
    pub tokens: usize,
    /// Documents sampled (a sequence holds several when they end early).
    pub documents: usize,
    /// Tokens per second of generation (sampling included).
    pub tok_per_s: f64,
}

/// `n_seq` sequences of `seq_len` ids (BOS first) sampled from `engine`; `stop` ends a document.
pub fn generate_sequences(
    engine: &dyn Engine,
    n_seq: usize,
    seq_len: usize,
    bos: u32,
    stop: &[u32],
    o: &SelfGenOptions,
    mut progress: impl FnMut(usize),
) -> Result<(Vec<u32>, SelfGenReport)> {
    let in_range =
        o.temperature > 0.0 && o.temperature.is_finite() && o.top_p > 0.0 && o.top_p <= 1.0;
    if !in_range {
        return Err(Error::Arg {
            flag: "--calib",
            msg: format!(
                "self: temperature {} and top-p {} are out of range (temperature > 0, top-p in \
                 (0, 1])",
                o.temperature, o.top_p
            ),
        });
    }
    let t0 = std::time::Instant::now();
    let sampling = crate::cpu::decode::Sampling::new(o.temperature, o.top_p);
    let mut ids = Vec::with_capacity(n_seq * seq_len); // [n_seq, seq_len]
    let mut documents = 0usize;
    for s in 0..n_seq {
        ids.push(bos);
        let mut have = 1usize;
        let mut empty = 0usize;
        let mut doc = 0u64;
        while have < seq_len {
            let opts = GenOptions {
                max_new_tokens: seq_len - have,
                sampling,
                seed: doc_seed(o.seed, s as u64, doc),
                stop: stop.to_vec(),
            };
            doc += 1;
            let out = generate(engine, &[bos], &opts, |_| Ok(()))?;
            documents += 1;
            let body: Vec<u32> = out
                .tokens
                .into_iter()
                .filter(|t| !stop.contains(t))
                .collect();
            if body.is_empty() {
                // A model that ends every document at once would loop forever.
                empty += 1;
                if empty >= 64 {
                    return Err(Error::Other(format!(
                        "--calib self: the model ended 64 documents in a row without a token \
                         (sequence {s}); it cannot write its own calibration text — give a file"
                    )));
                }
                continue;
            }
            have += body.len();
            ids.extend_from_slice(&body);
        }
        progress(s + 1);
    }
    let secs = t0.elapsed().as_secs_f64();
    let tokens = n_seq * seq_len;
    let report = SelfGenReport {
        seed: o.seed,
        temperature: short(o.temperature),
        top_p: short(o.top_p),
        sequences: n_seq,
        tokens,
        documents,
        tok_per_s: if secs > 0.0 {
            tokens as f64 / secs
        } else {
            0.0
        },
    };
    Ok((ids, report))
}

/// An f32 flag value as the decimal the user typed (0.95, not 0.949999988).
fn short(x: f32) -> f64 {
    format!("{x}").parse().unwrap_or(x as f64)
}

/// splitmix-style mix of (seed, sequence, document): independent streams per document.
fn doc_seed(seed: u64, seq: u64, doc: u64) -> u64 {
    let mut z =
        seed ^ seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ doc.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

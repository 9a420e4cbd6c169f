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

use crate::cpu::decode::{sample, Rng, Sampling};
use crate::engine::Engine;
use crate::error::{Error, Result};
use rayon::prelude::*;
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
    /// Sequences decoded side by side (`LANES`, or fewer sequences).
    pub lanes: usize,
    /// Wall time of generation (sampling included; not part of `timings_s`).
    pub seconds: f64,
    /// Tokens per second of generation.
    pub tok_per_s: f64,
}

/// Sequences decoded side by side: the LM head and projections run as GEMMs over this many
/// rows per step. Fixed (not taken from the thread count or memory) because which lane writes
/// which sequence, and so the sampled ids, depend on it.
pub const LANES: usize = 32;

/// `n_seq` sequences of `seq_len` ids (BOS first) sampled from `engine`; `stop` ends a document.
///
/// Up to `LANES` sequences are written at once, each lane decoding its own documents; a lane
/// that completes its sequence takes the next one not yet started. Each document's sampler is
/// seeded by (seed, sequence, document), whichever lane runs it; the logits it samples from are
/// GEMM rows whose last bits may depend on the batch around them, which is why `LANES` is fixed.
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
    let sampling = Sampling::new(o.temperature, o.top_p);
    let vocab = engine.cfg().vocab_size;
    let n_lanes = LANES.min(n_seq);
    // A document ends at a stop token or the sequence's end, so no lane holds more than
    // `seq_len` positions (BOS plus the body of one sequence).
    let mut dec = engine.lanes(n_lanes, seq_len)?;
    let mut ids = vec![0u32; n_seq * seq_len]; // [n_seq, seq_len]

    // Starts the next sequence not yet started (its BOS written), or None when all are.
    let mut next_seq = 0usize;
    let mut start_next = |ids: &mut [u32]| {
        (next_seq < n_seq).then(|| {
            ids[next_seq * seq_len] = bos;
            next_seq += 1;
            Lane::start(next_seq - 1, o.seed, bos)
        })
    };
    let mut lanes: Vec<Option<Lane>> = (0..n_lanes).map(|_| start_next(&mut ids)).collect();
    let (mut documents, mut done) = (0usize, 0usize);
    loop {
        let active: Vec<usize> = (0..n_lanes).filter(|&i| lanes[i].is_some()).collect();
        if active.is_empty() {
            break;
        }
        let input: Vec<u32> = active
            .iter()
            .map(|&i| lanes[i].as_ref().map_or(bos, |l| l.input))
            .collect();
        let logits = dec.step(&active, &input)?; // [active, V]
        let mut picked = vec![0u32; active.len()];
        {
            let mut rngs: Vec<&mut Rng> = lanes.iter_mut().flatten().map(|l| &mut l.rng).collect();
            picked
                .par_iter_mut()
                .zip(rngs.par_iter_mut())
                .zip(logits.par_chunks(vocab))
                .for_each(|((t, rng), z)| *t = sample(z, sampling, rng));
        }
        for (&i, &t) in active.iter().zip(&picked) {
            let lane = lanes[i].as_mut().expect("active lane");
            let s = lane.seq;
            if stop.contains(&t) {
                // The document ends; the next starts from BOS in a fresh cache.
                documents += 1;
                if lane.doc_len == 0 {
                    // A model that ends every document at once would loop forever.
                    lane.empty += 1;
                    if lane.empty >= 64 {
                        return Err(Error::Other(format!(
                            "--calib self: the model ended 64 documents in a row without a \
                             token (sequence {s}); it cannot write its own calibration text — \
                             give a file"
                        )));
                    }
                } else {
                    lane.empty = 0;
                }
                lane.next_document(o.seed, bos);
                dec.reset(i);
                continue;
            }
            ids[s * seq_len + lane.have] = t;
            lane.have += 1;
            lane.doc_len += 1;
            lane.input = t;
            if lane.have == seq_len {
                documents += 1;
                done += 1;
                progress(done);
                dec.reset(i);
                lanes[i] = start_next(&mut ids);
            }
        }
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
        lanes: n_lanes,
        seconds: secs,
        tok_per_s: if secs > 0.0 {
            tokens as f64 / secs
        } else {
            0.0
        },
    };
    Ok((ids, report))
}

/// One lane's place: the sequence it writes and the document it is sampling.
struct Lane {
    seq: usize,
    /// Ids of the sequence written so far (BOS included).
    have: usize,
    doc: u64,
    /// Tokens the current document has added.
    doc_len: usize,
    /// Documents in a row that ended before their first token.
    empty: usize,
    rng: Rng,
    /// What the lane decodes next.
    input: u32,
}

impl Lane {
    fn start(seq: usize, seed: u64, bos: u32) -> Lane {
        Lane {
            seq,
            have: 1,
            doc: 0,
            doc_len: 0,
            empty: 0,
            rng: Rng::new(doc_seed(seed, seq as u64, 0)),
            input: bos,
        }
    }

    fn next_document(&mut self, seed: u64, bos: u32) {
        self.doc += 1;
        self.doc_len = 0;
        self.rng = Rng::new(doc_seed(seed, self.seq as u64, self.doc));
        self.input = bos;
    }
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

//! The calibration set: text files (plain or chat `.jsonl`), self-generated sequences and saved
//! ids, tokenized and cut into `--samples` sequences of `--seq` tokens, mixed by weight. What the
//! engines compute from it — the per-layer statistics and the backend that runs a layer over it —
//! is `crate::engine::calib`.

use crate::checkpoint::chat::ChatTemplate;
use crate::checkpoint::safetensors::SafeFile;
use crate::checkpoint::tokenizer::Tokenizer;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Where a calibration source's sequences come from.
#[derive(Debug, Clone, PartialEq)]
pub enum CalibInput {
    /// A text file (`.txt`, or `.jsonl` conversations / documents).
    File(PathBuf),
    /// Sequences the model writes itself, sampled from BOS (`self`; `compile::selfgen`).
    Model,
}

/// A calibration source and its share of the sequences: `FILE`, `FILE:WEIGHT`, `self` or
/// `self:WEIGHT` (a file named `self` is `./self`).
#[derive(Debug, Clone, PartialEq)]
pub struct CalibSource {
    pub input: CalibInput,
    pub weight: f64,
}

impl CalibSource {
    pub fn file(path: impl Into<PathBuf>, weight: f64) -> CalibSource {
        CalibSource {
            input: CalibInput::File(path.into()),
            weight,
        }
    }

    /// The path, or `self` for generated sequences (reports, messages).
    pub fn name(&self) -> PathBuf {
        match &self.input {
            CalibInput::File(p) => p.clone(),
            CalibInput::Model => PathBuf::from("self"),
        }
    }
}

impl FromStr for CalibSource {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (name, weight) = match s.rsplit_once(':') {
            Some((p, w)) => match w.parse::<f64>() {
                Ok(w) if !(w > 0.0 && w.is_finite()) => {
                    return Err(format!("weight in \"{s}\" must be a positive number"));
                }
                Ok(w) => (p, w),
                Err(_) => (s, 1.0),
            },
            None => (s, 1.0),
        };
        Ok(CalibSource {
            input: if name == "self" {
                CalibInput::Model
            } else {
                CalibInput::File(name.into())
            },
            weight,
        })
    }
}

/// Sequences a model wrote for calibration (`self`).
#[derive(Debug, Clone)]
pub struct Generated {
    /// `[n, seq_len]`, BOS first.
    pub ids: Vec<u32>,
    pub report: crate::compile::selfgen::SelfGenReport,
    /// The sequences decoded, for people to read (saved beside the report).
    pub text: String,
}

/// What one source contributed (reported in whittle_report.json).
#[derive(Debug, Clone)]
pub struct SourceUse {
    pub path: PathBuf,
    pub weight: f64,
    pub sequences: usize,
    pub tokens: usize,
}

/// Calibration token ids, `n_seq` sequences of `seq_len` tokens each (BOS first).
#[derive(Debug, Clone)]
pub struct CalibSet {
    pub ids: Vec<u32>, // [n_seq, seq_len]
    pub n_seq: usize,
    pub seq_len: usize,
    pub sources: Vec<SourceUse>,
    /// The `self` sequences and how they were made, when a source is `self`.
    pub generated: Option<Generated>,
}

impl CalibSet {
    pub fn tokens(&self) -> usize {
        self.n_seq * self.seq_len
    }

    /// The files saved beside each output when a source is `self` (name, bytes): the whole set
    /// as `calibration-ids.safetensors` (`--calib-ids` on it repeats the compile) and the
    /// generated sequences decoded as `calibration-self.txt`. Empty when no source is `self`.
    pub fn saved_files(&self) -> Vec<(String, Vec<u8>)> {
        let Some(g) = &self.generated else {
            return Vec::new();
        };
        let ids: Vec<i64> = self.ids.iter().map(|&i| i as i64).collect();
        vec![
            (
                "calibration-ids.safetensors".to_string(),
                crate::checkpoint::safetensors::encode_i64_tensor(
                    "input_ids",
                    &ids,
                    &[self.n_seq, self.seq_len],
                ),
            ),
            (
                "calibration-self.txt".to_string(),
                g.text.clone().into_bytes(),
            ),
        ]
    }

    /// Texts are tokenized without special tokens and cut like eval windows (BOS + seq-1 tokens,
    /// consecutive, non-overlapping); `.jsonl` conversations are rendered with `chat`, the
    /// model's template (`ChatTemplate::for_model`); source i contributes round(n · wᵢ / Σw)
    /// sequences. A `self` source's sequences come from `generate` (n sequences → [n, seq_len]
    /// ids and what made them).
    pub fn from_texts(
        tok: &Tokenizer,
        chat: Option<&ChatTemplate>,
        sources: &[CalibSource],
        n_samples: usize,
        seq_len: usize,
        bos: u32,
        mut generate: Option<&mut dyn FnMut(usize) -> Result<Generated>>,
    ) -> Result<CalibSet> {
        if sources.is_empty() {
            return Err(Error::Arg {
                flag: "--calib",
                msg: "give at least one calibration text (FILE or FILE:WEIGHT)".into(),
            });
        }
        if n_samples == 0 {
            return Err(Error::Arg {
                flag: "--samples",
                msg: "must be at least 1".into(),
            });
        }
        if seq_len < 2 {
            return Err(Error::Arg {
                flag: "--seq",
                msg: format!("{seq_len} is too short"),
            });
        }
        let total_w: f64 = sources.iter().map(|s| s.weight).sum();
        // Largest-remainder apportionment so the shares add up to n_samples exactly.
        let exact: Vec<f64> = sources
            .iter()
            .map(|s| n_samples as f64 * s.weight / total_w)
            .collect();
        let mut share: Vec<usize> = exact.iter().map(|x| x.floor() as usize).collect();
        let mut order: Vec<usize> = (0..sources.len()).collect();
        order.sort_by(|&a, &b| {
            (exact[b] - exact[b].floor())
                .total_cmp(&(exact[a] - exact[a].floor()))
                .then(a.cmp(&b))
        });
        let missing = n_samples - share.iter().sum::<usize>();
        for &i in order.iter().take(missing) {
            share[i] += 1;
        }
        if let Some((src, _)) = sources.iter().zip(&share).find(|(_, &n)| n == 0) {
            return Err(Error::Arg {
                flag: "--calib",
                msg: format!(
                    "{}:{} gets none of the {n_samples} sequences at that weight; raise its \
                     weight or --samples, or leave it out",
                    src.name().display(),
                    src.weight
                ),
            });
        }
        let chunk = seq_len - 1;
        // Grown as the texts are cut, not sized from --samples (which may be far beyond them).
        let mut ids = Vec::new();
        let mut used = Vec::new();
        let mut generated = None;
        for (src, &want) in sources.iter().zip(&share) {
            let path = match &src.input {
                CalibInput::File(p) => p,
                CalibInput::Model => {
                    let g = generate.as_mut().ok_or_else(|| Error::Arg {
                        flag: "--calib",
                        msg: "self: this command cannot generate calibration text".into(),
                    })?;
                    let g = g(want)?;
                    if g.ids.len() != want * seq_len {
                        return Err(Error::Other(format!(
                            "self-generated calibration: {} ids for {want} sequences of {seq_len}",
                            g.ids.len()
                        )));
                    }
                    ids.extend_from_slice(&g.ids);
                    used.push(SourceUse {
                        path: src.name(),
                        weight: src.weight,
                        sequences: want,
                        tokens: want * seq_len,
                    });
                    generated = Some(g);
                    continue;
                }
            };
            let text = crate::checkpoint::chat::read_calibration_text(path, chat)?;
            let t = tok.encode(&text)?;
            let avail = t.len() / chunk;
            if avail == 0 {
                return Err(Error::Text {
                    path: path.clone(),
                    msg: format!(
                        "too short for one calibration sequence: {} tokens, --seq {seq_len} needs {chunk}",
                        t.len()
                    ),
                });
            }
            let take = want.min(avail);
            if take < want {
                eprintln!(
                    "note: {} holds {avail} sequences of {seq_len} tokens; asked for {want}, using {take}",
                    path.display()
                );
            }
            for c in t.chunks_exact(chunk).take(take) {
                ids.push(bos);
                ids.extend_from_slice(c);
            }
            used.push(SourceUse {
                path: path.clone(),
                weight: src.weight,
                sequences: take,
                tokens: take * seq_len,
            });
        }
        let n_seq = ids.len() / seq_len;
        Ok(CalibSet {
            ids,
            n_seq,
            seq_len,
            sources: used,
            generated,
        })
    }

    /// A pre-tokenized set: a safetensors file with an integer `input_ids` tensor `[n, seq]`
    /// (BOS included by whoever made it).
    pub fn from_ids_file(path: &Path, vocab: usize) -> Result<CalibSet> {
        let f = SafeFile::open(path)?;
        let info = f.tensors.get("input_ids").ok_or_else(|| Error::Tensor {
            path: path.to_path_buf(),
            tensor: "input_ids".into(),
            msg: "missing; a pre-tokenized calibration file holds one integer tensor input_ids [n, seq]".into(),
        })?;
        if info.shape.len() != 2 || info.shape[0] == 0 || info.shape[1] < 2 {
            return Err(Error::Tensor {
                path: path.to_path_buf(),
                tensor: "input_ids".into(),
                msg: format!("shape {:?} is not [n, seq] with seq ≥ 2", info.shape),
            });
        }
        let r = crate::checkpoint::safetensors::TensorRef {
            name: "input_ids",
            file: &f,
            info,
        };
        let raw = r.to_i64()?;
        let ids = raw
            .iter()
            .map(|&i| {
                if i < 0 || i as usize >= vocab {
                    Err(Error::Tensor {
                        path: path.to_path_buf(),
                        tensor: "input_ids".into(),
                        msg: format!("token id {i} is outside the vocabulary (0..{vocab})"),
                    })
                } else {
                    Ok(i as u32)
                }
            })
            .collect::<Result<Vec<u32>>>()?;
        let (n_seq, seq_len) = (info.shape[0], info.shape[1]);
        Ok(CalibSet {
            ids,
            n_seq,
            seq_len,
            sources: vec![SourceUse {
                path: path.to_path_buf(),
                weight: 1.0,
                sequences: n_seq,
                tokens: n_seq * seq_len,
            }],
            generated: None,
        })
    }
}

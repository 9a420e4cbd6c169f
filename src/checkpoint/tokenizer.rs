//! `tokenizer.json` through the `tokenizers` crate, with the BOS handling Gemma expects: text is
//! encoded without special tokens and whittle prepends BOS itself where the protocol says so.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

pub struct Tokenizer {
    pub path: PathBuf,
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    pub fn from_dir(dir: &Path) -> Result<Tokenizer> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(Error::Tokenizer {
                path,
                msg:
                    "not found; whittle needs the model folder's tokenizer.json (copy it from the \
                      original model)"
                        .into(),
            });
        }
        crate::checkpoint::safetensors::check_input_file(dir, &path)?;
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| Error::Tokenizer {
            path: path.clone(),
            msg: format!("cannot load: {e}"),
        })?;
        Ok(Tokenizer { path, inner })
    }

    /// Token ids of `text` without special tokens (no BOS/EOS added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer {
                path: self.path.clone(),
                msg: format!("cannot encode: {e}"),
            })?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| Error::Tokenizer {
            path: self.path.clone(),
            msg: format!("cannot decode: {e}"),
        })
    }

    pub fn token_to_id(&self, tok: &str) -> Option<u32> {
        self.inner.token_to_id(tok)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// Reads a text file, with clear errors for missing, non-UTF-8 and empty files.
pub fn read_text(path: &Path) -> Result<String> {
    crate::checkpoint::safetensors::check_regular(path)?;
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    text_from_bytes(path, bytes)
}

/// The first `max_bytes` of a text file, cut after its last complete line (so no word or
/// character is split), and whether that is the whole file.
pub fn read_text_prefix(path: &Path, max_bytes: usize) -> Result<(String, bool)> {
    use std::io::Read;
    crate::checkpoint::safetensors::check_regular(path)?;
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut bytes = Vec::new();
    f.take(max_bytes as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    let whole = bytes.len() <= max_bytes;
    if !whole {
        bytes.truncate(max_bytes);
        match bytes.iter().rposition(|&b| b == b'\n') {
            Some(i) => bytes.truncate(i + 1),
            // One line longer than the cap: cut at a character boundary instead.
            None => {
                let ok = match std::str::from_utf8(&bytes) {
                    Ok(_) => bytes.len(),
                    Err(e) if e.error_len().is_none() => e.valid_up_to(),
                    Err(_) => bytes.len(),
                };
                bytes.truncate(ok);
            }
        }
    }
    Ok((text_from_bytes(path, bytes)?, whole))
}

fn text_from_bytes(path: &Path, bytes: Vec<u8>) -> Result<String> {
    let text = String::from_utf8(bytes).map_err(|e| Error::Text {
        path: path.to_path_buf(),
        msg: format!(
            "not UTF-8 text (invalid byte at offset {}); convert it first, e.g. with iconv",
            e.utf8_error().valid_up_to()
        ),
    })?;
    if text.trim().is_empty() {
        return Err(Error::Text {
            path: path.to_path_buf(),
            msg: "the file is empty".into(),
        });
    }
    Ok(text)
}

//! Writes the compiled checkpoint: a vanilla Hugging Face folder, streamed from the memory-mapped
//! input into a temporary folder beside the destination and renamed into place at the end, so an
//! interrupted or failed run leaves nothing half-written and the input is never touched.
//!
//! Per tensor: gate/up rows and down columns are sliced byte-for-byte in the input dtype, or a
//! re-fit down_proj is rounded (nearest-even) to that dtype; every other tensor is copied
//! byte-for-byte. Files keep their names, tensor order and `__metadata__`; a sharded input gives
//! a sharded output with the same index layout.

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::registry::{layer_name, LayerTensor};
use crate::safetensors::{encode_header, Dtype, HeaderEntry, WeightStore};
use serde_json::Value;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// What happens to one layer's MLP.
pub struct LayerCut {
    /// Kept neuron indices, ascending.
    pub kept: Vec<usize>,
    /// Re-fit down_proj [H, K] in f32, or None to slice the original columns.
    pub down: Option<Vec<f32>>,
}

/// Weight formats that are never copied into the output (the output is safetensors only).
const SKIP_EXT: &[&str] = &[
    "safetensors",
    "bin",
    "pt",
    "pth",
    "gguf",
    "msgpack",
    "h5",
    "onnx",
    "ckpt",
];

/// Refuses destinations that would clobber or sit inside the input; returns the absolute paths.
pub fn check_destination(input: &Path, out: &Path, force: bool) -> Result<(PathBuf, PathBuf)> {
    let inp = input.canonicalize().map_err(|e| Error::io(input, e))?;
    let name = out.file_name().ok_or_else(|| Error::Arg {
        flag: "--output",
        msg: format!("{} has no folder name", out.display()),
    })?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let parent = parent.canonicalize().map_err(|e| Error::Arg {
        flag: "--output",
        msg: format!("parent folder {} is not usable: {e}", parent.display()),
    })?;
    let abs = parent.join(name);
    if abs.starts_with(&inp) {
        return Err(Error::Arg {
            flag: "--output",
            msg: format!(
                "{} is inside the input model folder {}; write the compiled model elsewhere",
                abs.display(),
                inp.display()
            ),
        });
    }
    if inp.starts_with(&abs) {
        return Err(Error::Arg {
            flag: "--output",
            msg: format!(
                "{} contains the input model; refusing to replace it",
                abs.display()
            ),
        });
    }
    if abs.exists() && !force {
        return Err(Error::Arg {
            flag: "--output",
            msg: format!(
                "{} already exists; pass --force to replace it",
                abs.display()
            ),
        });
    }
    Ok((inp, abs))
}

/// A temp folder removed on drop unless `keep()` was called.
struct TempDir {
    path: PathBuf,
    armed: bool,
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A file writer that can be told to run out of space after N bytes
/// (`WHITTLE_TEST_WRITE_LIMIT`, used by the disk-full test; never set in normal use).
struct LimitedWriter {
    inner: BufWriter<File>,
    left: Option<u64>,
}

impl Write for LimitedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(left) = &mut self.left {
            if (buf.len() as u64) > *left {
                return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
            }
            *left -= buf.len() as u64;
        }
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn f32_to_dtype(x: &[f32], dt: Dtype, out: &mut Vec<u8>) {
    match dt {
        Dtype::F32 => x
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        Dtype::BF16 => x
            .iter()
            .for_each(|v| out.extend_from_slice(&half::bf16::from_f32(*v).to_le_bytes())),
        Dtype::F16 => x
            .iter()
            .for_each(|v| out.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes())),
        _ => unreachable!("weights are float (checked at load)"),
    }
}

/// Rounds values to what `dt` can hold (so a caller can continue with exactly what is written).
pub fn round_to_dtype(x: &mut [f32], dt: Dtype) {
    match dt {
        Dtype::BF16 => x
            .iter_mut()
            .for_each(|v| *v = half::bf16::from_f32(*v).to_f32()),
        Dtype::F16 => x
            .iter_mut()
            .for_each(|v| *v = half::f16::from_f32(*v).to_f32()),
        _ => {}
    }
}

/// Replaces the value of the one top-level `"intermediate_size"` in config.json text, leaving
/// every other byte as it was.
pub fn rewrite_config_text(text: &str, width: usize) -> Option<String> {
    let key = "\"intermediate_size\"";
    if text.matches(key).count() != 1 {
        return None;
    }
    let at = text.find(key)? + key.len();
    let rest = &text[at..];
    let colon = rest.find(':')?;
    if !rest[..colon].trim().is_empty() {
        return None;
    }
    let after = &rest[colon + 1..];
    let ws = after.len() - after.trim_start().len();
    let digits = after[ws..]
        .bytes()
        .take_while(|b| b.is_ascii_digit())
        .count();
    if digits == 0 {
        return None;
    }
    let start = at + colon + 1 + ws;
    Some(format!(
        "{}{}{}",
        &text[..start],
        width,
        &text[start + digits..]
    ))
}

pub struct WriteStats {
    pub bytes_written: u64,
    pub weight_bytes: u64,
}

/// Streams the compiled model into `out` (see the module comment). `report` is called after the
/// weights are written and its value saved as whittle_report.json. `progress` is called with the
/// bytes written so far.
#[allow(clippy::too_many_arguments)]
pub fn write_model(
    input: &Path,
    store: &WeightStore,
    cfg: &ModelConfig,
    cuts: &[LayerCut],
    width: usize,
    out: &Path,
    force: bool,
    report: impl FnOnce() -> Value,
    mut progress: impl FnMut(u64),
) -> Result<WriteStats> {
    let (inp, abs) = check_destination(input, out, force)?;
    let parent = abs
        .parent()
        .expect("absolute path has a parent")
        .to_path_buf();
    let name = abs
        .file_name()
        .expect("checked")
        .to_string_lossy()
        .into_owned();
    let tmp = TempDir {
        path: parent.join(format!(".{name}.whittle-tmp-{}", std::process::id())),
        armed: true,
    };
    if tmp.path.exists() {
        std::fs::remove_dir_all(&tmp.path).map_err(|e| Error::io(&tmp.path, e))?;
    }
    std::fs::create_dir(&tmp.path).map_err(|e| Error::Io {
        path: parent.clone(),
        source: std::io::Error::new(e.kind(), format!("cannot create the output here: {e}")),
    })?;
    let mut limit = std::env::var("WHITTLE_TEST_WRITE_LIMIT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok());

    // Which tensor is which: name -> (layer, role).
    let mut mlp: HashMap<String, (usize, LayerTensor)> = HashMap::new();
    for l in 0..cfg.num_layers {
        for t in [LayerTensor::Gate, LayerTensor::Up, LayerTensor::Down] {
            let name = layer_name(l, t);
            mlp.insert(store.naming.file_name(&name).into_owned(), (l, t));
        }
    }
    let hd = cfg.hidden_size;
    let n = cfg.intermediate_size;
    let mut written = 0u64;
    let mut weight_bytes = 0u64;
    let mut weight_map: Vec<(String, String)> = Vec::new();
    for f in &store.files {
        let fname = f
            .path
            .file_name()
            .expect("file")
            .to_string_lossy()
            .into_owned();
        let mut order: Vec<(&String, &crate::safetensors::TensorInfo)> = f.tensors.iter().collect();
        order.sort_by_key(|(_, t)| t.start);
        let entries: Vec<HeaderEntry> = order
            .iter()
            .map(|(name, t)| {
                let mut shape = t.shape.clone();
                match mlp.get(*name) {
                    Some((_, LayerTensor::Down)) => shape[1] = width,
                    Some(_) => shape[0] = width,
                    None => {}
                }
                HeaderEntry {
                    name: (*name).clone(),
                    dtype: t.dtype,
                    shape,
                }
            })
            .collect();
        let path = tmp.path.join(&fname);
        let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        let mut w = LimitedWriter {
            inner: BufWriter::with_capacity(1 << 22, file),
            left: limit,
        };
        let werr = |e: std::io::Error| Error::io(&path, e);
        let header = encode_header(&entries, f.metadata.as_ref());
        w.write_all(&header).map_err(werr)?;
        let mut file_bytes = header.len() as u64;
        let mut buf = Vec::new();
        for ((name, t), e) in order.iter().zip(&entries) {
            let src = f.bytes(t);
            let es = t.dtype.size();
            buf.clear();
            let out_bytes: &[u8] = match mlp.get(*name) {
                None => src,
                Some(&(l, role)) => {
                    let cut = &cuts[l];
                    match role {
                        LayerTensor::Down => match &cut.down {
                            Some(d) => {
                                f32_to_dtype(d, t.dtype, &mut buf);
                                &buf
                            }
                            None => {
                                for r in 0..hd {
                                    for &j in &cut.kept {
                                        let o = (r * n + j) * es;
                                        buf.extend_from_slice(&src[o..o + es]);
                                    }
                                }
                                &buf
                            }
                        },
                        _ => {
                            for &j in &cut.kept {
                                buf.extend_from_slice(&src[j * hd * es..(j + 1) * hd * es]);
                            }
                            &buf
                        }
                    }
                }
            };
            debug_assert_eq!(out_bytes.len(), e.nbytes());
            w.write_all(out_bytes).map_err(werr)?;
            file_bytes += out_bytes.len() as u64;
            weight_bytes += out_bytes.len() as u64;
            weight_map.push(((*name).clone(), fname.clone()));
            progress(written + file_bytes);
        }
        w.flush().map_err(werr)?;
        limit = w.left;
        let file = w
            .inner
            .into_inner()
            .map_err(|e| Error::io(&path, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&path, e))?;
        written += file_bytes;
    }

    let write_small = |name: &str, bytes: &[u8], limit: &mut Option<u64>| -> Result<()> {
        let p = tmp.path.join(name);
        if let Some(l) = limit {
            if bytes.len() as u64 > *l {
                return Err(Error::io(&p, std::io::Error::from_raw_os_error(28)));
            }
            *l -= bytes.len() as u64;
        }
        std::fs::write(&p, bytes).map_err(|e| Error::io(&p, e))
    };

    if let Some(idx) = &store.shard_index {
        let mut idx = idx.clone();
        if let Some(m) = idx.get_mut("metadata").and_then(Value::as_object_mut) {
            m.insert("total_size".into(), Value::from(weight_bytes));
        }
        let text = serde_json::to_string_pretty(&idx).expect("json") + "\n";
        write_small("model.safetensors.index.json", text.as_bytes(), &mut limit)?;
    }

    let cfg_path = inp.join("config.json");
    let cfg_text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
    // A multimodal config holds other `intermediate_size`s (the vision tower's): rewrite the
    // parsed JSON there rather than patch the text.
    let patched = if cfg.multimodal {
        None
    } else {
        rewrite_config_text(&cfg_text, width)
    };
    let new_cfg = patched.unwrap_or_else(|| {
        serde_json::to_string_pretty(&cfg.with_intermediate_size(width).raw).expect("json") + "\n"
    });
    write_small("config.json", new_cfg.as_bytes(), &mut limit)?;

    // Tokenizer, generation config and other small files, as they are.
    let mut others: Vec<PathBuf> = std::fs::read_dir(&inp)
        .map_err(|e| Error::io(&inp, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    others.sort();
    for p in others {
        let fname = p.file_name().expect("file").to_string_lossy().into_owned();
        let ext = p
            .extension()
            .map(|e| e.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        if fname == "config.json"
            || fname == "model.safetensors.index.json"
            || fname == "whittle_report.json"
            || fname.starts_with('.')
            || SKIP_EXT.contains(&ext.as_str())
        {
            continue;
        }
        let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
        write_small(&fname, &bytes, &mut limit)?;
    }
    let rep = serde_json::to_string_pretty(&report()).expect("json") + "\n";
    write_small("whittle_report.json", rep.as_bytes(), &mut limit)?;

    let mut tmp = tmp;
    install_folder(&tmp.path, &abs, force)?;
    tmp.armed = false;
    Ok(WriteStats {
        bytes_written: written,
        weight_bytes,
    })
}

/// Moves the complete folder `src` (beside `out`, so on the same filesystem) into place at `out`:
/// an existing output (allowed by `force`) is moved aside first, then removed.
pub fn install_folder(src: &Path, out: &Path, force: bool) -> Result<()> {
    if out.exists() {
        if !force {
            return Err(Error::Arg {
                flag: "--output",
                msg: format!(
                    "{} appeared while compiling; left as it is (pass --force to replace it)",
                    out.display()
                ),
            });
        }
        let parent = out.parent().unwrap_or(Path::new("."));
        let name = out
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let old = parent.join(format!(".{name}.whittle-old-{}", std::process::id()));
        std::fs::rename(out, &old).map_err(|e| Error::io(out, e))?;
        std::fs::rename(src, out).map_err(|e| Error::io(out, e))?;
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    } else {
        std::fs::rename(src, out).map_err(|e| Error::io(out, e))?;
    }
    Ok(())
}

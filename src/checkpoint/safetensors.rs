//! Memory-mapped safetensors reading, one file or sharded (`model.safetensors.index.json`).
//!
//! The header is validated completely before any tensor is touched: dtype known, byte length equal
//! to shape × dtype size, offsets inside the file. A truncated download or a hand-edited header is
//! an error naming the file and tensor, never an out-of-bounds read. Weights stay in the page
//! cache; callers widen what they need (one layer at a time) to f32.

use crate::error::{Error, Result};
use memmap2::Mmap;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

/// Headers larger than this are rejected before parsing (the reference implementation uses the
/// same bound); a real header for a 9B model is a few hundred KiB.
const MAX_HEADER: u64 = 100 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    BF16,
    I64,
    I32,
    Other(&'static str),
}

impl Dtype {
    fn parse(s: &str) -> Option<Dtype> {
        Some(match s {
            "F32" => Dtype::F32,
            "F16" => Dtype::F16,
            "BF16" => Dtype::BF16,
            "I64" => Dtype::I64,
            "I32" => Dtype::I32,
            "F64" => Dtype::Other("F64"),
            "U8" => Dtype::Other("U8"),
            "I8" => Dtype::Other("I8"),
            "I16" => Dtype::Other("I16"),
            "U16" => Dtype::Other("U16"),
            "U32" => Dtype::Other("U32"),
            "U64" => Dtype::Other("U64"),
            "BOOL" => Dtype::Other("BOOL"),
            "F8_E4M3" => Dtype::Other("F8_E4M3"),
            "F8_E5M2" => Dtype::Other("F8_E5M2"),
            _ => return None,
        })
    }

    pub fn size(self) -> usize {
        match self {
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            Dtype::I64 => 8,
            Dtype::Other(s) => match s {
                "F64" | "U64" => 8,
                "U32" => 4,
                "I16" | "U16" => 2,
                _ => 1,
            },
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I64 => "I64",
            Dtype::I32 => "I32",
            Dtype::Other(s) => s,
        }
    }
}

#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Byte range inside the data section (after the header).
    pub start: usize,
    pub end: usize,
}

/// Refuses anything but a regular file (after following links): opening a FIFO blocks forever
/// and a device such as /dev/zero never ends, so neither may stand in for a model or text file.
pub fn check_regular(path: &Path) -> Result<()> {
    let md = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !md.is_file() {
        let ft = md.file_type();
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_dir() {
            "a folder"
        } else if ft.is_fifo() {
            "a FIFO (named pipe)"
        } else if ft.is_char_device() || ft.is_block_device() {
            "a device"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("is {kind}; whittle reads regular files only"),
            ),
        ));
    }
    Ok(())
}

/// Where a symbolic link inside the input folder may point: inside that folder, or, for a Hugging
/// Face cache snapshot (`<repo>/snapshots/<rev>/x` → `../../blobs/<hash>`), inside that
/// repository's blob store. Anything else (a link to a private key, say) is refused, because the
/// file's contents would be copied into OUT as a regular file and published with it.
pub fn check_link(dir: &Path, path: &Path) -> Result<()> {
    let md = std::fs::symlink_metadata(path).map_err(|e| Error::io(path, e))?;
    if !md.file_type().is_symlink() {
        return Ok(());
    }
    let target = path.canonicalize().map_err(|e| Error::io(path, e))?;
    let root = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
    if target.starts_with(&root) {
        return Ok(());
    }
    let blobs = root
        .parent()
        .filter(|p| p.file_name().is_some_and(|n| n == "snapshots"))
        .and_then(Path::parent)
        .map(|repo| repo.join("blobs"));
    if blobs.is_some_and(|b| target.starts_with(b)) {
        return Ok(());
    }
    Err(Error::io(
        path,
        std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "is a symbolic link to {}, outside the model folder {}; whittle follows links \
                 only inside the model folder or its Hugging Face cache blob store (copy the file \
                 in if it belongs to the model)",
                target.display(),
                root.display()
            ),
        ),
    ))
}

/// A file of the model folder that whittle reads: a regular file, and a link only where
/// [`check_link`] allows it.
pub fn check_input_file(dir: &Path, path: &Path) -> Result<()> {
    check_link(dir, path)?;
    check_regular(path)
}

/// One mapped safetensors file with its validated header.
pub struct SafeFile {
    pub path: PathBuf,
    /// Kept open so [`SafeFile::check_unchanged`] can fstat the very inode that is mapped.
    file: File,
    mmap: Mmap,
    data_start: usize,
    pub tensors: BTreeMap<String, TensorInfo>,
    pub metadata: Option<Value>,
}

impl SafeFile {
    pub fn open(path: &Path) -> Result<SafeFile> {
        check_regular(path)?;
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only and private to this process. Like every mmap reader we
        // assume no other process truncates or rewrites the checkpoint while whittle runs; the
        // input model is never written by whittle itself.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        crate::mem::register_mapping(path, &mmap);
        let (data_start, tensors, metadata) = parse_header(path, &mmap)?;
        Ok(SafeFile {
            path: path.to_path_buf(),
            file,
            mmap,
            data_start,
            tensors,
            metadata,
        })
    }

    /// The raw little-endian bytes of one tensor (bounds were checked when the header was read).
    pub fn bytes(&self, info: &TensorInfo) -> &[u8] {
        &self.mmap[self.data_start + info.start..self.data_start + info.end]
    }

    /// Fails if the mapped file no longer has the length its header was checked against (another
    /// process truncated or rewrote it): reading a page past the new end would raise SIGBUS.
    pub fn check_unchanged(&self) -> Result<()> {
        let len = self
            .file
            .metadata()
            .map_err(|e| Error::io(&self.path, e))?
            .len();
        if len != self.mmap.len() as u64 {
            return Err(header_err(
                &self.path,
                format!(
                    "the file changed while whittle was reading it (was {} bytes, now {len}); \
                     another process truncated or rewrote it — rerun on a stable copy",
                    self.mmap.len()
                ),
            ));
        }
        Ok(())
    }

    /// Bytes in the data section (everything after the header).
    pub fn data_len(&self) -> usize {
        self.mmap.len() - self.data_start
    }
}

fn header_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::SafetensorsHeader {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

type Header = (usize, BTreeMap<String, TensorInfo>, Option<Value>);

/// A JSON object's entries in file order, duplicates kept (so they can be reported).
pub struct Pairs(pub Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for Pairs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Pairs;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<Pairs, A::Error> {
                let mut v = Vec::new();
                while let Some(kv) = m.next_entry::<String, Value>()? {
                    v.push(kv);
                }
                Ok(Pairs(v))
            }
        }
        d.deserialize_map(V)
    }
}

fn parse_header(path: &Path, buf: &[u8]) -> Result<Header> {
    if buf.len() < 8 {
        return Err(header_err(
            path,
            format!(
                "file is {} bytes, shorter than the 8-byte header length; is it truncated?",
                buf.len()
            ),
        ));
    }
    let n = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
    if n > MAX_HEADER {
        return Err(header_err(
            path,
            format!("header length {n} is implausible (> {MAX_HEADER})"),
        ));
    }
    let n = n as usize;
    if 8 + n > buf.len() {
        return Err(header_err(
            path,
            format!(
                "header says it is {n} bytes but the file has only {} after the length; the file is truncated",
                buf.len() - 8
            ),
        ));
    }
    // Parsed as a list of pairs, not a map: a map keeps the last of two equal keys silently.
    let pairs: Pairs = serde_json::from_slice(&buf[8..8 + n]).map_err(|e| {
        if e.is_data() {
            header_err(path, "header is not a JSON object")
        } else {
            header_err(path, format!("header is not valid JSON: {e}"))
        }
    })?;
    let data_len = buf.len() - 8 - n;
    let mut tensors = BTreeMap::new();
    let mut metadata = None;
    let mut seen = std::collections::HashSet::new();
    for (name, v) in &pairs.0 {
        if !seen.insert(name.as_str()) {
            return Err(header_err(
                path,
                format!("the header names \"{name}\" twice; the file is corrupt"),
            ));
        }
        if name == "__metadata__" {
            metadata = Some(v.clone());
            continue;
        }
        let terr = |msg: String| Error::Tensor {
            path: path.to_path_buf(),
            tensor: name.clone(),
            msg,
        };
        let dtype_s = v
            .get("dtype")
            .and_then(Value::as_str)
            .ok_or_else(|| terr("header entry has no \"dtype\"".into()))?;
        let dtype =
            Dtype::parse(dtype_s).ok_or_else(|| terr(format!("unknown dtype \"{dtype_s}\"")))?;
        let shape: Vec<usize> = v
            .get("shape")
            .and_then(Value::as_array)
            .ok_or_else(|| terr("header entry has no \"shape\" list".into()))?
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize))
            .collect::<Option<_>>()
            .ok_or_else(|| terr("shape must be a list of non-negative integers".into()))?;
        let offs: Vec<usize> = v
            .get("data_offsets")
            .and_then(Value::as_array)
            .filter(|a| a.len() == 2)
            .and_then(|a| a.iter().map(|d| d.as_u64().map(|d| d as usize)).collect())
            .ok_or_else(|| terr("\"data_offsets\" must be [begin, end]".into()))?;
        let (start, end) = (offs[0], offs[1]);
        if start > end {
            return Err(terr(format!("data_offsets [{start}, {end}] are reversed")));
        }
        if end > data_len {
            return Err(terr(format!(
                "data_offsets end at byte {end} but the file holds only {data_len} data bytes; \
                 the file is truncated or its header is corrupt"
            )));
        }
        let numel = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| terr(format!("shape {shape:?} overflows")))?;
        let want = numel
            .checked_mul(dtype.size())
            .ok_or_else(|| terr(format!("shape {shape:?} overflows")))?;
        if end - start != want {
            return Err(terr(format!(
                "shape {shape:?} × {} needs {want} bytes but data_offsets span {}",
                dtype.name(),
                end - start
            )));
        }
        tensors.insert(
            name.clone(),
            TensorInfo {
                dtype,
                shape,
                start,
                end,
            },
        );
    }
    // Overlapping tensors would mean a corrupt header; the format requires disjoint ranges.
    let mut ranges: Vec<(usize, usize, &String)> =
        tensors.iter().map(|(k, t)| (t.start, t.end, k)).collect();
    ranges.sort();
    for w in ranges.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(header_err(
                path,
                format!("tensors \"{}\" and \"{}\" overlap", w[0].2, w[1].2),
            ));
        }
    }
    Ok((8 + n, tensors, metadata))
}

/// A view of one tensor: where it lives and its bytes.
pub struct TensorRef<'a> {
    pub name: &'a str,
    pub file: &'a SafeFile,
    pub info: &'a TensorInfo,
}

impl TensorRef<'_> {
    pub fn bytes(&self) -> &[u8] {
        self.file.bytes(self.info)
    }

    fn err(&self, msg: String) -> Error {
        Error::Tensor {
            path: self.file.path.clone(),
            tensor: self.name.to_string(),
            msg,
        }
    }

    /// Widen to f32 (exact for BF16 and F16).
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let mut out = vec![0f32; self.info.shape.iter().product()];
        self.read_f32_into(&mut out)?;
        Ok(out)
    }

    pub fn read_f32_into(&self, out: &mut [f32]) -> Result<()> {
        let b = self.bytes();
        if out.len() * self.info.dtype.size() != b.len() {
            return Err(self.err(format!(
                "read of {} elements from {} bytes",
                out.len(),
                b.len()
            )));
        }
        let finite = match self.info.dtype {
            Dtype::F32 => widen(b, out, |c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            Dtype::BF16 => widen(b, out, |c| {
                crate::cpu::convert::widen(u16::from_le_bytes([c[0], c[1]]))
            }),
            Dtype::F16 => widen(b, out, |c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()),
            d => {
                return Err(Error::UnsupportedDtype {
                    path: self.file.path.clone(),
                    tensor: self.name.to_string(),
                    dtype: d.name().to_string(),
                })
            }
        };
        if !finite {
            return Err(self.non_finite_err());
        }
        Ok(())
    }

    fn non_finite_err(&self) -> Error {
        let at = first_non_finite(self.bytes(), self.info.dtype).unwrap_or(0);
        self.err(format!(
            "holds a non-finite value (NaN or Inf) at element {at} of shape {:?}; the checkpoint \
             is corrupt or overflowed when it was saved",
            self.info.shape
        ))
    }

    /// The raw bf16 bits of a BF16 tensor (None for any other dtype).
    pub fn bf16_bits(&self) -> Option<Vec<u16>> {
        use rayon::prelude::*;
        (self.info.dtype == Dtype::BF16).then(|| {
            self.bytes()
                .par_chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect()
        })
    }

    /// Integer tensors (token-id fixtures, pre-tokenized calibration files).
    pub fn to_i64(&self) -> Result<Vec<i64>> {
        let b = self.bytes();
        match self.info.dtype {
            Dtype::I64 => Ok(b
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8")))
                .collect()),
            Dtype::I32 => Ok(b
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().expect("4")) as i64)
                .collect()),
            d => Err(self.err(format!("expected an integer tensor, found {}", d.name()))),
        }
    }
}

/// Widens `src` into `out`; false if any value is NaN or ±Inf (checked in the same pass, so a
/// corrupt weight is caught where it is read at no extra memory traffic).
fn widen(src: &[u8], out: &mut [f32], f: impl Fn(&[u8]) -> f32 + Sync + Send) -> bool {
    use rayon::prelude::*;
    if out.is_empty() {
        return true;
    }
    let sz = src.len() / out.len();
    const CHUNK: usize = 1 << 16;
    out.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK * sz))
        .map(|(o, s)| {
            for (x, c) in o.iter_mut().zip(s.chunks_exact(sz)) {
                *x = f(c);
            }
            o.iter().all(|x| x.is_finite())
        })
        .reduce(|| true, |a, b| a && b)
}

/// The index of the first NaN / ±Inf element of little-endian float bytes (None for integer
/// dtypes or when every value is finite). A float is non-finite iff its exponent bits are all ones.
pub fn first_non_finite(bytes: &[u8], dtype: Dtype) -> Option<usize> {
    match dtype {
        Dtype::F32 => bytes.chunks_exact(4).position(|c| {
            u32::from_le_bytes([c[0], c[1], c[2], c[3]]) & 0x7f80_0000 == 0x7f80_0000
        }),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .position(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7f80 == 0x7f80),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .position(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7c00 == 0x7c00),
        Dtype::Other("F64") => bytes.chunks_exact(8).position(|c| {
            u64::from_le_bytes(c.try_into().expect("8")) & 0x7ff0_0000_0000_0000
                == 0x7ff0_0000_0000_0000
        }),
        _ => None,
    }
}

/// All safetensors files of a model folder, with a name → file index.
pub struct WeightStore {
    pub dir: PathBuf,
    pub files: Vec<SafeFile>,
    index: HashMap<String, usize>,
    /// Present when the checkpoint is sharded: the parsed `model.safetensors.index.json`.
    pub shard_index: Option<Value>,
    /// Where the language model's tensors sit in the files (see [`Naming`]).
    pub naming: Naming,
}

/// How the checkpoint spells the registry's names (`model.layers.0....`, `lm_head.weight`).
/// A text checkpoint uses them as they are; a multimodal Gemma-3 checkpoint nests the language
/// model: `language_model.model.*` + `language_model.lm_head.weight` (what the hub's Gemma 3
/// 4B/12B/27B and transformers' save_pretrained write) or `model.language_model.*` +
/// `lm_head.weight` (transformers' in-memory layout, written by some 4.5x versions). Everything
/// else in such a file (vision tower, projector) is outside the registry and passes through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Naming {
    /// Replaces the registry's leading `model.`.
    pub model_prefix: String,
    pub lm_head: String,
}

impl Naming {
    fn text() -> Naming {
        Naming {
            model_prefix: "model.".into(),
            lm_head: "lm_head.weight".into(),
        }
    }

    /// The layout whose embedding tensor the checkpoint holds (text layout when none matches,
    /// so a missing embedding is reported under its usual name).
    fn detect(index: &HashMap<String, usize>) -> Naming {
        let layouts = [
            Naming::text(),
            Naming {
                model_prefix: "language_model.model.".into(),
                lm_head: "language_model.lm_head.weight".into(),
            },
            Naming {
                model_prefix: "model.language_model.".into(),
                lm_head: "lm_head.weight".into(),
            },
        ];
        layouts
            .into_iter()
            .find(|n| index.contains_key(&format!("{}embed_tokens.weight", n.model_prefix)))
            .unwrap_or_else(Naming::text)
    }

    /// The file's name for a registry name.
    pub fn file_name<'a>(&self, name: &'a str) -> std::borrow::Cow<'a, str> {
        if let Some(rest) = name.strip_prefix("model.") {
            if self.model_prefix != "model." {
                return format!("{}{rest}", self.model_prefix).into();
            }
        } else if name == "lm_head.weight" && self.lm_head != name {
            return self.lm_head.clone().into();
        }
        name.into()
    }
}

impl WeightStore {
    pub fn open(dir: &Path) -> Result<WeightStore> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let (files, shard_index) = if index_path.exists() {
            check_input_file(dir, &index_path)?;
            let text =
                std::fs::read_to_string(&index_path).map_err(|e| Error::io(&index_path, e))?;
            let ierr = |msg: String| Error::Index {
                path: index_path.clone(),
                msg,
            };
            let idx: Value =
                serde_json::from_str(&text).map_err(|e| ierr(format!("not valid JSON: {e}")))?;
            let map = idx
                .get("weight_map")
                .and_then(Value::as_object)
                .ok_or_else(|| ierr("no \"weight_map\" object".into()))?;
            // The map above keeps one of two equal keys; look for duplicates in the text itself.
            #[derive(serde::Deserialize)]
            struct RawIndex {
                weight_map: Pairs,
            }
            if let Ok(raw) = serde_json::from_str::<RawIndex>(&text) {
                let mut seen = std::collections::HashSet::new();
                if let Some((t, _)) = raw.weight_map.0.iter().find(|(t, _)| !seen.insert(t)) {
                    return Err(ierr(format!("weight_map names \"{t}\" twice")));
                }
            }
            let mut names: Vec<String> = Vec::new();
            for (t, f) in map {
                let f = f
                    .as_str()
                    .ok_or_else(|| ierr(format!("weight_map[\"{t}\"] is not a file name")))?;
                if f.contains('/') || f.contains('\\') || f.starts_with('.') {
                    return Err(Error::Index {
                        path: index_path.clone(),
                        msg: format!(
                            "weight_map[\"{t}\"] = \"{f}\" must be a file name in the model folder"
                        ),
                    });
                }
                if !names.iter().any(|n| n == f) {
                    names.push(f.to_string());
                }
            }
            names.sort();
            let files = names
                .iter()
                .map(|n| {
                    let p = dir.join(n);
                    check_link(dir, &p)?;
                    SafeFile::open(&p)
                })
                .collect::<Result<Vec<_>>>()?;
            (files, Some(idx))
        } else if single.exists() {
            check_link(dir, &single)?;
            (vec![SafeFile::open(&single)?], None)
        } else {
            return Err(Error::Other(format!(
                "{}: no model.safetensors or model.safetensors.index.json; whittle reads Hugging Face \
                 safetensors checkpoints (convert .bin/.gguf first)",
                dir.display()
            )));
        };
        let mut index = HashMap::new();
        for (i, f) in files.iter().enumerate() {
            for name in f.tensors.keys() {
                if let Some(prev) = index.insert(name.clone(), i) {
                    return Err(Error::Tensor {
                        path: f.path.clone(),
                        tensor: name.clone(),
                        msg: format!("also present in {}", files[prev].path.display()),
                    });
                }
            }
        }
        // Every index entry must name a tensor that its shard holds: a phantom entry would be
        // copied into OUT's index and break whatever loads it.
        if let Some(map) = shard_index
            .as_ref()
            .and_then(|i| i.get("weight_map"))
            .and_then(Value::as_object)
        {
            for (t, f) in map {
                let holder = index.get(t).map(|&i| &files[i].path);
                if holder.and_then(|p| p.file_name()).and_then(|n| n.to_str()) != f.as_str() {
                    return Err(Error::Index {
                        path: index_path.clone(),
                        msg: match holder {
                            None => format!(
                                "weight_map names tensor \"{t}\" in {f}, but no shard holds it"
                            ),
                            Some(p) => format!(
                                "weight_map puts tensor \"{t}\" in {f}, but it is in {}",
                                p.display()
                            ),
                        },
                    });
                }
            }
        }
        let naming = Naming::detect(&index);
        Ok(WeightStore {
            dir: dir.to_path_buf(),
            files,
            index,
            shard_index,
            naming,
        })
    }

    /// Is the tensor with this registry name in the checkpoint?
    pub fn contains(&self, name: &str) -> bool {
        self.index
            .contains_key(self.naming.file_name(name).as_ref())
    }

    /// The names the files use (see [`Naming`] for how they relate to the registry's).
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.index.keys()
    }

    /// A tensor by its registry name (`model.layers.0.mlp.up_proj.weight`), whatever the
    /// checkpoint calls it.
    pub fn get(&self, name: &str) -> Result<TensorRef<'_>> {
        self.get_raw(&self.naming.file_name(name))
    }

    /// A tensor by the name the file uses.
    pub fn get_raw(&self, name: &str) -> Result<TensorRef<'_>> {
        let (key, &i) = self
            .index
            .get_key_value(name)
            .ok_or_else(|| Error::MissingTensor {
                dir: self.dir.clone(),
                tensor: name.to_string(),
                files: self
                    .files
                    .iter()
                    .map(|f| {
                        f.path
                            .file_name()
                            .unwrap_or_default()
                            .to_string_lossy()
                            .into_owned()
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let file = &self.files[i];
        Ok(TensorRef {
            name: key,
            file,
            info: &file.tensors[name],
        })
    }

    /// A tensor by registry name, checked against the shape the config implies (the error
    /// names the file, the tensor as the file calls it, and both shapes).
    pub fn get_checked(&self, name: &str, shape: &[usize]) -> Result<TensorRef<'_>> {
        let t = self.get(name)?;
        if t.info.shape != shape {
            return Err(Error::ShapeMismatch {
                path: t.file.path.clone(),
                tensor: t.name.to_string(),
                expected: shape.to_vec(),
                found: t.info.shape.clone(),
            });
        }
        Ok(t)
    }

    /// The tensor's bf16 bits when it is stored as BF16 (None otherwise), shape-checked.
    pub fn bf16_checked(&self, name: &str, shape: &[usize]) -> Result<Option<Vec<u16>>> {
        let t = self.get_checked(name, shape)?;
        let bits = t.bf16_bits();
        if bits
            .as_ref()
            .is_some_and(|b| b.iter().any(|&x| x & 0x7f80 == 0x7f80))
        {
            return Err(t.non_finite_err());
        }
        Ok(bits)
    }

    /// The checkpoint must hold layers 0..n and no more (checked before anything is sized by n).
    pub fn check_layers(&self, n: usize) -> Result<()> {
        let prefix = self.naming.file_name("model.layers.").into_owned();
        let present = self
            .index
            .keys()
            .filter_map(|k| {
                k.strip_prefix(&prefix)?
                    .split('.')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .max()
            .map_or(0, |m| m + 1);
        if present != n {
            return Err(Error::Other(format!(
                "{}: config.json says num_hidden_layers {n} but the checkpoint holds {present} \
                 layers; the config does not match the weights",
                self.dir.display()
            )));
        }
        Ok(())
    }

    /// Fails if any file changed length since it was opened (see [`SafeFile::check_unchanged`]).
    pub fn check_unchanged(&self) -> Result<()> {
        self.files.iter().try_for_each(SafeFile::check_unchanged)
    }

    /// The tensor, shape-checked, widened to f32.
    pub fn f32_checked(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.get_checked(name, shape)?.to_f32()
    }
}

/// One tensor of a file being written: the header is laid out from these before any data.
#[derive(Debug, Clone)]
pub struct HeaderEntry {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

impl HeaderEntry {
    pub fn nbytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size()
    }
}

/// The 8-byte length and JSON header for `entries` stored back to back in the given order,
/// padded with spaces to a multiple of 8 so the data section stays aligned.
pub fn encode_header(entries: &[HeaderEntry], metadata: Option<&Value>) -> Vec<u8> {
    // serde_json's map is ordered by key, so build the JSON text by hand to keep file order.
    let mut json = String::from("{");
    if let Some(m) = metadata {
        json += &format!("\"__metadata__\":{m}");
    }
    let mut off = 0usize;
    for e in entries {
        if json.len() > 1 {
            json.push(',');
        }
        let n = e.nbytes();
        json += &format!(
            "{}:{{\"dtype\":\"{}\",\"shape\":{},\"data_offsets\":[{},{}]}}",
            Value::from(e.name.as_str()),
            e.dtype.name(),
            Value::from(e.shape.clone()),
            off,
            off + n
        );
        off += n;
    }
    json.push('}');
    while json.len() % 8 != 0 {
        json.push(' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(json.as_bytes());
    out
}

/// The header check of [`SafeFile::open`] on a file's bytes in memory (`path` names it in
/// errors): where the data section starts, and the tensors. For the fuzz harness (tests/fuzz.rs).
pub fn parse_header_bytes(
    path: &Path,
    buf: &[u8],
) -> Result<(usize, BTreeMap<String, TensorInfo>)> {
    parse_header(path, buf).map(|(start, tensors, _)| (start, tensors))
}

/// A whole safetensors file holding one I64 tensor `name` of `shape` (small files: calibration
/// ids saved beside a compiled model).
pub fn encode_i64_tensor(name: &str, data: &[i64], shape: &[usize]) -> Vec<u8> {
    let entry = HeaderEntry {
        name: name.to_string(),
        dtype: Dtype::I64,
        shape: shape.to_vec(),
    };
    assert_eq!(
        entry.nbytes(),
        8 * data.len(),
        "{name}: data does not fill {shape:?}"
    );
    let mut out = encode_header(&[entry], None);
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

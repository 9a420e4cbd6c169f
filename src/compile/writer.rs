//! Writes the compiled checkpoint: a vanilla Hugging Face folder, streamed from the memory-mapped
//! input into a temporary folder beside the destination and renamed into place at the end, so an
//! interrupted or failed run leaves nothing half-written and the input is never touched.
//!
//! Per tensor: gate/up rows and down columns are sliced byte-for-byte in the input dtype, or a
//! re-fit down_proj is rounded (nearest-even) to that dtype; every other tensor is copied
//! byte-for-byte. Files keep their names, tensor order and `__metadata__`; a sharded input gives
//! a sharded output with the same index layout.

use crate::checkpoint::config::ModelConfig;
use crate::checkpoint::registry::{layer_name, LayerTensor};
use crate::checkpoint::safetensors::{
    check_input_file, check_link, encode_header, first_non_finite, Dtype, HeaderEntry, WeightStore,
};
use crate::error::{Error, Result};
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
    /// Reconstructed gate and up [K, H] in f32 (`--reconstruct`), or None to slice the original
    /// rows.
    pub gate_up: Option<(Vec<f32>, Vec<f32>)>,
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

/// What was at OUT when the run checked it: the final step replaces exactly that, or nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutState {
    Absent,
    /// Something (a folder, a file, a link: not followed) with this identity.
    Present {
        dev: u64,
        ino: u64,
        dir: bool,
    },
}

fn out_state(path: &Path) -> Result<OutState> {
    use std::os::unix::fs::MetadataExt;
    match std::fs::symlink_metadata(path) {
        Ok(md) => Ok(OutState::Present {
            dev: md.dev(),
            ino: md.ino(),
            dir: md.is_dir(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(OutState::Absent),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// A checked destination: absolute paths and what OUT was when checked.
#[derive(Debug, Clone)]
pub struct Destination {
    /// The input folder, canonical.
    pub input: PathBuf,
    /// OUT, absolute (its parent canonical, its own name as given).
    pub out: PathBuf,
    pub state: OutState,
    pub force: bool,
    /// `.NAME.whittle-tmp-`, cut to fit the filesystem's name limit with the PID after it.
    tmp_prefix: std::ffi::OsString,
}

impl Destination {
    fn parent(&self) -> &Path {
        self.out.parent().expect("absolute path has a parent")
    }

    /// This run's temp folder beside OUT.
    pub fn tmp_path(&self) -> PathBuf {
        let mut n = self.tmp_prefix.clone();
        n.push(std::process::id().to_string());
        self.parent().join(n)
    }
}

const TMP_TAG: &str = ".whittle-tmp-";

/// `.NAME.whittle-tmp-` with NAME cut (at a char boundary) so that adding a PID (≤ 10 digits)
/// stays within `name_max` bytes.
fn tmp_prefix(name: &std::ffi::OsStr, name_max: usize) -> std::ffi::OsString {
    let name = name.to_string_lossy();
    let room = name_max.saturating_sub(1 + TMP_TAG.len() + 10).max(1);
    let mut cut = name.len().min(room);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(".{}{TMP_TAG}", &name[..cut]).into()
}

fn statvfs(dir: &Path) -> Result<libc::statvfs> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|_| Error::Arg {
        flag: "--output",
        msg: format!("{} contains a NUL byte", dir.display()),
    })?;
    // SAFETY: c is a valid NUL-terminated path; st is written by statvfs before it is read.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return Err(Error::io(dir, std::io::Error::last_os_error()));
        }
        Ok(st)
    }
}

fn pid_alive(pid: u32) -> bool {
    let Ok(p) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists; nothing is sent.
    let r = unsafe { libc::kill(p, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Removes temp folders that killed runs on this OUT left behind (their PID is no longer
/// running); returns how many. Folders of running compiles are left alone.
pub fn remove_stale_temps(dest: &Destination) -> Result<usize> {
    use std::os::unix::ffi::OsStrExt;
    let parent = dest.parent();
    let prefix = dest.tmp_prefix.as_bytes();
    let mut n = 0;
    let entries = std::fs::read_dir(parent).map_err(|e| Error::io(parent, e))?;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .as_bytes()
            .strip_prefix(prefix)
            .and_then(|d| std::str::from_utf8(d).ok())
            .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse::<u32>().ok())
        else {
            continue;
        };
        let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if pid == std::process::id() || !is_dir || pid_alive(pid) {
            continue;
        }
        let p = e.path();
        std::fs::remove_dir_all(&p).map_err(|e| Error::io(&p, e))?;
        eprintln!(
            "note: removed {}, left by an interrupted run (PID {pid})",
            p.display()
        );
        n += 1;
    }
    Ok(n)
}

/// Refuses destinations that would clobber or sit inside the input, records what is at OUT now
/// (only that may be replaced, and only with `force`) and removes stale temp folders of OUT.
pub fn check_destination(input: &Path, out: &Path, force: bool) -> Result<Destination> {
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
    if inp.starts_with(&abs) || abs.canonicalize().is_ok_and(|a| inp.starts_with(a)) {
        return Err(Error::Arg {
            flag: "--output",
            msg: format!(
                "{} contains the input model; refusing to replace it",
                abs.display()
            ),
        });
    }
    let state = out_state(&abs)?;
    if state != OutState::Absent && !force {
        return Err(Error::Arg {
            flag: "--output",
            msg: format!(
                "{} already exists; pass --force to replace it",
                abs.display()
            ),
        });
    }
    let name_max = statvfs(&parent)?.f_namemax as usize;
    if name.len() > name_max {
        return Err(Error::Arg {
            flag: "--output",
            msg: format!(
                "the name {} is {} bytes; this filesystem allows {name_max}",
                name.to_string_lossy(),
                name.len()
            ),
        });
    }
    let dest = Destination {
        input: inp,
        out: abs,
        state,
        force,
        tmp_prefix: tmp_prefix(name, name_max),
    };
    remove_stale_temps(&dest)?;
    Ok(dest)
}

/// Before any compute: OUT's filesystem is writable here (a temp folder is made and removed)
/// and has room for `need` bytes (the estimated output size).
pub fn check_room(dest: &Destination, weight_bytes: u64) -> Result<()> {
    let parent = dest.parent();
    // Weights, plus the small files copied as they are, plus headers and JSON. A link that
    // may not be followed is reported now rather than after the compute.
    let entries: Vec<_> = std::fs::read_dir(&dest.input)
        .map_err(|e| Error::io(&dest.input, e))?
        .flatten()
        .collect();
    for e in &entries {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let ext = p.extension().map(|x| x.to_string_lossy().to_lowercase());
        let copied = p.is_file()
            && !name.starts_with('.')
            && !ext.is_some_and(|x| SKIP_EXT.contains(&x.as_str()));
        if copied {
            check_link(&dest.input, &p)?;
        }
    }
    let copied: u64 = entries
        .iter()
        .filter(|e| {
            let ext = e
                .path()
                .extension()
                .map(|x| x.to_string_lossy().to_lowercase());
            !ext.is_some_and(|x| SKIP_EXT.contains(&x.as_str()))
        })
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    let need = weight_bytes + copied + (1 << 20);
    let tmp = dest.tmp_path();
    std::fs::create_dir(&tmp).map_err(|e| Error::Io {
        path: parent.to_path_buf(),
        source: std::io::Error::new(e.kind(), format!("cannot write the output here: {e}")),
    })?;
    let _ = std::fs::remove_dir(&tmp);
    let st = statvfs(parent)?;
    let free = std::env::var("WHITTLE_TEST_FREE_BYTES")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or((st.f_bavail as u64).saturating_mul(st.f_frsize as u64));
    if free < need {
        return Err(Error::Io {
            path: parent.to_path_buf(),
            source: std::io::Error::other(format!(
                "the output needs about {:.3} GiB ({need} bytes) but this filesystem has {:.3} \
                     GiB ({free} bytes) free; free space or choose another --output",
                need as f64 / (1u64 << 30) as f64,
                free as f64 / (1u64 << 30) as f64
            )),
        });
    }
    Ok(())
}

#[cfg(target_os = "linux")]
fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let f = std::ffi::CString::new(from.as_os_str().as_bytes())?;
    let t = std::ffi::CString::new(to.as_os_str().as_bytes())?;
    // SAFETY: both paths are valid NUL-terminated strings; AT_FDCWD resolves them as given.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn renameat2(_: &Path, _: &Path, _: u32) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

#[cfg(target_os = "linux")]
const NOREPLACE: u32 = libc::RENAME_NOREPLACE;
#[cfg(target_os = "linux")]
const EXCHANGE: u32 = libc::RENAME_EXCHANGE;
#[cfg(not(target_os = "linux"))]
const NOREPLACE: u32 = 1;
#[cfg(not(target_os = "linux"))]
const EXCHANGE: u32 = 2;

/// The filesystem (or kernel) has no renameat2 flags: fall back to check-then-rename.
fn unsupported(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS))
        || e.kind() == std::io::ErrorKind::Unsupported
}

fn changed(dest: &Destination, now: OutState) -> Error {
    let what = |s: OutState| match s {
        OutState::Absent => "absent".to_string(),
        OutState::Present { dir: true, .. } => "a folder".to_string(),
        OutState::Present { .. } => "a file".to_string(),
    };
    Error::Arg {
        flag: "--output",
        msg: format!(
            "{} changed while compiling (it was {} at the start, now {}{}); it was left as it is \
             and nothing was written — check what else writes there and run again{}",
            dest.out.display(),
            what(dest.state),
            what(now),
            if now == dest.state {
                " but another one"
            } else {
                ""
            },
            if dest.force {
                ""
            } else {
                " (--force replaces it)"
            }
        ),
    }
}

fn remove_any(p: &Path, dir: bool) -> Result<()> {
    if dir {
        std::fs::remove_dir_all(p)
    } else {
        std::fs::remove_file(p)
    }
    .map_err(|e| Error::io(p, e))
}

/// Moves the finished temp folder to OUT, replacing only what the run recorded at the start.
pub fn install(tmp: &Path, dest: &Destination) -> Result<()> {
    let abs = &dest.out;
    match dest.state {
        OutState::Absent => match renameat2(tmp, abs, NOREPLACE) {
            Ok(()) => Ok(()),
            Err(e) if unsupported(&e) => {
                let now = out_state(abs)?;
                if now != OutState::Absent {
                    return Err(changed(dest, now));
                }
                std::fs::rename(tmp, abs).map_err(|e| Error::io(abs, e))
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Err(changed(dest, out_state(abs)?)),
            Err(e) => Err(Error::io(abs, e)),
        },
        OutState::Present { dir, .. } => {
            if !dest.force {
                return Err(changed(dest, out_state(abs)?));
            }
            let now = out_state(abs)?;
            if now != dest.state {
                return Err(changed(dest, now));
            }
            match renameat2(tmp, abs, EXCHANGE) {
                Ok(()) => {
                    // `tmp` now holds what was at OUT; swap back if it is not what was checked
                    // (replaced between the check above and the exchange).
                    let got = out_state(tmp)?;
                    if got != dest.state {
                        renameat2(tmp, abs, EXCHANGE).map_err(|e| Error::io(abs, e))?;
                        return Err(changed(dest, got));
                    }
                    remove_any(tmp, dir)
                }
                Err(e) if unsupported(&e) => {
                    let mut old = dest.tmp_path().into_os_string();
                    old.push("-old");
                    let old = PathBuf::from(old);
                    std::fs::rename(abs, &old).map_err(|e| Error::io(abs, e))?;
                    let got = out_state(&old)?;
                    if got != dest.state {
                        std::fs::rename(&old, abs).map_err(|e| Error::io(abs, e))?;
                        return Err(changed(dest, got));
                    }
                    std::fs::rename(tmp, abs).map_err(|e| Error::io(abs, e))?;
                    remove_any(&old, dir)
                }
                Err(e) => Err(Error::io(abs, e)),
            }
        }
    }
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
    dest: &Destination,
    store: &WeightStore,
    cfg: &ModelConfig,
    cuts: &[LayerCut],
    width: usize,
    extras: &[(String, Vec<u8>)],
    report: impl FnOnce() -> Value,
    mut progress: impl FnMut(u64),
) -> Result<WriteStats> {
    let inp = &dest.input;
    let parent = dest.parent().to_path_buf();
    store.check_unchanged()?;
    let tmp = TempDir {
        path: dest.tmp_path(),
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
            let name = layer_name(cfg, l, t);
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
        let mut order: Vec<(&String, &crate::checkpoint::safetensors::TensorInfo)> =
            f.tensors.iter().collect();
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
                        _ => match &cut.gate_up {
                            Some((g, u)) => {
                                let m = if role == LayerTensor::Gate { g } else { u };
                                f32_to_dtype(m, t.dtype, &mut buf);
                                &buf
                            }
                            None => {
                                for &j in &cut.kept {
                                    buf.extend_from_slice(&src[j * hd * es..(j + 1) * hd * es]);
                                }
                                &buf
                            }
                        },
                    }
                }
            };
            debug_assert_eq!(out_bytes.len(), e.nbytes());
            if let Some(at) = first_non_finite(out_bytes, t.dtype) {
                return Err(Error::Tensor {
                    path: f.path.clone(),
                    tensor: (*name).clone(),
                    msg: format!(
                        "the output would hold a non-finite value (NaN or Inf) at element {at}{}; \
                         nothing was written",
                        if mlp
                            .get(*name)
                            .is_some_and(|(l, _)| cuts[*l].gate_up.is_some())
                        {
                            " of a reconstructed MLP (lower --recon-lr)"
                        } else if mlp.get(*name).is_some_and(|(l, _)| cuts[*l].down.is_some()) {
                            " of the re-fit down_proj (raise --damp, or --no-repair)"
                        } else {
                            " (the input holds it)"
                        }
                    ),
                });
            }
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
    check_input_file(inp, &cfg_path)?;
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

    // Tokenizer, generation config and other small files, as they are (links only where
    // check_link allows them; FIFOs, devices and folders are not copied).
    let mut others: Vec<PathBuf> = std::fs::read_dir(inp)
        .map_err(|e| Error::io(inp, e))?
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
        check_input_file(inp, &p)?;
        // Streamed: a stray multi-GB file must not be read whole into memory.
        let mut src = File::open(&p).map_err(|e| Error::io(&p, e))?;
        let dst = tmp.path.join(&fname);
        let mut w = LimitedWriter {
            inner: BufWriter::new(File::create(&dst).map_err(|e| Error::io(&dst, e))?),
            left: limit,
        };
        std::io::copy(&mut src, &mut w).map_err(|e| Error::io(&dst, e))?;
        w.flush().map_err(|e| Error::io(&dst, e))?;
        limit = w.left;
    }
    for (name, bytes) in extras {
        write_small(name, bytes, &mut limit)?;
    }
    let rep = serde_json::to_string_pretty(&report()).expect("json") + "\n";
    write_small("whittle_report.json", rep.as_bytes(), &mut limit)?;

    // The input must still be what was read (a truncation after a page was read goes unseen
    // by the mapping).
    store.check_unchanged()?;
    // Into place: only over what was at OUT at the start, and only with --force.
    let mut tmp = tmp;
    install(&tmp.path, dest)?;
    tmp.armed = false;
    Ok(WriteStats {
        bytes_written: written,
        weight_bytes,
    })
}

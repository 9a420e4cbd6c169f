//! Shared test helpers: synthetic model folders written with the library's own registry and
//! safetensors header encoder (so bad-input tests can corrupt one thing at a time).
#![allow(dead_code)]

pub mod bf16;
pub mod check;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use whittle::checkpoint::config::ModelConfig;
use whittle::checkpoint::registry::registry;
use whittle::checkpoint::safetensors::{encode_header, Dtype, HeaderEntry};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The CLI binary: `WHITTLE_BIN` when set (the GPU machine runs prebuilt test binaries from
/// another checkout, scripts/device-check.sh), else the one cargo built.
pub fn bin() -> PathBuf {
    std::env::var_os("WHITTLE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_whittle")))
}

/// `whittle --device cpu`: tests that compare with fp32 references must not drift onto a GPU
/// (bf16) when the machine running them has one.
pub fn cpu_cmd() -> std::process::Command {
    let mut c = std::process::Command::new(bin());
    c.args(["--device", "cpu"]);
    c
}

/// A small Gemma-3 config (2 layers, both layer types).
pub fn tiny_config() -> Value {
    json!({
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
        "vocab_size": 64, "query_pre_attn_scalar": 16, "sliding_window": 4,
        "layer_types": ["sliding_attention", "full_attention"],
        "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
        "rms_norm_eps": 1e-6, "hidden_activation": "gelu_pytorch_tanh",
        "tie_word_embeddings": true, "bos_token_id": 2
    })
}

/// Deterministic pseudo-random values in [-0.5, 0.5).
pub fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut r = whittle::rng::XorShift64::new(seed);
    (0..n).map(|_| r.next_f32() - 0.5).collect()
}

pub fn f32_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Tensors (name, shape, f32 values) of a synthetic checkpoint for `cfg`.
pub fn synthetic_tensors(cfg: &Value) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let c = ModelConfig::from_json_str(&cfg.to_string(), Path::new("config.json")).unwrap();
    registry(&c, false)
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let n = s.numel();
            (s.name, s.shape, noise(n, i as u64 + 1))
        })
        .collect()
}

/// Writes one safetensors file holding `tensors` as F32.
pub fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    let entries: Vec<HeaderEntry> = tensors
        .iter()
        .map(|(n, s, _)| HeaderEntry {
            name: n.clone(),
            dtype: Dtype::F32,
            shape: s.clone(),
        })
        .collect();
    let mut bytes = encode_header(&entries, Some(&json!({"format": "pt"})));
    for (_, _, v) in tensors {
        bytes.extend(f32_bytes(v));
    }
    std::fs::write(path, bytes).unwrap();
}

/// A complete synthetic model folder (config + one safetensors file, no tokenizer).
pub fn write_model(dir: &Path, cfg: &Value) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(cfg).unwrap(),
    )
    .unwrap();
    write_safetensors(&dir.join("model.safetensors"), &synthetic_tensors(cfg));
}

/// A pre-tokenized calibration file: `n` sequences of `seq` ids, BOS first.
pub fn write_ids(path: &Path, n: usize, seq: usize, vocab: usize, seed: u64) {
    let noise = noise(n * seq, seed);
    let ids: Vec<i64> = noise
        .iter()
        .enumerate()
        .map(|(i, x)| {
            if i % seq == 0 {
                2
            } else {
                4 + ((x + 0.5) * (vocab - 4) as f32) as i64 % (vocab as i64 - 4)
            }
        })
        .collect();
    let mut bytes = encode_header(
        &[HeaderEntry {
            name: "input_ids".into(),
            dtype: Dtype::I64,
            shape: vec![n, seq],
        }],
        None,
    );
    for i in ids {
        bytes.extend_from_slice(&i.to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

/// Runs the CLI on the CPU with extra environment variables: (exit code, stdout, stderr); a
/// panic fails the test whatever the exit code.
pub fn run_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut c = cpu_cmd();
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    output(&mut c)
}

/// `run_env` without extra variables.
pub fn run(args: &[&str]) -> (i32, String, String) {
    run_env(args, &[])
}

/// Runs the CLI with the device left to `args` (`--device auto` unless given): (exit code,
/// stdout, stderr); a panic fails the test.
pub fn run_any_device(args: &[&str]) -> (i32, String, String) {
    output(std::process::Command::new(bin()).args(args))
}

fn output(c: &mut std::process::Command) -> (i32, String, String) {
    let o = c.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!err.contains("panicked"), "whittle panicked: {err}");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        err,
    )
}

/// A synthetic model folder `d/in` of `tiny_config`.
pub fn synthetic_model(d: &Path) -> PathBuf {
    let m = d.join("in");
    write_model(&m, &tiny_config());
    m
}

/// `synthetic_model` and a pre-tokenized calibration set for it (6 sequences of 12).
pub fn synthetic_with_ids(d: &Path) -> (PathBuf, PathBuf) {
    let m = synthetic_model(d);
    let ids = d.join("calib.safetensors");
    write_ids(&ids, 6, 12, 64, 7);
    (m, ids)
}

/// The temp and backup folders a compile left beside its output.
pub fn leftovers(parent: &Path) -> Vec<String> {
    std::fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("whittle-tmp") || n.contains("whittle-old"))
        .collect()
}

/// No temp or backup folders left beside an output in `parent`.
pub fn assert_no_leftovers(parent: &Path) {
    let left = leftovers(parent);
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// An output folder's whittle_report.json.
pub fn report(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("whittle_report.json")).unwrap()).unwrap()
}

/// A path as a CLI argument (test paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

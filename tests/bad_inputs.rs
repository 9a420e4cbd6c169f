//! Every user-input error the loader and `eval` name: each must be a clear error that names the
//! file / tensor / flag at fault, never a panic or an out-of-bounds read.

mod common;
use common::*;
use serde_json::json;
use whittle::cpu::model::Model;
use whittle::Error;

fn load_err(dir: &std::path::Path) -> (Error, String) {
    match Model::load(dir) {
        Ok(_) => panic!("{} loaded but should not have", dir.display()),
        Err(e) => {
            let s = e.to_string();
            (e, s)
        }
    }
}

#[test]
fn synthetic_model_loads() {
    // The control for every test below: the untouched folder is fine.
    let d = tempfile::tempdir().unwrap();
    write_model(d.path(), &tiny_config());
    Model::load(d.path()).unwrap();
}

#[test]
fn truncated_safetensors() {
    let d = tempfile::tempdir().unwrap();
    write_model(d.path(), &tiny_config());
    let p = d.path().join("model.safetensors");
    let len = std::fs::metadata(&p).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(len - 100).unwrap();
    let (e, s) = load_err(d.path());
    assert!(matches!(e, Error::Tensor { .. }), "{s}");
    assert!(
        s.contains("model.safetensors") && s.contains("truncated"),
        "{s}"
    );
    // The last tensor in the file is the one cut.
    assert!(s.contains("model.norm.weight"), "{s}");
}

#[test]
fn truncated_inside_header() {
    let d = tempfile::tempdir().unwrap();
    write_model(d.path(), &tiny_config());
    let p = d.path().join("model.safetensors");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(20)
        .unwrap();
    let (e, s) = load_err(d.path());
    assert!(matches!(e, Error::SafetensorsHeader { .. }), "{s}");
    assert!(s.contains("truncated"), "{s}");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(3)
        .unwrap();
    let (_, s) = load_err(d.path());
    assert!(s.contains("shorter than the 8-byte header"), "{s}");
}

fn rewrite_header(path: &std::path::Path, f: impl FnOnce(&mut serde_json::Value)) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut h: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    f(&mut h);
    let mut text = h.to_string();
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(path, out).unwrap();
}

#[test]
fn header_offsets_past_end() {
    let d = tempfile::tempdir().unwrap();
    write_model(d.path(), &tiny_config());
    let p = d.path().join("model.safetensors");
    rewrite_header(&p, |h| {
        let t = &mut h["model.layers.0.mlp.up_proj.weight"];
        let end = t["data_offsets"][1].as_u64().unwrap();
        t["data_offsets"] = json!([end + 1_000_000, end + 1_000_000 + 48 * 32 * 4]);
    });
    let (e, s) = load_err(d.path());
    assert!(matches!(e, Error::Tensor { .. }), "{s}");
    assert!(
        s.contains("model.layers.0.mlp.up_proj.weight") && s.contains("data_offsets"),
        "{s}"
    );
}

#[test]
fn header_length_and_json_and_overlap() {
    let d = tempfile::tempdir().unwrap();
    write_model(d.path(), &tiny_config());
    let p = d.path().join("model.safetensors");
    let good = std::fs::read(&p).unwrap();

    // Length field larger than the file.
    let mut b = good.clone();
    b[..8].copy_from_slice(&(good.len() as u64).to_le_bytes());
    std::fs::write(&p, &b).unwrap();
    let (_, s) = load_err(d.path());
    assert!(s.contains("truncated"), "{s}");

    // Garbage JSON.
    let mut b = good.clone();
    b[8] = b'#';
    std::fs::write(&p, &b).unwrap();
    let (_, s) = load_err(d.path());
    assert!(s.contains("not valid JSON"), "{s}");

    // Byte count that does not match shape × dtype.
    std::fs::write(&p, &good).unwrap();
    rewrite_header(&p, |h| h["model.norm.weight"]["shape"] = json!([31]));
    let (_, s) = load_err(d.path());
    assert!(
        s.contains("model.norm.weight") && s.contains("needs 124 bytes"),
        "{s}"
    );

    // Two tensors claiming the same bytes.
    std::fs::write(&p, &good).unwrap();
    rewrite_header(&p, |h| {
        let o = h["model.layers.0.input_layernorm.weight"]["data_offsets"].clone();
        h["model.layers.1.input_layernorm.weight"]["data_offsets"] = o;
    });
    let (_, s) = load_err(d.path());
    assert!(s.contains("overlap"), "{s}");

    // Unknown dtype string.
    std::fs::write(&p, &good).unwrap();
    rewrite_header(&p, |h| h["model.norm.weight"]["dtype"] = json!("Q4_K"));
    let (_, s) = load_err(d.path());
    assert!(
        s.contains("model.norm.weight") && s.contains("unknown dtype"),
        "{s}"
    );
}

#[test]
fn shape_mismatch() {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = tiny_config();
    write_model(d.path(), &cfg);
    // The config now claims a wider MLP than the tensors hold.
    cfg["intermediate_size"] = json!(64);
    std::fs::write(d.path().join("config.json"), cfg.to_string()).unwrap();
    let (e, s) = load_err(d.path());
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{s}");
    assert!(
        s.contains("model.layers.0.mlp.gate_proj.weight")
            && s.contains("[48, 32]")
            && s.contains("[64, 32]"),
        "{s}"
    );
}

#[test]
fn missing_tensor() {
    let d = tempfile::tempdir().unwrap();
    let cfg = tiny_config();
    std::fs::create_dir_all(d.path()).unwrap();
    std::fs::write(d.path().join("config.json"), cfg.to_string()).unwrap();
    let t: Vec<_> = synthetic_tensors(&cfg)
        .into_iter()
        .filter(|(n, _, _)| n != "model.layers.1.self_attn.k_norm.weight")
        .collect();
    write_safetensors(&d.path().join("model.safetensors"), &t);
    let (e, s) = load_err(d.path());
    assert!(matches!(e, Error::MissingTensor { .. }), "{s}");
    assert!(s.contains("model.layers.1.self_attn.k_norm.weight"), "{s}");
}

#[test]
fn wrong_dtype() {
    let d = tempfile::tempdir().unwrap();
    write_model(d.path(), &tiny_config());
    let p = d.path().join("model.safetensors");
    // Same byte count, integer dtype: I32 has 4 bytes like F32.
    rewrite_header(&p, |h| {
        h["model.layers.0.self_attn.q_proj.weight"]["dtype"] = json!("I32")
    });
    let (e, s) = load_err(d.path());
    assert!(matches!(e, Error::UnsupportedDtype { .. }), "{s}");
    assert!(
        s.contains("model.layers.0.self_attn.q_proj.weight") && s.contains("I32"),
        "{s}"
    );
}

#[test]
fn unknown_model_type() {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = tiny_config();
    cfg["model_type"] = json!("phi3");
    write_model(d.path(), &tiny_config());
    std::fs::write(d.path().join("config.json"), cfg.to_string()).unwrap();
    let (e, s) = load_err(d.path());
    assert!(matches!(e, Error::UnsupportedModel { .. }), "{s}");
    assert!(
        s.contains("\"phi3\"")
            && s.contains("gemma2")
            && s.contains("gemma3_text")
            && s.contains("qwen3"),
        "{s}"
    );
}

#[test]
fn no_weights_at_all() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("config.json"), tiny_config().to_string()).unwrap();
    let (_, s) = load_err(d.path());
    assert!(s.contains("no model.safetensors"), "{s}");
}

#[test]
fn sharded_index_pointing_outside_folder() {
    let d = tempfile::tempdir().unwrap();
    write_model(d.path(), &tiny_config());
    std::fs::write(
        d.path().join("model.safetensors.index.json"),
        json!({"weight_map": {"model.norm.weight": "../model.safetensors"}}).to_string(),
    )
    .unwrap();
    let (_, s) = load_err(d.path());
    assert!(s.contains("must be a file name in the model folder"), "{s}");
}

// --- through the CLI: clear message, exit code 1, no panic

#[test]
fn eval_rejects_non_utf8_text() {
    let d = tempfile::tempdir().unwrap();
    let t = d.path().join("latin1.txt");
    std::fs::write(&t, b"caf\xe9 au lait, na\xefve r\xe9sum\xe9\n").unwrap();
    let m = fixture("tiny-gemma3");
    let (code, _, err) = run(&[
        "eval",
        m.to_str().unwrap(),
        "--text",
        t.to_str().unwrap(),
        "--seq",
        "8",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("latin1.txt") && err.contains("not UTF-8") && err.contains("offset 3"),
        "{err}"
    );
}

#[test]
fn eval_rejects_empty_and_short_text() {
    let d = tempfile::tempdir().unwrap();
    let m = fixture("tiny-gemma3");
    let empty = d.path().join("empty.txt");
    std::fs::write(&empty, "  \n\n").unwrap();
    let (code, _, err) = run(&[
        "eval",
        m.to_str().unwrap(),
        "--text",
        empty.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("empty.txt") && err.contains("empty"), "{err}");

    let short = d.path().join("short.txt");
    std::fs::write(&short, "Just a few words.").unwrap();
    let (code, _, err) = run(&[
        "eval",
        m.to_str().unwrap(),
        "--text",
        short.to_str().unwrap(),
        "--seq",
        "512",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("short.txt") && err.contains("too short") && err.contains("--seq"),
        "{err}"
    );
}

#[test]
fn eval_rejects_folder_without_tokenizer() {
    let d = tempfile::tempdir().unwrap();
    let m = d.path().join("model");
    write_model(&m, &tiny_config());
    let t = d.path().join("t.txt");
    std::fs::write(&t, "Some text here.").unwrap();
    let (code, _, err) = run(&["eval", m.to_str().unwrap(), "--text", t.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("tokenizer.json") && err.contains("not found"),
        "{err}"
    );
}

#[test]
fn eval_rejects_bad_seq_and_windows() {
    let m = fixture("tiny-gemma3");
    let t = fixture("eval-text.txt");
    let (code, _, err) = run(&[
        "eval",
        m.to_str().unwrap(),
        "--text",
        t.to_str().unwrap(),
        "--seq",
        "1",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--seq"), "{err}");
    let (code, _, err) = run(&[
        "eval",
        m.to_str().unwrap(),
        "--text",
        t.to_str().unwrap(),
        "--windows",
        "0",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--windows"), "{err}");
}

/// A config that promises biases the checkpoint lacks (tiny-llama with `attention_bias` set):
/// loading names the first missing bias, and so does `compile`.
#[test]
fn missing_bias_tensor_is_named() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama");
    let d = tempfile::tempdir().unwrap();
    for f in [
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(src.join(f), d.path().join(f)).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
    cfg["attention_bias"] = json!(true);
    std::fs::write(d.path().join("config.json"), cfg.to_string()).unwrap();
    let (e, s) = load_err(d.path());
    assert!(matches!(e, Error::MissingTensor { .. }), "{s}");
    assert!(s.contains("model.layers.0.self_attn.q_proj.bias"), "{s}");

    let o_dir = tempfile::tempdir().unwrap();
    let out = o_dir.path().join("out");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_whittle"))
        .args([
            "compile",
            d.path().to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ])
        .args([
            "--keep-ratio",
            "0.5",
            "--device",
            "cpu",
            "--method",
            "magnitude",
            "--no-repair",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && !out.exists(), "{err}");
    assert!(
        err.contains("q_proj.bias") && !err.contains("panicked"),
        "{err}"
    );
}

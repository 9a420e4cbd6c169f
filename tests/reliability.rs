//! Issue 18: the failure rows of the hostile-user pass, each a clear error or correct behaviour
//! now: what is at OUT is replaced only when it is what the run saw and --force says so, temp
//! folders of killed runs are removed, links may not leak files into OUT, sizes from the input
//! are bounded before anything is allocated, and no NaN / Inf is read in silence or written.

mod common;
use common::*;
use serde_json::{json, Value};
use std::path::Path;
use whittle::checkpoint::config::ModelConfig;
use whittle::checkpoint::safetensors::WeightStore;
use whittle::compile::writer::{check_destination, LayerCut};

/// Exit 1 with every `want` in the message (a clap usage error would be 2, a panic 101, an
/// abort 134).
fn fails_with(args: &[&str], want: &[&str]) -> String {
    let (code, _, err) = run(args);
    assert_eq!(code, 1, "{args:?}: {err}");
    for w in want {
        assert!(err.contains(w), "{args:?}: missing {w:?} in {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// A magnitude / no-repair compile (no calibration, no tokenizer needed).
fn compile_args<'a>(input: &'a Path, out: &'a Path) -> Vec<&'a str> {
    vec![
        "compile",
        s(input),
        "-o",
        s(out),
        "--method",
        "magnitude",
        "--no-repair",
        "--keep-ratio",
        "0.5",
    ]
}

/// Keep-everything cuts for the writer, as the compile pipeline would hand them over.
fn full_cuts(cfg: &ModelConfig) -> Vec<LayerCut> {
    (0..cfg.num_layers)
        .map(|_| LayerCut {
            kept: (0..cfg.intermediate_size).collect(),
            down: None,
            gate_up: None,
        })
        .collect()
}

fn write_with(dest: &whittle::compile::writer::Destination, m: &Path) -> whittle::Result<()> {
    let store = WeightStore::open(m).unwrap();
    let cfg = ModelConfig::from_dir(m).unwrap();
    whittle::compile::writer::write_model(
        dest,
        &store,
        &cfg,
        &full_cuts(&cfg),
        cfg.intermediate_size,
        &[],
        || json!({}),
        |_| {},
    )
    .map(|_| ())
}

// Row 1: a folder that appears at OUT while compiling is never moved or deleted, with or without
// --force (which replaces only what was there at the start).
#[test]
fn out_appearing_during_the_run_is_left_alone() {
    for force in [false, true] {
        let d = tempfile::tempdir().unwrap();
        let m = synthetic_model(d.path());
        let out = d.path().join("out");
        let dest = check_destination(&m, &out, force).unwrap();
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("mine.txt"), "precious").unwrap();
        let e = write_with(&dest, &m).unwrap_err().to_string();
        assert!(e.contains("changed while compiling"), "{e}");
        assert_eq!(
            std::fs::read_to_string(out.join("mine.txt")).unwrap(),
            "precious"
        );
        assert!(!out.join("model.safetensors").exists());
        assert!(leftovers(d.path()).is_empty(), "{:?}", leftovers(d.path()));
    }
}

// Row 1 with --force: the folder checked at the start was swapped for another one.
#[test]
fn force_replaces_only_what_was_checked() {
    let d = tempfile::tempdir().unwrap();
    let m = synthetic_model(d.path());
    let out = d.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let dest = check_destination(&m, &out, true).unwrap();
    std::fs::rename(&out, d.path().join("moved")).unwrap();
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("new.txt"), "someone else's").unwrap();
    let e = write_with(&dest, &m).unwrap_err().to_string();
    assert!(e.contains("changed while compiling"), "{e}");
    assert!(out.join("new.txt").exists());
    assert!(leftovers(d.path()).is_empty());

    // The untouched case: the folder seen at the start is replaced.
    let dest = check_destination(&m, &out, true).unwrap();
    write_with(&dest, &m).unwrap();
    assert!(out.join("model.safetensors").exists() && !out.join("new.txt").exists());
    assert!(leftovers(d.path()).is_empty());
}

// Row 4: --force over a regular file gives the output, exit 0, and hides nothing.
#[test]
fn force_over_a_regular_file() {
    let d = tempfile::tempdir().unwrap();
    let m = synthetic_model(d.path());
    let out = d.path().join("out");
    std::fs::write(&out, "a file").unwrap();
    let mut args = compile_args(&m, &out);
    let (code, _, err) = run(&args);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--force"), "{err}");
    args.push("--force");
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    assert!(out.join("model.safetensors").is_file());
    assert!(leftovers(d.path()).is_empty(), "{:?}", leftovers(d.path()));
}

// Row 3: a killed run's temp folder is removed by the next run on the same OUT; a running one's
// (this test process is alive) is not.
#[test]
fn stale_temp_folders_are_removed() {
    let d = tempfile::tempdir().unwrap();
    let m = synthetic_model(d.path());
    let out = d.path().join("out");
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = d.path().join(format!(".out.whittle-tmp-{dead}"));
    let live = d
        .path()
        .join(format!(".out.whittle-tmp-{}", std::process::id()));
    for t in [&stale, &live] {
        std::fs::create_dir(t).unwrap();
        std::fs::write(t.join("model.safetensors"), "partial").unwrap();
    }
    let (code, _, err) = run(&compile_args(&m, &out));
    assert_eq!(code, 0, "{err}");
    assert!(!stale.exists(), "{err}");
    assert!(err.contains("interrupted run"), "{err}");
    assert!(live.exists());
}

// The temp name fits the filesystem's name limit even for an OUT name at the limit.
#[test]
fn long_output_name() {
    let d = tempfile::tempdir().unwrap();
    let m = synthetic_model(d.path());
    let out = d.path().join("x".repeat(250));
    let (code, _, err) = run(&compile_args(&m, &out));
    assert_eq!(code, 0, "{err}");
    assert!(out.join("model.safetensors").exists());
    assert!(leftovers(d.path()).is_empty());
}

// Row 14: room and writability are checked before any compute.
#[test]
fn full_or_unwritable_destination_is_refused_up_front() {
    let d = tempfile::tempdir().unwrap();
    let m = synthetic_model(d.path());
    let out = d.path().join("out");
    let (code, _, err) = run_env(
        &compile_args(&m, &out),
        &[("WHITTLE_TEST_FREE_BYTES", "1000")],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("1000 bytes) free") && err.contains("needs about"),
        "{err}"
    );
    assert!(!out.exists() && leftovers(d.path()).is_empty());

    // Nobody may create folders in /proc; with a NaN weight the compute would fail first if the
    // destination were checked only at the end.
    let bad = d.path().join("nan");
    write_model(&bad, &tiny_config());
    poison(&bad, "model.layers.0.input_layernorm.weight", 3, f32::NAN);
    let err = fails_with(
        &compile_args(&bad, Path::new("/proc/whittle-reliability-out")),
        &["cannot write the output here"],
    );
    assert!(!err.contains("non-finite"), "{err}");
}

/// Overwrites element `i` of a tensor in place (any float dtype).
fn poison(dir: &Path, tensor: &str, i: usize, v: f32) {
    let p = dir.join("model.safetensors");
    let mut b = std::fs::read(&p).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let h: Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    let t = &h[tensor];
    let start = 8 + n + t["data_offsets"][0].as_u64().unwrap() as usize;
    let bytes = match t["dtype"].as_str().unwrap() {
        "F32" => v.to_le_bytes().to_vec(),
        "BF16" => half::bf16::from_f32(v).to_le_bytes().to_vec(),
        d => panic!("{d}"),
    };
    let at = start + i * bytes.len();
    b[at..at + bytes.len()].copy_from_slice(&bytes);
    std::fs::write(&p, b).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

// Row 2: a link out of the model folder is refused, naming the link.
#[test]
fn link_out_of_the_folder_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let m = synthetic_model(d.path());
    let secret = d.path().join("id_rsa");
    std::fs::write(&secret, "PRIVATE KEY").unwrap();
    std::os::unix::fs::symlink(&secret, m.join("notes.txt")).unwrap();
    let out = d.path().join("out");
    fails_with(
        &compile_args(&m, &out),
        &["notes.txt", "symbolic link", "outside the model folder"],
    );
    assert!(!out.exists() && leftovers(d.path()).is_empty());

    // The same for the weights themselves.
    let m2 = d.path().join("in2");
    std::fs::create_dir(&m2).unwrap();
    std::fs::copy(m.join("config.json"), m2.join("config.json")).unwrap();
    std::os::unix::fs::symlink(m.join("model.safetensors"), m2.join("model.safetensors")).unwrap();
    fails_with(
        &["inspect", s(&m2)],
        &["model.safetensors", "symbolic link"],
    );
}

// Row 2: links inside the folder, and a Hugging Face cache snapshot (every file a link into
// ../../blobs/), are followed; the output holds regular files with the same contents.
#[test]
fn links_inside_the_folder_and_hf_cache_layout() {
    let d = tempfile::tempdir().unwrap();
    let src = synthetic_model(d.path());
    let repo = d.path().join("models--org--tiny");
    let blobs = repo.join("blobs");
    let snap = repo.join("snapshots").join("0123abcd");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::write(src.join("notes.txt"), "about this model").unwrap();
    for (i, f) in ["config.json", "model.safetensors", "notes.txt"]
        .iter()
        .enumerate()
    {
        let hash = format!("{i:040x}");
        std::fs::copy(src.join(f), blobs.join(&hash)).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/{hash}"), snap.join(f)).unwrap();
    }
    std::os::unix::fs::symlink("notes.txt", snap.join("README.md")).unwrap();
    let out = d.path().join("out");
    let (code, _, err) = run(&compile_args(&snap, &out));
    assert_eq!(code, 0, "{err}");
    for f in ["notes.txt", "README.md", "config.json", "model.safetensors"] {
        let md = std::fs::symlink_metadata(out.join(f)).unwrap();
        assert!(md.is_file(), "{f} is not a regular file in OUT");
    }
    assert_eq!(
        std::fs::read_to_string(out.join("README.md")).unwrap(),
        "about this model"
    );
    // A snapshot's link into another repository's blobs is not allowed.
    let other = d.path().join("models--org--other").join("blobs");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("f"), "x").unwrap();
    std::os::unix::fs::symlink(other.join("f"), snap.join("extra.txt")).unwrap();
    let out2 = d.path().join("out2");
    fails_with(&compile_args(&snap, &out2), &["extra.txt", "symbolic link"]);
}

// Row 5: layer counts far beyond the tensors are refused before anything is sized by them.
#[test]
fn layer_count_is_bounded_and_checked_against_the_tensors() {
    let d = tempfile::tempdir().unwrap();
    let m = synthetic_model(d.path());
    for n in [json!(1_000_000_000u64), json!(1u64 << 62)] {
        let mut cfg = tiny_config();
        cfg["num_hidden_layers"] = n;
        cfg.as_object_mut().unwrap().remove("layer_types");
        std::fs::write(m.join("config.json"), cfg.to_string()).unwrap();
        fails_with(&["inspect", s(&m)], &["num_hidden_layers", "implausible"]);
    }
    let mm =
        json!({"model_type": "gemma3", "text_config": {"num_hidden_layers": 1_000_000_000u64}});
    std::fs::write(m.join("config.json"), mm.to_string()).unwrap();
    fails_with(&["inspect", s(&m)], &["text_config", "num_hidden_layers"]);

    let mut cfg = tiny_config();
    cfg["num_hidden_layers"] = json!(3);
    cfg["layer_types"] = json!(["sliding_attention", "full_attention", "full_attention"]);
    std::fs::write(m.join("config.json"), cfg.to_string()).unwrap();
    for args in [
        vec!["inspect", s(&m)],
        compile_args(&m, &d.path().join("out")),
    ] {
        fails_with(&args, &["num_hidden_layers 3", "holds 2 layers"]);
    }
}

// Row 6: lengths beyond the text or the model are errors naming the numbers, not aborts.
#[test]
fn lengths_are_bounded() {
    let d = tempfile::tempdir().unwrap();
    let m = fixture("tiny-gemma3");
    let text = fixture("eval-text.txt");
    let out = d.path().join("out");
    fails_with(
        &[
            "compile",
            s(&m),
            "-o",
            s(&out),
            "--calib",
            s(&text),
            "--seq",
            "32",
            "--samples",
            "1000000000",
        ],
        &["--samples 1000000000", "holds only"],
    );
    assert!(!out.exists());
    fails_with(
        &[
            "generate",
            s(&m),
            "--prompt",
            "hi",
            "--max-new-tokens",
            "1000000000",
        ],
        &["--max-new-tokens 1000000000", "256"],
    );
    for flag in ["--decode-tokens", "--rag-len"] {
        fails_with(
            &["bench", s(&m), "--quick", flag, "1000000000"],
            &[flag, "max_position_embeddings"],
        );
    }
}

// Row 7.
#[test]
fn thread_count_is_capped() {
    fails_with(
        &["--threads", "10000", "inspect", s(&fixture("tiny-gemma3"))],
        &["--threads 10000", "cores"],
    );
}

// Row 8: a FIFO (or a device) is refused instead of blocking.
#[test]
fn fifo_shard_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let m = synthetic_model(d.path());
    std::fs::remove_file(m.join("model.safetensors")).unwrap();
    let st = std::process::Command::new("mkfifo")
        .arg(m.join("model.safetensors"))
        .status()
        .unwrap();
    assert!(st.success());
    let mut child = cpu_cmd()
        .args(["inspect", s(&m)])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A hang guard, not a speed assertion: the old code blocked forever in open().
    for _ in 0..600 {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    if child.try_wait().unwrap().is_none() {
        child.kill().unwrap();
        panic!("inspect blocked on a FIFO");
    }
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("FIFO"), "{err}");
}

// Row 9: a file that shrinks under an open store is caught before its pages are read.
#[test]
fn truncation_after_open_is_detected() {
    let d = tempfile::tempdir().unwrap();
    let m = synthetic_model(d.path());
    let store = WeightStore::open(&m).unwrap();
    store.check_unchanged().unwrap();
    let p = m.join("model.safetensors");
    let len = std::fs::metadata(&p).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let e = store.check_unchanged().unwrap_err().to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("changed while whittle was reading"),
        "{e}"
    );
}

// Row 10: NaN / Inf in weights stop eval and compile naming the tensor; nothing is written.
#[test]
fn non_finite_weights() {
    let d = tempfile::tempdir().unwrap();
    let m = d.path().join("m");
    copy_dir(&fixture("tiny-gemma3"), &m);
    poison(&m, "model.layers.1.self_attn.q_proj.weight", 5, f32::NAN);
    let text = fixture("eval-text.txt");
    fails_with(
        &["eval", s(&m), "--text", s(&text), "--seq", "32"],
        &["finite"],
    );

    let m = d.path().join("m2");
    copy_dir(&fixture("tiny-gemma3"), &m);
    poison(&m, "model.layers.2.mlp.down_proj.weight", 7, f32::INFINITY);
    let out = d.path().join("out");
    let calib = [
        "--calib",
        s(&text),
        "--seq",
        "32",
        "--samples",
        "4",
        "--keep-ratio",
        "0.5",
    ];
    let mut args = vec!["compile", s(&m), "-o", s(&out)];
    args.extend(calib);
    fails_with(
        &args,
        &["model.layers.2.mlp.down_proj.weight", "non-finite"],
    );
    assert!(!out.exists());

    // Nothing calibrated or re-fit: the norm is copied byte for byte, and still refused.
    let s2 = d.path().join("s");
    write_model(&s2, &tiny_config());
    poison(
        &s2,
        "model.layers.1.post_attention_layernorm.weight",
        0,
        f32::NAN,
    );
    fails_with(
        &compile_args(&s2, &out),
        &[
            "model.layers.1.post_attention_layernorm.weight",
            "non-finite",
        ],
    );
    assert!(!out.exists() && leftovers(d.path()).is_empty());
}

// Row 11: config values that only make NaN or meaningless numbers are refused.
#[test]
fn config_values_out_of_range() {
    let d = tempfile::tempdir().unwrap();
    let m = synthetic_model(d.path());
    for (k, v) in [
        ("query_pre_attn_scalar", json!(1e-320)),
        ("query_pre_attn_scalar", json!(1e300)),
        ("rms_norm_eps", json!(1e300)),
        ("rms_norm_eps", json!(-1)),
        ("rms_norm_eps", json!(0)),
    ] {
        let mut cfg = tiny_config();
        cfg[k] = v;
        std::fs::write(m.join("config.json"), cfg.to_string()).unwrap();
        fails_with(&["inspect", s(&m)], &[k, "outside"]);
    }
}

// Row 12: --damp is range-checked in the library, not only by the CLI.
#[test]
fn damp_range() {
    for bad in [1e300, 2.0, 0.0, -1.0, f64::NAN, 1e-12] {
        let e = whittle::compile::check_damp(bad).unwrap_err().to_string();
        assert!(e.contains("--damp") && e.contains("outside"), "{bad}: {e}");
    }
    for ok in [1e-3, 1.0, 1e-9, 0.05] {
        whittle::compile::check_damp(ok).unwrap();
    }
    let d = tempfile::tempdir().unwrap();
    let m = synthetic_model(d.path());
    let out = d.path().join("out");
    let mut args = compile_args(&m, &out);
    args.extend(["--damp", "1e300"]);
    fails_with(&args, &["--damp", "1e300"]);
}

// Row 13: eval reads only what --windows needs; devices are refused; a stray big file in the
// input folder is streamed into OUT, not held in memory.
#[test]
fn reads_are_bounded() {
    let d = tempfile::tempdir().unwrap();
    let m = fixture("tiny-gemma3");
    // Good text for the first windows, then bytes that are not UTF-8: only a whole-file read
    // trips over them.
    let t = d.path().join("big.txt");
    let mut text = std::fs::read(fixture("eval-text.txt")).unwrap().repeat(30);
    text.extend(vec![0xffu8; 1 << 20]);
    std::fs::write(&t, &text).unwrap();
    let (code, out, err) = run(&[
        "eval",
        s(&m),
        "--text",
        s(&t),
        "--seq",
        "32",
        "--windows",
        "2",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(r["windows"], 2);
    // The same numbers as the clean text gives.
    let (code, out2, err) = run(&[
        "eval",
        s(&m),
        "--text",
        s(&fixture("eval-text.txt")),
        "--seq",
        "32",
        "--windows",
        "2",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let r2: Value = serde_json::from_str(out2.trim()).unwrap();
    assert_eq!(r["nll"], r2["nll"]);

    fails_with(
        &["eval", s(&m), "--text", "/dev/zero", "--windows", "1"],
        &["/dev/zero", "device"],
    );

    let src = synthetic_model(d.path());
    let stray = vec![7u8; 48 << 20];
    std::fs::write(src.join("notes.dat"), &stray).unwrap();
    let out = d.path().join("out");
    let (code, _, err) = run(&compile_args(&src, &out));
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read(out.join("notes.dat")).unwrap(), stray);
    let rep: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("whittle_report.json")).unwrap())
            .unwrap();
    let heap = rep["peak_heap_mib"].as_f64().unwrap();
    assert!(
        heap < 24.0,
        "a 48 MiB file was held in memory: peak heap {heap} MiB"
    );
}

/// A header with raw JSON text `json` before the data of `tensors`.
fn raw_safetensors(path: &Path, json: &str, data: &[u8]) {
    let mut h = json.to_string();
    while h.len() % 8 != 0 {
        h.push(' ');
    }
    let mut b = (h.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(h.as_bytes());
    b.extend_from_slice(data);
    std::fs::write(path, b).unwrap();
}

// Row 15: a key twice in a header, and an index entry that no shard holds.
#[test]
fn duplicate_keys_and_phantom_index_entries() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("dup.safetensors");
    let e = r#"{"dtype":"F32","shape":[2],"data_offsets":[0,8]}"#;
    raw_safetensors(&p, &format!(r#"{{"a":{e},"a":{e}}}"#), &[0u8; 8]);
    let err = match whittle::checkpoint::safetensors::SafeFile::open(&p) {
        Ok(_) => panic!("a duplicate key was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("\"a\" twice"), "{err}");

    let m = d.path().join("sharded");
    std::fs::create_dir_all(&m).unwrap();
    let cfg = tiny_config();
    std::fs::write(m.join("config.json"), cfg.to_string()).unwrap();
    let tensors = synthetic_tensors(&cfg);
    write_safetensors(&m.join("model-00001-of-00001.safetensors"), &tensors);
    let mut map = serde_json::Map::new();
    for (n, _, _) in &tensors {
        map.insert(n.clone(), json!("model-00001-of-00001.safetensors"));
    }
    map.insert(
        "model.phantom.weight".into(),
        json!("model-00001-of-00001.safetensors"),
    );
    let idx = m.join("model.safetensors.index.json");
    std::fs::write(&idx, json!({"weight_map": map}).to_string()).unwrap();
    let err = fails_with(
        &["inspect", s(&m)],
        &[
            "model.phantom.weight",
            "no shard holds it",
            "safetensors index",
        ],
    );
    assert!(!err.contains("config.json"), "{err}");

    // Index errors are not called config.json errors.
    std::fs::write(&idx, "{not json").unwrap();
    let err = fails_with(&["inspect", s(&m)], &["index.json", "safetensors index"]);
    assert!(!err.contains("config.json"), "{err}");
}

// "Also": conflicting flags are refused by the parser (exit 2, naming both).
#[test]
fn conflicting_flags() {
    let m = fixture("tiny-gemma3");
    let t = fixture("eval-text.txt");
    let ids = fixture("tiny-gemma3").join("reference.safetensors");
    let base = ["compile", s(&m), "-o", "/tmp/never-written"];
    let cases: &[&[&str]] = &[
        &["--sequential", "--one-shot", "--calib", s(&t)],
        &["--refit-target", "original", "--one-shot", "--calib", s(&t)],
        &["--refit-target", "layer", "--no-repair", "--calib", s(&t)],
        &["--calib-ids", s(&ids), "--seq", "16"],
        &["--calib-ids", s(&ids), "--samples", "4"],
    ];
    for c in cases {
        let mut args = base.to_vec();
        args.extend_from_slice(c);
        let (code, _, err) = run(&args);
        assert_eq!(code, 2, "{c:?} was accepted: {err}");
        assert!(err.contains("cannot be used with"), "{c:?}: {err}");
    }
    let (code, _, err) = run(&["bench", s(&m), "--quick", "--text", s(&t)]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--forward"), "{err}");
}

// "Also": an untied head must be in the checkpoint.
#[test]
fn untied_without_lm_head() {
    let d = tempfile::tempdir().unwrap();
    let m = synthetic_model(d.path());
    let mut cfg = tiny_config();
    cfg["tie_word_embeddings"] = json!(false);
    std::fs::write(m.join("config.json"), cfg.to_string()).unwrap();
    fails_with(
        &["inspect", s(&m)],
        &["tie_word_embeddings", "lm_head.weight"],
    );
}

// "Also": a --calib source that would give no sequence is an error naming it.
#[test]
fn calib_source_with_no_share() {
    let d = tempfile::tempdir().unwrap();
    let t = fixture("eval-text.txt");
    let t2 = d.path().join("rare.txt");
    std::fs::copy(&t, &t2).unwrap();
    let rare = format!("{}:0.01", s(&t2));
    fails_with(
        &[
            "compile",
            s(&fixture("tiny-gemma3")),
            "-o",
            s(&d.path().join("out")),
            "--calib",
            s(&t),
            &rare,
            "--seq",
            "32",
            "--samples",
            "4",
        ],
        &["rare.txt", "gets none of the 4 sequences"],
    );
}

// "Also": the OS error is said once.
#[test]
fn os_error_once() {
    let err = fails_with(&["inspect", "/nonexistent/model"], &["os error 2"]);
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
}

// "Also": a broken JSON file other than config.json is not called "not a valid config.json".
#[test]
fn json_errors_name_their_file() {
    let d = tempfile::tempdir().unwrap();
    let m = d.path().join("m");
    copy_dir(&fixture("tiny-gemma3"), &m);
    std::fs::write(m.join("generation_config.json"), "{broken").unwrap();
    let err = fails_with(
        &["generate", s(&m), "--prompt", "hi", "--max-new-tokens", "2"],
        &["generation_config.json", "not valid JSON"],
    );
    assert!(!err.contains("not a valid config.json"), "{err}");
}

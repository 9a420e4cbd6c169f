//! `whittle compile` end to end on small models: identity at full width, determinism, what the
//! output holds, that repair helps, and every bad input named in the issue (clear error, nothing
//! left behind).

mod common;
use common::*;
use serde_json::{json, Value};
use std::path::Path;
use whittle::checkpoint::safetensors::{encode_header, HeaderEntry, WeightStore};
use whittle::cpu::model::Model;
use whittle::engine::Batch;

/// Every tensor of two checkpoints: same names, dtypes, shapes and bytes.
fn assert_same_tensors(a: &Path, b: &Path) {
    let (sa, sb) = (WeightStore::open(a).unwrap(), WeightStore::open(b).unwrap());
    let mut na: Vec<_> = sa.names().cloned().collect();
    let mut nb: Vec<_> = sb.names().cloned().collect();
    na.sort();
    nb.sort();
    assert_eq!(na, nb);
    for n in &na {
        let (x, y) = (sa.get_raw(n).unwrap(), sb.get_raw(n).unwrap());
        assert_eq!(x.info.dtype, y.info.dtype, "{n}");
        assert_eq!(x.info.shape, y.info.shape, "{n}");
        assert!(x.bytes() == y.bytes(), "{n}: bytes differ");
    }
}

#[test]
fn keep_all_without_repair_reproduces_input() {
    let d = tempfile::tempdir().unwrap();
    for (name, extra) in [
        ("magnitude", vec![]),
        ("energy", vec!["--calib-ids"]),
        ("obs", vec!["--calib-ids"]),
    ] {
        let (m, ids) = synthetic_with_ids(d.path());
        let out = d.path().join(format!("out-{name}"));
        let mut args = vec![
            "compile",
            s(&m),
            "-o",
            s(&out),
            "--method",
            name,
            "--keep-ratio",
            "1.0",
            "--no-repair",
        ];
        if !extra.is_empty() {
            args.extend([extra[0], s(&ids)]);
        }
        let (code, _, err) = run(&args);
        assert_eq!(code, 0, "{err}");
        assert_same_tensors(&m, &out);
        assert_eq!(
            std::fs::read(m.join("config.json")).unwrap(),
            std::fs::read(out.join("config.json")).unwrap(),
            "config.json must be untouched at full width"
        );
    }
    // And on a real bf16 fixture with its tokenizer and text calibration.
    let out = d.path().join("out-fixture");
    let (code, _, err) = run(&[
        "compile",
        s(&fixture("tiny-gemma3")),
        "-o",
        s(&out),
        "--keep-ratio",
        "1",
        "--no-repair",
        "--calib",
        s(&fixture("eval-text.txt")),
        "--seq",
        "16",
        "--samples",
        "4",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_same_tensors(&fixture("tiny-gemma3"), &out);
}

fn strip_timings(p: &Path) -> Value {
    let mut v: Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("timings_s");
    v.as_object_mut().unwrap().remove("peak_rss_mib");
    v.as_object_mut().unwrap().remove("peak_heap_mib");
    v
}

#[test]
fn compile_is_deterministic_and_vanilla() {
    let d = tempfile::tempdir().unwrap();
    let (m, ids) = synthetic_with_ids(d.path());
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    for (out, threads) in [(&a, "1"), (&b, "2")] {
        let (code, _, err) = run(&[
            "--threads",
            threads,
            "compile",
            s(&m),
            "-o",
            s(out),
            "--calib-ids",
            s(&ids),
            "--intermediate-size",
            "20",
            "--method",
            "obs",
            "--sequential",
        ]);
        assert_eq!(code, 0, "{err}");
    }
    let mut files: Vec<_> = std::fs::read_dir(&a)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    files.sort();
    for f in &files {
        if f == "whittle_report.json" {
            continue;
        }
        assert!(
            std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(),
            "{f:?} differs between runs"
        );
    }
    let (ra, mut rb) = (
        strip_timings(&a.join("whittle_report.json")),
        strip_timings(&b.join("whittle_report.json")),
    );
    rb["backend"] = ra["backend"].clone(); // names the thread count
    assert_eq!(ra, rb);

    // What a vanilla loader sees: config differs only in intermediate_size, shapes follow.
    let mut cfg_in: Value =
        serde_json::from_slice(&std::fs::read(m.join("config.json")).unwrap()).unwrap();
    let cfg_out: Value =
        serde_json::from_slice(&std::fs::read(a.join("config.json")).unwrap()).unwrap();
    // The rounding multiple for a 48-wide MLP clamps to 2: 20 stays 20.
    cfg_in["intermediate_size"] = json!(20);
    assert_eq!(cfg_in, cfg_out);
    let model = Model::load(&a).unwrap();
    assert_eq!(model.layer_f32(0).gate().len(), 20 * 32);
    // The kept rows of gate_proj are the input's rows at the reported indices.
    let src = Model::load(&m).unwrap();
    let kept: Vec<usize> = ra["layers"][1]["kept"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(kept.len(), 20);
    let (got, want) = (model.layer_f32(1), src.layer_f32(1));
    for (r, &j) in kept.iter().enumerate() {
        assert_eq!(
            &got.up()[r * 32..(r + 1) * 32],
            &want.up()[j * 32..(j + 1) * 32]
        );
    }
    assert_eq!(ra["intermediate_size_after"], json!(20));
    assert_eq!(ra["calibration"]["tokens"], json!(72));
    assert!(ra["params_after"].as_u64().unwrap() < ra["params_before"].as_u64().unwrap());
}

/// KL(original ‖ compiled) on the calibration sequences themselves.
fn kl_on(orig: &Model, comp: &Model, ids: &[u32], seq: usize) -> f64 {
    let n = ids.len() / seq;
    let b = Batch {
        n_seq: n,
        seq_len: seq,
    };
    let (za, zb) = (
        orig.forward_logits(ids, b).unwrap(),
        comp.forward_logits(ids, b).unwrap(),
    );
    let v = orig.cfg.vocab_size;
    let mut kl = 0f64;
    for (ra, rb) in za.chunks_exact(v).zip(zb.chunks_exact(v)) {
        let lse = |r: &[f32]| {
            let m = r.iter().cloned().fold(f32::MIN, f32::max) as f64;
            m + r.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln()
        };
        let (la, lb) = (lse(ra), lse(rb));
        kl += ra
            .iter()
            .zip(rb)
            .map(|(&x, &y)| (x as f64 - la).exp() * ((x as f64 - la) - (y as f64 - lb)))
            .sum::<f64>();
    }
    kl / (za.len() / v) as f64
}

#[test]
fn repair_and_sequential_reduce_kl() {
    let d = tempfile::tempdir().unwrap();
    let m = fixture("tiny-gemma2");
    let text = fixture("eval-text.txt");
    let mut kls = Vec::new();
    for (name, flags) in [
        (
            "energy",
            vec!["--method", "energy", "--no-repair", "--one-shot"],
        ),
        ("energy+repair", vec!["--method", "energy", "--one-shot"]),
        ("obs+repair+seq", vec!["--method", "obs", "--sequential"]),
        (
            "obs+repair+seq-original",
            vec![
                "--method",
                "obs",
                "--sequential",
                "--refit-target",
                "original",
            ],
        ),
    ] {
        let out = d.path().join(name.replace('+', "-"));
        let mut args = vec![
            "compile",
            s(&m),
            "-o",
            s(&out),
            "--keep-ratio",
            "0.5",
            "--calib",
            s(&text),
            "--seq",
            "24",
            "--samples",
            "24",
        ];
        args.extend(flags);
        let (code, _, err) = run(&args);
        assert_eq!(code, 0, "{name}: {err}");
        let orig = Model::load(&m).unwrap();
        let comp = Model::load(&out).unwrap();
        let tok = whittle::checkpoint::tokenizer::Tokenizer::from_dir(&m).unwrap();
        let ids = tok
            .encode(&std::fs::read_to_string(&text).unwrap())
            .unwrap();
        let w = whittle::serve::eval::make_windows(&ids, 24, Some(24), 2, &text)
            .unwrap()
            .concat();
        kls.push((name, kl_on(&orig, &comp, &w, 24)));
    }
    eprintln!("{kls:?}");
    assert!(kls[1].1 < kls[0].1, "repair did not help: {kls:?}");
    assert!(
        kls[2].1 < kls[0].1,
        "obs+repair+sequential worse than plain energy: {kls:?}"
    );
}

/// Compiles fixture `model` at keep 0.5 on the eval text with `extra` flags into `dir/name`;
/// returns the report and layer 1's down_proj bytes.
fn compile_down(dir: &Path, model: &str, name: &str, extra: &[&str]) -> (Value, Vec<u8>) {
    let (m, text) = (fixture(model), fixture("eval-text.txt"));
    let out = dir.join(name);
    let mut args = vec![
        "compile",
        s(&m),
        "-o",
        s(&out),
        "--keep-ratio",
        "0.5",
        "--calib",
        s(&text),
        "--seq",
        "24",
        "--samples",
        "8",
    ];
    args.extend(extra);
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{name}: {err}");
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("whittle_report.json")).unwrap())
            .unwrap();
    let st = WeightStore::open(&out).unwrap();
    let t = st.get("model.layers.1.mlp.down_proj.weight").unwrap();
    (r, t.bytes().to_vec())
}

/// `--token-weight` changes the statistics (so the re-fit down_proj), and the report records it.
#[test]
fn token_weighting_is_applied_and_recorded() {
    let d = tempfile::tempdir().unwrap();
    let compile = |name: &str, extra: &[&str]| compile_down(d.path(), "tiny-gemma3", name, extra);
    let mut downs = Vec::new();
    for tw in ["uniform", "out", "out-resid"] {
        let (r, down) = compile(tw, &["--token-weight", tw]);
        assert_eq!(r["token_weight"], tw);
        downs.push(down);
    }
    assert_ne!(
        downs[0], downs[1],
        "uniform and out gave the same down_proj"
    );
    assert_ne!(
        downs[1], downs[2],
        "out and out-resid gave the same down_proj"
    );
    let (r, down) = compile("default", &[]);
    assert_eq!(r["token_weight"], "out");
    assert_eq!(down, downs[1], "the default is not --token-weight out");
}

/// The Llama family has no post-FFN norm: its default weighting is next-norm, and next-norm is
/// a weighting of its own (not uniform's or out's statistics).
#[test]
fn llama_family_defaults_to_next_norm_weighting() {
    let d = tempfile::tempdir().unwrap();
    let compile = |name: &str, extra: &[&str]| compile_down(d.path(), "tiny-qwen2", name, extra);
    let (r, default) = compile("default", &[]);
    assert_eq!(r["token_weight"], "next-norm");
    let (_, next) = compile("next-norm", &["--token-weight", "next-norm"]);
    assert_eq!(default, next, "the default is not --token-weight next-norm");
    for other in ["uniform", "out"] {
        let (_, down) = compile(other, &["--token-weight", other]);
        assert_ne!(down, next, "{other} and next-norm gave the same down_proj");
    }
}

#[test]
fn bad_width_requests() {
    let d = tempfile::tempdir().unwrap();
    let (m, ids) = synthetic_with_ids(d.path());
    let out = d.path().join("out");
    let cases: &[(&[&str], &str)] = &[
        (&["--tier", "huge"], "unknown tier \"huge\""),
        (&["--keep-ratio", "0"], "--keep-ratio"),
        (&["--keep-ratio=-0.5"], "--keep-ratio"),
        (&["--keep-ratio", "1.5"], "outside (0, 1]"),
        (&["--keep-ratio", "0.01"], "rounds to 0"),
        (&["--intermediate-size", "0"], "--intermediate-size"),
        (&["--intermediate-size", "49"], "outside 1..=48"),
        (&["--method", "random"], "unknown method"),
    ];
    for (flags, want) in cases {
        let mut args = vec!["compile", s(&m), "-o", s(&out), "--calib-ids", s(&ids)];
        args.extend_from_slice(flags);
        let (code, _, err) = run(&args);
        assert_ne!(code, 0, "{flags:?} was accepted");
        assert!(err.contains(want), "{flags:?}: {err}");
        assert!(!out.exists(), "{flags:?} left output behind");
    }
    assert_no_leftovers(d.path());
}

#[test]
fn calibration_text_too_short() {
    let d = tempfile::tempdir().unwrap();
    let t = d.path().join("tiny.txt");
    std::fs::write(&t, "Too short.").unwrap();
    let out = d.path().join("out");
    let (code, _, err) = run(&[
        "compile",
        s(&fixture("tiny-gemma3")),
        "-o",
        s(&out),
        "--calib",
        s(&t),
        "--seq",
        "64",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("tiny.txt") && err.contains("too short for one calibration sequence"),
        "{err}"
    );
    assert!(!out.exists());
    assert_no_leftovers(d.path());
}

#[test]
fn destination_errors() {
    let d = tempfile::tempdir().unwrap();
    let (m, ids) = synthetic_with_ids(d.path());
    let before: Vec<u8> = std::fs::read(m.join("model.safetensors")).unwrap();

    // Inside the input folder.
    let inside = m.join("pruned");
    let (code, _, err) = run(&["compile", s(&m), "-o", s(&inside), "--calib-ids", s(&ids)]);
    assert_eq!(code, 1);
    assert!(err.contains("inside the input model folder"), "{err}");
    assert!(!inside.exists());

    // The input folder itself, even with --force.
    let (code, _, err) = run(&[
        "compile",
        s(&m),
        "-o",
        s(&m),
        "--calib-ids",
        s(&ids),
        "--force",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("input model"), "{err}");

    // Existing output without --force.
    let existing = d.path().join("exists");
    std::fs::create_dir(&existing).unwrap();
    std::fs::write(existing.join("keep.txt"), "mine").unwrap();
    let (code, _, err) = run(&["compile", s(&m), "-o", s(&existing), "--calib-ids", s(&ids)]);
    assert_eq!(code, 1);
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(existing.join("keep.txt")).unwrap(),
        "mine"
    );
    // With --force it is replaced.
    let (code, _, err) = run(&[
        "compile",
        s(&m),
        "-o",
        s(&existing),
        "--calib-ids",
        s(&ids),
        "--force",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(!existing.join("keep.txt").exists() && existing.join("model.safetensors").exists());

    // Unwritable destinations: a parent that is a file, and a filesystem that refuses folders.
    let file = d.path().join("plain-file");
    std::fs::write(&file, "x").unwrap();
    let (code, _, err) = run(&[
        "compile",
        s(&m),
        "-o",
        s(&file.join("out")),
        "--calib-ids",
        s(&ids),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("plain-file"), "{err}");
    let (code, _, err) = run(&[
        "compile",
        s(&m),
        "-o",
        "/proc/whittle-test-out",
        "--calib-ids",
        s(&ids),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("/proc"), "{err}");

    assert_eq!(
        before,
        std::fs::read(m.join("model.safetensors")).unwrap(),
        "input modified"
    );
    assert_no_leftovers(d.path());
}

#[test]
fn disk_full_leaves_nothing() {
    let d = tempfile::tempdir().unwrap();
    let (m, ids) = synthetic_with_ids(d.path());
    let out = d.path().join("out");
    // A full write first, to know the size: then fail in the header, mid-tensors, and on the
    // very last small file (the report).
    let full = d.path().join("full");
    let (code, _, err) = run(&[
        "compile",
        s(&m),
        "-o",
        s(&full),
        "--calib-ids",
        s(&ids),
        "--keep-ratio",
        "0.5",
    ]);
    assert_eq!(code, 0, "{err}");
    let total: u64 = std::fs::read_dir(&full)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    // The report's own length varies by a few bytes (timings): cut in its middle.
    let report = std::fs::metadata(full.join("whittle_report.json"))
        .unwrap()
        .len();
    for limit in [100, total / 2, total - report / 2].map(|x| x.to_string()) {
        let limit = limit.as_str();
        let o = cpu_cmd()
            .args([
                "compile",
                s(&m),
                "-o",
                s(&out),
                "--calib-ids",
                s(&ids),
                "--keep-ratio",
                "0.5",
            ])
            .env("WHITTLE_TEST_WRITE_LIMIT", limit)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "limit {limit}: {err}");
        assert!(
            err.contains("No space left on device"),
            "limit {limit}: {err}"
        );
        assert!(!out.exists(), "limit {limit}: partial output left");
        assert_no_leftovers(d.path());
    }
}

/// A sharded checkpoint loads like the single file, and compiles into the same sharding scheme.
#[test]
fn sharded_input_gives_sharded_output() {
    let d = tempfile::tempdir().unwrap();
    let cfg = tiny_config();
    let single = d.path().join("single");
    write_model(&single, &cfg);
    let sharded = d.path().join("sharded");
    std::fs::create_dir_all(&sharded).unwrap();
    std::fs::write(sharded.join("config.json"), cfg.to_string()).unwrap();
    let tensors = synthetic_tensors(&cfg);
    let (a, b) = tensors.split_at(tensors.len() / 2);
    let names = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    write_safetensors(&sharded.join(names[0]), a);
    write_safetensors(&sharded.join(names[1]), b);
    let mut map = serde_json::Map::new();
    for (part, file) in [(a, names[0]), (b, names[1])] {
        for (n, _, _) in part {
            map.insert(n.clone(), json!(file));
        }
    }
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        json!({"metadata": {"total_size": 0}, "weight_map": map}).to_string(),
    )
    .unwrap();

    let ids: Vec<u32> = (0..10).map(|i| (i * 7 % 60 + 3) as u32).collect();
    let batch = Batch {
        n_seq: 1,
        seq_len: 10,
    };
    let l1 = Model::load(&single)
        .unwrap()
        .forward_logits(&ids, batch)
        .unwrap();
    let l2 = Model::load(&sharded)
        .unwrap()
        .forward_logits(&ids, batch)
        .unwrap();
    assert_eq!(l1, l2);

    let calib = d.path().join("calib.safetensors");
    write_ids(&calib, 4, 12, 64, 3);
    let out = d.path().join("out");
    let (code, _, err) = run(&[
        "compile",
        s(&sharded),
        "-o",
        s(&out),
        "--calib-ids",
        s(&calib),
        "--keep-ratio",
        "0.5",
    ]);
    assert_eq!(code, 0, "{err}");
    for n in names {
        assert!(out.join(n).exists(), "{n} missing");
    }
    let idx: Value =
        serde_json::from_slice(&std::fs::read(out.join("model.safetensors.index.json")).unwrap())
            .unwrap();
    assert_eq!(idx["weight_map"], json!(map));
    let total: u64 = WeightStore::open(&out)
        .unwrap()
        .files
        .iter()
        .map(|f| {
            f.tensors
                .values()
                .map(|t| (t.end - t.start) as u64)
                .sum::<u64>()
        })
        .sum();
    assert_eq!(idx["metadata"]["total_size"], json!(total));
    let m = Model::load(&out).unwrap();
    assert_eq!(m.cfg.intermediate_size, 24);
}

/// Layer streaming: the peak heap of a compile does not grow with depth (one layer's weights are
/// resident at a time). An 8-layer model against a 2-layer one whose layers are each ~5 MB.
#[test]
fn peak_heap_does_not_grow_with_depth() {
    let d = tempfile::tempdir().unwrap();
    let ids = d.path().join("calib.safetensors");
    write_ids(&ids, 4, 32, 256, 5);
    let mut peaks = Vec::new();
    for layers in [2usize, 8] {
        let mut cfg = tiny_config();
        cfg["hidden_size"] = json!(256);
        cfg["intermediate_size"] = json!(1024);
        cfg["vocab_size"] = json!(256);
        cfg["num_hidden_layers"] = json!(layers);
        cfg["layer_types"] = json!((0..layers)
            .map(|i| if i % 2 == 0 {
                "sliding_attention"
            } else {
                "full_attention"
            })
            .collect::<Vec<_>>());
        let m = d.path().join(format!("in{layers}"));
        write_model(&m, &cfg);
        let out = d.path().join(format!("out{layers}"));
        let (code, _, err) = run(&[
            "compile",
            s(&m),
            "-o",
            s(&out),
            "--calib-ids",
            s(&ids),
            "--keep-ratio",
            "0.5",
        ]);
        assert_eq!(code, 0, "{err}");
        let r: Value =
            serde_json::from_slice(&std::fs::read(out.join("whittle_report.json")).unwrap())
                .unwrap();
        peaks.push(r["peak_heap_mib"].as_f64().expect("peak heap reported"));
    }
    // 6 more layers of f32 weights would add ~28 MiB if they were all held.
    assert!(
        peaks[1] < peaks[0] * 1.25 + 2.0,
        "peak heap grows with depth: {peaks:?} MiB"
    );
    eprintln!("peak heap 2 vs 8 layers: {peaks:?} MiB");
}

/// Copies a checkpoint folder, renaming its tensors with `rename` (bytes and order kept).
fn renamed_copy(src: &Path, dst: &Path, rename: impl Fn(&str) -> String) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        if p.file_name().unwrap() != "model.safetensors" {
            std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
        }
    }
    let f =
        whittle::checkpoint::safetensors::SafeFile::open(&src.join("model.safetensors")).unwrap();
    let mut order: Vec<_> = f.tensors.iter().collect();
    order.sort_by_key(|(_, t)| t.start);
    let entries: Vec<HeaderEntry> = order
        .iter()
        .map(|(n, t)| HeaderEntry {
            name: rename(n),
            dtype: t.dtype,
            shape: t.shape.clone(),
        })
        .collect();
    let mut bytes = encode_header(&entries, None);
    for (_, t) in &order {
        bytes.extend_from_slice(f.bytes(t));
    }
    std::fs::write(dst.join("model.safetensors"), bytes).unwrap();
}

/// A multimodal Gemma-3 checkpoint (tiny-gemma3-mm: tiny-gemma3's language model under
/// `language_model.model.*` plus a vision tower and projector): the language model is pruned
/// exactly as the text checkpoint is, everything else is copied byte for byte under its own
/// name, and only `text_config.intermediate_size` changes in config.json. The other spelling
/// (`model.language_model.*`, transformers' in-memory layout) is read and kept too.
#[test]
fn multimodal_gemma3_prunes_the_language_model_and_copies_the_rest() {
    let d = tempfile::tempdir().unwrap();
    let calib = fixture("eval-text.txt");
    let compile = |input: &Path, out: &Path| {
        let (code, _, err) = run(&[
            "compile",
            s(input),
            "-o",
            s(out),
            "--calib",
            s(&calib),
            "--samples",
            "8",
            "--seq",
            "24",
            "--intermediate-size",
            "64",
        ]);
        assert_eq!(code, 0, "{err}");
        let r: Value =
            serde_json::from_slice(&std::fs::read(out.join("whittle_report.json")).unwrap())
                .unwrap();
        r
    };
    let mm_in = fixture("tiny-gemma3-mm");
    let (mm_out, text_out) = (d.path().join("mm"), d.path().join("text"));
    let rm = compile(&mm_in, &mm_out);
    let rt = compile(&fixture("tiny-gemma3"), &text_out);
    assert_eq!(rm["model_type"], "gemma3");
    for (a, b) in rm["layers"]
        .as_array()
        .unwrap()
        .iter()
        .zip(rt["layers"].as_array().unwrap())
    {
        assert_eq!(
            a["kept"], b["kept"],
            "same language model, same neurons kept"
        );
    }

    let (si, so, st) = (
        WeightStore::open(&mm_in).unwrap(),
        WeightStore::open(&mm_out).unwrap(),
        WeightStore::open(&text_out).unwrap(),
    );
    let mut names: Vec<_> = si.names().cloned().collect();
    names.sort();
    let mut out_names: Vec<_> = so.names().cloned().collect();
    out_names.sort();
    assert_eq!(names, out_names, "the output keeps every tensor name");
    let (mut copied, mut copied_bytes) = (0u64, 0u64);
    for n in &names {
        let o = so.get_raw(n).unwrap();
        match n.strip_prefix("language_model.") {
            // The language model: what the text compile wrote for the same tensor.
            Some(rest) => {
                let t = st.get_raw(rest).unwrap();
                assert_eq!(o.info.shape, t.info.shape, "{n}");
                assert!(o.bytes() == t.bytes(), "{n}: differs from the text compile");
            }
            None => {
                let i = si.get_raw(n).unwrap();
                assert_eq!((o.info.dtype, &o.info.shape), (i.info.dtype, &i.info.shape));
                assert!(o.bytes() == i.bytes(), "{n}: not copied unchanged");
                copied += i.info.shape.iter().product::<usize>() as u64;
                copied_bytes += i.bytes().len() as u64;
            }
        }
    }
    assert!(copied > 0, "the fixture has a vision tower");
    assert_eq!(rm["passthrough_params"], json!(copied));
    assert_eq!(rm["passthrough_bytes"], json!(copied_bytes));
    assert_eq!(
        rm["weight_bytes_after"].as_u64().unwrap(),
        rt["weight_bytes_after"].as_u64().unwrap() + copied_bytes
    );

    let cfg = |p: &Path| -> Value {
        serde_json::from_slice(&std::fs::read(p.join("config.json")).unwrap()).unwrap()
    };
    let (ci, co) = (cfg(&mm_in), cfg(&mm_out));
    let mut expect = ci.clone();
    expect["text_config"]["intermediate_size"] = json!(64);
    assert_eq!(co, expect, "only text_config.intermediate_size changes");

    // transformers' in-memory spelling: model.language_model.* and a top-level lm_head.
    let alt_in = d.path().join("alt-in");
    renamed_copy(&mm_in, &alt_in, |n| {
        match n.strip_prefix("language_model.model.") {
            Some(rest) => format!("model.language_model.{rest}"),
            None => format!("model.{n}"),
        }
    });
    let alt_out = d.path().join("alt-out");
    let ra = compile(&alt_in, &alt_out);
    assert_eq!(ra["layers"], rm["layers"]);
    let sa = WeightStore::open(&alt_out).unwrap();
    for n in &names {
        let alt = match n.strip_prefix("language_model.model.") {
            Some(rest) => format!("model.language_model.{rest}"),
            None => format!("model.{n}"),
        };
        assert!(
            sa.get_raw(&alt).unwrap().bytes() == so.get_raw(n).unwrap().bytes(),
            "{alt}"
        );
    }
}

/// `--reconstruct` rewrites gate, up and down of every layer it improves, records what it did,
/// and gives the same bytes for any thread count.
#[test]
fn reconstruction_is_recorded_and_thread_independent() {
    let d = tempfile::tempdir().unwrap();
    let m = fixture("tiny-gemma3");
    let text = fixture("eval-text.txt");
    let compile = |name: &str, extra: &[&str]| -> std::path::PathBuf {
        let out = d.path().join(name);
        let mut args = vec![
            "compile",
            s(&m),
            "-o",
            s(&out),
            "--keep-ratio",
            "0.5",
            "--calib",
            s(&text),
            "--seq",
            "64",
            "--samples",
            "16",
        ];
        args.extend(extra);
        let (code, _, err) = run(&args);
        assert_eq!(code, 0, "{name}: {err}");
        out
    };
    let recon = [
        "--reconstruct",
        "--recon-epochs",
        "3",
        "--recon-lr",
        "0.003",
    ];
    let plain = compile("plain", &[]);
    let one = compile("one", &[&["--threads", "1"][..], &recon[..]].concat());
    let two = compile("two", &[&["--threads", "2"][..], &recon[..]].concat());
    let bytes = |p: &Path| std::fs::read(p.join("model.safetensors")).unwrap();
    assert!(
        bytes(&one) == bytes(&two),
        "--threads changed the reconstruction"
    );
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(one.join("whittle_report.json")).unwrap())
            .unwrap();
    let rec = &r["reconstruction"];
    assert_eq!(rec["epochs"], 3);
    let layers = rec["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 4);
    let (a, b) = (
        WeightStore::open(&plain).unwrap(),
        WeightStore::open(&one).unwrap(),
    );
    for (l, lr) in layers.iter().enumerate() {
        let held: Vec<f64> = lr["heldout_loss"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(held.len(), 4);
        let kept = lr["kept_epoch"].as_u64().unwrap() as usize;
        // The kept point is the best held-out one, never worse than the re-fit it started from.
        assert!(held.iter().all(|&h| held[kept] <= h), "layer {l}: {lr}");
        let gate = |st: &WeightStore| {
            st.get(&format!("model.layers.{l}.mlp.gate_proj.weight"))
                .unwrap()
                .bytes()
                .to_vec()
        };
        assert_eq!(
            kept > 0,
            gate(&a) != gate(&b),
            "layer {l}: gate_proj changed iff an epoch was kept"
        );
    }
    assert!(
        layers.iter().any(|l| l["kept_epoch"].as_u64().unwrap() > 0),
        "no layer improved: {rec}"
    );
    assert!(r["timings_s"]["reconstruct"].as_f64().unwrap() > 0.0);
}

#[test]
fn reconstruction_flags_are_checked() {
    let d = tempfile::tempdir().unwrap();
    let m = fixture("tiny-gemma3");
    let text = fixture("eval-text.txt");
    let out = d.path().join("o");
    for (extra, want) in [
        (&["--reconstruct", "--one-shot"][..], "--one-shot"),
        (&["--reconstruct", "--recon-lr", "0"][..], "--recon-lr"),
        (
            &["--reconstruct", "--recon-epochs", "0"][..],
            "--recon-epochs",
        ),
        (
            &["--reconstruct", "--recon-tokens", "8"][..],
            "--recon-tokens",
        ),
        (&["--recon-epochs", "3"][..], "--reconstruct"),
    ] {
        let mut args = vec!["compile", s(&m), "-o", s(&out), "--calib", s(&text)];
        args.extend(extra);
        let (code, _, err) = run(&args);
        assert_ne!(code, 0, "{extra:?} was accepted");
        assert!(
            err.contains(want) && !err.contains("panicked"),
            "{extra:?}: {err}"
        );
        assert!(!out.exists());
    }
}

/// `--calib self`: a seed gives the same sequences (and model) every time, another seed other
/// ones; the ids saved beside the report repeat the compile through `--calib-ids`; the report
/// names the seed and the token counts.
#[test]
fn self_calibration_is_seeded_and_reproducible() {
    let d = tempfile::tempdir().unwrap();
    let m = fixture("tiny-gemma3");
    let text = fixture("eval-text.txt");
    let compile = |name: &str, extra: &[&str]| -> std::path::PathBuf {
        let out = d.path().join(name);
        let mut args = vec!["compile", s(&m), "-o", s(&out), "--keep-ratio", "0.5"];
        if !extra.contains(&"--calib-ids") {
            args.extend(["--seq", "32", "--samples", "6"]);
        }
        args.extend(extra);
        let (code, _, err) = run(&args);
        assert_eq!(code, 0, "{name}: {err}");
        out
    };
    let text_half = format!("{}:0.5", s(&text));
    let mix = ["--calib", "self:0.5", &text_half];
    let a = compile("a", &[&mix[..], &["--calib-seed", "7"][..]].concat());
    let b = compile(
        "b",
        &[&mix[..], &["--calib-seed", "7", "--threads", "1"][..]].concat(),
    );
    let c = compile("c", &[&mix[..], &["--calib-seed", "8"][..]].concat());
    let file = |p: &Path, f: &str| std::fs::read(p.join(f)).unwrap();
    assert!(file(&a, "calibration-ids.safetensors") == file(&b, "calibration-ids.safetensors"));
    assert!(file(&a, "model.safetensors") == file(&b, "model.safetensors"));
    assert!(file(&a, "calibration-ids.safetensors") != file(&c, "calibration-ids.safetensors"));
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("whittle_report.json")).unwrap())
            .unwrap();
    let cal = &r["calibration"];
    assert_eq!(cal["self_generated"]["seed"], 7);
    assert_eq!(cal["self_generated"]["sequences"], 3);
    assert_eq!(cal["self_generated"]["tokens"], 96);
    assert_eq!(cal["self_generated"]["lanes"], 3);
    assert_eq!(cal["sources"][0]["path"], "self");
    assert_eq!(cal["sources"][0]["sequences"], 3);
    assert_eq!(cal["sources"][1]["sequences"], 3);
    assert!(std::fs::read_to_string(a.join("calibration-self.txt"))
        .unwrap()
        .contains("=== sequence 2"));
    // The saved ids repeat the compile exactly.
    let ids = a.join("calibration-ids.safetensors");
    let again = compile("again", &["--calib-ids", s(&ids)]);
    assert!(file(&a, "model.safetensors") == file(&again, "model.safetensors"));
    // A text-only compile saves nothing extra.
    let plain = compile("plain", &["--calib", s(&text)]);
    assert!(!plain.join("calibration-ids.safetensors").exists());
}

#[test]
fn self_calibration_bad_input() {
    let d = tempfile::tempdir().unwrap();
    let m = fixture("tiny-gemma3");
    let out = d.path().join("o");
    let base = [
        "compile",
        s(&m),
        "-o",
        s(&out),
        "--keep-ratio",
        "0.5",
        "--seq",
        "32",
    ];
    for (extra, want) in [
        (&["--calib", "self:0"][..], "positive"),
        (
            &["--calib", "self", "--calib-temperature", "0"][..],
            "temperature",
        ),
        (&["--calib", "self", "--calib-top-p", "1.5"][..], "top-p"),
    ] {
        let (code, _, err) = run(&[&base[..], extra].concat());
        assert_ne!(code, 0, "{extra:?} was accepted");
        assert!(
            err.contains(want) && !err.contains("panicked"),
            "{extra:?}: {err}"
        );
        assert!(!out.exists());
    }
    // A BOS id the tokenizer does not have (here beyond the vocabulary, which the config check
    // catches first for every command).
    let bad = d.path().join("bad-bos");
    std::fs::create_dir(&bad).unwrap();
    for f in std::fs::read_dir(&m).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, bad.join(f.file_name().unwrap())).unwrap();
    }
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(bad.join("config.json")).unwrap()).unwrap();
    let vocab = cfg["vocab_size"].as_u64().unwrap();
    cfg["bos_token_id"] = serde_json::json!(vocab + 5);
    std::fs::write(bad.join("config.json"), cfg.to_string()).unwrap();
    let (code, _, err) = run(&["compile", s(&bad), "-o", s(&out), "--calib", "self"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("bos_token_id") && !err.contains("panicked"),
        "{err}"
    );
}

//! `whittle compile` with several widths in one run (`--widths`, `--tier all`, `--keep-ratios`)
//! and with a size ceiling (`--max-gib`, `--max-params`): every output equals the single-width
//! compile with the same options, byte for byte; bad requests are refused before any work.

mod common;
use common::*;
use serde_json::Value;
use std::path::Path;
use whittle::checkpoint::safetensors::WeightStore;

/// Every safetensors and config file of two outputs, byte for byte (the reports differ in
/// timings and the batch record).
fn assert_same_output(a: &Path, b: &Path) {
    let mut files: Vec<_> = std::fs::read_dir(a)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|f| f != "whittle_report.json")
        .collect();
    files.sort();
    assert!(files
        .iter()
        .any(|f| f.to_string_lossy().ends_with(".safetensors")));
    for f in &files {
        assert!(
            std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(),
            "{f:?} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
}

#[test]
fn several_widths_equal_single_width_compiles() {
    let d = tempfile::tempdir().unwrap();
    let (m, ids) = synthetic_with_ids(d.path());
    // obs (one removal path shared by all widths) and energy, one-shot (one stream) and
    // sequential (one stream per width).
    for (method, mode) in [
        ("obs", "--sequential"),
        ("obs", "--one-shot"),
        ("energy", "--one-shot"),
    ] {
        let batch = d.path().join(format!("batch-{method}{mode}"));
        let (code, _, err) = run(&[
            "compile",
            s(&m),
            "-o",
            s(&batch),
            "--calib-ids",
            s(&ids),
            "--widths",
            "40,20,12",
            "--method",
            method,
            mode,
        ]);
        assert_eq!(code, 0, "{err}");
        for w in ["40", "20", "12"] {
            let single = d.path().join(format!("single-{method}{mode}-{w}"));
            let (code, _, err) = run(&[
                "compile",
                s(&m),
                "-o",
                s(&single),
                "--calib-ids",
                s(&ids),
                "--intermediate-size",
                w,
                "--method",
                method,
                mode,
            ]);
            assert_eq!(code, 0, "{err}");
            let out = batch.join(format!("width-{w}"));
            assert_same_output(&out, &single);
            let (rb, rs) = (report(&out), report(&single));
            assert_eq!(rb["layers"], rs["layers"], "{method}{mode} width {w}");
            assert_eq!(
                rb["intermediate_size_after"].as_u64(),
                Some(w.parse().unwrap())
            );
            assert_eq!(rb["batch"]["widths"], serde_json::json!([40, 20, 12]));
            let streams = if mode == "--sequential" { 3 } else { 1 };
            assert_eq!(rb["batch"]["streams"], serde_json::json!(streams));
            // What inspect reads from the folder agrees with the report.
            let store = WeightStore::open(&out).unwrap();
            assert_eq!(
                store
                    .get("model.layers.0.mlp.gate_proj.weight")
                    .unwrap()
                    .info
                    .shape,
                vec![w.parse::<usize>().unwrap(), 32]
            );
        }
    }
}

#[test]
fn tier_all_writes_one_folder_per_tier() {
    let d = tempfile::tempdir().unwrap();
    let (m, ids) = synthetic_with_ids(d.path());
    let out = d.path().join("tiers");
    let (code, stdout, err) = run(&[
        "compile",
        s(&m),
        "-o",
        s(&out),
        "--calib-ids",
        s(&ids),
        "--tier",
        "all",
        "--one-shot",
    ]);
    assert_eq!(code, 0, "{err}");
    let mut widths = Vec::new();
    for tier in ["default", "production", "throughput", "experimental"] {
        let r = report(&out.join(tier));
        assert_eq!(r["width_request"]["tier"], serde_json::json!(tier));
        widths.push(r["intermediate_size_after"].as_u64().unwrap());
        assert!(stdout.contains(s(&out.join(tier))), "{stdout}");
        let (code, js, err) = run(&["inspect", s(&out.join(tier)), "--json"]);
        assert_eq!(code, 0, "{err}");
        let js: Value = serde_json::from_str(&js).unwrap();
        assert_eq!(js["total_params"], r["params_after"], "{js}");
    }
    assert!(widths.windows(2).all(|p| p[0] > p[1]), "{widths:?}");
    // The same tier alone, into a plain folder, is the same checkpoint.
    let single = d.path().join("throughput");
    let (code, _, err) = run(&[
        "compile",
        s(&m),
        "-o",
        s(&single),
        "--calib-ids",
        s(&ids),
        "--tier",
        "throughput",
        "--one-shot",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_same_output(&out.join("throughput"), &single);
}

#[test]
fn size_ceiling_picks_the_widest_width_that_fits() {
    let d = tempfile::tempdir().unwrap();
    let (m, ids) = synthetic_with_ids(d.path());
    // Parameters at width 20 of the tiny model (multiple clamps to 2): exactly that → 20,
    // one fewer → 18.
    let probe = d.path().join("probe");
    let (code, _, err) = run(&[
        "compile",
        s(&m),
        "-o",
        s(&probe),
        "--calib-ids",
        s(&ids),
        "--intermediate-size",
        "20",
        "--one-shot",
    ]);
    assert_eq!(code, 0, "{err}");
    let r = report(&probe);
    let p20 = r["params_after"].as_u64().unwrap();
    let b20 = r["weight_bytes_after"].as_u64().unwrap();
    for (flag, value, want) in [
        ("--max-params", p20.to_string(), 20),
        ("--max-params", (p20 - 1).to_string(), 18),
        (
            "--max-gib",
            format!("{}", b20 as f64 / (1u64 << 30) as f64),
            20,
        ),
    ] {
        let out = d.path().join(format!("fit{flag}{value}"));
        let (code, _, err) = run(&[
            "compile",
            s(&m),
            "-o",
            s(&out),
            "--calib-ids",
            s(&ids),
            flag,
            &value,
            "--one-shot",
        ]);
        assert_eq!(code, 0, "{flag} {value}: {err}");
        assert_eq!(
            report(&out)["intermediate_size_after"].as_u64(),
            Some(want),
            "{flag} {value}"
        );
    }
}

#[test]
fn bad_batch_requests_are_refused_up_front() {
    let d = tempfile::tempdir().unwrap();
    let (m, ids) = synthetic_with_ids(d.path());
    let file = d.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--widths", "20,20"], "both resolve to width 20"),
        (vec!["--widths", "20,0"], "--widths"),
        (vec!["--widths", "20,49"], "outside 1..=48"),
        (
            vec!["--tier", "default,fastest"],
            "unknown tier \"fastest\"",
        ),
        (vec!["--tier", "all,default"], "unknown tier"),
        (vec!["--tier", "default,,throughput"], "empty name"),
        (vec!["--keep-ratios", "0.5,1.5"], "--keep-ratios"),
        (vec!["--max-params", "10"], "below the smallest compile"),
        (vec!["--max-gib", "0.0000001"], "below the smallest compile"),
        (vec!["--max-gib", "0"], "positive number"),
        (
            vec!["--widths", "20,12", "--max-memory", "1K"],
            "more than the --max-memory",
        ),
        (
            vec!["--widths", "20,12", "--max-memory", "lots"],
            "--max-memory \"lots\"",
        ),
    ];
    for (extra, want) in cases {
        let out = d.path().join("out");
        let mut args = vec!["compile", s(&m), "-o", s(&out), "--calib-ids", s(&ids)];
        args.extend(&extra);
        let (code, _, err) = run(&args);
        assert_eq!(code, 1, "{extra:?} was accepted");
        assert!(err.contains(want), "{extra:?}: {err}");
        assert!(!out.join("width-20").exists(), "{extra:?} wrote output");
    }
    // -o must be a folder when several widths are asked for.
    let (code, _, err) = run(&[
        "compile",
        s(&m),
        "-o",
        s(&file),
        "--calib-ids",
        s(&ids),
        "--widths",
        "20,12",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("is a file") || err.contains("a folder"),
        "{err}"
    );
    // An existing output folder for one width stops the whole run before calibration.
    let out = d.path().join("partly");
    std::fs::create_dir_all(out.join("width-12")).unwrap();
    let (code, _, err) = run(&[
        "compile",
        s(&m),
        "-o",
        s(&out),
        "--calib-ids",
        s(&ids),
        "--widths",
        "20,12",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("already exists"), "{err}");
    assert!(!out.join("width-20").exists());
}

#[test]
fn quality_ceiling_picks_the_narrowest_width_within_it() {
    let d = tempfile::tempdir().unwrap();
    let m = d.path().join("in");
    write_model(&m, &tiny_config());
    let ids = d.path().join("calib.safetensors");
    write_ids(&ids, 12, 12, 64, 7);
    for (flag, limit) in [("--max-kl", 0.05), ("--max-ppl-ratio", 1.02)] {
        let out = d.path().join(format!("out{flag}"));
        // f32, the reference: the limits bind on its curve, whatever compile's default precision
        // on the CPU that runs the test (bf16 on AMD with AVX-512 BF16).
        let (code, stdout, err) = run(&[
            "--precision",
            "f32",
            "compile",
            s(&m),
            "-o",
            s(&out),
            "--calib-ids",
            s(&ids),
            flag,
            &limit.to_string(),
            "--holdout",
            "4",
        ]);
        assert_eq!(code, 0, "{err}");
        let r = report(&out);
        let c = &r["ceiling"];
        let chosen = c["chosen"].as_u64().unwrap();
        assert_eq!(r["intermediate_size_after"].as_u64(), Some(chosen));
        assert_eq!(c["held_out"]["sequences"], serde_json::json!(4));
        assert_eq!(r["calibration"]["sequences"], serde_json::json!(8));
        let key = if flag == "--max-kl" {
            "kl"
        } else {
            "ppl_ratio"
        };
        let at = |w: u64| {
            c["curve"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["width"].as_u64() == Some(w))
                .map(|p| p[key].as_f64().unwrap())
        };
        // The chosen width is within the ceiling, the next narrower one (multiple 2) beyond it.
        assert!(at(chosen).unwrap() <= limit, "{c}");
        assert!(chosen > 2, "the ceiling should bind on this model: {c}");
        assert!(at(chosen - 2).unwrap() > limit, "{c}");
        assert!(
            stdout.contains("within") && stdout.contains("beyond"),
            "{stdout}"
        );
        // The measurement is real: the written folder's held-out KL equals the curve's.
        assert!(c["curve"].as_array().unwrap().len() >= 3, "{c}");
        // No probe folders left beside OUT.
        for e in std::fs::read_dir(d.path()).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!name.contains("whittle-search"), "left behind: {name}");
        }
    }
}

#[test]
fn bad_quality_ceilings_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let (m, ids) = synthetic_with_ids(d.path());
    let out = d.path().join("out");
    for (extra, want) in [
        (
            vec!["--max-kl", "0"],
            "not a ceiling any pruned model can meet",
        ),
        (vec!["--max-ppl-ratio", "1"], "above 1"),
        (vec!["--max-kl", "1e-12"], "best achievable"),
        (
            vec!["--max-kl", "0.1", "--holdout", "6"],
            "leave some to calibrate on",
        ),
        (vec!["--holdout", "2"], "--holdout is for --max-kl"),
    ] {
        let mut args = vec!["compile", s(&m), "-o", s(&out), "--calib-ids", s(&ids)];
        args.extend(&extra);
        let (code, _, err) = run(&args);
        assert_eq!(code, 1, "{extra:?} was accepted: {err}");
        assert!(err.contains(want), "{extra:?}: {err}");
        assert!(!out.exists(), "{extra:?} wrote output");
    }
    let (code, _, err) = run(&[
        "compile",
        s(&m),
        "-o",
        s(&out),
        "--calib-ids",
        s(&ids),
        "--max-kl",
        "0.1",
        "--tier",
        "throughput",
    ]);
    assert_eq!(code, 2, "{err}"); // clap: conflicting flags
}

/// A width that is not a multiple of `--multiple-of` compiles the nearest multiple, says so, and
/// its folder is named by the width it holds.
#[test]
fn widths_are_rounded_and_folders_named_by_the_width_compiled() {
    let d = tempfile::tempdir().unwrap();
    let (m, ids) = synthetic_with_ids(d.path());
    let out = d.path().join("rounded");
    let (code, _, err) = run(&[
        "compile",
        s(&m),
        "-o",
        s(&out),
        "--calib-ids",
        s(&ids),
        "--widths",
        "40,19",
        "--multiple-of",
        "4",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("width 19 is not a multiple of"), "{err}");
    assert!(!out.join("width-19").exists());
    assert_eq!(
        report(&out.join("width-20"))["intermediate_size_after"].as_u64(),
        Some(20)
    );
    assert!(out.join("width-40").join("model.safetensors").exists());
}

/// The `--max-memory` estimate counts what every width's cuts hold until the writer runs: the
/// re-fit down_proj [H, K] per layer, and gate and up too with `--reconstruct` (which runs gate
/// and up again instead of keeping a layer's activations).
#[test]
fn memory_estimate_counts_the_held_cuts() {
    use whittle::compile::{reconstruct::ReconOptions, run_memory_bytes, CompileOptions};
    let cfg = whittle::checkpoint::config::ModelConfig::from_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-gemma3"),
    )
    .unwrap();
    let (h, layers) = (cfg.hidden_size as u64, cfg.num_layers as u64);
    let plan = CompileOptions {
        kept_act_bytes: 0,
        ..Default::default()
    }
    .validate()
    .unwrap();
    let est = |plan: &_, widths: &[usize]| run_memory_bytes(&cfg, 4096, plan, 1, 4, widths);
    let (one, two) = (est(&plan, &[40]), est(&plan, &[40, 20]));
    // Kept activations (the default, sequential): one layer's [tokens, I] in f32.
    let kept = CompileOptions::default().validate().unwrap();
    assert_eq!(
        est(&kept, &[40]) - one,
        4 * 4096 * cfg.intermediate_size as u64
    );
    assert_eq!(
        two - one,
        layers * h * 20 * 4,
        "a second width's down_proj cuts"
    );
    let recon = CompileOptions {
        reconstruct: Some(ReconOptions {
            tokens: 1024,
            ..Default::default()
        }),
        ..Default::default()
    }
    .validate()
    .unwrap();
    // gate and up beside each down_proj, and the reconstruction tokens' inputs, targets and
    // activations.
    let extra = est(&recon, &[40]) - one;
    assert_eq!(extra, 2 * layers * h * 40 * 4 + 3 * 4 * h * 1024);
    let no_repair = CompileOptions {
        repair: false,
        ..Default::default()
    }
    .validate()
    .unwrap();
    assert_eq!(
        est(&no_repair, &[40]),
        est(&no_repair, &[40, 20]),
        "nothing held"
    );
}

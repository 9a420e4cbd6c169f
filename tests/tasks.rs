//! `whittle eval --tasks` against transformers on the tiny fixture (tests/fixtures/tasks, made by
//! scripts/hf_tasks.py: the command is in reference-tiny-gemma3.json), the capability report
//! with several texts, and the bad inputs of issue 13.

mod common;
use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Output;

const ALL: &str = "arc_easy,arc_challenge,hellaswag,piqa,lambada";

fn tasks_dir() -> std::path::PathBuf {
    fixture("tasks")
}

fn run(args: &[&str]) -> Output {
    cpu_cmd().arg("eval").args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok_json(o: Output) -> Value {
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn task_loglikelihoods_and_metrics_match_transformers() {
    let d = tempfile::tempdir().unwrap();
    let items = d.path().join("items.jsonl");
    let model = fixture("tiny-gemma3");
    let got = ok_json(run(&[
        model.to_str().unwrap(),
        "--tasks",
        ALL,
        "--tasks-dir",
        tasks_dir().to_str().unwrap(),
        "--items-out",
        items.to_str().unwrap(),
        "--json",
    ]));
    let want = lines(&tasks_dir().join("reference-tiny-gemma3.jsonl"));
    let have = lines(&items);
    assert_eq!(have.len(), want.len(), "items scored");
    for (h, w) in have.iter().zip(&want) {
        assert_eq!((&h["task"], &h["item"]), (&w["task"], &w["item"]));
        assert_eq!(h["greedy"], w["greedy"], "{h} vs {w}");
        let (hl, wl) = (h["lls"].as_array().unwrap(), w["lls"].as_array().unwrap());
        assert_eq!(hl.len(), wl.len(), "choices of {w}");
        for (a, b) in hl.iter().zip(wl) {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            assert!(
                ((a - b) / b).abs() < 1e-4,
                "{} item {}: ll {a} vs transformers {b}",
                w["task"],
                w["item"]
            );
        }
    }
    let r: Value = serde_json::from_slice(
        &std::fs::read(tasks_dir().join("reference-tiny-gemma3.json")).unwrap(),
    )
    .unwrap();
    for task in ALL.split(',') {
        let (g, w) = (&got["tasks"][task], &r["tasks"][task]);
        assert_eq!(g["items"], w["items"], "{task}");
        for m in ["acc", "acc_norm", "acc_stderr", "acc_norm_stderr"] {
            if let Some(wv) = w.get(m) {
                let gv = g[m].as_f64().unwrap();
                assert!((gv - wv.as_f64().unwrap()).abs() < 1e-12, "{task} {m}");
            }
        }
        if task == "lambada" {
            let (gp, wp) = (g["ppl"].as_f64().unwrap(), w["ppl"].as_f64().unwrap());
            assert!(((gp - wp) / wp).abs() < 1e-4, "lambada ppl {gp} vs {wp}");
        }
    }
}

#[test]
fn limit_and_base_give_both_models_and_deltas() {
    let base = fixture("tiny-gemma3");
    let model = fixture("tiny-gemma3-perturbed");
    let got = ok_json(run(&[
        model.to_str().unwrap(),
        "--base",
        base.to_str().unwrap(),
        "--tasks",
        "arc_easy,lambada",
        "--limit",
        "2",
        "--tasks-dir",
        tasks_dir().to_str().unwrap(),
        "--json",
    ]));
    let alone = ok_json(run(&[
        base.to_str().unwrap(),
        "--tasks",
        "arc_easy,lambada",
        "--limit",
        "2",
        "--tasks-dir",
        tasks_dir().to_str().unwrap(),
        "--json",
    ]));
    for task in ["arc_easy", "lambada"] {
        let t = &got["tasks"][task];
        assert_eq!(t["items"], 2);
        assert_eq!(t["base"]["acc"], alone["tasks"][task]["acc"], "{task}");
        let delta = t["acc"].as_f64().unwrap() - t["base"]["acc"].as_f64().unwrap();
        assert!((t["delta"]["acc"].as_f64().unwrap() - delta).abs() < 1e-12);
    }
    let (p, bp) = (
        got["tasks"]["lambada"]["ppl"].as_f64().unwrap(),
        got["tasks"]["lambada"]["base"]["ppl"].as_f64().unwrap(),
    );
    assert_ne!(p, bp, "the perturbed model must score differently");
}

#[test]
fn several_texts_each_match_a_single_text_eval() {
    let base = fixture("tiny-gemma3");
    let model = fixture("tiny-gemma3-perturbed");
    let text = fixture("eval-text.txt");
    let d = tempfile::tempdir().unwrap();
    let half = d.path().join("half.txt");
    let full = std::fs::read_to_string(&text).unwrap();
    std::fs::write(&half, &full[..full.len() / 2]).unwrap();
    let common = ["--seq", "32", "--windows", "3", "--json"];
    let mut args = vec![
        model.to_str().unwrap(),
        "--base",
        base.to_str().unwrap(),
        "--text",
    ];
    let en = format!("en={}", text.display());
    let h = format!("half={}", half.display());
    args.extend([en.as_str(), "--text", h.as_str()]);
    args.extend(common);
    let report = ok_json(run(&args));
    for (name, path) in [("en", &text), ("half", &half)] {
        let single = ok_json(run(&[
            model.to_str().unwrap(),
            "--base",
            base.to_str().unwrap(),
            "--text",
            path.to_str().unwrap(),
            "--seq",
            "32",
            "--windows",
            "3",
            "--json",
        ]));
        let base_alone = ok_json(run(&[
            base.to_str().unwrap(),
            "--text",
            path.to_str().unwrap(),
            "--seq",
            "32",
            "--windows",
            "3",
            "--json",
        ]));
        let r = &report["texts"][name];
        assert_eq!(r["ppl"], single["ppl"], "{name}");
        assert_eq!(r["kl"], single["kl"], "{name}");
        assert_eq!(r["top1_agree"], single["top1_agree"], "{name}");
        let bp = base_alone["ppl"].as_f64().unwrap();
        assert!((r["base_ppl"].as_f64().unwrap() - bp).abs() / bp < 1e-9);
        let ratio = single["ppl"].as_f64().unwrap() / bp;
        assert!((r["ppl_ratio"].as_f64().unwrap() - ratio).abs() / ratio < 1e-9);
    }
}

fn err_of(args: &[&str]) -> String {
    let o = run(args);
    assert!(!o.status.success(), "should fail: {args:?}");
    let e = stderr(&o);
    assert!(!e.contains("panicked"), "{e}");
    e
}

#[test]
fn unknown_task_lists_the_known_ones() {
    let m = fixture("tiny-gemma3");
    let e = err_of(&[m.to_str().unwrap(), "--tasks", "arc_easy,mmlu"]);
    assert!(e.contains("unknown task \"mmlu\""), "{e}");
    assert!(e.contains(ALL.replace(',', ", ").as_str()), "{e}");
}

#[test]
fn missing_task_data_names_the_fetch_command() {
    let m = fixture("tiny-gemma3");
    let d = tempfile::tempdir().unwrap();
    let e = err_of(&[
        m.to_str().unwrap(),
        "--tasks",
        "piqa",
        "--tasks-dir",
        d.path().to_str().unwrap(),
    ]);
    assert!(e.contains("piqa.jsonl"), "{e}");
    assert!(e.contains("scripts/get-tasks.py"), "{e}");
}

#[test]
fn limit_zero_is_refused() {
    let m = fixture("tiny-gemma3");
    let e = err_of(&[
        m.to_str().unwrap(),
        "--tasks",
        "piqa",
        "--tasks-dir",
        tasks_dir().to_str().unwrap(),
        "--limit",
        "0",
    ]);
    assert!(e.contains("--limit") && e.contains("at least 1"), "{e}");
}

/// A copy of the fixture task data with `piqa.jsonl` replaced by `f(original)`.
fn with_piqa(f: impl FnOnce(&str) -> String) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let orig = std::fs::read_to_string(tasks_dir().join("piqa.jsonl")).unwrap();
    std::fs::write(d.path().join("piqa.jsonl"), f(&orig)).unwrap();
    d
}

fn piqa_err(dir: &Path) -> String {
    let m = fixture("tiny-gemma3");
    err_of(&[
        m.to_str().unwrap(),
        "--tasks",
        "piqa",
        "--tasks-dir",
        dir.to_str().unwrap(),
    ])
}

#[test]
fn corrupt_or_truncated_task_data_is_refused() {
    // Cut mid-line: the last document is not JSON.
    let d = with_piqa(|s| s[..s.len() - 20].to_string());
    let e = piqa_err(d.path());
    assert!(e.contains("piqa.jsonl") && e.contains("line 4"), "{e}");
    assert!(e.contains("scripts/get-tasks.py"), "{e}");
    // Cut at a line boundary: only the header's item count tells.
    let d = with_piqa(|s| {
        let keep: Vec<&str> = s.lines().take(3).collect();
        keep.join("\n") + "\n"
    });
    let e = piqa_err(d.path());
    assert!(e.contains("promises 3 items but the file holds 2"), "{e}");
    // A document without the fields the task needs.
    let d = with_piqa(|s| s.replacen("\"sol2\"", "\"solution2\"", 1));
    let e = piqa_err(d.path());
    assert!(e.contains("missing field \"sol2\""), "{e}");
    // Not a task file at all.
    let d = with_piqa(|_| "\u{0}\u{1}binary".into());
    let e = piqa_err(d.path());
    assert!(e.contains("line 1"), "{e}");
}

#[test]
fn a_text_name_given_twice_is_refused() {
    let m = fixture("tiny-gemma3");
    let t = fixture("eval-text.txt");
    let a = format!("en={}", t.display());
    let e = err_of(&[m.to_str().unwrap(), "--text", &a, "--text", &a]);
    assert!(e.contains("\"en\" is given twice"), "{e}");
}

//! `whittle eval` against transformers on the fixtures (tests/fixtures/*/eval-reference.json,
//! made by scripts/hf_eval.py): the same windows, the same perplexity, KL and top-1 agreement.

mod common;
use common::*;
use serde_json::Value;

fn eval_json(model: &str, base: Option<&str>, seq: &str, windows: &str) -> Value {
    let mut cmd = cpu_cmd();
    cmd.args([
        "eval",
        fixture(model).to_str().unwrap(),
        "--text",
        fixture("eval-text.txt").to_str().unwrap(),
    ])
    .args(["--seq", seq, "--windows", windows, "--json"]);
    if let Some(b) = base {
        cmd.args(["--base", fixture(b).to_str().unwrap()]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn reference(model: &str) -> Value {
    serde_json::from_slice(&std::fs::read(fixture(model).join("eval-reference.json")).unwrap())
        .unwrap()
}

fn rel(a: &Value, b: &Value) -> f64 {
    let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
    ((a - b) / b).abs()
}

#[test]
fn perplexity_matches_transformers() {
    for m in ["tiny-gemma2", "tiny-gemma3", "tiny-gemma3-mm"] {
        let r = reference(m);
        let seq = r["seq"].to_string();
        let w = r["windows"].to_string();
        let got = eval_json(m, None, &seq, &w);
        assert_eq!(got["tokens"], r["tokens"], "{m}: scored token count");
        assert_eq!(got["windows"], r["windows"], "{m}");
        assert!(
            rel(&got["ppl"], &r["ppl"]) < 1e-4,
            "{m}: ppl {} vs transformers {}",
            got["ppl"],
            r["ppl"]
        );
    }
}

#[test]
fn kl_and_top1_match_transformers() {
    let r = reference("tiny-gemma3-perturbed");
    let got = eval_json(
        "tiny-gemma3-perturbed",
        Some("tiny-gemma3"),
        &r["seq"].to_string(),
        &r["windows"].to_string(),
    );
    assert_eq!(got["tokens"], r["tokens"]);
    assert!(
        rel(&got["ppl"], &r["ppl"]) < 1e-4,
        "ppl {} vs {}",
        got["ppl"],
        r["ppl"]
    );
    assert!(
        rel(&got["kl"], &r["kl"]) < 1e-3,
        "kl {} vs {}",
        got["kl"],
        r["kl"]
    );
    assert!(got["kl"].as_f64().unwrap() > 0.0);
    assert_eq!(got["top1_agree"], r["top1_agree"]);
}

#[test]
fn a_model_against_itself_has_zero_kl() {
    let got = eval_json("tiny-gemma2", Some("tiny-gemma2"), "32", "2");
    assert!(got["kl"].as_f64().unwrap().abs() < 1e-9, "{}", got["kl"]);
    assert_eq!(got["top1_agree"].as_f64().unwrap(), 1.0);
}

//! `whittle generate` and `whittle bench` from the command line, and the decoder against
//! transformers' own cached greedy decoding (`generate-reference.json`, written by
//! scripts/make_generate_fixture.py with transformers fp32 eager).

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use whittle::checkpoint::tokenizer::Tokenizer;
use whittle::cpu::decode::{argmax, Decoder, Sampling};
use whittle::cpu::model::Model;
use whittle::serve::generate::{generate, stop_tokens, GenOptions, StopReason, TextStream};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

/// `whittle --device cpu ...` run from the repository root (the references are fp32 CPU).
fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_whittle"));
    c.current_dir(root()).args(["--device", "cpu"]);
    c
}

fn run_ok(c: &mut Command) -> String {
    let out = c.output().expect("run whittle");
    assert!(
        out.status.success(),
        "whittle failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

fn json_line(stdout: &str) -> Value {
    let line = stdout.lines().last().expect("a line of output");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
    )
    .unwrap()
}

/// `whittle generate --json` greedy on `model` reproduces the reference's prompt ids and tokens.
fn greedy_matches(model: &Path, reference: &Path) -> Value {
    let r = read_json(reference);
    let mut c = bin();
    c.arg("generate")
        .arg(model)
        .args(["--prompt", r["prompt"].as_str().unwrap()])
        .args(["--max-new-tokens", &r["max_new_tokens"].to_string()])
        .arg("--json");
    if r["chat"].as_bool() == Some(true) {
        c.arg("--chat");
    }
    let got = json_line(&run_ok(&mut c));
    assert_eq!(
        ids(&got["prompt_ids"]),
        ids(&r["prompt_ids"]),
        "prompt ids (BOS + text) differ from transformers'"
    );
    assert_eq!(
        ids(&got["stop_tokens"]),
        ids(&r["stop_tokens"]),
        "stop-token set differs"
    );
    assert_eq!(
        ids(&got["tokens"]),
        ids(&r["tokens"]),
        "greedy tokens differ from transformers' generate(do_sample=False)"
    );
    got
}

/// Decoder steps vs transformers' cached decode: at every greedy step, the logits of the five
/// tokens transformers ranked best must agree (|Δ| <= tol·max(1, |top-1 logit|)).
fn decode_logits_match(model: &Model, reference: &Path, tol: f32) -> f32 {
    let r = read_json(reference);
    let prompt = ids(&r["prompt_ids"]);
    let tokens = ids(&r["tokens"]);
    let top5 = r["top5"].as_array().expect("top5");
    assert_eq!(top5.len(), tokens.len());
    let mut dec = Decoder::new(model, prompt.len() + tokens.len());
    let mut z = dec.prefill(&prompt).unwrap();
    let mut worst = 0f32;
    for (step, (&tok, best)) in tokens.iter().zip(top5).enumerate() {
        let best = best.as_array().unwrap();
        let scale = best[0][1].as_f64().unwrap().abs().max(1.0) as f32;
        for pair in best {
            let (id, want) = (
                pair[0].as_u64().unwrap() as usize,
                pair[1].as_f64().unwrap() as f32,
            );
            let err = (z[id] - want).abs() / scale;
            assert!(
                err <= tol,
                "step {step}: logit of token {id} is {} vs transformers {want} (rel {err:.2e})",
                z[id]
            );
            worst = worst.max(err);
        }
        assert_eq!(argmax(&z), tok, "step {step}: greedy pick differs");
        if step + 1 < tokens.len() {
            z = dec.step(tok).unwrap();
        }
    }
    worst
}

#[test]
fn tiny_gemma2_generate_matches_transformers_greedy() {
    let d = fixture("tiny-gemma2");
    greedy_matches(&d, &d.join("generate-reference.json"));
}

#[test]
fn tiny_gemma3_generate_matches_transformers_greedy() {
    let d = fixture("tiny-gemma3");
    greedy_matches(&d, &d.join("generate-reference.json"));
}

#[test]
fn decode_steps_match_transformers_cached_decode() {
    for name in ["tiny-gemma2", "tiny-gemma3"] {
        let d = fixture(name);
        let model = Model::load(&d).unwrap();
        let w = decode_logits_match(&model, &d.join("generate-reference.json"), 1e-4);
        eprintln!("{name}: worst top-5 logit error vs transformers {w:.2e}");
    }
}

#[test]
#[ignore = "needs models/gemma-3-270m (make demo fetches it)"]
fn gemma3_270m_generate_matches_transformers_greedy() {
    let model_dir = root().join("models/gemma-3-270m");
    let reference = root().join("tests/real-model/gemma-3-270m-generate.json");
    let got = greedy_matches(&model_dir, &reference);
    eprintln!("gemma-3-270m: {:?}", got["text"].as_str().unwrap_or(""));
    let model = Model::load(&model_dir).unwrap();
    let w = decode_logits_match(&model, &reference, 1e-3);
    eprintln!("gemma-3-270m: worst top-5 logit error vs transformers {w:.2e}");
}

#[test]
fn generate_streams_the_decoded_text() {
    let d = fixture("tiny-gemma3");
    let r = read_json(&d.join("generate-reference.json"));
    let out = run_ok(
        bin()
            .arg("generate")
            .arg(&d)
            .args([
                "--prompt",
                r["prompt"].as_str().unwrap(),
                "--max-new-tokens",
            ])
            .arg(r["max_new_tokens"].to_string()),
    );
    assert_eq!(out.trim_end_matches('\n'), r["text"].as_str().unwrap());
}

/// Streaming pieces concatenate to the full decode, multi-byte characters split over byte-level
/// tokens included, and no piece carries a half character.
fn stream_roundtrip(tok: &Tokenizer, text: &str) {
    let ids = tok.encode(text).unwrap();
    let mut st = TextStream::new(tok);
    let mut out = String::new();
    for &i in &ids {
        let piece = st.push(i).unwrap();
        assert!(
            !piece.contains('\u{FFFD}'),
            "half a character streamed: {piece:?}"
        );
        out += &piece;
    }
    out += &st.finish().unwrap();
    assert_eq!(out, tok.decode(&ids).unwrap());
    assert_eq!(out, text);
}

#[test]
fn text_stream_reassembles_the_text() {
    let tok = Tokenizer::from_dir(&fixture("tiny-gemma2")).unwrap();
    stream_roundtrip(
        &tok,
        "The river – café, naïve ✓ 北京 rises.\n  Two  spaces.",
    );
}

#[test]
#[ignore = "needs models/gemma-3-270m (make demo fetches it)"]
fn text_stream_reassembles_gemma_text() {
    let tok = Tokenizer::from_dir(&root().join("models/gemma-3-270m")).unwrap();
    stream_roundtrip(
        &tok,
        " The river – café, naïve ✓ 北京 rises.\n  Two  spaces. 🙂",
    );
}

#[test]
fn chat_flag_wraps_the_prompt_in_gemma_turns() {
    let d = fixture("tiny-gemma2");
    let got = json_line(&run_ok(bin().arg("generate").arg(&d).args([
        "--prompt",
        "Hello",
        "--chat",
        "--max-new-tokens",
        "3",
        "--json",
    ])));
    // No template in the folder: Gemma's own, whose text starts with <bos>.
    let want = "<bos><start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n";
    assert_eq!(got["prompt"], want);
    let tok = Tokenizer::from_dir(&d).unwrap();
    let prompt_ids = ids(&got["prompt_ids"]);
    assert_eq!(
        prompt_ids,
        tok.encode(want).unwrap(),
        "the rendered text's ids"
    );
    assert_eq!(prompt_ids[0], 2, "BOS first");
    assert_ne!(prompt_ids[1], 2, "BOS once");
    assert_eq!(ids(&got["tokens"]).len(), 3);
}

/// A model folder with a chat template gets it by default (its own format, whatever the
/// family); `--no-chat` turns it off; a Llama-family folder without one cannot `--chat`.
#[test]
fn chat_template_in_the_model_turns_chat_on_by_default() {
    let src = fixture("tiny-llama");
    let d = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), d.path().join(e.file_name())).unwrap();
    }
    let cfg_path = d.path().join("tokenizer_config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    let run = |extra: &[&str]| {
        let mut c = bin();
        c.arg("generate")
            .arg(d.path())
            .args(["--prompt", "Hello", "--max-new-tokens", "1", "--json"])
            .args(extra);
        c.output().unwrap()
    };
    let prompt = |extra: &[&str]| {
        let o = run(extra);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        json_line(&String::from_utf8(o.stdout).unwrap())["prompt"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(prompt(&[]), "Hello", "no template: the prompt as given");
    let o = run(&["--chat"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("has no chat template"),
        "{e}"
    );

    cfg["chat_template"] = serde_json::json!(
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
         {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    );
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let chat = "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(prompt(&[]), chat, "template: chat by default");
    assert_eq!(prompt(&["--no-chat"]), "Hello");
    assert_eq!(prompt(&["--no-chat", "--chat"]), chat, "the last flag wins");
}

#[test]
fn sampling_is_reproducible_with_a_seed() {
    let d = fixture("tiny-gemma3");
    let gen = |seed: &str| {
        ids(&json_line(&run_ok(bin().arg("generate").arg(&d).args([
            "--prompt",
            "The river",
            "--temperature",
            "5",
            "--top-p",
            "0.95",
            "--seed",
            seed,
            "--max-new-tokens",
            "24",
            "--ignore-eos",
            "--json",
        ])))["tokens"])
    };
    let a = gen("1");
    assert_eq!(a.len(), 24);
    assert_eq!(a, gen("1"), "same seed, same tokens");
    assert_ne!(a, gen("2"), "another seed, other tokens");
}

#[test]
fn stop_tokens_union_config_generation_config_and_end_of_turn() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("config.json"),
        r#"{"eos_token_id": [1, 106]}"#,
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("generation_config.json"),
        r#"{"eos_token_id": 107}"#,
    )
    .unwrap();
    assert_eq!(stop_tokens(tmp.path(), None).unwrap(), vec![1, 106, 107]);
    std::fs::write(tmp.path().join("config.json"), r#"{"eos_token_id": 1}"#).unwrap();
    std::fs::write(
        tmp.path().join("generation_config.json"),
        r#"{"eos_token_id": [1, 106]}"#,
    )
    .unwrap();
    assert_eq!(stop_tokens(tmp.path(), None).unwrap(), vec![1, 106]);
    // The fixture has config eos 1, no generation_config.json, no <end_of_turn>.
    let tok = Tokenizer::from_dir(&fixture("tiny-gemma2")).unwrap();
    assert_eq!(
        stop_tokens(&fixture("tiny-gemma2"), Some(&tok)).unwrap(),
        vec![1]
    );
}

#[test]
fn generation_stops_on_a_stop_token_and_includes_it() {
    let d = fixture("tiny-gemma2");
    let r = read_json(&d.join("generate-reference.json"));
    let model = Model::load(&d).unwrap();
    let prompt = ids(&r["prompt_ids"]);
    let want = ids(&r["tokens"]);
    let opts = GenOptions {
        max_new_tokens: 32,
        sampling: Sampling::Greedy,
        seed: 0,
        stop: vec![want[2]],
    };
    let mut seen = Vec::new();
    let out = generate(&model, &prompt, &opts, |t| {
        seen.push(t);
        Ok(())
    })
    .unwrap();
    let first = want.iter().position(|&t| t == want[2]).unwrap();
    assert_eq!(out.tokens, want[..=first].to_vec());
    assert_eq!(out.stop, StopReason::Stop(want[2]));
    assert_eq!(seen, out.tokens, "callback saw every token");
    let none = GenOptions {
        stop: vec![],
        ..opts
    };
    let out = generate(&model, &prompt, &none, |_| Ok(())).unwrap();
    assert_eq!(out.tokens, want);
    assert_eq!(out.stop, StopReason::MaxTokens);
}

fn positive(v: &Value, path: &str) {
    let x = path.split('.').fold(v, |v, k| &v[k]);
    let f = x
        .as_f64()
        .unwrap_or_else(|| panic!("{path} is not a number: {x}"));
    assert!(f > 0.0 && f.is_finite(), "{path} = {f}");
}

#[test]
fn bench_quick_json_reports_every_figure() {
    let out = run_ok(bin().args(["bench", "tests/fixtures/tiny-gemma3", "--quick", "--json"]));
    let r = json_line(&out);
    for k in [
        "prefill_batch",
        "prefill_len",
        "rag_len",
        "decode_prompt",
        "decode_tokens",
        "runs",
        "repeats",
    ] {
        positive(&r["protocol"], k);
    }
    let models = r["models"].as_array().unwrap();
    assert_eq!(models.len(), 1);
    let m = &models[0];
    for k in [
        "weight_gib",
        "weight_bytes",
        "params",
        "prefill_tok_s.median",
        "prefill_tok_s.min",
        "prefill_tok_s.max",
        "ttft_ms.p50",
        "ttft_ms.p95",
        "ttft_ms.min",
        "ttft_ms.max",
        "decode_tok_s.median",
        "decode_tok_s.min",
        "decode_tok_s.max",
    ] {
        positive(m, k);
    }
    assert_eq!(m["ttft_ms"]["n"], r["protocol"]["runs"]);
    assert_eq!(m["decode_tok_s"]["n"], r["protocol"]["repeats"]);
    assert!(r.get("ratios").is_none());
}

#[test]
fn bench_against_prints_a_table_with_ratios() {
    let out = run_ok(bin().args([
        "bench",
        "tests/fixtures/tiny-gemma3",
        "--against",
        "tests/fixtures/tiny-gemma2",
        "--quick",
        "--runs",
        "3",
        "--repeats",
        "1",
    ]));
    for want in [
        "| tiny-gemma3 | tiny-gemma2 | ratio |",
        "| weights (GiB) |",
        "| parameters |",
        "RAG TTFT p95",
        "decode, tok/s",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    let out = run_ok(bin().args([
        "bench",
        "tests/fixtures/tiny-gemma3",
        "--against",
        "tests/fixtures/tiny-gemma2",
        "--quick",
        "--runs",
        "3",
        "--repeats",
        "1",
        "--json",
    ]));
    let r = json_line(&out);
    assert_eq!(r["models"].as_array().unwrap().len(), 2);
    for k in [
        "weight_gib",
        "params",
        "prefill_tok_s",
        "ttft_p50_ms",
        "ttft_p95_ms",
        "decode_tok_s",
    ] {
        positive(&r["ratios"], k);
    }
}

#[test]
fn bench_forward_keeps_its_keys() {
    let out = run_ok(bin().args([
        "bench",
        "tests/fixtures/tiny-gemma2",
        "--forward",
        "--text",
        "tests/fixtures/eval-text.txt",
        "--seq",
        "32",
        "--windows",
        "2",
        "--json",
    ]));
    let r = json_line(&out);
    positive(&r, "no_head_tok_s");
    positive(&r, "with_head_tok_s");
    assert_eq!(r["windows"], 2);
    assert_eq!(r["seq"], 32);
}

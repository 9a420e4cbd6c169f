//! Conversations as calibration text: Gemma's chat turn format (the template's semantics, see
//! src/checkpoint/chat.rs) and `.jsonl` calibration files.

mod common;
use common::*;
use serde_json::json;
use whittle::checkpoint::chat::{read_calibration_text, render, user_turn};
use whittle::checkpoint::tokenizer::Tokenizer;
use whittle::compile::calib::{CalibSet, CalibSource};

#[test]
fn renders_like_gemmas_chat_template() {
    let conv = json!([
        {"role": "system", "content": "Be brief. "},
        {"role": "user", "content": "  What is the capital of France?\n"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": [
            {"type": "image"},
            {"type": "text", "text": " Describe it. "},
            {"type": "text", "text": "Shortly."}
        ]},
        {"role": "model", "content": "A city."}
    ]);
    assert_eq!(
        render(conv.as_array().unwrap()).unwrap(),
        "<start_of_turn>user\nBe brief. \n\nWhat is the capital of France?<end_of_turn>\n\
         <start_of_turn>model\nParis.<end_of_turn>\n\
         <start_of_turn>user\nDescribe it.Shortly.<end_of_turn>\n\
         <start_of_turn>model\nA city.<end_of_turn>\n"
    );
    // Without a system message there is no prefix; generate's single turn is the same format.
    let one = json!([{"role": "user", "content": "Hi"}]);
    assert_eq!(
        render(one.as_array().unwrap()).unwrap() + "<start_of_turn>model\n",
        user_turn("Hi")
    );
}

#[test]
fn bad_conversations_are_refused_with_the_reason() {
    let cases = [
        (json!([{"role": "assistant", "content": "x"}]), "alternate"),
        (
            json!([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]),
            "alternate",
        ),
        (json!([{"role": "tool", "content": "x"}]), "\"tool\""),
        (json!([{"role": "user"}]), "no \"content\""),
        (json!([{"role": "user", "content": 3}]), "string or a list"),
        (
            json!([{"role": "system", "content": "s"}]),
            "no user or model",
        ),
    ];
    for (conv, want) in cases {
        let e = render(conv.as_array().unwrap()).unwrap_err();
        assert!(e.contains(want), "{conv}: {e}");
    }
}

#[test]
fn jsonl_files_render_in_order_and_name_the_bad_line() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("chats.jsonl");
    std::fs::write(
        &p,
        "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": \"Hello\"}]}\n\
         \n\
         {\"text\": \"A plain document.\"}\n",
    )
    .unwrap();
    assert_eq!(
        read_calibration_text(&p).unwrap(),
        "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n\
         A plain document.\n"
    );
    // The same bytes under another extension are plain text.
    let t = d.path().join("chats.txt");
    std::fs::copy(&p, &t).unwrap();
    assert_eq!(
        read_calibration_text(&t).unwrap(),
        std::fs::read_to_string(&p).unwrap()
    );
    for (body, want) in [
        ("{\"text\": \"ok\"}\nnot json\n", "line 2: not JSON"),
        (
            "{\"text\": \"ok\"}\n{\"prompt\": \"x\"}\n",
            "line 2: expected",
        ),
        (
            "{\"messages\": [{\"role\": \"model\", \"content\": \"x\"}]}\n",
            "line 1: message 0",
        ),
        ("{\"messages\": \"x\"}\n", "must be a list"),
    ] {
        std::fs::write(&p, body).unwrap();
        let e = read_calibration_text(&p).unwrap_err().to_string();
        assert!(e.contains(want) && e.contains("chats.jsonl"), "{body}: {e}");
    }
}

/// A `.jsonl` calibration source tokenizes to exactly the ids of its rendered text, and
/// `whittle compile` takes it.
#[test]
fn jsonl_calibration_equals_its_rendered_text() {
    let d = tempfile::tempdir().unwrap();
    let prose = std::fs::read_to_string(fixture("eval-text.txt")).unwrap();
    let mut lines = String::new();
    for (i, para) in prose
        .split("\n\n")
        .filter(|p| !p.trim().is_empty())
        .enumerate()
    {
        let line = if i % 2 == 0 {
            json!({"messages": [
                {"role": "user", "content": format!("Continue: {}", &para[..para.len().min(40)])},
                {"role": "assistant", "content": para},
            ]})
        } else {
            json!({"text": para})
        };
        lines += &format!("{line}\n");
    }
    let jsonl = d.path().join("calib.jsonl");
    std::fs::write(&jsonl, &lines).unwrap();
    let rendered = d.path().join("rendered.txt");
    std::fs::write(&rendered, read_calibration_text(&jsonl).unwrap()).unwrap();

    let tok = Tokenizer::from_dir(&fixture("tiny-gemma3")).unwrap();
    let set = |p: &std::path::Path| {
        CalibSet::from_texts(&tok, &[CalibSource::file(p, 1.0)], 6, 24, 2, None).unwrap()
    };
    let (a, b) = (set(&jsonl), set(&rendered));
    assert_eq!(a.n_seq, 6);
    assert_eq!(a.ids, b.ids);

    let out = d.path().join("out");
    let o = cpu_cmd()
        .args(["compile", fixture("tiny-gemma3").to_str().unwrap(), "-o"])
        .arg(&out)
        .args(["--calib"])
        .arg(&jsonl)
        .args(["--samples", "6", "--seq", "24", "--keep-ratio", "0.5"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("whittle_report.json")).unwrap()).unwrap();
    assert_eq!(r["calibration"]["sequences"], json!(6));
    assert!(r["calibration"]["sources"][0]["path"]
        .as_str()
        .unwrap()
        .ends_with("calib.jsonl"));
}

//! Conversations as text: chat templates rendered as transformers renders them
//! (tests/fixtures/chat, `scripts/make_chat_fixture.py`), Gemma's built-in template, where a
//! model's template is found, and `.jsonl` calibration files.

mod common;
use common::*;
use minijinja::Value as J;
use serde_json::{json, Value};
use whittle::checkpoint::chat::{
    jsonl_calibration_text, py_float, read_calibration_text, Bos, ChatTemplate, GEMMA3_TEMPLATE,
};
use whittle::checkpoint::config::Arch;
use whittle::checkpoint::tokenizer::Tokenizer;
use whittle::compile::calib::{CalibSet, CalibSource};

/// The fixture's conversations as template values, read straight from the file so that each
/// message keeps its key order (serde_json's maps would sort it).
fn conversations() -> J {
    let text = std::fs::read_to_string(fixture("chat/reference.json")).unwrap();
    serde_json::from_str::<J>(&text)
        .unwrap()
        .get_attr("conversations")
        .unwrap()
}

fn read_json(path: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The templates of tests/fixtures/chat as whittle loads them.
fn fixture_templates() -> Vec<(String, ChatTemplate)> {
    let dir = fixture("chat");
    let list = read_json(&dir.join("templates.json"));
    let mut out = Vec::new();
    for (name, t) in list.as_object().unwrap() {
        let file = t["file"]
            .as_str()
            .map(String::from)
            .unwrap_or(format!("{name}.jinja"));
        let source = std::fs::read_to_string(dir.join(file)).unwrap();
        let special = t["special_tokens"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        out.push((
            name.clone(),
            ChatTemplate::new(name.clone(), source, special),
        ));
    }
    out
}

/// Every (template, conversation, add_generation_prompt) of the fixture renders to transformers'
/// text exactly, and what a template refuses is refused, with the template's own message where it
/// raised one.
#[test]
fn renders_as_transformers_does() {
    let reference = read_json(&fixture("chat/reference.json"));
    let templates = fixture_templates();
    assert_eq!(templates.len(), 6);
    let convs = conversations();
    let mut checked = 0;
    for row in reference["renders"].as_array().unwrap() {
        let name = row["template"].as_str().unwrap();
        let (_, t) = templates.iter().find(|(n, _)| n == name).unwrap();
        let c = convs
            .get_attr(row["conversation"].as_str().unwrap())
            .unwrap();
        assert!(!c.is_undefined(), "{row}");
        let gen = row["add_generation_prompt"].as_bool().unwrap();
        let got = t.render(&c, gen, Bos::Template);
        match (&row["text"], &row["error"]) {
            (Value::String(want), _) => {
                assert_eq!(got.as_deref(), Ok(want.as_str()), "{row}");
            }
            (_, Value::String(e)) => {
                let got = got.expect_err(&format!("{row}: transformers refused it"));
                if let Some(msg) = e.strip_prefix("TemplateError: ") {
                    assert!(got.contains(msg), "{row}: {got}");
                }
            }
            _ => panic!("bad reference row {row}"),
        }
        checked += 1;
    }
    assert_eq!(checked, 108);
}

/// The built-in Gemma template is the fixture's gemma3 one, and the folders of the Gemma family
/// without a template of their own get it; a Llama-family folder without one gets none.
#[test]
fn gemma_folders_fall_back_to_gemmas_template() {
    let g = ChatTemplate::for_model(&fixture("tiny-gemma2"), Arch::Gemma2)
        .unwrap()
        .expect("Gemma falls back");
    assert!(g.origin.contains("built-in"), "{}", g.origin);
    assert_eq!(
        g.user_turn("Hi").unwrap(),
        "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    );
    let templates = fixture_templates();
    let (_, fixture_gemma) = templates.iter().find(|(n, _)| n == "gemma3").unwrap();
    assert_eq!(fixture_gemma.user_turn("Hi"), g.user_turn("Hi"));
    assert!(GEMMA3_TEMPLATE.contains("<start_of_turn>"));
    assert!(ChatTemplate::for_model(&fixture("tiny-llama"), Arch::Llama)
        .unwrap()
        .is_none());
}

/// A folder's own template is found where transformers looks, in its order: chat_template.jinja,
/// chat_template.json, tokenizer_config.json (a string, or the `default` of a named list); a
/// malformed field names the file.
#[test]
fn the_folders_own_template_is_found_in_transformers_order() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let write_cfg = |template: Value| {
        std::fs::write(
            dir.join("tokenizer_config.json"),
            json!({"bos_token": {"content": "<s>"}, "eos_token": "</s>", "chat_template": template})
                .to_string(),
        )
        .unwrap()
    };
    let rendered = |arch| {
        ChatTemplate::for_model(dir, arch)
            .unwrap()
            .map(|t| t.user_turn("x").unwrap())
    };
    write_cfg(json!("config {{ bos_token }}{{ messages[0].content }}"));
    assert_eq!(rendered(Arch::Llama).as_deref(), Some("config <s>x"));
    write_cfg(json!([
        {"name": "tool_use", "template": "tools"},
        {"name": "default", "template": "listed {{ eos_token }}"}
    ]));
    assert_eq!(rendered(Arch::Llama).as_deref(), Some("listed </s>"));
    std::fs::write(
        dir.join("chat_template.json"),
        json!({"chat_template": "json {{ add_generation_prompt }}"}).to_string(),
    )
    .unwrap();
    assert_eq!(
        rendered(Arch::Llama).as_deref(),
        Some("json True"),
        "Python's spelling"
    );
    std::fs::write(
        dir.join("chat_template.jinja"),
        "jinja {{ messages | length }}",
    )
    .unwrap();
    assert_eq!(rendered(Arch::Gemma2).as_deref(), Some("jinja 1"));

    for f in ["chat_template.jinja", "chat_template.json"] {
        std::fs::remove_file(dir.join(f)).unwrap();
    }
    for (bad, want) in [
        (json!(3), "must be a string or a list"),
        (json!([{"name": "x", "template": "y"}]), "without a"),
    ] {
        write_cfg(bad);
        let e = ChatTemplate::for_model(dir, Arch::Llama)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tokenizer_config.json") && e.contains(want),
            "{e}"
        );
    }
    // A template that does not parse is reported, naming where it came from, when it is used.
    write_cfg(json!("{% for m in messages %}"));
    let t = ChatTemplate::for_model(dir, Arch::Llama).unwrap().unwrap();
    let e = t.user_turn("x").unwrap_err();
    assert!(
        e.contains("tokenizer_config.json") && e.contains("does not parse"),
        "{e}"
    );
}

/// Calibration renders without the template's BOS (whittle puts BOS before each sequence) and
/// without image parts; otherwise the text is transformers'.
#[test]
fn calibration_drops_bos_and_image_parts() {
    let reference = read_json(&fixture("chat/reference.json"));
    let want = reference["renders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| {
            r["template"] == "gemma3"
                && r["conversation"] == "text-parts"
                && r["add_generation_prompt"] == false
        })
        .unwrap()["text"]
        .as_str()
        .unwrap()
        .strip_prefix("<bos>")
        .unwrap()
        .to_string();
    let mut c = reference["conversations"]["text-parts"].clone();
    c[0]["content"]
        .as_array_mut()
        .unwrap()
        .insert(1, json!({"type": "image"}));
    let gemma = ChatTemplate::for_model(&fixture("tiny-gemma3"), Arch::Gemma3Text)
        .unwrap()
        .unwrap();
    let line = json!({"messages": c}).to_string();
    let got = jsonl_calibration_text(std::path::Path::new("c.jsonl"), &line, Some(&gemma)).unwrap();
    assert_eq!(got, want);
}

#[test]
fn jsonl_files_render_in_order_and_name_the_bad_line() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("chats.jsonl");
    let gemma = ChatTemplate::for_model(&fixture("tiny-gemma3"), Arch::Gemma3Text)
        .unwrap()
        .unwrap();
    std::fs::write(
        &p,
        "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": \"Hello\"}]}\n\
         \n\
         {\"text\": \"A plain document.\"}\n",
    )
    .unwrap();
    assert_eq!(
        read_calibration_text(&p, Some(&gemma)).unwrap(),
        "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n\
         A plain document.\n"
    );
    // Conversations need a template; plain documents do not.
    let e = read_calibration_text(&p, None).unwrap_err().to_string();
    assert!(
        e.contains("line 1") && e.contains("no chat template"),
        "{e}"
    );
    // The same bytes under another extension are plain text.
    let t = d.path().join("chats.txt");
    std::fs::copy(&p, &t).unwrap();
    assert_eq!(
        read_calibration_text(&t, None).unwrap(),
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
            "line 1: ",
        ),
        (
            "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"user\", \"content\": \"b\"}]}\n",
            "must alternate",
        ),
        ("{\"messages\": [{\"content\": \"x\"}]}\n", "no \"role\" string"),
        ("{\"messages\": [\"x\"]}\n", "not an object"),
        ("{\"messages\": \"x\"}\n", "must be a list"),
        ("{\"messages\": [{\"role\": \"user\", \"content\": 3}]}\n", "Invalid content type"),
    ] {
        std::fs::write(&p, body).unwrap();
        let e = read_calibration_text(&p, Some(&gemma))
            .unwrap_err()
            .to_string();
        assert!(e.contains(want) && e.contains("chats.jsonl"), "{body}: {e}");
    }
}

/// Python's float repr, which `tojson` writes (the fixture's tojson template checks it in
/// context; these are the boundaries).
#[test]
fn floats_print_as_python_prints_them() {
    for (x, want) in [
        (1.0, "1.0"),
        (-0.0, "-0.0"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (1.5e16, "1.5e+16"),
        (9999999999999998.0, "9999999999999998.0"),
        (1e16, "1e+16"),
        (123456789012345680.0, "1.2345678901234568e+17"),
        (0.1 + 0.2, "0.30000000000000004"),
        (f64::INFINITY, "Infinity"),
    ] {
        assert_eq!(py_float(x), want, "{x:e}");
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
    let gemma = ChatTemplate::for_model(&fixture("tiny-gemma3"), Arch::Gemma3Text)
        .unwrap()
        .unwrap();
    std::fs::write(&jsonl, &lines).unwrap();
    let rendered = d.path().join("rendered.txt");
    std::fs::write(
        &rendered,
        read_calibration_text(&jsonl, Some(&gemma)).unwrap(),
    )
    .unwrap();

    let tok = Tokenizer::from_dir(&fixture("tiny-gemma3")).unwrap();
    let set = |p: &std::path::Path| {
        CalibSet::from_texts(
            &tok,
            Some(&gemma),
            &[CalibSource::file(p, 1.0)],
            6,
            24,
            2,
            None,
        )
        .unwrap()
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

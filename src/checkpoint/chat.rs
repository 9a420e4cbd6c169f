//! Gemma's chat turn format, as the chat template of the -it checkpoints renders it, for
//! `generate --chat` and for calibrating on conversations (`--calib chats.jsonl`).
//!
//! The template (Gemma 3's `chat_template`): a leading system message is not a turn of its own;
//! its text (a string, or the first part's `text`), untrimmed, plus a blank line is prepended to
//! the first turn; roles must alternate user / model starting with user (`assistant` is spelled
//! `model`); each turn is `<start_of_turn>{role}\n{prefix}{content}<end_of_turn>\n` where a
//! string content is trimmed and a list content is its text parts, each trimmed, concatenated.
//! Two departures, both for calibration: image parts are dropped (the template writes
//! `<start_of_image>`, whose embedding needs the image), and the `<bos>` the template starts
//! with is left out: whittle prepends BOS itself (to each calibration sequence, to each prompt).

use crate::checkpoint::tokenizer::read_text;
use crate::error::{Error, Result};
use serde_json::Value;
use std::path::Path;

/// One user → model turn with the generation prompt (what `generate --chat` sends).
pub fn user_turn(prompt: &str) -> String {
    format!("<start_of_turn>user\n{prompt}<end_of_turn>\n<start_of_turn>model\n")
}

/// The rendered text of a message's `content`: a string, trimmed, or a list of parts whose
/// `text` ones are trimmed and concatenated (image parts are skipped: calibration is text only).
fn content_text(v: &Value) -> std::result::Result<String, String> {
    match v {
        Value::String(s) => Ok(s.trim().to_string()),
        Value::Array(parts) => {
            let mut out = String::new();
            for p in parts {
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => match p.get("text").and_then(Value::as_str) {
                        Some(t) => out.push_str(t.trim()),
                        None => return Err("a text part without a \"text\" string".into()),
                    },
                    Some(_) => {}
                    None => return Err("a content part without a \"type\"".into()),
                }
            }
            Ok(out)
        }
        other => Err(format!(
            "\"content\" must be a string or a list of parts, got {other}"
        )),
    }
}

/// A conversation (`[{"role", "content"}, …]`) rendered as Gemma's template renders it.
pub fn render(messages: &[Value]) -> std::result::Result<String, String> {
    let mut msgs = messages;
    let mut prefix = String::new();
    if let Some(first) = msgs.first() {
        if first.get("role").and_then(Value::as_str) == Some("system") {
            // As the template: the string as it is, or the first part's text.
            let text = match first.get("content") {
                Some(Value::String(s)) => Some(s.as_str()),
                Some(Value::Array(parts)) => parts
                    .first()
                    .and_then(|p| p.get("text"))
                    .and_then(Value::as_str),
                _ => None,
            };
            let text = text.ok_or(
                "the system message needs a \"content\" string (or a list whose first part has \"text\")",
            )?;
            prefix = format!("{text}\n\n");
            msgs = &msgs[1..];
        }
    }
    if msgs.is_empty() {
        return Err("no user or model messages".into());
    }
    let mut out = String::new();
    for (i, m) in msgs.iter().enumerate() {
        let role = match m.get("role").and_then(Value::as_str) {
            Some("user") => "user",
            Some("assistant") | Some("model") => "model",
            Some(r) => {
                let want = "user, assistant or model; system only first";
                return Err(format!("message {i}: role \"{r}\" (expected {want})"));
            }
            None => return Err(format!("message {i} has no \"role\" string")),
        };
        let want = if i % 2 == 0 { "user" } else { "model" };
        if role != want {
            return Err(format!(
                "message {i} is a {role} turn; turns must alternate user/model starting with user"
            ));
        }
        let c = m
            .get("content")
            .ok_or_else(|| format!("message {i} has no \"content\""))?;
        let text = content_text(c).map_err(|e| format!("message {i}: {e}"))?;
        let p = if i == 0 { prefix.as_str() } else { "" };
        out += &format!("<start_of_turn>{role}\n{p}{text}<end_of_turn>\n");
    }
    Ok(out)
}

/// A calibration source as text: a `.jsonl` file holds one object per line, either
/// `{"messages": [...]}` (rendered with the chat template, for instruction-tuned models) or
/// `{"text": "..."}`; documents are joined in file order. Any other file is read as plain text.
pub fn read_calibration_text(path: &Path) -> Result<String> {
    let text = read_text(path)?;
    let is_jsonl = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("jsonl"));
    if !is_jsonl {
        return Ok(text);
    }
    jsonl_calibration_text(path, &text)
}

/// The documents of a calibration JSONL file's text (`path` names the file in errors); split from
/// [`read_calibration_text`] so the parser can be fuzzed in memory (tests/fuzz.rs).
pub fn jsonl_calibration_text(path: &Path, text: &str) -> Result<String> {
    let err = |line: usize, msg: String| Error::Text {
        path: path.to_path_buf(),
        msg: format!("line {line}: {msg}"),
    };
    let mut out = String::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| err(n, format!("not JSON: {e}")))?;
        if let Some(m) = v.get("messages") {
            let list = m
                .as_array()
                .ok_or_else(|| err(n, "\"messages\" must be a list".into()))?;
            out += &render(list).map_err(|e| err(n, e))?;
        } else if let Some(t) = v.get("text") {
            let t = t
                .as_str()
                .ok_or_else(|| err(n, "\"text\" must be a string".into()))?;
            out += t;
            out.push('\n');
        } else {
            return Err(err(
                n,
                "expected {\"messages\": [{\"role\", \"content\"}, ...]} or {\"text\": \"...\"}"
                    .into(),
            ));
        }
    }
    if out.trim().is_empty() {
        return Err(Error::Text {
            path: path.to_path_buf(),
            msg: "no conversations or texts in this JSONL file".into(),
        });
    }
    Ok(out)
}

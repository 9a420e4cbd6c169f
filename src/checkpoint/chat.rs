//! Conversations as text: the checkpoint's own chat template (Jinja), rendered as transformers'
//! `apply_chat_template(..., tokenize=False)` renders it, for `generate --chat` and for
//! calibrating on conversations (`--calib chats.jsonl`).
//!
//! The template comes from the model folder as transformers finds it — `chat_template.jinja`,
//! else `chat_template.json`'s `chat_template`, else tokenizer_config.json's `chat_template` (a
//! string, or a list of named templates of which `default` is used) — and, for a Gemma folder
//! without one, Gemma 3's own template (`gemma3-chat.jinja`: every Gemma -it checkpoint uses its
//! turn format). It sees what transformers passes: `messages`, `add_generation_prompt`, the
//! special-token strings of tokenizer_config.json (`bos_token`, `eos_token`, …),
//! `raise_exception` and a `tojson` that writes what Python's `json.dumps` writes; Python's string
//! and dict methods (`.strip()`, `.items()`, …) come from minijinja-contrib's pycompat. Jinja's
//! environment is transformers': `trim_blocks` and `lstrip_blocks`. tests/chat.rs checks the
//! rendered text against transformers' on real templates (tests/fixtures/chat).
//!
//! Departures, all for calibration: media parts of a message's content (typed other than `text`)
//! are dropped (the template would write an image token whose embedding needs the image), and `bos_token` is the empty
//! string, because whittle prepends BOS itself to each calibration sequence. `strftime_now` is not
//! provided, so a template that would print today's date prints its fallback, if it has one
//! (calibration stays reproducible); `tools` and `documents` are never passed.

use crate::checkpoint::config::Arch;
use crate::checkpoint::tokenizer::read_text;
use crate::error::{Error, Result};
use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, ErrorKind};
use std::path::Path;
use std::sync::OnceLock;

/// Gemma 3's chat template (google/gemma-3-4b-it's tokenizer_config.json), used for Gemma folders
/// that ship none.
pub const GEMMA3_TEMPLATE: &str = include_str!("gemma3-chat.jinja");

/// Jinja instructions one render may run: enough for conversations of many thousand turns, and
/// a bound on a template that would loop for ever.
const FUEL: u64 = 50_000_000;

/// The special tokens transformers hands a template (`special_tokens_map`).
const SPECIAL_TOKENS: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// Whether the template's `{{ bos_token }}` is the tokenizer's BOS string or nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bos {
    /// As transformers renders it (`generate --chat`: the ids are the rendered text's).
    Template,
    /// Empty: whittle puts BOS before each calibration sequence itself.
    Omitted,
}

/// A model's chat template with the special-token strings it is rendered with.
pub struct ChatTemplate {
    /// Where it came from, for messages: a file, or the built-in Gemma template.
    pub origin: String,
    source: String,
    special: Vec<(String, String)>,
    env: OnceLock<std::result::Result<Environment<'static>, String>>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .field("special", &self.special)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// A template from its source text and the special-token strings (name, text) it sees.
    pub fn new(
        origin: impl Into<String>,
        source: impl Into<String>,
        special: Vec<(String, String)>,
    ) -> ChatTemplate {
        ChatTemplate {
            origin: origin.into(),
            source: source.into(),
            special,
            env: OnceLock::new(),
        }
    }

    /// The template of the model folder `dir` (see the module comment), or the family's built-in
    /// one (Gemma), or `None`. A template that does not parse is reported when it is first used.
    pub fn for_model(dir: &Path, arch: Arch) -> Result<Option<ChatTemplate>> {
        let config_path = dir.join("tokenizer_config.json");
        let config = read_json(&config_path)?;
        let special = config.as_ref().map(special_tokens).unwrap_or_else(Vec::new);
        let found = match own_template(dir, config.as_ref())? {
            Some((origin, source)) => Some((origin, source)),
            None if arch.is_gemma() => Some((
                "the built-in Gemma 3 chat template (the model folder has none)".to_string(),
                GEMMA3_TEMPLATE.to_string(),
            )),
            None => None,
        };
        Ok(found.map(|(origin, source)| ChatTemplate::new(origin, source, special)))
    }

    /// `messages` (a list of `{"role", "content"}` maps) as the template renders them.
    pub fn render(
        &self,
        messages: &Value,
        add_generation_prompt: bool,
        bos: Bos,
    ) -> std::result::Result<String, String> {
        let env = self
            .env
            .get_or_init(|| environment(&self.source))
            .as_ref()
            .map_err(|e| format!("{}: {e}", self.origin))?;
        let tmpl = env
            .get_template("chat")
            .map_err(|e| format!("{}: {e}", self.origin))?;
        let mut ctx: Vec<(&str, Value)> = vec![
            ("messages", messages.clone()),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
        ];
        for (name, text) in &self.special {
            let text = match (name.as_str(), bos) {
                ("bos_token", Bos::Omitted) => "",
                _ => text.as_str(),
            };
            ctx.push((name.as_str(), Value::from(text)));
        }
        if bos == Bos::Omitted && !self.special.iter().any(|(n, _)| n == "bos_token") {
            ctx.push(("bos_token", Value::from("")));
        }
        let ctx: Value = ctx.into_iter().collect::<Ctx>().0;
        tmpl.render(ctx).map_err(|e| describe(&self.origin, &e))
    }

    /// One user message with the generation prompt: what `generate --chat` sends (BOS as the
    /// template writes it).
    pub fn user_turn(&self, prompt: &str) -> std::result::Result<String, String> {
        let msg: Value = [
            ("role", Value::from("user")),
            ("content", Value::from(prompt)),
        ]
        .into_iter()
        .collect::<Ctx>()
        .0;
        self.render(&Value::from(vec![msg]), true, Bos::Template)
    }
}

/// A string-keyed map value in insertion order.
struct Ctx(Value);

impl<'a> FromIterator<(&'a str, Value)> for Ctx {
    fn from_iter<I: IntoIterator<Item = (&'a str, Value)>>(iter: I) -> Ctx {
        let map: indexmap::IndexMap<Value, Value> =
            iter.into_iter().map(|(k, v)| (Value::from(k), v)).collect();
        Ctx(Value::from(map))
    }
}

/// transformers' Jinja environment for chat templates, with the template loaded as `chat`.
fn environment(source: &str) -> std::result::Result<Environment<'static>, String> {
    let mut env = Environment::new();
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| e.to_string())?,
    );
    env.set_fuel(Some(FUEL));
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        },
    );
    env.add_filter("tojson", tojson);
    env.add_template_owned("chat", source.to_string())
        .map_err(|e| format!("the chat template does not parse: {e}"))?;
    Ok(env)
}

/// A render error as one line: the template's own message for `raise_exception`, else
/// minijinja's description with the template line.
fn describe(origin: &str, e: &minijinja::Error) -> String {
    let line = e
        .line()
        .map(|l| format!(" (template line {l})"))
        .unwrap_or_default();
    match (e.kind(), e.detail()) {
        (ErrorKind::InvalidOperation, Some(d)) => format!("{origin}: {d}{line}"),
        _ => format!("{origin}: {e}"),
    }
}

/// Python's `json.dumps(x, ensure_ascii=False, indent=indent, sort_keys=sort_keys)`, which
/// transformers installs as `tojson` (Jinja's own escapes HTML characters).
fn tojson(v: Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    if ensure_ascii == Some(true) {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            "tojson(ensure_ascii=true) is not supported",
        ));
    }
    let mut out = String::new();
    json_dumps(&v, indent, sort_keys.unwrap_or(false), 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

fn json_dumps(
    v: &Value,
    indent: Option<usize>,
    sort_keys: bool,
    level: usize,
    out: &mut String,
) -> std::result::Result<(), minijinja::Error> {
    let (item_sep, key_sep) = if indent.is_some() {
        (",", ": ")
    } else {
        (", ", ": ")
    };
    let newline = |out: &mut String, level: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * level));
        }
    };
    match v.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number if v.is_integer() => out.push_str(&v.to_string()),
        ValueKind::Number => out.push_str(&py_float(f64::try_from(v.clone())?)),
        ValueKind::String => json_string(v.as_str().unwrap_or_default(), out),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                json_dumps(item, indent, sort_keys, level + 1, out)?;
            }
            newline(out, level);
            out.push(']');
        }
        ValueKind::Map => {
            let mut pairs = Vec::new();
            for k in v.try_iter()? {
                let key = match k.kind() {
                    ValueKind::String => k.as_str().unwrap_or_default().to_string(),
                    ValueKind::None => "null".into(),
                    ValueKind::Bool | ValueKind::Number => {
                        let mut s = String::new();
                        json_dumps(&k, None, false, 0, &mut s)?;
                        s
                    }
                    _ => {
                        return Err(minijinja::Error::new(
                            ErrorKind::InvalidOperation,
                            format!("tojson: a map key must be a string or a number, got {k}"),
                        ))
                    }
                };
                let val = v.get_item(&k)?;
                pairs.push((key, val));
            }
            if sort_keys {
                pairs.sort_by(|a, b| a.0.cmp(&b.0));
            }
            if pairs.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, (k, val)) in pairs.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                json_string(k, out);
                out.push_str(key_sep);
                json_dumps(val, indent, sort_keys, level + 1, out)?;
            }
            newline(out, level);
            out.push('}');
        }
        _ => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: {v} ({}) is not JSON", v.kind()),
            ))
        }
    }
    Ok(())
}

/// A JSON string as Python writes it with `ensure_ascii=False`.
fn json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: the shortest digits that read back, in exponent form below 1e-4 and
/// from 1e16 on.
pub fn py_float(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let sci = format!("{x:e}");
    let (mant, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("{:e}'s exponent is an integer");
    if x != 0.0 && !(-4..16).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mant}e{sign}{:02}", exp.abs());
    }
    let s = format!("{x}");
    if s.contains('.') {
        s
    } else {
        s + ".0"
    }
}

/// A JSON file of a model folder, or `None` when it is absent (config.json,
/// generation_config.json, tokenizer_config.json, chat_template.json).
pub(crate) fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    if !path.exists() {
        return Ok(None);
    }
    crate::checkpoint::safetensors::check_regular(path)?;
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::Text {
            path: path.to_path_buf(),
            msg: format!("not valid JSON: {e}"),
        })
}

/// The special-token strings of tokenizer_config.json (each a string or `{"content": …}`).
fn special_tokens(config: &serde_json::Value) -> Vec<(String, String)> {
    SPECIAL_TOKENS
        .iter()
        .filter_map(|&name| {
            let v = config.get(name)?;
            let s = v
                .as_str()
                .or_else(|| v.get("content").and_then(serde_json::Value::as_str))?;
            Some((name.to_string(), s.to_string()))
        })
        .collect()
}

/// The folder's own template, in transformers' order of precedence: (origin, source).
fn own_template(
    dir: &Path,
    config: Option<&serde_json::Value>,
) -> Result<Option<(String, String)>> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        return Ok(Some((jinja.display().to_string(), read_text(&jinja)?)));
    }
    let json_path = dir.join("chat_template.json");
    if let Some(v) = read_json(&json_path)? {
        return template_field(&json_path, &v);
    }
    match config {
        Some(v) => template_field(&dir.join("tokenizer_config.json"), v),
        None => Ok(None),
    }
}

/// A `chat_template` field: a string, or a list of `{"name", "template"}` (the `default` one).
fn template_field(path: &Path, v: &serde_json::Value) -> Result<Option<(String, String)>> {
    let origin = || format!("{} (chat_template)", path.display());
    let bad = |msg: &str| Error::Text {
        path: path.to_path_buf(),
        msg: format!("\"chat_template\" {msg}"),
    };
    match v.get("chat_template") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some((origin(), s.clone()))),
        Some(serde_json::Value::Array(list)) => {
            let named = |name: &str| {
                list.iter().find_map(|t| {
                    (t.get("name")?.as_str()? == name)
                        .then(|| t.get("template")?.as_str())
                        .flatten()
                })
            };
            match named("default") {
                Some(s) => Ok(Some((format!("{} \"default\"", origin()), s.to_string()))),
                None => Err(bad(
                    "is a list without a {\"name\": \"default\", \"template\": ...} entry",
                )),
            }
        }
        Some(_) => Err(bad("must be a string or a list of named templates")),
    }
}

/// Whether the model folder ships a chat template of its own (instruction-tuned checkpoints do),
/// where [`ChatTemplate::for_model`] finds one; a file that cannot be read counts as none.
pub fn has_own_template(dir: &Path) -> bool {
    let config = read_json(&dir.join("tokenizer_config.json")).ok().flatten();
    matches!(own_template(dir, config.as_ref()), Ok(Some(_)))
}

/// A calibration conversation, checked and made text-only: a list of maps, each with a `role`
/// string; of a list content, the parts typed other than `text` (image, video, audio) are dropped.
fn calibration_messages(messages: &Value) -> std::result::Result<Value, String> {
    if messages.kind() != ValueKind::Seq {
        return Err("\"messages\" must be a list".into());
    }
    let mut out = Vec::new();
    for (i, m) in messages.try_iter().map_err(|e| e.to_string())?.enumerate() {
        if m.kind() != ValueKind::Map {
            return Err(format!("message {i} is not an object"));
        }
        let role = m.get_attr("role").map_err(|e| e.to_string())?;
        if role.kind() != ValueKind::String {
            return Err(format!("message {i} has no \"role\" string"));
        }
        let content = m.get_attr("content").map_err(|e| e.to_string())?;
        if content.kind() != ValueKind::Seq {
            out.push(m);
            continue;
        }
        let text_parts: Vec<Value> = content
            .try_iter()
            .map_err(|e| e.to_string())?
            .filter(|p| {
                let kind = p.get_attr("type").ok();
                !matches!(kind.as_ref().and_then(Value::as_str), Some(t) if t != "text")
            })
            .collect();
        let mut fields = Vec::new();
        for k in m.try_iter().map_err(|e| e.to_string())? {
            let v = if k.as_str() == Some("content") {
                Value::from(text_parts.clone())
            } else {
                m.get_item(&k).map_err(|e| e.to_string())?
            };
            fields.push((k, v));
        }
        let map: indexmap::IndexMap<Value, Value> = fields.into_iter().collect();
        out.push(Value::from(map));
    }
    Ok(Value::from(out))
}

/// A calibration source as text: a `.jsonl` file holds one object per line, either
/// `{"messages": [...]}` (rendered with `chat`, the model's template) or `{"text": "..."}`;
/// documents are joined in file order. Any other file is read as plain text.
pub fn read_calibration_text(path: &Path, chat: Option<&ChatTemplate>) -> Result<String> {
    let text = read_text(path)?;
    let is_jsonl = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("jsonl"));
    if !is_jsonl {
        return Ok(text);
    }
    jsonl_calibration_text(path, &text, chat)
}

/// The documents of a calibration JSONL file's text (`path` names the file in errors); split from
/// [`read_calibration_text`] so the parser can be fuzzed in memory (tests/fuzz.rs).
pub fn jsonl_calibration_text(
    path: &Path,
    text: &str,
    chat: Option<&ChatTemplate>,
) -> Result<String> {
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
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| err(n, format!("not JSON: {e}")))?;
        if v.get("messages").is_some() {
            let chat = chat.ok_or_else(|| {
                err(
                    n,
                    "a conversation, but the model has no chat template to render it with \
                     (tokenizer_config.json \"chat_template\" or chat_template.jinja); add the \
                     model's template, or give the text as {\"text\": \"...\"}"
                        .into(),
                )
            })?;
            // Parsed again as a template value, which keeps each object's key order.
            let line_value: Value =
                serde_json::from_str(line).map_err(|e| err(n, format!("not JSON: {e}")))?;
            let messages = line_value
                .get_attr("messages")
                .map_err(|e| err(n, e.to_string()))?;
            let messages = calibration_messages(&messages).map_err(|e| err(n, e))?;
            out += &chat
                .render(&messages, false, Bos::Omitted)
                .map_err(|e| err(n, e))?;
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

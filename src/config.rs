//! Model configuration as data: every Gemma-2 / Gemma-3 quirk the forward pass depends on is a
//! field here, parsed from the Hugging Face `config.json` in both spellings transformers writes
//! (4.x: `rope_theta` + `rope_local_base_freq` + `rope_scaling`; 5.x: `rope_parameters`, with or
//! without per-layer-type sub-objects; `layer_types` present or derived from the window pattern).
//!
//! Defaults for absent fields are the ones transformers' own config classes use, so a config that
//! loads there means the same thing here.

use crate::error::{Error, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

pub const SUPPORTED_MODEL_TYPES: &str =
    "\"gemma2\", \"gemma3_text\", \"gemma3\" (the language model of the multimodal checkpoint)";

/// `Gemma3TextConfig`'s defaults for the fields whittle needs that a multimodal Gemma-3
/// checkpoint's sparse `text_config` leaves out (Gemma 3 4B on the hub gives only hidden_size,
/// intermediate_size, num_hidden_layers, rope_scaling and sliding_window). Checked against
/// transformers by tests/config.rs with tests/fixtures/gemma3-hub-config (made by
/// scripts/make_mm_fixture.py).
const GEMMA3_TEXT_DEFAULTS: [(&str, u64); 7] = [
    ("vocab_size", 262_208),
    ("hidden_size", 2304),
    ("intermediate_size", 9216),
    ("num_hidden_layers", 26),
    ("num_attention_heads", 8),
    ("num_key_value_heads", 4),
    ("head_dim", 256),
];

/// The deepest Gemma has 62 layers (Gemma 3 27B). The bound only keeps a corrupt count (1e9,
/// 2^62) from sizing per-layer tables before the tensors are checked against it.
pub const MAX_LAYERS: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Gemma2,
    Gemma3Text,
}

impl Arch {
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Gemma2 => "gemma2",
            Arch::Gemma3Text => "gemma3_text",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerType {
    /// Local attention: key j visible to query i iff `j <= i && i - j < sliding_window`.
    Sliding,
    /// Global causal attention.
    Full,
}

impl LayerType {
    pub fn name(self) -> &'static str {
        match self {
            LayerType::Sliding => "sliding_attention",
            LayerType::Full => "full_attention",
        }
    }
}

/// RoPE for one layer type. Only the rope types Gemma checkpoints use are accepted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rope {
    pub theta: f64,
    /// `rope_type: "linear"` divides every inverse frequency by this factor (Gemma-3 4b+ global
    /// layers use 8); 1.0 for `"default"`.
    pub linear_factor: f64,
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub arch: Arch,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f32,
    /// Attention scores are multiplied by `query_pre_attn_scalar^-0.5`, not `head_dim^-0.5`.
    pub query_pre_attn_scalar: f64,
    pub sliding_window: usize,
    pub layer_types: Vec<LayerType>,
    pub rope_full: Rope,
    pub rope_sliding: Rope,
    /// Gemma-2: 50. Applied as `tanh(s / cap) * cap` after the scale and before the mask.
    pub attn_softcap: Option<f32>,
    /// Gemma-2: 30. Applied to the logits after the LM head.
    pub final_softcap: Option<f32>,
    /// Gemma-3 RMS-normalises each q and k head vector before RoPE.
    pub qk_norm: bool,
    pub tie_word_embeddings: bool,
    pub bos_token_id: u32,
    /// `model_type: "gemma3"` (Gemma3ForConditionalGeneration): the fields above describe its
    /// `text_config`; the vision tower and projector are not modelled and pass through the
    /// rewriter unchanged.
    pub multimodal: bool,
    /// The parsed JSON, kept so the rewriter can write it back changing only `intermediate_size`.
    pub raw: Value,
}

impl ModelConfig {
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        crate::safetensors::check_input_file(dir, &path)?;
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        Self::from_json_str(&text, &path)
    }

    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let raw: Value = serde_json::from_str(text).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        Parser {
            path: path.to_path_buf(),
            v: &raw,
            scope: "",
        }
        .parse(raw.clone())
    }

    /// The checkpoint's own `model_type` ("gemma3" for the multimodal wrapper).
    pub fn model_type(&self) -> &'static str {
        if self.multimodal {
            "gemma3"
        } else {
            self.arch.model_type()
        }
    }

    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    pub fn attn_scale(&self) -> f32 {
        (1.0 / self.query_pre_attn_scalar.sqrt()) as f32
    }

    pub fn rope(&self, layer: usize) -> Rope {
        match self.layer_types[layer] {
            LayerType::Sliding => self.rope_sliding,
            LayerType::Full => self.rope_full,
        }
    }

    /// The number of keys a query at any position may see in `layer` (None = unbounded).
    pub fn window(&self, layer: usize) -> Option<usize> {
        match self.layer_types[layer] {
            LayerType::Sliding => Some(self.sliding_window),
            LayerType::Full => None,
        }
    }

    /// The embedding multiplier sqrt(H) as transformers computes it in the compute dtype. In f32
    /// (the CPU reference, matched against transformers fp32) it is the f32 square root; a bf16
    /// engine must round it to bf16 (25.25 for H=640) as transformers does in bf16.
    pub fn embed_scale_f32(&self) -> f32 {
        (self.hidden_size as f32).sqrt()
    }

    /// The most positions (prompt + generated tokens) the model was trained for:
    /// `max_position_embeddings`, or transformers' default for the architecture.
    pub fn max_positions(&self) -> usize {
        let v = if self.multimodal {
            self.raw.get("text_config").unwrap_or(&self.raw)
        } else {
            &self.raw
        };
        v.get("max_position_embeddings")
            .and_then(Value::as_u64)
            .filter(|&n| n > 0)
            .map(|n| n as usize)
            .unwrap_or(match self.arch {
                Arch::Gemma2 => 8192,
                Arch::Gemma3Text => 131_072,
            })
    }

    /// The same config with another MLP width (what the rewriter writes).
    pub fn with_intermediate_size(&self, n: usize) -> Self {
        let mut c = self.clone();
        c.intermediate_size = n;
        let target = if c.multimodal {
            c.raw.get_mut("text_config")
        } else {
            Some(&mut c.raw)
        };
        if let Some(Value::Object(m)) = target {
            m.insert("intermediate_size".into(), Value::from(n));
        }
        c
    }
}

struct Parser<'a> {
    path: PathBuf,
    v: &'a Value,
    /// Where `v` sits in the file, for messages ("" at the top level).
    scope: &'static str,
}

impl Parser<'_> {
    fn err(&self, msg: impl Into<String>) -> Error {
        let msg = msg.into();
        Error::Config {
            path: self.path.clone(),
            msg: if self.scope.is_empty() {
                msg
            } else {
                format!("in \"{}\": {msg}", self.scope)
            },
        }
    }

    /// A multimodal Gemma-3 checkpoint: its language model is a `gemma3_text` config nested in
    /// `text_config`, often sparse (transformers fills the rest from Gemma3TextConfig's defaults).
    fn parse_multimodal(&self, raw: Value) -> Result<ModelConfig> {
        let text = match self.get("text_config") {
            Some(Value::Object(m)) => m,
            Some(v) => return Err(self.err(format!("\"text_config\" must be an object, got {v}"))),
            None => {
                return Err(self.err(
                    "model_type \"gemma3\" needs a \"text_config\" object (the language model's config)",
                ))
            }
        };
        let mut merged = serde_json::Map::new();
        for (k, v) in GEMMA3_TEXT_DEFAULTS {
            merged.insert(k.into(), Value::from(v));
        }
        for k in ["tie_word_embeddings", "bos_token_id"] {
            if let Some(v) = self.get(k) {
                merged.insert(k.into(), v.clone());
            }
        }
        for (k, v) in text {
            merged.insert(k.clone(), v.clone());
        }
        match merged.get("model_type").and_then(Value::as_str) {
            None | Some("gemma3_text") => {}
            Some(other) => {
                return Err(self.err(format!(
                    "text_config.model_type is \"{other}\"; a \"gemma3\" checkpoint's language model must be \"gemma3_text\""
                )))
            }
        }
        merged.insert("model_type".into(), Value::from("gemma3_text"));
        let merged = Value::Object(merged);
        let mut cfg = Parser {
            path: self.path.clone(),
            v: &merged,
            scope: "text_config",
        }
        .parse(raw)?;
        cfg.multimodal = true;
        Ok(cfg)
    }

    /// Present and not null.
    fn get(&self, key: &str) -> Option<&Value> {
        self.v.get(key).filter(|v| !v.is_null())
    }

    fn usize_req(&self, key: &str) -> Result<usize> {
        match self.get(key) {
            None => Err(self.err(format!("missing required field \"{key}\""))),
            Some(v) => v
                .as_u64()
                .filter(|&n| n > 0)
                .map(|n| n as usize)
                .ok_or_else(|| self.err(format!("\"{key}\" must be a positive integer, got {v}"))),
        }
    }

    fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        match self.get(key) {
            None => Ok(default),
            Some(_) => self.usize_req(key),
        }
    }

    fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.err(format!("\"{key}\" must be a number, got {v}"))),
        }
    }

    /// A softcap: absent means the architecture default, explicit null means off.
    fn softcap(&self, key: &str, default: Option<f32>) -> Result<Option<f32>> {
        match self.v.get(key) {
            None => Ok(default),
            Some(Value::Null) => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if x > 0.0 && x <= 1e6 => Ok(Some(x as f32)),
                _ => Err(self.err(format!(
                    "\"{key}\" must be a positive number up to 1e6 or null, got {v}"
                ))),
            },
        }
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.err(format!("\"{key}\" must be true or false, got {v}"))),
        }
    }

    fn parse(&self, raw: Value) -> Result<ModelConfig> {
        if !self.v.is_object() {
            return Err(self.err("the top level must be a JSON object"));
        }
        let model_type = self
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| self.err("missing \"model_type\""))?;
        let arch = match model_type {
            "gemma2" => Arch::Gemma2,
            "gemma3_text" => Arch::Gemma3Text,
            "gemma3" if self.scope.is_empty() => return self.parse_multimodal(raw),
            other => {
                return Err(Error::UnsupportedModel {
                    path: self.path.clone(),
                    model_type: other.to_string(),
                    supported: SUPPORTED_MODEL_TYPES,
                })
            }
        };

        let hidden_size = self.usize_req("hidden_size")?;
        let intermediate_size = self.usize_req("intermediate_size")?;
        let num_layers = self.usize_req("num_hidden_layers")?;
        if num_layers > MAX_LAYERS {
            return Err(self.err(format!(
                "\"num_hidden_layers\" {num_layers} is implausible (at most {MAX_LAYERS}; the \
                 deepest Gemma has 62)"
            )));
        }
        let num_heads = self.usize_req("num_attention_heads")?;
        let num_kv_heads = self.usize_or("num_key_value_heads", num_heads)?;
        let head_dim = self.usize_or("head_dim", 256)?;
        let vocab_size = self.usize_req("vocab_size")?;
        if num_heads % num_kv_heads != 0 {
            return Err(self.err(format!(
                "num_attention_heads ({num_heads}) must be a multiple of num_key_value_heads ({num_kv_heads})"
            )));
        }
        if head_dim % 2 != 0 {
            return Err(self.err(format!("head_dim ({head_dim}) must be even for RoPE")));
        }

        // Gemma uses `hidden_activation`; older configs carry `hidden_act` too.
        if let Some(v) = self
            .get("hidden_activation")
            .or_else(|| self.get("hidden_act"))
        {
            if v.as_str() != Some("gelu_pytorch_tanh") {
                return Err(self.err(format!(
                    "hidden activation is {v}; whittle implements Gemma's \"gelu_pytorch_tanh\" only"
                )));
            }
        }
        if self.bool_or("attention_bias", false)? {
            return Err(self.err("\"attention_bias\": true is not supported (Gemma has no biases)"));
        }
        if self.bool_or("use_bidirectional_attention", false)? {
            return Err(self.err(
                "\"use_bidirectional_attention\": true is not supported (causal models only)",
            ));
        }

        let (default_qpas, default_window, default_attn_cap, default_final_cap) = match arch {
            Arch::Gemma2 => (256.0, 4096, Some(50.0), Some(30.0)),
            Arch::Gemma3Text => (256.0, 4096, None, None),
        };
        // Gemma sets it to head_dim or hidden_size / num_heads (144 to 256); the scale
        // 1/sqrt(x) leaves f32's useful range far outside [1, 1e6].
        let query_pre_attn_scalar = self.f64_or("query_pre_attn_scalar", default_qpas)?;
        if !(1.0..=1e6).contains(&query_pre_attn_scalar) {
            return Err(self.err(format!(
                "\"query_pre_attn_scalar\" {query_pre_attn_scalar:?} is outside [1, 1e6] (Gemma uses \
                 the head size, e.g. 256)"
            )));
        }
        let sliding_window = self.usize_or("sliding_window", default_window)?;
        let layer_types = self.layer_types(arch, num_layers)?;
        let (rope_full, rope_sliding) = self.ropes(arch)?;

        // Gemma uses 1e-6. eps only keeps 1/sqrt(mean(x²) + eps) finite: it must be a positive
        // normal f32 and small beside the activations' mean square (≥ 1 for Gemma's embeddings).
        let eps = self.f64_or("rms_norm_eps", 1e-6)?;
        if !(1e-30..=0.1).contains(&eps) {
            return Err(self.err(format!(
                "\"rms_norm_eps\" {eps:?} is outside [1e-30, 0.1] (Gemma uses 1e-6)"
            )));
        }
        Ok(ModelConfig {
            arch,
            hidden_size,
            intermediate_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size,
            rms_norm_eps: eps as f32,
            query_pre_attn_scalar,
            sliding_window,
            layer_types,
            rope_full,
            rope_sliding,
            attn_softcap: self.softcap("attn_logit_softcapping", default_attn_cap)?,
            final_softcap: self.softcap("final_logit_softcapping", default_final_cap)?,
            qk_norm: arch == Arch::Gemma3Text,
            tie_word_embeddings: self.bool_or("tie_word_embeddings", true)?,
            bos_token_id: match self.get("bos_token_id") {
                None => 2,
                Some(v) => v
                    .as_u64()
                    .filter(|&b| (b as usize) < vocab_size)
                    .ok_or_else(|| {
                        self.err(format!(
                            "\"bos_token_id\" {v} is not a token id below vocab_size"
                        ))
                    })? as u32,
            },
            multimodal: false,
            raw,
        })
    }

    fn layer_types(&self, arch: Arch, n: usize) -> Result<Vec<LayerType>> {
        if let Some(v) = self.get("layer_types") {
            let list = v
                .as_array()
                .ok_or_else(|| self.err("\"layer_types\" must be a list of strings"))?;
            if list.len() != n {
                return Err(self.err(format!(
                    "\"layer_types\" has {} entries but num_hidden_layers is {n}",
                    list.len()
                )));
            }
            return list
                .iter()
                .enumerate()
                .map(|(i, t)| match t.as_str() {
                    Some("sliding_attention") => Ok(LayerType::Sliding),
                    Some("full_attention") => Ok(LayerType::Full),
                    _ => Err(self.err(format!(
                        "layer_types[{i}] is {t}; expected \"sliding_attention\" or \"full_attention\""
                    ))),
                })
                .collect();
        }
        // Derived the way transformers derives it: layer i is global iff (i+1) % pattern == 0.
        let pattern = match arch {
            Arch::Gemma2 => 2,
            Arch::Gemma3Text => match self.get("sliding_window_pattern") {
                Some(_) => self.usize_req("sliding_window_pattern")?,
                None => self.usize_or("_sliding_window_pattern", 6)?,
            },
        };
        Ok((0..n)
            .map(|i| {
                if (i + 1) % pattern == 0 {
                    LayerType::Full
                } else {
                    LayerType::Sliding
                }
            })
            .collect())
    }

    fn rope_obj(&self, what: &str, obj: &Value, default_theta: f64) -> Result<Rope> {
        let theta = match obj.get("rope_theta").filter(|v| !v.is_null()) {
            None => default_theta,
            Some(v) => v
                .as_f64()
                .filter(|&t| t > 0.0 && t <= 1e12)
                .ok_or_else(|| {
                    self.err(format!(
                        "{what}.rope_theta must be a positive number up to 1e12"
                    ))
                })?,
        };
        let rope_type = obj
            .get("rope_type")
            .or_else(|| obj.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let linear_factor = match rope_type {
            "default" => 1.0,
            "linear" => obj
                .get("factor")
                .and_then(Value::as_f64)
                .filter(|&f| f > 0.0 && f <= 1e6)
                .ok_or_else(|| {
                    self.err(format!(
                        "{what}: linear rope needs a positive \"factor\" up to 1e6"
                    ))
                })?,
            other => {
                return Err(self.err(format!(
                "{what}: rope_type \"{other}\" is not supported (only \"default\" and \"linear\")"
            )))
            }
        };
        Ok(Rope {
            theta,
            linear_factor,
        })
    }

    /// Returns (global, local) RoPE.
    fn ropes(&self, arch: Arch) -> Result<(Rope, Rope)> {
        let (default_global, default_local) = match arch {
            Arch::Gemma2 => (10_000.0, 10_000.0),
            Arch::Gemma3Text => (1_000_000.0, 10_000.0),
        };
        if let Some(rp) = self.get("rope_parameters") {
            if !rp.is_object() {
                return Err(self.err("\"rope_parameters\" must be an object"));
            }
            let full = rp.get("full_attention").filter(|v| v.is_object());
            let sliding = rp.get("sliding_attention").filter(|v| v.is_object());
            if full.is_some() || sliding.is_some() {
                let empty = Value::Object(Default::default());
                let g = self.rope_obj(
                    "rope_parameters.full_attention",
                    full.unwrap_or(&empty),
                    default_global,
                )?;
                let l = self.rope_obj(
                    "rope_parameters.sliding_attention",
                    sliding.unwrap_or(&empty),
                    default_local,
                )?;
                return Ok((g, l));
            }
            // One set of parameters for every layer (Gemma-2 in transformers 5).
            let r = self.rope_obj("rope_parameters", rp, default_global)?;
            return Ok(match arch {
                Arch::Gemma2 => (r, r),
                Arch::Gemma3Text => (
                    r,
                    Rope {
                        theta: self.f64_or("rope_local_base_freq", default_local)?,
                        linear_factor: 1.0,
                    },
                ),
            });
        }
        let theta = self.f64_or("rope_theta", default_global)?;
        let mut global = Value::Object(Default::default());
        if let Some(s) = self.get("rope_scaling") {
            if !s.is_object() {
                return Err(self.err(format!(
                    "\"rope_scaling\" must be an object or null, got {s}"
                )));
            }
            global = s.clone();
        }
        global["rope_theta"] = Value::from(theta);
        let g = self.rope_obj("rope_scaling", &global, default_global)?;
        Ok(match arch {
            // Gemma-2 has one RoPE for all layers; rope_scaling applies to both.
            Arch::Gemma2 => (g, g),
            // Gemma-3: the local RoPE is always plain ("default") at rope_local_base_freq.
            Arch::Gemma3Text => (
                g,
                Rope {
                    theta: self.f64_or("rope_local_base_freq", default_local)?,
                    linear_factor: 1.0,
                },
            ),
        })
    }
}

//! Model configuration as data: every quirk the forward pass depends on is a field here, parsed
//! from the Hugging Face `config.json` in both spellings transformers writes (4.x: `rope_theta` +
//! `rope_local_base_freq` + `rope_scaling`; 5.x: `rope_parameters`, with or without per-layer-type
//! sub-objects; `layer_types` present or derived from the window pattern).
//!
//! Two families: Gemma 2 / 3 and the Llama family (`llama`, `mistral`, `qwen2`, `qwen3`), every
//! difference from Gemma a field ([`Activation`], [`NormWeight`], [`LayerNorms`], [`AttnBias`],
//! [`RopeScaling`], no embedding scale, no softcaps) that the engines read.
//!
//! Defaults for absent fields are the ones transformers' own config classes use (5.24 for the
//! Llama family), so a config that loads there means the same thing here.

use crate::error::{Error, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// What loading a checkpoint accepts.
pub const SUPPORTED_MODEL_TYPES: &str =
    "\"gemma2\", \"gemma3_text\", \"gemma3\" (the language model of \
     the multimodal checkpoint), \"llama\", \"mistral\", \"qwen2\", \"qwen3\"";

/// The RoPE types the Llama family may use (Gemma accepts the first two only).
pub const SUPPORTED_ROPE_TYPES: &str = "\"default\", \"linear\", \"llama3\", \"yarn\"";

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
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
}

impl Arch {
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Gemma2 => "gemma2",
            Arch::Gemma3Text => "gemma3_text",
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
        }
    }

    /// Gemma 2 / 3 (what keeps Gemma's own RoPE table builder; `cpu::rope::layer_tables`).
    pub fn is_gemma(self) -> bool {
        matches!(self, Arch::Gemma2 | Arch::Gemma3Text)
    }

    fn from_model_type(t: &str) -> Option<Arch> {
        [
            Arch::Gemma2,
            Arch::Gemma3Text,
            Arch::Llama,
            Arch::Mistral,
            Arch::Qwen2,
            Arch::Qwen3,
        ]
        .into_iter()
        .find(|a| a.model_type() == t)
    }
}

/// The MLP's gate activation: the MLP computes `down(act(gate(x)) · up(x))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu_pytorch_tanh` (Gemma).
    GeluTanh,
    /// `silu` / `swish`: `x · sigmoid(x)` (the Llama family).
    Silu,
}

/// How every RMSNorm of the model (layer, final and q/k norms) applies its stored weight `w`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormWeight {
    /// `x̂ · (1 + w)`, the multiply done in f32 (Gemma stores the offset from 1).
    OnePlus,
    /// `x̂ · w` (the Llama family).
    Plain,
}

/// The RMSNorms of one decoder layer by position, each with its checkpoint name under
/// `model.layers.{i}.`. The names do not say the position: Llama's `post_attention_layernorm`
/// normalises the MLP's *input*, where Gemma's normalises the attention output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerNorms {
    /// The residual stream into attention.
    pub pre_attn: &'static str,
    /// The attention output before it joins the residual stream (Gemma only).
    pub post_attn: Option<&'static str>,
    /// The residual stream into the MLP.
    pub pre_mlp: &'static str,
    /// The MLP output before it joins the residual stream (Gemma only); without it the MLP
    /// output enters the residual stream unnormalised.
    pub post_mlp: Option<&'static str>,
}

impl LayerNorms {
    /// Gemma 2 / 3: a norm on each side of attention and of the MLP.
    pub const GEMMA: LayerNorms = LayerNorms {
        pre_attn: "input_layernorm",
        post_attn: Some("post_attention_layernorm"),
        pre_mlp: "pre_feedforward_layernorm",
        post_mlp: Some("post_feedforward_layernorm"),
    };
    /// The Llama family: pre-norms only.
    pub const LLAMA: LayerNorms = LayerNorms {
        pre_attn: "input_layernorm",
        post_attn: None,
        pre_mlp: "post_attention_layernorm",
        post_mlp: None,
    };

    /// The names in the order the layer applies them.
    pub fn names(&self) -> Vec<&'static str> {
        [
            Some(self.pre_attn),
            self.post_attn,
            Some(self.pre_mlp),
            self.post_mlp,
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

/// Which attention projections carry a bias vector (`*_proj.bias`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AttnBias {
    /// q_proj, k_proj and v_proj.
    pub qkv: bool,
    pub o: bool,
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

/// RoPE for one layer type as the engines take it today: the rope types Gemma checkpoints use
/// (a uniform scale of every frequency). [`RopeParams`] is the full description; this is its
/// [`RopeParams::uniform`] view.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rope {
    pub theta: f64,
    /// `rope_type: "linear"` divides every inverse frequency by this factor (Gemma-3 4b+ global
    /// layers use 8); 1.0 for `"default"`.
    pub linear_factor: f64,
}

/// How transformers rescales the inverse frequencies `θ^(-2i/d)` (its `rope_type`), with the
/// parameters resolved the way `modeling_rope_utils.py` resolves them (defaults filled in).
/// `crate::cpu::rope` computes the tables.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// `"default"`: the frequencies as they are.
    Default,
    /// `"linear"`: every frequency divided by `factor`.
    Linear { factor: f64 },
    /// `"llama3"` (Llama 3.1+): wavelengths longer than `original_max_position_embeddings /
    /// low_freq_factor` divided by `factor`, shorter than `… / high_freq_factor` kept, a smooth
    /// blend between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    /// `"yarn"`: frequencies blended between θ-based and θ-based / `factor` by a linear ramp over
    /// the dimensions whose rotation count at `original_max_position_embeddings` lies between
    /// `beta_slow` and `beta_fast` (the ramp's ends floored / ceiled when `truncate`); cos and
    /// sin are multiplied by `attention_factor`.
    Yarn {
        factor: f64,
        attention_factor: f64,
        beta_fast: f64,
        beta_slow: f64,
        original_max_position_embeddings: f64,
        truncate: bool,
    },
}

/// RoPE for one layer type: the base and the scaling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeParams {
    pub theta: f64,
    pub scaling: RopeScaling,
}

impl RopeParams {
    /// The view the current engines take, where the scaling is one factor for every frequency.
    pub fn uniform(&self) -> Option<Rope> {
        let linear_factor = match self.scaling {
            RopeScaling::Default => 1.0,
            RopeScaling::Linear { factor } => factor,
            RopeScaling::Llama3 { .. } | RopeScaling::Yarn { .. } => return None,
        };
        Some(Rope {
            theta: self.theta,
            linear_factor,
        })
    }
}

impl From<Rope> for RopeParams {
    fn from(r: Rope) -> Self {
        RopeParams {
            theta: r.theta,
            scaling: if r.linear_factor == 1.0 {
                RopeScaling::Default
            } else {
                RopeScaling::Linear {
                    factor: r.linear_factor,
                }
            },
        }
    }
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
    /// The window of the `Sliding` layers; 0 where no layer slides.
    pub sliding_window: usize,
    pub layer_types: Vec<LayerType>,
    /// The engines' view of `rope_params_full` / `rope_params_sliding`. For llama3 and yarn
    /// (Llama family only, not run yet) it holds the unscaled base with factor 1: read the
    /// params.
    pub rope_full: Rope,
    pub rope_sliding: Rope,
    pub rope_params_full: RopeParams,
    pub rope_params_sliding: RopeParams,
    pub mlp_act: Activation,
    pub norm_weight: NormWeight,
    pub norms: LayerNorms,
    /// Gemma multiplies the embeddings by sqrt(hidden_size); the Llama family does not.
    pub scale_embeddings: bool,
    pub attn_bias: AttnBias,
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
        crate::checkpoint::safetensors::check_input_file(dir, &path)?;
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

    pub fn rope_params(&self, layer: usize) -> RopeParams {
        match self.layer_types[layer] {
            LayerType::Sliding => self.rope_params_sliding,
            LayerType::Full => self.rope_params_full,
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
    /// 1 where the family does not scale its embeddings.
    pub fn embed_scale_f32(&self) -> f32 {
        if self.scale_embeddings {
            (self.hidden_size as f32).sqrt()
        } else {
            1.0
        }
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
            .unwrap_or(default_max_positions(self.arch))
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

/// The sizes every family has.
struct Dims {
    hidden_size: usize,
    intermediate_size: usize,
    num_layers: usize,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    vocab_size: usize,
}

/// What differs between the families, resolved from the config with each class's defaults.
struct Quirks {
    query_pre_attn_scalar: f64,
    sliding_window: usize,
    layer_types: Vec<LayerType>,
    rope_full: RopeParams,
    rope_sliding: RopeParams,
    /// The (attention, final) softcap defaults where the family reads the keys at all.
    softcaps: Option<(Option<f32>, Option<f32>)>,
    qk_norm: bool,
    tie_default: bool,
    bos_default: Option<u32>,
    mlp_act: Activation,
    norm_weight: NormWeight,
    norms: LayerNorms,
    scale_embeddings: bool,
    attn_bias: AttnBias,
}

/// The engines' [`Rope`] for `p`: itself where uniform, else the unscaled base (see
/// `ModelConfig::rope_full`).
fn uniform_view(p: RopeParams) -> Rope {
    p.uniform().unwrap_or(Rope {
        theta: p.theta,
        linear_factor: 1.0,
    })
}

/// transformers' `max_position_embeddings` default for each config class.
fn default_max_positions(arch: Arch) -> usize {
    match arch {
        Arch::Gemma2 => 8192,
        Arch::Gemma3Text => 131_072,
        Arch::Llama => 2048,
        Arch::Mistral => 4096 * 32,
        Arch::Qwen2 | Arch::Qwen3 => 32_768,
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
        if model_type == "gemma3" && self.scope.is_empty() {
            return self.parse_multimodal(raw);
        }
        let arch = match Arch::from_model_type(model_type) {
            Some(a) => a,
            None => {
                return Err(Error::UnsupportedModel {
                    path: self.path.clone(),
                    model_type: model_type.to_string(),
                    supported: SUPPORTED_MODEL_TYPES,
                })
            }
        };
        let d = self.dims(arch)?;
        let q = if arch.is_gemma() {
            self.gemma_quirks(arch, d.num_layers)?
        } else {
            self.llama_family_quirks(arch, &d)?
        };

        // Gemma uses 1e-6. eps only keeps 1/sqrt(mean(x²) + eps) finite: it must be a positive
        // normal f32 and small beside the activations' mean square (≥ 1 for Gemma's embeddings).
        let eps = self.f64_or("rms_norm_eps", 1e-6)?;
        if !(1e-30..=0.1).contains(&eps) {
            return Err(self.err(format!(
                "\"rms_norm_eps\" {eps:?} is outside [1e-30, 0.1] (Gemma uses 1e-6)"
            )));
        }
        // transformers' Llama-family classes have no softcaps and ignore the keys.
        let (attn_softcap, final_softcap) = match q.softcaps {
            Some((attn, fin)) => (
                self.softcap("attn_logit_softcapping", attn)?,
                self.softcap("final_logit_softcapping", fin)?,
            ),
            None => (None, None),
        };
        Ok(ModelConfig {
            arch,
            hidden_size: d.hidden_size,
            intermediate_size: d.intermediate_size,
            num_layers: d.num_layers,
            num_heads: d.num_heads,
            num_kv_heads: d.num_kv_heads,
            head_dim: d.head_dim,
            vocab_size: d.vocab_size,
            rms_norm_eps: eps as f32,
            query_pre_attn_scalar: q.query_pre_attn_scalar,
            sliding_window: q.sliding_window,
            layer_types: q.layer_types,
            rope_full: uniform_view(q.rope_full),
            rope_sliding: uniform_view(q.rope_sliding),
            rope_params_full: q.rope_full,
            rope_params_sliding: q.rope_sliding,
            mlp_act: q.mlp_act,
            norm_weight: q.norm_weight,
            norms: q.norms,
            scale_embeddings: q.scale_embeddings,
            attn_bias: q.attn_bias,
            attn_softcap,
            final_softcap,
            qk_norm: q.qk_norm,
            tie_word_embeddings: self.bool_or("tie_word_embeddings", q.tie_default)?,
            bos_token_id: match (self.get("bos_token_id"), q.bos_default) {
                (None, Some(b)) => b,
                (None, None) => {
                    return Err(self.err(format!(
                        "missing \"bos_token_id\" (transformers' {} config has no default); \
                         whittle starts evaluation windows with it: add the tokenizer's BOS id",
                        arch.model_type()
                    )))
                }
                (Some(v), _) => v
                    .as_u64()
                    .filter(|&b| (b as usize) < d.vocab_size)
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

    /// The sizes, with each config class's defaults for the optional ones.
    fn dims(&self, arch: Arch) -> Result<Dims> {
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
        let default_kv_heads = match arch {
            Arch::Gemma2 | Arch::Gemma3Text | Arch::Llama => num_heads,
            Arch::Mistral => 8,
            Arch::Qwen2 | Arch::Qwen3 => 32,
        };
        let num_kv_heads = self.usize_or("num_key_value_heads", default_kv_heads)?;
        if arch == Arch::Llama && hidden_size % num_heads != 0 {
            // LlamaConfig.validate_architecture refuses it even with an explicit head_dim.
            return Err(self.err(format!(
                "hidden_size ({hidden_size}) must be a multiple of num_attention_heads ({num_heads})"
            )));
        }
        let default_head_dim = match arch {
            Arch::Gemma2 | Arch::Gemma3Text => 256,
            Arch::Qwen3 => 128,
            Arch::Llama | Arch::Mistral | Arch::Qwen2 => hidden_size / num_heads,
        };
        let head_dim = self.usize_or("head_dim", default_head_dim)?;
        let vocab_size = self.usize_req("vocab_size")?;
        if num_heads % num_kv_heads != 0 {
            return Err(self.err(format!(
                "num_attention_heads ({num_heads}) must be a multiple of num_key_value_heads ({num_kv_heads})"
            )));
        }
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(self.err(format!("head_dim ({head_dim}) must be even for RoPE")));
        }
        Ok(Dims {
            hidden_size,
            intermediate_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size,
        })
    }

    fn gemma_quirks(&self, arch: Arch, num_layers: usize) -> Result<Quirks> {
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
            _ => (256.0, 4096, None, None),
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
        Ok(Quirks {
            query_pre_attn_scalar,
            sliding_window,
            layer_types,
            rope_full: rope_full.into(),
            rope_sliding: rope_sliding.into(),
            softcaps: Some((default_attn_cap, default_final_cap)),
            qk_norm: arch == Arch::Gemma3Text,
            tie_default: true,
            bos_default: Some(2),
            mlp_act: Activation::GeluTanh,
            norm_weight: NormWeight::OnePlus,
            norms: LayerNorms::GEMMA,
            scale_embeddings: true,
            attn_bias: AttnBias::default(),
        })
    }

    /// `llama`, `mistral`, `qwen2`, `qwen3` as transformers 5.24's config and modeling classes
    /// read them (keys a class ignores are ignored here too).
    fn llama_family_quirks(&self, arch: Arch, d: &Dims) -> Result<Quirks> {
        // Only `hidden_act` is a field of these classes; ACT2FN maps both names to F.silu.
        match self.get("hidden_act") {
            None => {}
            Some(v) if matches!(v.as_str(), Some("silu" | "swish")) => {}
            Some(v) => {
                return Err(self.err(format!(
                    "\"hidden_act\" is {v}; whittle implements \"silu\" (also spelled \"swish\") \
                     for model_type \"{}\"",
                    arch.model_type()
                )))
            }
        }
        let attn_bias = match arch {
            Arch::Llama | Arch::Qwen3 => {
                let b = self.bool_or("attention_bias", false)?;
                AttnBias { qkv: b, o: b }
            }
            // Qwen2Attention: q/k/v always biased, o never, whatever attention_bias says.
            Arch::Qwen2 => AttnBias {
                qkv: true,
                o: false,
            },
            // MistralAttention has no biases.
            _ => AttnBias::default(),
        };
        if arch == Arch::Llama && self.bool_or("mlp_bias", false)? {
            return Err(self.err(
                "\"mlp_bias\": true is not supported (whittle prunes and re-fits bias-free MLP \
                 projections); only checkpoints with \"mlp_bias\": false can be read",
            ));
        }
        let (window, layer_types) = self.llama_family_layer_types(arch, d.num_layers)?;
        let rope = self.llama_family_rope(arch)?;
        Ok(Quirks {
            // The classes scale scores by head_dim**-0.5 and never read query_pre_attn_scalar.
            query_pre_attn_scalar: d.head_dim as f64,
            sliding_window: window.unwrap_or(0),
            layer_types,
            rope_full: rope,
            rope_sliding: rope,
            softcaps: None,
            qk_norm: arch == Arch::Qwen3,
            tie_default: false,
            bos_default: match arch {
                Arch::Llama | Arch::Mistral => Some(1),
                _ => None,
            },
            mlp_act: Activation::Silu,
            norm_weight: NormWeight::Plain,
            norms: LayerNorms::LLAMA,
            scale_embeddings: false,
            attn_bias,
        })
    }

    /// `sliding_window`: absent means the class default 4096, explicit null means none.
    fn window_or_null(&self) -> Result<Option<usize>> {
        match self.v.get("sliding_window") {
            None => Ok(Some(4096)),
            Some(Value::Null) => Ok(None),
            Some(_) => self.usize_req("sliding_window").map(Some),
        }
    }

    /// Returns (the window, each layer's type). Llama never windows; Mistral windows every
    /// layer when `sliding_window` is set (its `layer_types` key is ignored by transformers);
    /// Qwen2/3 window the `sliding_attention` layers of `layer_types`, which defaults to the
    /// layers from `max_window_layers` on, and only with `use_sliding_window`.
    fn llama_family_layer_types(
        &self,
        arch: Arch,
        n: usize,
    ) -> Result<(Option<usize>, Vec<LayerType>)> {
        let all = |t| vec![t; n];
        match arch {
            Arch::Llama => Ok((None, all(LayerType::Full))),
            Arch::Mistral => Ok(match self.window_or_null()? {
                Some(w) => (Some(w), all(LayerType::Sliding)),
                None => (None, all(LayerType::Full)),
            }),
            _ => {
                let window = if self.bool_or("use_sliding_window", false)? {
                    self.window_or_null()?
                } else {
                    None
                };
                let types = match self.get("layer_types") {
                    Some(_) => self.explicit_layer_types(n)?,
                    None => {
                        let first = match self.get("max_window_layers") {
                            None => 28,
                            Some(v) => v.as_u64().map(|x| x as usize).ok_or_else(|| {
                                self.err(format!(
                                    "\"max_window_layers\" must be a non-negative integer, got {v}"
                                ))
                            })?,
                        };
                        (0..n)
                            .map(|i| match window {
                                Some(_) if i >= first => LayerType::Sliding,
                                _ => LayerType::Full,
                            })
                            .collect()
                    }
                };
                if let (None, Some(i)) =
                    (window, types.iter().position(|&t| t == LayerType::Sliding))
                {
                    return Err(self.err(format!(
                        "layer_types[{i}] is \"sliding_attention\" but the config sets no window \
                         (\"use_sliding_window\" is false or \"sliding_window\" is null), so \
                         transformers cannot build that layer's mask; set \"use_sliding_window\": \
                         true with a \"sliding_window\", or make the layer \"full_attention\""
                    )));
                }
                Ok((window, types))
            }
        }
    }

    /// The one RoPE of every layer, resolved as transformers 5.24's `convert_rope_params_to_dict`
    /// and `standardize_rope_params` resolve it: a non-empty `rope_scaling` (4.x spelling) wins
    /// over `rope_parameters`; `rope_theta` inside it wins over the top-level one (default 1e4);
    /// llama3 / yarn take `original_max_position_embeddings` from the top level if there, else
    /// from the object, else `max_position_embeddings`.
    fn llama_family_rope(&self, arch: Arch) -> Result<RopeParams> {
        let empty = Value::Object(Default::default());
        let nonempty = |v: &&Value| v.as_object().is_some_and(|m| !m.is_empty());
        let (what, obj) = match (self.get("rope_scaling"), self.get("rope_parameters")) {
            (Some(s), _) if !s.is_object() => {
                return Err(self.err(format!(
                    "\"rope_scaling\" must be an object or null, got {s}"
                )))
            }
            (Some(s), _) if nonempty(&s) => ("rope_scaling", s),
            (_, Some(p)) if !p.is_object() => {
                return Err(self.err("\"rope_parameters\" must be an object"))
            }
            (_, Some(p)) => ("rope_parameters", p),
            (_, None) => ("rope_parameters", &empty),
        };
        let field = |k: &str| obj.get(k).filter(|v| !v.is_null());
        if ["full_attention", "sliding_attention"]
            .iter()
            .any(|k| field(k).is_some())
        {
            return Err(self.err(format!(
                "{what} is given per layer type, which model_type \"{}\" does not read (transformers \
                 uses one flat set of RoPE parameters for it)",
                arch.model_type()
            )));
        }
        let num = |k: &str, v: &Value| {
            v.as_f64()
                .filter(|x| x.is_finite() && *x > 0.0)
                .ok_or_else(|| self.err(format!("{what}.{k} must be a positive number, got {v}")))
        };
        let theta = match field("rope_theta").or_else(|| self.get("rope_theta")) {
            None => 10_000.0,
            Some(v) => num("rope_theta", v).and_then(|t| {
                if t <= 1e12 {
                    Ok(t)
                } else {
                    Err(self.err(format!(
                        "{what}.rope_theta must be a positive number up to 1e12"
                    )))
                }
            })?,
        };
        if let Some(v) =
            field("partial_rotary_factor").or_else(|| self.get("partial_rotary_factor"))
        {
            if v.as_f64() != Some(1.0) {
                return Err(self.err(format!(
                    "{what}.partial_rotary_factor is {v}; whittle rotates whole heads (1.0) only"
                )));
            }
        }
        let rope_type = match field("rope_type").or_else(|| field("type")) {
            None => "default",
            Some(v) => v
                .as_str()
                .ok_or_else(|| self.err(format!("{what}.rope_type must be a string, got {v}")))?,
        };
        let need = |k: &str| match field(k) {
            Some(v) => num(k, v),
            None => Err(self.err(format!(
                "{what}: rope_type \"{rope_type}\" needs \"{k}\" (a positive number)"
            ))),
        };
        let original_max = || -> Result<f64> {
            match self
                .get("original_max_position_embeddings")
                .or_else(|| field("original_max_position_embeddings"))
            {
                Some(v) => num("original_max_position_embeddings", v),
                None => Ok(
                    self.usize_or("max_position_embeddings", default_max_positions(arch))? as f64,
                ),
            }
        };
        let scaling = match rope_type {
            "default" => RopeScaling::Default,
            "linear" => RopeScaling::Linear {
                factor: need("factor")?,
            },
            "llama3" => {
                let (factor, low, high) = (
                    need("factor")?,
                    need("low_freq_factor")?,
                    need("high_freq_factor")?,
                );
                if high <= low {
                    return Err(self.err(format!(
                        "{what}: llama3 needs high_freq_factor ({high}) above low_freq_factor ({low})"
                    )));
                }
                RopeScaling::Llama3 {
                    factor,
                    low_freq_factor: low,
                    high_freq_factor: high,
                    original_max_position_embeddings: original_max()?,
                }
            }
            "yarn" => self.yarn(what, obj, original_max()?, arch)?,
            other => {
                return Err(self.err(format!(
                    "{what}.rope_type \"{other}\" is not supported; whittle supports \
                     {SUPPORTED_ROPE_TYPES}"
                )))
            }
        };
        Ok(RopeParams { theta, scaling })
    }

    /// Yarn's parameters with `_compute_yarn_parameters`' defaults: `factor: null` means
    /// max_position_embeddings / original; `attention_factor` from mscale / mscale_all_dim when
    /// both are set, else 0.1·ln(factor) + 1; beta_fast / beta_slow 32 / 1 when absent or 0;
    /// `truncate` true.
    fn yarn(&self, what: &str, obj: &Value, original_max: f64, arch: Arch) -> Result<RopeScaling> {
        let opt = |k: &str| -> Result<Option<f64>> {
            match obj.get(k).filter(|v| !v.is_null()) {
                None => Ok(None),
                Some(v) => v
                    .as_f64()
                    .filter(|x| x.is_finite() && *x >= 0.0)
                    .map(Some)
                    .ok_or_else(|| {
                        self.err(format!("{what}.{k} must be a non-negative number, got {v}"))
                    }),
            }
        };
        let factor = match obj.get("factor") {
            None => {
                return Err(self.err(format!(
                    "{what}: rope_type \"yarn\" needs \"factor\" (a number, or null for \
                     max_position_embeddings / original_max_position_embeddings)"
                )))
            }
            Some(Value::Null) => {
                self.usize_or("max_position_embeddings", default_max_positions(arch))? as f64
                    / original_max
            }
            Some(_) => opt("factor")?
                .filter(|&f| f > 0.0)
                .ok_or_else(|| self.err(format!("{what}.factor must be a positive number")))?,
        };
        let mscale = |scale: f64, m: f64| {
            if scale <= 1.0 {
                1.0
            } else {
                0.1 * m * scale.ln() + 1.0
            }
        };
        let attention_factor = match opt("attention_factor")? {
            Some(a) => a,
            None => match (opt("mscale")?, opt("mscale_all_dim")?) {
                (Some(m), Some(a)) if m != 0.0 && a != 0.0 => mscale(factor, m) / mscale(factor, a),
                _ => mscale(factor, 1.0),
            },
        };
        // `rope_parameters_dict.get("beta_fast") or 32`: 0 counts as absent.
        let beta_fast = opt("beta_fast")?.filter(|&b| b != 0.0).unwrap_or(32.0);
        let beta_slow = opt("beta_slow")?.filter(|&b| b != 0.0).unwrap_or(1.0);
        let truncate = match obj.get("truncate").filter(|v| !v.is_null()) {
            None => true,
            Some(v) => v.as_bool().ok_or_else(|| {
                self.err(format!("{what}.truncate must be true or false, got {v}"))
            })?,
        };
        Ok(RopeScaling::Yarn {
            factor,
            attention_factor,
            beta_fast,
            beta_slow,
            original_max_position_embeddings: original_max,
            truncate,
        })
    }

    fn layer_types(&self, arch: Arch, n: usize) -> Result<Vec<LayerType>> {
        if self.get("layer_types").is_some() {
            return self.explicit_layer_types(n);
        }
        // Derived the way transformers derives it: layer i is global iff (i+1) % pattern == 0.
        let pattern = match arch {
            Arch::Gemma2 => 2,
            _ => match self.get("sliding_window_pattern") {
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

    /// `layer_types` as given: one "sliding_attention" or "full_attention" per layer.
    fn explicit_layer_types(&self, n: usize) -> Result<Vec<LayerType>> {
        let v = &self.v["layer_types"];
        let list = v
            .as_array()
            .ok_or_else(|| self.err("\"layer_types\" must be a list of strings"))?;
        if list.len() != n {
            return Err(self.err(format!(
                "\"layer_types\" has {} entries but num_hidden_layers is {n}",
                list.len()
            )));
        }
        list.iter()
            .enumerate()
            .map(|(i, t)| match t.as_str() {
                Some("sliding_attention") => Ok(LayerType::Sliding),
                Some("full_attention") => Ok(LayerType::Full),
                _ => Err(self.err(format!(
                    "layer_types[{i}] is {t}; expected \"sliding_attention\" or \"full_attention\""
                ))),
            })
            .collect()
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
            _ => (1_000_000.0, 10_000.0),
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
                _ => (
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
            _ => (
                g,
                Rope {
                    theta: self.f64_or("rope_local_base_freq", default_local)?,
                    linear_factor: 1.0,
                },
            ),
        })
    }
}

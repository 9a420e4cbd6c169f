//! The one tensor registry: every tensor a checkpoint of a supported family holds, its HF name,
//! the shape the config implies and its role. The loader checks a checkpoint against it, the scorer and the
//! rewriter find the MLP tensors they slice through it, and `inspect` counts parameters with it.

use crate::checkpoint::config::{LayerNorms, ModelConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LayerTensor {
    InputNorm,
    Q,
    K,
    V,
    O,
    /// q/k/v/o projection biases (Qwen2's q/k/v; Llama's with `attention_bias`).
    QBias,
    KBias,
    VBias,
    OBias,
    QNorm,
    KNorm,
    PostAttnNorm,
    PreFfnNorm,
    Gate,
    Up,
    Down,
    PostFfnNorm,
}

impl LayerTensor {
    pub const ALL: [LayerTensor; 17] = [
        LayerTensor::InputNorm,
        LayerTensor::Q,
        LayerTensor::K,
        LayerTensor::V,
        LayerTensor::O,
        LayerTensor::QBias,
        LayerTensor::KBias,
        LayerTensor::VBias,
        LayerTensor::OBias,
        LayerTensor::QNorm,
        LayerTensor::KNorm,
        LayerTensor::PostAttnNorm,
        LayerTensor::PreFfnNorm,
        LayerTensor::Gate,
        LayerTensor::Up,
        LayerTensor::Down,
        LayerTensor::PostFfnNorm,
    ];

    /// The name under `model.layers.{i}.`. The layer norms' names come from the family's
    /// `LayerNorms` (Llama's `post_attention_layernorm` is its pre-MLP norm); `None` for a norm
    /// the family does not have.
    fn suffix(self, norms: &LayerNorms) -> Option<String> {
        let norm = |n: Option<&str>| n.map(|n| format!("{n}.weight"));
        Some(
            match self {
                LayerTensor::InputNorm => return norm(Some(norms.pre_attn)),
                LayerTensor::PostAttnNorm => return norm(norms.post_attn),
                LayerTensor::PreFfnNorm => return norm(Some(norms.pre_mlp)),
                LayerTensor::PostFfnNorm => return norm(norms.post_mlp),
                LayerTensor::Q => "self_attn.q_proj.weight",
                LayerTensor::K => "self_attn.k_proj.weight",
                LayerTensor::V => "self_attn.v_proj.weight",
                LayerTensor::O => "self_attn.o_proj.weight",
                LayerTensor::QBias => "self_attn.q_proj.bias",
                LayerTensor::KBias => "self_attn.k_proj.bias",
                LayerTensor::VBias => "self_attn.v_proj.bias",
                LayerTensor::OBias => "self_attn.o_proj.bias",
                LayerTensor::QNorm => "self_attn.q_norm.weight",
                LayerTensor::KNorm => "self_attn.k_norm.weight",
                LayerTensor::Gate => "mlp.gate_proj.weight",
                LayerTensor::Up => "mlp.up_proj.weight",
                LayerTensor::Down => "mlp.down_proj.weight",
            }
            .to_string(),
        )
    }

    /// Where the tensor's index is in `ALL` (and so in a `Layer`'s slots).
    pub const fn index(self) -> usize {
        self as usize
    }

    /// A 2-D projection (bf16 on the device) or a 1-D vector (norm weights and biases, f32 on
    /// the device).
    pub fn kind(self) -> Kind {
        match self {
            LayerTensor::Q
            | LayerTensor::K
            | LayerTensor::V
            | LayerTensor::O
            | LayerTensor::Gate
            | LayerTensor::Up
            | LayerTensor::Down => Kind::Matrix,
            _ => Kind::Vector,
        }
    }

    /// The half of the layer that reads the tensor: pruning re-runs only the MLP half.
    pub fn half(self) -> Half {
        match self {
            LayerTensor::PreFfnNorm
            | LayerTensor::Gate
            | LayerTensor::Up
            | LayerTensor::Down
            | LayerTensor::PostFfnNorm => Half::Mlp,
            _ => Half::Attention,
        }
    }

    pub fn group(self) -> Group {
        match self {
            LayerTensor::Q
            | LayerTensor::K
            | LayerTensor::V
            | LayerTensor::O
            | LayerTensor::QBias
            | LayerTensor::KBias
            | LayerTensor::VBias
            | LayerTensor::OBias => Group::Attention,
            LayerTensor::Gate | LayerTensor::Up | LayerTensor::Down => Group::Mlp,
            _ => Group::Norm,
        }
    }
}

/// How a layer tensor is stored: engines keep matrices and vectors in different formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Matrix,
    Vector,
}

/// The two blocks of a decoder layer, each with its own residual add.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Half {
    Attention,
    Mlp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Embed,
    FinalNorm,
    LmHead,
    Layer(usize, LayerTensor),
}

/// Parameter groups as model-card tables count them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Group {
    Embedding,
    Attention,
    Mlp,
    Norm,
    LmHead,
    /// Tensors outside the registry (a multimodal checkpoint's vision tower and projector),
    /// copied to the output unchanged.
    Other,
}

impl Group {
    pub fn name(self) -> &'static str {
        match self {
            Group::Embedding => "embedding",
            Group::Attention => "attention",
            Group::Mlp => "mlp",
            Group::Norm => "norms",
            Group::LmHead => "lm_head (untied)",
            Group::Other => "other (copied)",
        }
    }
}

#[derive(Debug, Clone)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub role: Role,
}

impl TensorSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn group(&self) -> Group {
        match self.role {
            Role::Embed => Group::Embedding,
            Role::FinalNorm => Group::Norm,
            Role::LmHead => Group::LmHead,
            Role::Layer(_, t) => t.group(),
        }
    }
}

/// The checkpoint name of layer `layer`'s tensor `t` in `cfg`'s family. Panics for a tensor the
/// family lacks (`layer_has` false): asking for one is a bug in the caller.
pub fn layer_name(cfg: &ModelConfig, layer: usize, t: LayerTensor) -> String {
    let suffix = t
        .suffix(&cfg.norms)
        .unwrap_or_else(|| panic!("{} has no {t:?}", cfg.model_type()));
    format!("model.layers.{layer}.{suffix}")
}

pub const EMBED: &str = "model.embed_tokens.weight";
pub const FINAL_NORM: &str = "model.norm.weight";
pub const LM_HEAD: &str = "lm_head.weight";

/// The expected `[rows, cols]` (HF `[out, in]`) shape of a layer tensor.
pub fn layer_shape(cfg: &ModelConfig, t: LayerTensor) -> Vec<usize> {
    let (h, i, d) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
    match t {
        LayerTensor::InputNorm
        | LayerTensor::PostAttnNorm
        | LayerTensor::PreFfnNorm
        | LayerTensor::PostFfnNorm => vec![h],
        LayerTensor::QBias => vec![cfg.q_dim()],
        LayerTensor::KBias | LayerTensor::VBias => vec![cfg.kv_dim()],
        LayerTensor::OBias => vec![h],
        LayerTensor::Q => vec![cfg.q_dim(), h],
        LayerTensor::K | LayerTensor::V => vec![cfg.kv_dim(), h],
        LayerTensor::O => vec![h, cfg.q_dim()],
        LayerTensor::QNorm | LayerTensor::KNorm => vec![d],
        LayerTensor::Gate | LayerTensor::Up => vec![i, h],
        LayerTensor::Down => vec![h, i],
    }
}

/// Does this architecture have this per-layer tensor?
pub fn layer_has(cfg: &ModelConfig, t: LayerTensor) -> bool {
    match t {
        LayerTensor::QNorm | LayerTensor::KNorm => cfg.qk_norm,
        LayerTensor::QBias | LayerTensor::KBias | LayerTensor::VBias => cfg.attn_bias.qkv,
        LayerTensor::OBias => cfg.attn_bias.o,
        LayerTensor::PostAttnNorm => cfg.norms.post_attn.is_some(),
        LayerTensor::PostFfnNorm => cfg.norms.post_mlp.is_some(),
        _ => true,
    }
}

/// Every tensor of the checkpoint in file order conventions (embedding, layers, final norm).
/// `lm_head` is listed only when the embeddings are untied.
pub fn registry(cfg: &ModelConfig, untied_head: bool) -> Vec<TensorSpec> {
    let mut v = vec![TensorSpec {
        name: EMBED.into(),
        shape: vec![cfg.vocab_size, cfg.hidden_size],
        role: Role::Embed,
    }];
    for l in 0..cfg.num_layers {
        for t in LayerTensor::ALL {
            if layer_has(cfg, t) {
                v.push(TensorSpec {
                    name: layer_name(cfg, l, t),
                    shape: layer_shape(cfg, t),
                    role: Role::Layer(l, t),
                });
            }
        }
    }
    v.push(TensorSpec {
        name: FINAL_NORM.into(),
        shape: vec![cfg.hidden_size],
        role: Role::FinalNorm,
    });
    if untied_head {
        v.push(TensorSpec {
            name: LM_HEAD.into(),
            shape: vec![cfg.vocab_size, cfg.hidden_size],
            role: Role::LmHead,
        });
    }
    v
}

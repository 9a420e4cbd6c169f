//! `whittle inspect`: the numbers a model card's size table uses, counted from the registry and
//! the checkpoint's own tensor bytes.

use crate::checkpoint::config::ModelConfig;
use crate::checkpoint::registry::{registry, Group};
use crate::checkpoint::safetensors::WeightStore;
use crate::cpu::model::untied_head;
use crate::error::Result;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

pub struct Summary {
    pub cfg: ModelConfig,
    /// Parameters per group (registry order).
    pub params: BTreeMap<Group, u64>,
    pub total_params: u64,
    /// Bytes of all tensors in the checkpoint files (exactly what is loaded).
    pub weight_bytes: u64,
    pub dtypes: Vec<String>,
    pub tied: bool,
    /// What `compile --tier NAME` (default `--multiple-of`) would write, for every tier.
    pub tiers: Vec<TierSize>,
}

/// The size of a compile at one named width.
#[derive(Debug, Clone, PartialEq)]
pub struct TierSize {
    pub name: &'static str,
    pub width: usize,
    pub params: u64,
    pub weight_bytes: u64,
}

/// Parameters and tensor bytes of the checkpoint after cutting its MLPs to `width` neurons:
/// what `compile` writes (gate/up rows and down columns removed, in each tensor's own dtype;
/// everything else, copied tensors included, unchanged). `params`/`bytes` are the full sizes.
pub fn sizes_at_width(
    store: &WeightStore,
    cfg: &ModelConfig,
    params: u64,
    bytes: u64,
    width: usize,
) -> Result<(u64, u64)> {
    use crate::checkpoint::registry::{layer_name, LayerTensor};
    let cut = (cfg.intermediate_size - width.min(cfg.intermediate_size)) as u64;
    let hd = cfg.hidden_size as u64;
    let mut removed_bytes = 0u64;
    for l in 0..cfg.num_layers {
        for t in [LayerTensor::Gate, LayerTensor::Up, LayerTensor::Down] {
            removed_bytes += cut * hd * store.get(&layer_name(cfg, l, t))?.info.dtype.size() as u64;
        }
    }
    Ok((
        params - 3 * cfg.num_layers as u64 * hd * cut,
        bytes - removed_bytes,
    ))
}

pub fn summarize(dir: &Path) -> Result<Summary> {
    let cfg = ModelConfig::from_dir(dir)?;
    let store = WeightStore::open(dir)?;
    store.check_layers(cfg.num_layers)?;
    let untied = untied_head(&cfg, &store)?;
    let mut params = BTreeMap::new();
    let mut weight_bytes = 0u64;
    let mut dtypes: Vec<String> = Vec::new();
    for spec in registry(&cfg, untied) {
        let t = store.get_checked(&spec.name, &spec.shape)?;
        *params.entry(spec.group()).or_insert(0u64) += spec.numel() as u64;
        weight_bytes += (t.info.end - t.info.start) as u64;
        let dt = t.info.dtype.name().to_string();
        if !dtypes.contains(&dt) {
            dtypes.push(dt);
        }
    }
    let (other_params, other_bytes) = passthrough(&store, &cfg, untied);
    if other_params > 0 {
        params.insert(Group::Other, other_params);
        weight_bytes += other_bytes;
    }
    let total_params = params.values().sum();
    let mut tiers = Vec::new();
    for &(name, _) in crate::compile::width::TIERS {
        let w = crate::compile::width::resolve_width(
            cfg.intermediate_size,
            &crate::compile::width::Width::Tier(name.into()),
            crate::compile::width::DEFAULT_MULTIPLE_OF,
        )?
        .width;
        let (p, b) = sizes_at_width(&store, &cfg, total_params, weight_bytes, w)?;
        tiers.push(TierSize {
            name,
            width: w,
            params: p,
            weight_bytes: b,
        });
    }
    Ok(Summary {
        cfg,
        params,
        total_params,
        weight_bytes,
        dtypes,
        tied: !untied,
        tiers,
    })
}

/// The checkpoint's tensors the registry does not name (a multimodal Gemma-3's vision tower and
/// projector, or extras such as a tied model's stored `lm_head.weight`): (parameters, bytes).
/// The rewriter copies them unchanged, so they count in every size before and after.
pub fn passthrough(store: &WeightStore, cfg: &ModelConfig, untied: bool) -> (u64, u64) {
    let named: std::collections::HashSet<String> = registry(cfg, untied)
        .iter()
        .map(|s| store.naming.file_name(&s.name).into_owned())
        .collect();
    let mut out = (0u64, 0u64);
    for f in &store.files {
        for (name, t) in &f.tensors {
            if !named.contains(name) {
                out.0 += t.shape.iter().product::<usize>() as u64;
                out.1 += (t.end - t.start) as u64;
            }
        }
    }
    out
}

pub const GIB: f64 = (1u64 << 30) as f64;

impl Summary {
    pub fn to_json(&self) -> Value {
        let c = &self.cfg;
        json!({
            "model_type": c.model_type(),
            "hidden_size": c.hidden_size,
            "intermediate_size": c.intermediate_size,
            "num_layers": c.num_layers,
            "num_heads": c.num_heads,
            "num_kv_heads": c.num_kv_heads,
            "head_dim": c.head_dim,
            "vocab_size": c.vocab_size,
            "sliding_window": c.sliding_window,
            "layer_types": c.layer_types.iter().map(|t| t.name()).collect::<Vec<_>>(),
            "tied_embeddings": self.tied,
            "params": self.params.iter().map(|(g, n)| (g.name().to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "total_params": self.total_params,
            "weight_bytes": self.weight_bytes,
            "weight_gib": self.weight_bytes as f64 / GIB,
            "dtypes": self.dtypes,
            "tiers": self.tiers.iter().map(|t| json!({
                "tier": t.name,
                "intermediate_size": t.width,
                "params": t.params,
                "weight_bytes": t.weight_bytes,
                "weight_gib": t.weight_bytes as f64 / GIB,
            })).collect::<Vec<_>>(),
        })
    }

    pub fn to_text(&self) -> String {
        let c = &self.cfg;
        let mut s = String::new();
        let full: Vec<String> = c
            .layer_types
            .iter()
            .enumerate()
            .filter(|(_, t)| **t == crate::checkpoint::config::LayerType::Full)
            .map(|(i, _)| i.to_string())
            .collect();
        s += &format!("architecture      {}\n", c.model_type());
        s += &format!(
            "shape             hidden {}  mlp {}  layers {}  heads {}/{} kv  head_dim {}  vocab {}\n",
            c.hidden_size, c.intermediate_size, c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim, c.vocab_size
        );
        s += &format!(
            "attention         full at layers [{}], sliding window {} elsewhere; scale 1/sqrt({})\n",
            full.join(", "),
            c.sliding_window,
            c.query_pre_attn_scalar
        );
        s += &format!(
            "rope              global theta {} (linear ×{}), local theta {}\n",
            c.rope_full.theta, c.rope_full.linear_factor, c.rope_sliding.theta
        );
        let cap = |x: Option<f32>| x.map_or("off".to_string(), |v| v.to_string());
        s += &format!(
            "softcaps          attention {}, final {}; qk-norm {}; embeddings {}\n",
            cap(c.attn_softcap),
            cap(c.final_softcap),
            if c.qk_norm { "yes" } else { "no" },
            if self.tied { "tied" } else { "untied" }
        );
        s += "parameters\n";
        for (g, n) in &self.params {
            s += &format!(
                "  {:<16}{:>14}  {:>5.1}%\n",
                g.name(),
                n,
                100.0 * *n as f64 / self.total_params as f64
            );
        }
        s += &format!("  {:<16}{:>14}\n", "total", self.total_params);
        s += &format!(
            "weights           {:.4} GiB ({} bytes, {})\n",
            self.weight_bytes as f64 / GIB,
            self.weight_bytes,
            self.dtypes.join("/")
        );
        s += "compile tiers     MLP width, parameters and weights after `compile --tier NAME`\n";
        for t in &self.tiers {
            s += &format!(
                "  {:<16}{:>6}  {:>14}  {:.4} GiB  ({:.1}% smaller)\n",
                t.name,
                t.width,
                t.params,
                t.weight_bytes as f64 / GIB,
                100.0 * (1.0 - t.weight_bytes as f64 / self.weight_bytes as f64)
            );
        }
        s
    }
}

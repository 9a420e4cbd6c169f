//! config.json parsing: both spellings transformers writes, derived layer types, defaults, and
//! errors that name the field.

use serde_json::json;
use std::path::Path;
use whittle::config::{Arch, LayerType, ModelConfig, Rope};

fn parse(v: serde_json::Value) -> Result<ModelConfig, String> {
    ModelConfig::from_json_str(&v.to_string(), Path::new("config.json")).map_err(|e| e.to_string())
}

fn base(model_type: &str) -> serde_json::Value {
    json!({"model_type": model_type, "hidden_size": 64, "intermediate_size": 96,
           "num_hidden_layers": 12, "num_attention_heads": 4, "num_key_value_heads": 2,
           "head_dim": 32, "vocab_size": 512})
}

#[test]
fn gemma2_defaults_are_transformers_defaults() {
    let c = parse(base("gemma2")).unwrap();
    assert_eq!(c.arch, Arch::Gemma2);
    assert_eq!(c.attn_softcap, Some(50.0));
    assert_eq!(c.final_softcap, Some(30.0));
    assert_eq!(c.query_pre_attn_scalar, 256.0);
    assert_eq!(c.sliding_window, 4096);
    assert!(!c.qk_norm);
    // Even layers slide, odd layers are global.
    for (i, t) in c.layer_types.iter().enumerate() {
        assert_eq!(*t == LayerType::Sliding, i % 2 == 0, "layer {i}");
    }
    assert_eq!(
        c.rope_full,
        Rope {
            theta: 10000.0,
            linear_factor: 1.0
        }
    );
    assert_eq!(c.rope_sliding, c.rope_full);
    assert_eq!(c.attn_scale(), 0.0625);
}

#[test]
fn softcap_null_turns_it_off() {
    let mut v = base("gemma2");
    v["attn_logit_softcapping"] = json!(null);
    v["final_logit_softcapping"] = json!(12.5);
    let c = parse(v).unwrap();
    assert_eq!(c.attn_softcap, None);
    assert_eq!(c.final_softcap, Some(12.5));
}

#[test]
fn gemma3_layer_types_derived_from_pattern() {
    let c = parse(base("gemma3_text")).unwrap();
    let full: Vec<usize> = (0..12)
        .filter(|&i| c.layer_types[i] == LayerType::Full)
        .collect();
    assert_eq!(full, vec![5, 11]);
    let mut v = base("gemma3_text");
    v["sliding_window_pattern"] = json!(3);
    let c = parse(v).unwrap();
    let full: Vec<usize> = (0..12)
        .filter(|&i| c.layer_types[i] == LayerType::Full)
        .collect();
    assert_eq!(full, vec![2, 5, 8, 11]);
    let mut v = base("gemma3_text");
    v["_sliding_window_pattern"] = json!(4);
    let c = parse(v).unwrap();
    assert_eq!(c.layer_types[3], LayerType::Full);
    assert_eq!(c.layer_types[4], LayerType::Sliding);
}

#[test]
fn explicit_layer_types_win() {
    let mut v = base("gemma3_text");
    v["num_hidden_layers"] = json!(3);
    v["sliding_window_pattern"] = json!(6);
    v["layer_types"] = json!(["full_attention", "sliding_attention", "full_attention"]);
    let c = parse(v).unwrap();
    assert_eq!(
        c.layer_types,
        vec![LayerType::Full, LayerType::Sliding, LayerType::Full]
    );
    assert_eq!(c.window(0), None);
    assert_eq!(c.window(1), Some(4096));
}

#[test]
fn gemma3_legacy_rope_spelling() {
    let mut v = base("gemma3_text");
    v["rope_theta"] = json!(1e6);
    v["rope_local_base_freq"] = json!(1e4);
    v["rope_scaling"] = json!({"rope_type": "linear", "factor": 8.0});
    let c = parse(v).unwrap();
    assert_eq!(
        c.rope_full,
        Rope {
            theta: 1e6,
            linear_factor: 8.0
        }
    );
    assert_eq!(
        c.rope_sliding,
        Rope {
            theta: 1e4,
            linear_factor: 1.0
        }
    );
}

#[test]
fn gemma3_rope_parameters_per_layer_type() {
    let mut v = base("gemma3_text");
    v["rope_parameters"] = json!({
        "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 500000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 20000.0}
    });
    let c = parse(v).unwrap();
    assert_eq!(
        c.rope_full,
        Rope {
            theta: 5e5,
            linear_factor: 2.0
        }
    );
    assert_eq!(
        c.rope_sliding,
        Rope {
            theta: 2e4,
            linear_factor: 1.0
        }
    );
    assert_eq!(c.rope(5), c.rope_full);
    assert_eq!(c.rope(0), c.rope_sliding);
}

#[test]
fn gemma2_flat_rope_parameters() {
    let mut v = base("gemma2");
    v["rope_parameters"] = json!({"rope_type": "default", "rope_theta": 20000.0});
    let c = parse(v).unwrap();
    assert_eq!(c.rope_full.theta, 20000.0);
    assert_eq!(c.rope_sliding.theta, 20000.0);
}

#[test]
fn errors_name_the_field() {
    let mut v = base("gemma3_text");
    v["rope_scaling"] = json!({"rope_type": "yarn", "factor": 4.0});
    assert!(parse(v).unwrap_err().contains("yarn"));

    let mut v = base("gemma2");
    v.as_object_mut().unwrap().remove("hidden_size");
    assert!(parse(v).unwrap_err().contains("\"hidden_size\""));

    let mut v = base("gemma2");
    v["num_key_value_heads"] = json!(3);
    assert!(parse(v).unwrap_err().contains("num_key_value_heads"));

    let mut v = base("gemma3_text");
    v["layer_types"] = json!(["full_attention"]);
    assert!(parse(v).unwrap_err().contains("layer_types"));

    let mut v = base("gemma2");
    v["hidden_activation"] = json!("silu");
    assert!(parse(v).unwrap_err().contains("silu"));

    let e = parse(base("llama")).unwrap_err();
    assert!(e.contains("\"llama\"") && e.contains("gemma3_text"), "{e}");

    // Multimodal Gemma-3: the text model's config must be there, and be Gemma-3 text.
    let e = parse(base("gemma3")).unwrap_err();
    assert!(e.contains("\"text_config\""), "{e}");
    let e = parse(json!({"model_type": "gemma3", "text_config": {"model_type": "gemma2"}}))
        .unwrap_err();
    assert!(e.contains("gemma2") && e.contains("gemma3_text"), "{e}");
    let e = parse(json!({"model_type": "gemma3", "text_config": {"num_attention_heads": 0}}))
        .unwrap_err();
    assert!(
        e.contains("in \"text_config\"") && e.contains("num_attention_heads"),
        "{e}"
    );

    assert!(
        ModelConfig::from_json_str("{not json", Path::new("x/config.json"))
            .unwrap_err()
            .to_string()
            .contains("x/config.json")
    );
}

#[test]
fn with_intermediate_size_changes_only_that_field() {
    let v = base("gemma2");
    let c = parse(v.clone()).unwrap().with_intermediate_size(40);
    assert_eq!(c.intermediate_size, 40);
    let mut expect = v;
    expect["intermediate_size"] = json!(40);
    assert_eq!(c.raw, expect);
}

/// The hub's Gemma 3 4B config (sparse `text_config`) parsed as transformers parses it:
/// tests/fixtures/gemma3-hub-config/expected.json is transformers' reading
/// (scripts/make_mm_fixture.py).
#[test]
fn gemma3_multimodal_sparse_config_gets_transformers_defaults() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gemma3-hub-config");
    let c = ModelConfig::from_dir(&dir).unwrap();
    let e: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    let n = |k: &str| e[k].as_u64().unwrap() as usize;
    assert!(c.multimodal);
    assert_eq!(c.arch, Arch::Gemma3Text);
    assert_eq!(c.model_type(), "gemma3");
    assert_eq!(c.vocab_size, n("vocab_size"));
    assert_eq!(c.hidden_size, n("hidden_size"));
    assert_eq!(c.intermediate_size, n("intermediate_size"));
    assert_eq!(c.num_layers, n("num_hidden_layers"));
    assert_eq!(c.num_heads, n("num_attention_heads"));
    assert_eq!(c.num_kv_heads, n("num_key_value_heads"));
    assert_eq!(c.head_dim, n("head_dim"));
    assert_eq!(c.sliding_window, n("sliding_window"));
    assert_eq!(c.bos_token_id as usize, n("bos_token_id"));
    assert_eq!(
        c.query_pre_attn_scalar,
        e["query_pre_attn_scalar"].as_f64().unwrap()
    );
    assert_eq!(c.rms_norm_eps, e["rms_norm_eps"].as_f64().unwrap() as f32);
    let types: Vec<&str> = c.layer_types.iter().map(|t| t.name()).collect();
    let want: Vec<&str> = e["layer_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(types, want);
    let rope = |k: &str| Rope {
        theta: e[k]["theta"].as_f64().unwrap(),
        linear_factor: e[k]["linear_factor"].as_f64().unwrap(),
    };
    assert_eq!(c.rope_full, rope("rope_full"));
    assert_eq!(c.rope_sliding, rope("rope_sliding"));
    assert!(e["attn_logit_softcapping"].is_null() && c.attn_softcap.is_none());
    assert!(e["final_logit_softcapping"].is_null() && c.final_softcap.is_none());
    assert_eq!(
        c.tie_word_embeddings,
        e["tie_word_embeddings"].as_bool().unwrap()
    );
    assert!(c.qk_norm);
}

#[test]
fn gemma3_multimodal_with_intermediate_size_changes_the_text_config_only() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gemma3-hub-config");
    let c = ModelConfig::from_dir(&dir).unwrap();
    let w = c.with_intermediate_size(7296);
    assert_eq!(w.intermediate_size, 7296);
    let mut expect = c.raw.clone();
    expect["text_config"]["intermediate_size"] = json!(7296);
    assert_eq!(w.raw, expect);
    assert_eq!(w.raw["vision_config"]["intermediate_size"], json!(4304));
    assert!(w.raw.get("intermediate_size").is_none());
}

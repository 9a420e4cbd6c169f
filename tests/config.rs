//! config.json parsing: both spellings transformers writes, derived layer types, defaults, and
//! errors that name the field.

use serde_json::json;
use std::path::Path;
use whittle::checkpoint::config::{Arch, LayerType, ModelConfig, Rope};

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

    let e = parse(base("falcon")).unwrap_err();
    assert!(e.contains("\"falcon\"") && e.contains("gemma3_text"), "{e}");

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

// ---- The Llama family (llama, mistral, qwen2, qwen3): read, not yet run.

fn family(model_type: &str) -> serde_json::Value {
    json!({"model_type": model_type, "hidden_size": 64, "intermediate_size": 96,
           "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
           "vocab_size": 512, "bos_token_id": 2})
}

/// Each fixture's config.json read as transformers' loaded model behaves:
/// tests/fixtures/llama-config/expected.json (scripts/make_llama_config_fixture.py).
#[test]
fn llama_family_fixtures_parse_as_transformers_reads_them() {
    use whittle::checkpoint::config::{Activation, NormWeight, RopeScaling};
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let e: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("llama-config/expected.json")).unwrap())
            .unwrap();
    for (name, f) in e["fixtures"].as_object().unwrap() {
        let dir = root.join(name);
        let c = ModelConfig::from_dir(&dir).unwrap();
        let n = |k: &str| f[k].as_u64().unwrap() as usize;
        assert_eq!(c.model_type(), f["model_type"].as_str().unwrap());
        assert!(!c.arch.is_gemma());
        assert_eq!(c.hidden_size, n("hidden_size"), "{name}");
        assert_eq!(c.intermediate_size, n("intermediate_size"), "{name}");
        assert_eq!(c.num_layers, n("num_hidden_layers"), "{name}");
        assert_eq!(c.num_heads, n("num_attention_heads"), "{name}");
        assert_eq!(c.num_kv_heads, n("num_key_value_heads"), "{name}");
        assert_eq!(c.head_dim, n("head_dim"), "{name}");
        assert_eq!(c.vocab_size, n("vocab_size"), "{name}");
        assert_eq!(c.bos_token_id as usize, n("bos_token_id"), "{name}");
        assert_eq!(c.max_positions(), n("max_position_embeddings"), "{name}");
        assert_eq!(c.rms_norm_eps, f["rms_norm_eps"].as_f64().unwrap() as f32);
        assert_eq!(
            c.attn_scale(),
            f["scaling"].as_f64().unwrap() as f32,
            "{name}"
        );
        assert_eq!(
            c.embed_scale_f32(),
            f["embed_scale"].as_f64().unwrap() as f32
        );
        assert_eq!((c.attn_softcap, c.final_softcap), (None, None));
        for (l, w) in f["windows"].as_array().unwrap().iter().enumerate() {
            assert_eq!(
                c.window(l),
                w.as_u64().map(|w| w as usize),
                "{name} layer {l}"
            );
        }
        let b = &f["bias"];
        assert_eq!(c.attn_bias.qkv, b["q"].as_bool().unwrap(), "{name}");
        assert_eq!(c.attn_bias.qkv, b["k"].as_bool().unwrap(), "{name}");
        assert_eq!(c.attn_bias.qkv, b["v"].as_bool().unwrap(), "{name}");
        assert_eq!(c.attn_bias.o, b["o"].as_bool().unwrap(), "{name}");
        assert!(!f["mlp_bias"].as_bool().unwrap());
        assert_eq!(c.qk_norm, f["qk_norm"].as_bool().unwrap(), "{name}");
        assert_eq!(f["act"], "SiLUActivation");
        assert_eq!(c.mlp_act, Activation::Silu);
        assert_eq!(c.norm_weight, NormWeight::Plain);
        let norms: Vec<&str> = f["layer_norms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(c.norms.names(), norms, "{name}");
        // Llama's post_attention_layernorm is the norm in front of the MLP.
        assert_eq!(c.norms.pre_mlp, "post_attention_layernorm");
        assert_eq!(
            c.tie_word_embeddings,
            f["tied"].as_bool().unwrap(),
            "{name}"
        );
        let rope_type = match c.rope_params_full.scaling {
            RopeScaling::Default => "default",
            RopeScaling::Linear { .. } => "linear",
            RopeScaling::Llama3 { .. } => "llama3",
            RopeScaling::Yarn { .. } => "yarn",
        };
        assert_eq!(rope_type, f["rope_type"].as_str().unwrap(), "{name}");
    }
}

#[test]
fn llama_family_defaults_are_the_config_classes_defaults() {
    use whittle::checkpoint::config::{AttnBias, LayerNorms};
    let mut v = family("llama");
    v.as_object_mut().unwrap().remove("num_key_value_heads");
    v.as_object_mut().unwrap().remove("bos_token_id");
    let c = parse(v).unwrap();
    assert_eq!(c.num_kv_heads, 4);
    assert_eq!(c.head_dim, 16);
    assert_eq!(c.bos_token_id, 1);
    assert!(!c.tie_word_embeddings);
    assert_eq!(c.max_positions(), 2048);
    assert_eq!(c.norms, LayerNorms::LLAMA);
    assert_eq!(c.attn_bias, AttnBias::default());
    assert!(c.layer_types.iter().all(|&t| t == LayerType::Full));
    assert_eq!(c.rope_params_full.theta, 10_000.0);

    let mut v = family("llama");
    v["attention_bias"] = json!(true);
    assert_eq!(parse(v).unwrap().attn_bias, AttnBias { qkv: true, o: true });
    // Qwen2 biases q/k/v whatever attention_bias says; Mistral never.
    let mut v = family("qwen2");
    v["attention_bias"] = json!(false);
    assert_eq!(
        parse(v).unwrap().attn_bias,
        AttnBias {
            qkv: true,
            o: false
        }
    );
    let mut v = family("mistral");
    v["attention_bias"] = json!(true);
    assert_eq!(parse(v).unwrap().attn_bias, AttnBias::default());

    let mut v = family("mistral");
    v.as_object_mut().unwrap().remove("num_key_value_heads");
    let e = parse(v).unwrap_err(); // MistralConfig's default is 8 KV heads: 4 % 8 != 0
    assert!(e.contains("num_key_value_heads (8)"), "{e}");

    let mut v = family("qwen3");
    v.as_object_mut().unwrap().remove("head_dim");
    let c = parse(v).unwrap();
    assert_eq!(c.head_dim, 128); // Qwen3Config's default, not hidden / heads
    assert!(c.qk_norm);
    assert_eq!(c.max_positions(), 32_768);
}

#[test]
fn llama_family_sliding_windows_follow_transformers() {
    // Mistral: every layer, 4096 when absent, none when null.
    let c = parse(family("mistral")).unwrap();
    assert!((0..4).all(|l| c.window(l) == Some(4096)));
    let mut v = family("mistral");
    v["sliding_window"] = json!(null);
    let c = parse(v).unwrap();
    assert!((0..4).all(|l| c.window(l).is_none()));
    // Llama ignores the key.
    let mut v = family("llama");
    v["sliding_window"] = json!(8);
    assert!(parse(v).unwrap().window(0).is_none());

    // Qwen2/3: only with use_sliding_window, from max_window_layers on.
    let mut v = family("qwen2");
    v["sliding_window"] = json!(8);
    v["max_window_layers"] = json!(1);
    assert!((0..4).all(|l| parse(v.clone()).unwrap().window(l).is_none()));
    v["use_sliding_window"] = json!(true);
    let c = parse(v.clone()).unwrap();
    let w: Vec<_> = (0..4).map(|l| c.window(l)).collect();
    assert_eq!(w, vec![None, Some(8), Some(8), Some(8)]);
    // Explicit layer_types win over max_window_layers.
    v["layer_types"] = json!([
        "sliding_attention",
        "full_attention",
        "full_attention",
        "full_attention"
    ]);
    let c = parse(v.clone()).unwrap();
    assert_eq!(c.window(0), Some(8));
    assert_eq!(c.window(1), None);
    // A sliding layer without a window: transformers cannot build its mask.
    v["use_sliding_window"] = json!(false);
    let e = parse(v).unwrap_err();
    assert!(
        e.contains("layer_types[0]") && e.contains("use_sliding_window"),
        "{e}"
    );
}

#[test]
fn llama_family_bad_configs_name_the_field_and_what_is_supported() {
    // Unsupported RoPE types, in both spellings.
    let mut v = family("llama");
    v["rope_parameters"] = json!({"rope_type": "dynamic", "factor": 2.0});
    let e = parse(v).unwrap_err();
    assert!(
        e.contains("rope_parameters.rope_type")
            && e.contains("\"dynamic\"")
            && e.contains("\"llama3\"")
            && e.contains("\"yarn\""),
        "{e}"
    );
    let mut v = family("qwen2");
    v["rope_scaling"] = json!({"type": "longrope", "short_factor": [1.0], "long_factor": [1.0]});
    let e = parse(v).unwrap_err();
    assert!(
        e.contains("rope_scaling.rope_type") && e.contains("\"longrope\""),
        "{e}"
    );
    // Missing parameters of a supported type.
    let mut v = family("llama");
    v["rope_parameters"] = json!({"rope_type": "llama3", "factor": 8.0, "high_freq_factor": 4.0});
    let e = parse(v).unwrap_err();
    assert!(
        e.contains("\"low_freq_factor\"") && e.contains("llama3"),
        "{e}"
    );
    let mut v = family("qwen2");
    v["rope_parameters"] = json!({"rope_type": "yarn", "original_max_position_embeddings": 64});
    assert!(parse(v).unwrap_err().contains("\"factor\""));
    let mut v = family("mistral");
    v["rope_parameters"] = json!({"rope_type": "linear"});
    assert!(parse(v).unwrap_err().contains("\"factor\""));
    let mut v = family("llama");
    v["partial_rotary_factor"] = json!(0.5);
    assert!(parse(v).unwrap_err().contains("partial_rotary_factor"));
    let mut v = family("qwen3");
    v["rope_parameters"] = json!({"full_attention": {"rope_type": "default"}});
    assert!(parse(v).unwrap_err().contains("per layer type"));

    // Activations.
    let mut v = family("llama");
    v["hidden_act"] = json!("gelu");
    let e = parse(v).unwrap_err();
    assert!(
        e.contains("\"hidden_act\"") && e.contains("gelu") && e.contains("\"silu\""),
        "{e}"
    );
    let mut v = family("qwen2");
    v["hidden_act"] = json!("swish");
    assert!(parse(v).is_ok());

    // mlp_bias is refused.
    let mut v = family("llama");
    v["mlp_bias"] = json!(true);
    let e = parse(v).unwrap_err();
    assert!(e.contains("\"mlp_bias\""), "{e}");

    // Qwen has no bos default; whittle needs one.
    let mut v = family("qwen2");
    v.as_object_mut().unwrap().remove("bos_token_id");
    assert!(parse(v).unwrap_err().contains("\"bos_token_id\""));

    // Llama refuses hidden_size not a multiple of the heads even with head_dim given.
    let mut v = family("llama");
    v["hidden_size"] = json!(66);
    v["head_dim"] = json!(16);
    assert!(parse(v).unwrap_err().contains("hidden_size (66)"));

    // An unknown model_type lists every family the parser reads.
    let e = parse(family("phi3")).unwrap_err();
    assert!(
        e.contains("\"phi3\"") && e.contains("\"qwen3\"") && e.contains("gemma3_text"),
        "{e}"
    );
}

#[test]
fn gemma_quirks_are_the_gemma_values() {
    use whittle::checkpoint::config::{Activation, AttnBias, LayerNorms, NormWeight};
    for t in ["gemma2", "gemma3_text"] {
        let c = parse(base(t)).unwrap();
        assert_eq!(c.mlp_act, Activation::GeluTanh);
        assert_eq!(c.norm_weight, NormWeight::OnePlus);
        assert_eq!(c.norms, LayerNorms::GEMMA);
        assert!(c.scale_embeddings);
        assert_eq!(c.embed_scale_f32(), 8.0);
        assert_eq!(c.attn_bias, AttnBias::default());
    }
}

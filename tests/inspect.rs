//! `whittle inspect`: parameter counts by group equal the tensors' element counts; bytes equal the
//! checkpoint's tensor bytes.

mod common;
use common::*;
use whittle::registry::Group;
use whittle::safetensors::WeightStore;

#[test]
fn counts_match_the_checkpoint() {
    for name in ["tiny-gemma2", "tiny-gemma3", "tiny-gemma3-mm"] {
        let dir = fixture(name);
        let s = whittle::inspect::summarize(&dir).unwrap();
        let store = WeightStore::open(&dir).unwrap();
        let (mut numel, mut bytes, mut outside_lm) = (0u64, 0u64, 0u64);
        for f in &store.files {
            for (n, t) in &f.tensors {
                let k = t.shape.iter().product::<usize>() as u64;
                numel += k;
                bytes += (t.end - t.start) as u64;
                if !n.starts_with("model.") && !n.starts_with("language_model.") {
                    outside_lm += k;
                }
            }
        }
        // The multimodal fixture's vision tower and projector are counted, as copied tensors.
        assert_eq!(
            s.params.get(&Group::Other).copied().unwrap_or(0),
            outside_lm,
            "{name}"
        );
        assert_eq!(name.ends_with("-mm"), outside_lm > 0);
        assert_eq!(s.total_params, numel, "{name}");
        assert_eq!(s.weight_bytes, bytes, "{name}");
        let c = &s.cfg;
        let mlp = 3 * c.num_layers * c.hidden_size * c.intermediate_size;
        assert_eq!(s.params[&Group::Mlp], mlp as u64);
        assert_eq!(
            s.params[&Group::Embedding],
            (c.vocab_size * c.hidden_size) as u64
        );
        let norms_per_layer = 4 * c.hidden_size + if c.qk_norm { 2 * c.head_dim } else { 0 };
        assert_eq!(
            s.params[&Group::Norm],
            (c.num_layers * norms_per_layer + c.hidden_size) as u64
        );
        assert!(s.tied);
        let text = s.to_text();
        assert!(text.contains(&format!("{}", s.total_params)), "{text}");
        let j = s.to_json();
        assert_eq!(j["total_params"], serde_json::json!(s.total_params));
        assert_eq!(j["layer_types"].as_array().unwrap().len(), c.num_layers);
    }
}

#[test]
fn cli_inspect_json() {
    let out = std::process::Command::new(bin())
        .args([
            "inspect",
            fixture("tiny-gemma3").to_str().unwrap(),
            "--json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["model_type"], "gemma3_text");
    assert_eq!(v["dtypes"], serde_json::json!(["BF16"]));
    assert_eq!(v["layer_types"][2], "full_attention");
}

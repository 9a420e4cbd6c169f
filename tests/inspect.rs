//! `whittle inspect`: parameter counts by group equal the tensors' element counts; bytes equal the
//! checkpoint's tensor bytes.

mod common;
use common::*;
use whittle::checkpoint::registry::Group;
use whittle::checkpoint::safetensors::WeightStore;

#[test]
fn counts_match_the_checkpoint() {
    for name in ["tiny-gemma2", "tiny-gemma3", "tiny-gemma3-mm"] {
        let dir = fixture(name);
        let s = whittle::compile::inspect::summarize(&dir).unwrap();
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

/// `inspect`'s tier table is what `compile --tier` then writes: width, parameters and the
/// output's tensor bytes (counted from the written files), for a text and a multimodal
/// checkpoint.
#[test]
fn tier_sizes_are_what_compile_writes() {
    for name in ["tiny-gemma3", "tiny-gemma3-mm"] {
        let s = whittle::compile::inspect::summarize(&fixture(name)).unwrap();
        let names: Vec<&str> = s.tiers.iter().map(|t| t.name).collect();
        assert_eq!(
            names,
            whittle::compile::TIERS
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
        );
        assert!(s.tiers.windows(2).all(|w| w[0].width > w[1].width));
        let t = s.tiers.iter().find(|t| t.name == "throughput").unwrap();
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        let o = cpu_cmd()
            .args(["compile", fixture(name).to_str().unwrap(), "-o"])
            .arg(&out)
            .args(["--tier", "throughput", "--method", "energy", "--one-shot"])
            .args(["--calib", fixture("eval-text.txt").to_str().unwrap()])
            .args(["--samples", "4", "--seq", "24"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let written = whittle::compile::inspect::summarize(&out).unwrap();
        assert_eq!(written.cfg.intermediate_size, t.width, "{name}");
        assert_eq!(written.total_params, t.params, "{name}");
        assert_eq!(written.weight_bytes, t.weight_bytes, "{name}");
        assert!(t.weight_bytes < s.weight_bytes);
        let text = s.to_text();
        assert!(text.contains("throughput") && text.contains(&t.params.to_string()));
    }
}

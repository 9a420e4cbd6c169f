//! src/cpu/rope.rs against transformers 5.24: inverse frequencies, attention scaling and cos/sin
//! tables of the four Llama-family fixtures and of synthetic configs covering every RoPE spelling
//! (tests/fixtures/llama-config/expected.json, made by scripts/make_llama_config_fixture.py), and
//! the agreement with Gemma's `ops::rope_tables`.

use serde_json::Value;
use std::path::{Path, PathBuf};
use whittle::checkpoint::config::{ModelConfig, RopeParams, RopeScaling};
use whittle::cpu::{ops, rope};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn expected() -> Value {
    serde_json::from_slice(&std::fs::read(fixtures().join("llama-config/expected.json")).unwrap())
        .unwrap()
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// The largest relative difference, and how many entries differ at all.
fn compare(got: &[f32], want: &[f32]) -> (f32, usize) {
    assert_eq!(got.len(), want.len());
    let mut worst = 0f32;
    let mut differ = 0;
    for (&g, &w) in got.iter().zip(want) {
        if g != w {
            differ += 1;
            worst = worst.max((g - w).abs() / w.abs().max(f32::MIN_POSITIVE));
        }
    }
    (worst, differ)
}

#[test]
fn fixture_tables_match_transformers() {
    let e = expected();
    let t = e["positions"].as_u64().unwrap() as usize;
    for (name, f) in e["fixtures"].as_object().unwrap() {
        let cfg = ModelConfig::from_dir(&fixtures().join(name)).unwrap();
        let p = cfg.rope_params(0);
        let (inv, scale) = rope::inv_freq(cfg.head_dim, &p);
        let (w, n) = compare(&inv, &f32s(&f["rope"]["inv_freq"]));
        eprintln!("{name}: inv_freq {n} of {} differ, worst {w:e}", inv.len());
        assert!(
            w <= 1e-6,
            "{name}: inv_freq off by {w} relative ({n} differ)"
        );
        assert_eq!(
            scale,
            f["rope"]["attention_scaling"].as_f64().unwrap() as f32,
            "{name}"
        );
        let (cos, sin) = rope::tables(t, cfg.head_dim, &p);
        for (got, key) in [(cos, "cos"), (sin, "sin")] {
            let (w, n) = compare(&got, &f32s(&f["rope"][key]));
            eprintln!("{name}: {key} {n} of {} differ, worst {w:e}", got.len());
            assert!(w <= 1e-6, "{name}: {key} off by {w} relative ({n} differ)");
        }
    }
}

#[test]
fn every_rope_spelling_resolves_as_transformers_resolves_it() {
    let e = expected();
    for case in e["rope_cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let cfg = ModelConfig::from_json_str(&case["config"].to_string(), Path::new("config.json"))
            .unwrap_or_else(|err| panic!("{name}: {err}"));
        assert_eq!(
            cfg.head_dim as u64,
            case["head_dim"].as_u64().unwrap(),
            "{name}"
        );
        let p = cfg.rope_params(0);
        let (inv, scale) = rope::inv_freq(cfg.head_dim, &p);
        let (w, n) = compare(&inv, &f32s(&case["inv_freq"]));
        eprintln!("{name}: inv_freq {n} of {} differ, worst {w:e}", inv.len());
        if name.starts_with("gemma3_270m_shape") {
            // What Gemma's f32-powf frequencies give on the same shape, for comparison.
            let (wg, ng) = compare(
                &gemma_inv(cfg.head_dim, p.theta, 1.0),
                &f32s(&case["inv_freq"]),
            );
            eprintln!("{name}: ops::rope_tables' inv_freq {ng} differ, worst {wg:e}");
        }
        assert!(
            w <= 1e-6,
            "{name}: inv_freq off by {w} relative ({n} of {} differ); {p:?}",
            inv.len()
        );
        assert_eq!(
            scale,
            case["attention_scaling"].as_f64().unwrap() as f32,
            "{name}: {p:?}"
        );
    }
}

/// The inverse frequencies `ops::rope_tables` builds (f32 powf), written out here so the test
/// below can show its tables are `tables_from_inv` of them.
fn gemma_inv(d: usize, theta: f64, factor: f64) -> Vec<f32> {
    (0..d / 2)
        .map(|i| {
            let expo = (2 * i) as f32 / d as f32;
            (1.0 / (theta as f32).powf(expo)) / factor as f32
        })
        .collect()
}

/// Gemma keeps `ops::rope_tables` (byte-identical outputs): its tables are exactly
/// `rope::tables_from_inv` of its f32-powf frequencies, which are within one ulp of
/// `rope::inv_freq`'s (transformers rounds the power once from f64, see src/cpu/rope.rs).
#[test]
fn gemma_tables_are_the_same_table_stage_within_one_ulp_of_frequencies() {
    for (d, theta, factor) in [
        (256, 1e6, 1.0),
        (256, 1e4, 1.0),
        (256, 1e6, 8.0),
        (32, 1e4, 2.0),
        (16, 1e4, 1.0),
        (128, 5e5, 1.0),
    ] {
        let t = 300;
        let inv = gemma_inv(d, theta, factor);
        let (c0, s0) = ops::rope_tables(t, d, theta, factor);
        let (c1, s1) = rope::tables_from_inv(t, &inv, 1.0);
        assert!(c0 == c1 && s0 == s1, "d {d} θ {theta} factor {factor}");
        let p = RopeParams::from(whittle::checkpoint::config::Rope {
            theta,
            linear_factor: factor,
        });
        let (new, scale) = rope::inv_freq(d, &p);
        assert_eq!(scale, 1.0);
        for (i, (&a, &b)) in new.iter().zip(&inv).enumerate() {
            let ulps = (a.to_bits() as i64 - b.to_bits() as i64).abs();
            assert!(ulps <= 1, "d {d} θ {theta}: inv_freq[{i}] {a} vs {b}");
        }
    }
}

#[test]
fn gemma_configs_give_default_or_linear_params() {
    let cfg = ModelConfig::from_dir(&fixtures().join("tiny-gemma3")).unwrap();
    assert_eq!(cfg.rope_params_full.uniform(), Some(cfg.rope_full));
    assert_eq!(cfg.rope_params_sliding.uniform(), Some(cfg.rope_sliding));
    assert!(matches!(
        cfg.rope_params_full.scaling,
        RopeScaling::Linear { factor } if factor == 2.0
    ));
    assert_eq!(cfg.rope_params_sliding.scaling, RopeScaling::Default);
}

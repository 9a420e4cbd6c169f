//! The CPU ops the Llama family adds: silu·up, bias add over rows, RMSNorm with a plain weight,
//! against torch's numbers (tests/fixtures/llama-config/expected.json, "ops"; made by
//! scripts/make_llama_config_fixture.py).

use serde_json::Value;
use std::path::Path;
use whittle::checkpoint::config::NormWeight;
use whittle::cpu::{act, bias, norm, ops};

fn expected_ops() -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama-config/expected.json");
    let e: Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
    e["ops"].clone()
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn ulps(a: f32, b: f32) -> i64 {
    if a == b {
        return 0; // also +0 == -0
    }
    (a.to_bits() as i32 as i64 - b.to_bits() as i32 as i64).abs()
}

#[test]
fn silu_matches_torch_within_two_ulp() {
    let e = expected_ops();
    let (x, y) = (f32s(&e["silu_x"]), f32s(&e["silu_y"]));
    let mut worst = 0;
    for (&x, &y) in x.iter().zip(&y) {
        let got = act::silu(x);
        assert!(got.is_finite(), "silu({x}) = {got}");
        worst = worst.max(ulps(got, y));
    }
    assert!(worst <= 2, "silu off torch by {worst} ulp");
}

#[test]
fn silu_mul_is_silu_times_up() {
    let gate: Vec<f32> = (0..40_000).map(|i| (i as f32 - 20_000.0) * 1e-3).collect();
    let up: Vec<f32> = (0..40_000).map(|i| 1.0 + (i % 7) as f32 * 0.25).collect();
    let mut a = gate.clone();
    act::silu_mul(&mut a, &up);
    for i in 0..gate.len() {
        assert_eq!(a[i], act::silu(gate[i]) * up[i]);
    }
}

#[test]
fn bias_is_added_to_every_row() {
    let (rows, n) = (700, 48);
    let mut x: Vec<f32> = (0..rows * n).map(|i| i as f32 * 0.5).collect();
    let b: Vec<f32> = (0..n).map(|j| j as f32 - 3.25).collect();
    let before = x.clone();
    bias::add_bias_rows(&mut x, &b);
    for r in 0..rows {
        for j in 0..n {
            assert_eq!(x[r * n + j], before[r * n + j] + b[j]);
        }
    }
}

#[test]
fn plain_rms_norm_matches_llama_rms_norm() {
    let e = expected_ops();
    let (mut x, w, y) = (f32s(&e["norm_x"]), f32s(&e["norm_w"]), f32s(&e["norm_y"]));
    norm::rms_norm(
        &mut x,
        &w,
        e["norm_eps"].as_f64().unwrap() as f32,
        NormWeight::Plain,
    );
    // torch sums the squares in another order and uses rsqrt: a few ulp, as for Gemma's norm.
    let worst = x.iter().zip(&y).map(|(&a, &b)| ulps(a, b)).max().unwrap();
    assert!(worst <= 8, "plain RMSNorm off torch by {worst} ulp");
}

/// The `(1 + w)` convention is Gemma's `ops::rms_norm`, bit for bit.
#[test]
fn one_plus_rms_norm_is_gemmas() {
    let d = 64;
    let x0: Vec<f32> = (0..d * 300)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.07)
        .collect();
    let w: Vec<f32> = (0..d).map(|j| (j as f32 - 30.0) * 0.01).collect();
    let (mut a, mut b) = (x0.clone(), x0);
    ops::rms_norm(&mut a, &w, 1e-6);
    norm::rms_norm(&mut b, &w, 1e-6, NormWeight::OnePlus);
    assert!(a == b);
}

//! The CPU engine's hot paths at Gemma 3 270M's shapes (hidden 640, MLP 2048, 4 heads of 256
//! over 1 KV head, a 512-token window), on synthetic weights: no model files needed.
//!
//! `cargo bench --bench cpu_hot` (all, criterion's defaults) or, for a run of a few minutes,
//! `cargo bench --bench cpu_hot -- --quick` (or `--warm-up-time 1 --measurement-time 2`); a
//! filter picks one (`cargo bench --bench cpu_hot -- attention`). Not part of `make test`.
//!
//! - `widen_bf16`: a BF16 checkpoint's gate_proj widened to f32 at load (`model::widen_bf16_into`)
//! - `linear_f32`: the gate projection of a 512-token window, [512, 640]·[2048, 640]ᵀ
//! - `gemv_bf16`: the same weight as bf16 bits in one decode step's GEMV (widened in the loop)
//! - `attention`: one 512-token window, causal, sliding window 512
//! - `layer_forward`: a one-layer model's forward over 512 tokens (embedding, the layer, final
//!   norm; a 4096-token vocabulary so the LM head stays out of it)
//! - `gram`: one batch of 512 tokens × 2048 activations into the f64 Gram statistics
//! - `obs_select`: OBS removal order to half width on a synthetic 512-neuron problem (the
//!   2048-neuron problem takes seconds per run; the cost grows as n³)
//! - `decode_step`: one token of the one-layer model after a 128-token prompt

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use half::bf16;
use serde_json::json;
use std::hint::black_box;
use std::path::Path;
use whittle::checkpoint::config::ModelConfig;
use whittle::checkpoint::registry::registry;
use whittle::checkpoint::safetensors::{encode_header, Dtype, HeaderEntry};
use whittle::cpu::attention::{attention, AttnShape};
use whittle::cpu::decode::{gemv_mat, Decoder, Mat};
use whittle::cpu::model::Model;
use whittle::cpu::ops;
use whittle::engine::calib::MlpStats;
use whittle::engine::Batch;
use whittle::rng::XorShift64;

const HIDDEN: usize = 640;
const MLP: usize = 2048;
const HEADS: usize = 4;
const KV_HEADS: usize = 1;
const HEAD_DIM: usize = 256;
const TOKENS: usize = 512;

/// Uniform values in [-scale, scale).
fn noise(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut r = XorShift64::new(seed);
    (0..n).map(|_| (2.0 * r.next_f32() - 1.0) * scale).collect()
}

fn bf16_bits(x: &[f32]) -> Vec<u16> {
    x.iter().map(|&v| bf16::from_f32(v).to_bits()).collect()
}

/// Gemma 3 270M's layer shapes, `layers` sliding-window layers, a small vocabulary.
fn config(layers: usize) -> serde_json::Value {
    json!({
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "hidden_size": HIDDEN, "intermediate_size": MLP, "num_hidden_layers": layers,
        "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM,
        "vocab_size": 4096, "query_pre_attn_scalar": HEAD_DIM, "sliding_window": 512,
        "layer_types": vec!["sliding_attention"; layers],
        "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
        "rms_norm_eps": 1e-6, "hidden_activation": "gelu_pytorch_tanh",
        "tie_word_embeddings": true, "bos_token_id": 2, "max_position_embeddings": 32768
    })
}

/// A BF16 model folder (config.json + model.safetensors) of small random weights.
fn write_model(dir: &Path, layers: usize) -> ModelConfig {
    let cfg_json = config(layers);
    let cfg = ModelConfig::from_json_str(&cfg_json.to_string(), Path::new("config.json"))
        .expect("bench config");
    let specs = registry(&cfg, false);
    let entries: Vec<HeaderEntry> = specs
        .iter()
        .map(|s| HeaderEntry {
            name: s.name.clone(),
            dtype: Dtype::BF16,
            shape: s.shape.clone(),
        })
        .collect();
    let mut bytes = encode_header(&entries, Some(&json!({"format": "pt"})));
    for (i, s) in specs.iter().enumerate() {
        for b in bf16_bits(&noise(s.numel(), i as u64 + 1, 0.05)) {
            bytes.extend_from_slice(&b.to_le_bytes());
        }
    }
    std::fs::write(dir.join("model.safetensors"), bytes).expect("write weights");
    std::fs::write(dir.join("config.json"), cfg_json.to_string()).expect("write config");
    cfg
}

fn gemm(c: &mut Criterion) {
    let w = noise(MLP * HIDDEN, 1, 0.05); // [I, H]
    let wb = bf16_bits(&w);
    let x = noise(TOKENS * HIDDEN, 2, 1.0); // [T, H]
    c.bench_function("widen_bf16", |b| {
        let mut out = vec![0f32; wb.len()];
        b.iter(|| whittle::cpu::convert::widen_bf16_into(black_box(&wb), &mut out))
    });
    c.bench_function("linear_f32", |b| {
        b.iter(|| ops::linear(black_box(&x), &w, TOKENS, HIDDEN, MLP))
    });
    c.bench_function("gemv_bf16", |b| {
        b.iter(|| gemv_mat(black_box(&x[..HIDDEN]), Mat::Bf16(&wb), HIDDEN, MLP))
    });
}

fn attn(c: &mut Criterion) {
    let q = noise(TOKENS * HEADS * HEAD_DIM, 3, 1.0);
    let k = noise(TOKENS * KV_HEADS * HEAD_DIM, 4, 1.0);
    let v = noise(TOKENS * KV_HEADS * HEAD_DIM, 5, 1.0);
    let shape = AttnShape {
        n_seq: 1,
        seq_len: TOKENS,
        n_heads: HEADS,
        n_kv_heads: KV_HEADS,
        head_dim: HEAD_DIM,
        scale: 1.0 / (HEAD_DIM as f32).sqrt(),
        softcap: None,
        window: Some(512),
    };
    c.bench_function("attention", |b| {
        b.iter(|| attention(black_box(&q), &k, &v, shape))
    });
}

fn stats(c: &mut Criterion) {
    let a = noise(TOKENS * MLP, 6, 1.0); // [T, I]
    c.bench_function("gram", |b| {
        b.iter_batched(
            || MlpStats::new(MLP, true, false),
            |mut st| {
                st.add(black_box(&a));
                st
            },
            BatchSize::LargeInput,
        )
    });
    let (w, st) = whittle::compile::prune::synthetic_problem(512, HIDDEN, 7);
    let solver = whittle::compile::prune::Solver::Cpu;
    let mut g = c.benchmark_group("obs");
    g.sample_size(10);
    g.bench_function("obs_select", |b| {
        b.iter(|| {
            whittle::compile::prune::obs_removal_order(&w, HIDDEN, &st, 256, 1e-3, &solver).unwrap()
        })
    });
    g.finish();
}

fn model(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    write_model(dir.path(), 1);
    let m = Model::load(dir.path()).expect("load the synthetic model");
    let ids: Vec<u32> = (0..TOKENS as u32).map(|i| 2 + (i * 37) % 4000).collect();
    let batch = Batch {
        n_seq: 1,
        seq_len: TOKENS,
    };
    let mut g = c.benchmark_group("model");
    g.sample_size(10);
    g.bench_function("layer_forward", |b| {
        b.iter(|| m.forward_hidden(black_box(&ids), batch, None).unwrap())
    });
    g.bench_function("decode_step", |b| {
        b.iter_batched_ref(
            || {
                let mut d = Decoder::new(&m, 256);
                d.prefill(&ids[..128]).unwrap();
                d
            },
            |d| d.step(black_box(7)).unwrap(),
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, gemm, attn, stats, model);
criterion_main!(benches);

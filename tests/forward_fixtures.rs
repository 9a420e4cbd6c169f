//! The CPU forward pass against transformers fp32 eager on the committed tiny fixtures
//! (tests/fixtures, made by scripts/make_fixtures.py): embeddings, every layer's output, every
//! MLP activation (the calibration capture point), the final norm and the logits, at every
//! position — positions beyond the sliding window included.

mod common;
use common::check::rows_rel_l2;
use std::path::{Path, PathBuf};
use whittle::checkpoint::safetensors::SafeFile;
use whittle::cpu::model::Model;
use whittle::engine::{Batch, Event};

const TOL: f64 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

struct Reference {
    file: SafeFile,
}

impl Reference {
    fn open(dir: &Path) -> Reference {
        Reference {
            file: SafeFile::open(&dir.join("reference.safetensors"))
                .expect("reference.safetensors"),
        }
    }
    fn f32(&self, name: &str) -> Vec<f32> {
        let info = self
            .file
            .tensors
            .get(name)
            .unwrap_or_else(|| panic!("reference has no {name}"));
        whittle::checkpoint::safetensors::TensorRef {
            name,
            file: &self.file,
            info,
        }
        .to_f32()
        .unwrap()
    }
    fn ids(&self) -> (Vec<u32>, Batch) {
        let info = &self.file.tensors["input_ids"];
        let ids = whittle::checkpoint::safetensors::TensorRef {
            name: "input_ids",
            file: &self.file,
            info,
        }
        .to_i64()
        .unwrap();
        let batch = Batch {
            n_seq: info.shape[0],
            seq_len: info.shape[1],
        };
        (ids.into_iter().map(|i| i as u32).collect(), batch)
    }
}

fn check_fixture(name: &str) {
    check_against(name, name);
}

/// The model in fixture `name` against the references stored with fixture `reference`.
fn check_against(name: &str, reference: &str) {
    let model = Model::load(&fixture(name)).unwrap();
    let r = Reference::open(&fixture(reference));
    let (ids, batch) = r.ids();
    let windowed = (0..model.cfg.num_layers).any(|l| model.cfg.window(l).is_some());
    assert!(
        !windowed || batch.seq_len > model.cfg.sliding_window,
        "fixture must be longer than the sliding window to test it"
    );
    let h = model.cfg.hidden_size;
    let mut failures = Vec::new();
    let mut worst = 0f64;
    let mut record = |what: String, got: &[f32], want: Vec<f32>, row: usize| match rows_rel_l2(
        &what, got, &want, row, TOL,
    ) {
        Ok(e) => worst = worst.max(e),
        Err(e) => failures.push(e),
    };
    let mut seen = 0usize;
    let mut obs = |ev: Event<'_>| {
        seen += 1;
        match ev {
            Event::Embeds(x) => record("embeds".into(), x, r.f32("embeds"), h),
            Event::MlpAct { layer, act, .. } => {
                let want = r.f32(&format!("mlp_act.{layer}"));
                let w = want.len() / batch.rows();
                record(format!("mlp_act.{layer}"), act, want, w)
            }
            Event::LayerOut { layer, hidden } => record(
                format!("layer.{layer}"),
                hidden,
                r.f32(&format!("layer.{layer}")),
                h,
            ),
        }
    };
    let hidden = model.forward_hidden(&ids, batch, Some(&mut obs)).unwrap();
    assert_eq!(
        seen,
        1 + 2 * model.cfg.num_layers,
        "observer saw every event"
    );
    record("final_norm".into(), &hidden, r.f32("final_norm"), h);
    let logits = model.logits(&hidden);
    record(
        "logits".into(),
        &logits,
        r.f32("logits"),
        model.cfg.vocab_size,
    );
    assert!(
        failures.is_empty(),
        "{name}: {} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("{name}: worst per-position ‖Δ‖/‖ref‖ = {worst:.2e}");
}

#[test]
fn tiny_gemma2_matches_transformers() {
    check_fixture("tiny-gemma2");
}

#[test]
fn tiny_gemma3_matches_transformers() {
    check_fixture("tiny-gemma3");
}

/// Llama 3 RoPE scaling, untied head, bf16 weights.
#[test]
fn tiny_llama_matches_transformers() {
    check_fixture("tiny-llama");
}

/// A sliding window (16) shorter than the sequence (40) on every layer.
#[test]
fn tiny_mistral_matches_transformers() {
    let model = Model::load(&fixture("tiny-mistral")).unwrap();
    assert!((0..model.cfg.num_layers).all(|l| model.cfg.window(l) == Some(16)));
    check_fixture("tiny-mistral");
}

/// q/k/v biases and yarn RoPE scaling.
#[test]
fn tiny_qwen2_matches_transformers() {
    let model = Model::load(&fixture("tiny-qwen2")).unwrap();
    assert!(model.held_layer(0).qkv_bias().is_some());
    check_fixture("tiny-qwen2");
}

/// Per-head q/k norms (plain weights), head_dim 32 ≠ hidden / heads, untied, bf16.
#[test]
fn tiny_qwen3_matches_transformers() {
    let model = Model::load(&fixture("tiny-qwen3")).unwrap();
    assert!(model.held_layer(0).q_norm().is_some());
    check_fixture("tiny-qwen3");
}

/// A multimodal Gemma-3 checkpoint (model_type "gemma3", `text_config`, tensors under
/// `language_model.model.*`, a vision tower beside them) whose language model is tiny-gemma3's:
/// scripts/make_mm_fixture.py checks in transformers that its text-only logits equal
/// tiny-gemma3's, so tiny-gemma3's references are its ground truth too.
#[test]
fn tiny_gemma3_multimodal_matches_transformers() {
    let model = Model::load(&fixture("tiny-gemma3-mm")).unwrap();
    assert!(model.cfg.multimodal);
    assert_eq!(model.cfg.model_type(), "gemma3");
    check_against("tiny-gemma3-mm", "tiny-gemma3");
}

/// The test above would pass vacuously if the window never cut anything; prove the window
/// matters on this fixture: a model with the window disabled must differ beyond it.
#[test]
fn sliding_window_changes_late_positions() {
    let dir = fixture("tiny-gemma2");
    let model = Model::load(&dir).unwrap();
    let r = Reference::open(&dir);
    let (ids, batch) = r.ids();
    let mut wide = Model::load(&dir).unwrap();
    wide.cfg.sliding_window = batch.seq_len + 1;
    let a = model.forward_logits(&ids, batch).unwrap();
    let b = wide.forward_logits(&ids, batch).unwrap();
    let v = model.cfg.vocab_size;
    let w = model.cfg.sliding_window;
    // Positions inside the window are identical, later ones are not.
    for p in 0..batch.seq_len {
        let (x, y) = (&a[p * v..(p + 1) * v], &b[p * v..(p + 1) * v]);
        if p < w {
            assert_eq!(
                x, y,
                "position {p} is inside the window and must not change"
            );
        }
    }
    let late = batch.seq_len - 1;
    assert!(
        common::check::rel_l2(&a[late * v..(late + 1) * v], &b[late * v..(late + 1) * v]) > 1e-3,
        "the window had no effect at position {late}"
    );
}

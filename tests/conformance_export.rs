//! Compiles each tiny fixture and exports whittle's logits on the compiled model, for
//! scripts/conformance.py to check against transformers loading the same folder (run by
//! `make test` after cargo test). The Rust side also checks what it can alone: the compiled
//! folder loads, has the promised width, and its logits are finite.

mod common;
use common::*;
use whittle::checkpoint::safetensors::{encode_header, Dtype, HeaderEntry, SafeFile, TensorRef};
use whittle::cpu::model::Model;
use whittle::engine::Batch;

#[test]
fn export_compiled_fixtures_for_transformers() {
    let root = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("conformance");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    for (name, ratio, method) in [
        ("tiny-gemma2", "0.5", "obs"),
        ("tiny-gemma3", "0.75", "energy"),
        // Multimodal: transformers must load the compiled Gemma3ForConditionalGeneration.
        ("tiny-gemma3-mm", "0.75", "obs"),
        // The Llama family: llama3 RoPE + untied bf16, a sliding window, q/k/v biases + yarn,
        // q/k norms.
        ("tiny-llama", "0.5", "obs"),
        ("tiny-mistral", "0.75", "obs"),
        ("tiny-qwen2", "0.5", "energy"),
        ("tiny-qwen3", "0.75", "obs"),
    ] {
        let out = root.join(name);
        let o = cpu_cmd()
            .args([
                "compile",
                fixture(name).to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
                "--keep-ratio",
                ratio,
            ])
            .args([
                "--method",
                method,
                "--calib",
                fixture("eval-text.txt").to_str().unwrap(),
                "--seq",
                "24",
                "--samples",
                "12",
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

        // tiny-gemma3-mm's language model is tiny-gemma3's: the same inputs serve.
        let ref_dir = fixture(name.trim_end_matches("-mm"));
        let reference = SafeFile::open(&ref_dir.join("reference.safetensors")).unwrap();
        let info = &reference.tensors["input_ids"];
        let ids: Vec<u32> = TensorRef {
            name: "input_ids",
            file: &reference,
            info,
        }
        .to_i64()
        .unwrap()
        .into_iter()
        .map(|i| i as u32)
        .collect();
        let batch = Batch {
            n_seq: info.shape[0],
            seq_len: info.shape[1],
        };
        let model = Model::load(&out).unwrap();
        let orig = Model::load(&fixture(name)).unwrap();
        assert!(model.cfg.intermediate_size < orig.cfg.intermediate_size);
        let logits = model.forward_logits(&ids, batch).unwrap();
        assert!(logits.iter().all(|x| x.is_finite()));

        let v = model.cfg.vocab_size;
        let mut bytes = encode_header(
            &[
                HeaderEntry {
                    name: "input_ids".into(),
                    dtype: Dtype::I64,
                    shape: info.shape.clone(),
                },
                HeaderEntry {
                    name: "logits".into(),
                    dtype: Dtype::F32,
                    shape: vec![batch.n_seq, batch.seq_len, v],
                },
            ],
            None,
        );
        bytes.extend(ids.iter().flat_map(|&i| (i as i64).to_le_bytes()));
        bytes.extend(f32_bytes(&logits));
        std::fs::write(
            root.join(format!("{name}.whittle-logits.safetensors")),
            bytes,
        )
        .unwrap();
    }
    eprintln!("exported to {}", root.display());
}

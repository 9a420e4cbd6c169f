//! The Rust half of scripts/device/parity.py (whittle vs transformers on the GPU machine): reads
//! `$WHITTLE_PARITY_WORK/ids.json` (written by `parity.py prepare`), runs whittle's forward pass on
//! `$WHITTLE_PARITY_MODEL` and writes, under `$WHITTLE_PARITY_WORK/whittle/`:
//!   layer.{l}.f32  [N, H]  output of decoder layer l (raw little-endian f32)
//!   final.f32      [N, H]  final-normed hidden states
//!   logits.f32     [R, V]  soft-capped logits of the chosen rows
//!   meta.json      timing (a second, observer-free forward) and shapes
//! `WHITTLE_PARITY_DEVICE=cpu` runs the CPU model instead (a local smoke test of the pipeline).
//! Without the variables the test only says it was skipped.
#![cfg(feature = "cuda")]

use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use whittle::cpu::model::Model;
use whittle::cuda::{Gpu, GpuModel, Residency};
use whittle::engine::{Batch, Event};

fn write_f32(path: &Path, x: &[f32]) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for v in x {
        f.write_all(&v.to_le_bytes()).unwrap();
    }
    f.flush().unwrap();
}

#[test]
#[ignore = "needs a GPU (run by scripts/device-check.sh)"]
fn parity_dump() {
    let (Some(work), Some(model)) = (
        std::env::var_os("WHITTLE_PARITY_WORK"),
        std::env::var_os("WHITTLE_PARITY_MODEL"),
    ) else {
        eprintln!("skipped: set WHITTLE_PARITY_WORK and WHITTLE_PARITY_MODEL (scripts/device-check.sh does)");
        return;
    };
    let (work, model) = (PathBuf::from(work), PathBuf::from(model));
    let on_cpu = std::env::var("WHITTLE_PARITY_DEVICE").is_ok_and(|d| d == "cpu");
    let spec: Value =
        serde_json::from_str(&std::fs::read_to_string(work.join("ids.json")).unwrap()).unwrap();
    let batch = Batch {
        n_seq: spec["n_seq"].as_u64().unwrap() as usize,
        seq_len: spec["seq_len"].as_u64().unwrap() as usize,
    };
    let ids: Vec<u32> = spec["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let rows: Vec<usize> = spec["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let out = work.join("whittle");
    std::fs::create_dir_all(&out).unwrap();

    enum Backend {
        Cpu(Box<Model>),
        Gpu(Box<GpuModel>),
    }
    let t = Instant::now();
    let backend = if on_cpu {
        Backend::Cpu(Box::new(Model::load(&model).unwrap()))
    } else {
        let gpu = Arc::new(Gpu::new(0).unwrap());
        eprintln!("parity on {}", gpu.info);
        Backend::Gpu(Box::new(
            GpuModel::load(&model, gpu, Residency::Resident).unwrap(),
        ))
    };
    let load_s = t.elapsed().as_secs_f64();
    let cfg = match &backend {
        Backend::Cpu(m) => m.cfg.clone(),
        Backend::Gpu(m) => m.cfg.clone(),
    };
    let hd = cfg.hidden_size;
    let forward = |obs: Option<&mut dyn FnMut(Event<'_>)>| match &backend {
        Backend::Cpu(m) => m.forward_hidden(&ids, batch, obs).unwrap(),
        Backend::Gpu(m) => m.forward_hidden(&ids, batch, obs).unwrap(),
    };
    let mut obs = |ev: Event<'_>| {
        if let Event::LayerOut { layer, hidden } = ev {
            write_f32(&out.join(format!("layer.{layer}.f32")), hidden);
        }
    };
    let hidden = forward(Some(&mut obs));
    write_f32(&out.join("final.f32"), &hidden);
    let sel: Vec<f32> = rows
        .iter()
        .flat_map(|&r| hidden[r * hd..(r + 1) * hd].iter().copied())
        .collect();
    let logits = match &backend {
        Backend::Cpu(m) => m.logits(&sel),
        Backend::Gpu(m) => m.logits(&sel).unwrap(),
    };
    write_f32(&out.join("logits.f32"), &logits);
    // Timed run: no observer (no downloads), one host copy of the result at the end.
    let t = Instant::now();
    std::hint::black_box(forward(None));
    let forward_ms = t.elapsed().as_secs_f64() * 1e3;
    let meta = json!({
        "device": if on_cpu { "cpu" } else { "cuda" },
        "tokens": batch.rows(),
        "hidden": hd,
        "vocab": cfg.vocab_size,
        "layers": cfg.num_layers,
        "rows": rows.len(),
        "load_s": load_s,
        "forward_ms": forward_ms,
    });
    std::fs::write(
        out.join("meta.json"),
        serde_json::to_string_pretty(&meta).unwrap(),
    )
    .unwrap();
    eprintln!("parity_dump: {meta}");
}

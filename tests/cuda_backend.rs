//! The CUDA calibration backend (`cuda::CudaBackend`) and `--device cuda` end to end:
//! - layer by layer through the backend, with the hidden states round-tripping through the host,
//!   gives bit for bit what `GpuModel` computes in one device-resident pass (embeddings, every
//!   layer output, the Gram matrix of every MLP activation), and stays close to the CPU backend;
//! - token-weighted statistics (device kernels) and the cross matrix (host path) are close to
//!   the CPU backend's on the same input (`out`, `out-resid`, `next-norm`);
//! - the cache is keyed by (layer, width) and notices different weights under the same key;
//! - `whittle --device cuda compile` writes a valid checkpoint close to the CPU-compiled one
//!   (mostly the same kept neurons; KL to the base model, evaluated on the CPU, within a loose
//!   bound of the CPU compile's), for Gemma 3 and for Qwen2 (Llama family: SiLU, next-norm);
//! - `whittle --device cuda eval` perplexity within 1% of `--device cpu`.
//!
//! All tests need a GPU (`--ignored`). Fixture paths resolve against `WHITTLE_ROOT` when set, and
//! the CLI binary is `WHITTLE_BIN` when set (the GPU machine runs prebuilt binaries from another
//! checkout path), else the crate's own.
#![cfg(feature = "cuda")]

mod common;
#[path = "common/gpu.rs"]
mod gpu_common;
use gpu_common::{bf16_budget, gpu, ids, real_model, root};

use common::check::rows_rel_l2;
use serde_json::Value;
use std::path::{Path, PathBuf};
use whittle::checkpoint::config::ModelConfig;
use whittle::checkpoint::registry::{Half, Kind, LayerTensor};
use whittle::checkpoint::safetensors::WeightStore;
use whittle::cpu::calib::CpuBackend;
use whittle::cpu::model::{load_layer, Model};
use whittle::cuda::{CudaBackend, GpuModel, Residency};
use whittle::engine::calib::{Backend, Capture, Layout, StatsSpec, Stream, TokenWeight};
use whittle::engine::{Batch, Event};
use whittle::layer::Layer;

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// Relative Frobenius distance of two matrices.
fn rel_f64(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den.max(1e-300)).sqrt()
}

fn spec(width: usize, tw: TokenWeight, cross: bool) -> StatsSpec {
    StatsSpec {
        width,
        gram: true,
        cross,
        token_weight: tw,
        gram_on_device: false,
        keep_acts: false,
    }
}

#[test]
#[ignore = "needs a GPU"]
fn backend_layers_equal_gpu_model_bitwise() {
    for name in ["tiny-gemma2", "tiny-gemma3", "tiny-qwen2", "tiny-qwen3"] {
        let dir = fixture(name);
        let cfg = ModelConfig::from_dir(&dir).unwrap();
        let store = WeightStore::open(&dir).unwrap();
        let batch = Batch {
            n_seq: 2,
            seq_len: 40,
        };
        let ids = ids(cfg.vocab_size, batch, cfg.bos_token_id, 777);

        // The GPU model, device-resident from the embedding to the last layer, with its own
        // device statistics.
        let gm = GpuModel::load(&dir, gpu(), Residency::Resident).unwrap();
        gm.enable_mlp_stats(true).unwrap();
        let (mut embeds, mut outs) = (Vec::new(), Vec::new());
        let mut obs = |ev: Event<'_>| match ev {
            Event::Embeds(x) => embeds = x.to_vec(),
            Event::MlpAct { .. } => {}
            Event::LayerOut { hidden, .. } => outs.push(hidden.to_vec()),
        };
        gm.forward_hidden(&ids, batch, Some(&mut obs)).unwrap();
        let gstats = gm.take_mlp_stats().unwrap().unwrap();

        // The backend, layer by layer (states resident in the backend), beside the CPU
        // backend. The reference stream runs each layer as two halves, the pruned stream as one.
        let mut be = CudaBackend::new(gpu());
        let mut cpu = CpuBackend::new();
        assert!(be.name().ends_with("(bf16)"), "{}", be.name());
        let layout = Layout::new(batch.n_seq, batch.seq_len, batch.n_seq);
        be.start(&cfg, &store, &ids, layout.clone(), true).unwrap();
        cpu.start(&cfg, &store, &ids, layout, false).unwrap();
        assert!(
            same_bits(&be.hidden(Stream::Pruned, 0).unwrap(), &embeds),
            "{name}: embeddings differ"
        );
        let i = cfg.intermediate_size;
        for l in 0..cfg.num_layers {
            let host = load_layer(&store, &cfg, l).unwrap();
            let w = be.load_layer(&cfg, &store, l, &host).unwrap();
            be.run_attention(&cfg, l, &w, Stream::Reference, 0).unwrap();
            be.run_mlp(&cfg, l, &w, Stream::Reference, 0, Capture::None, true)
                .unwrap();
            be.begin_stats(spec(i, TokenWeight::Uniform, false))
                .unwrap();
            be.run_layer(&cfg, l, &w, Stream::Pruned, 0, Capture::Stats)
                .unwrap();
            let st = be.take_stats().unwrap();
            let h = be.hidden(Stream::Pruned, 0).unwrap();
            assert!(same_bits(&h, &outs[l]), "{name}: layer {l} output");
            // The reference half ran its MLP without statistics: on Hopper that is the fused
            // gate/up GEMM (a different kernel from the statistics path's two GEMMs), so there
            // it must agree to bf16 rounding; elsewhere it is the same kernels, bit for bit.
            let r = be.hidden(Stream::Reference, 0).unwrap();
            if whittle::cuda::ops::gate_up_fused(&gpu(), cfg.hidden_size) {
                let e = rows_rel_l2(
                    &format!("{name} halves, layer {l}"),
                    &r,
                    &h,
                    cfg.hidden_size,
                    1e-2,
                )
                .unwrap_or_else(|e| panic!("{e}"));
                eprintln!("{name} layer {l}: fused gate/up half vs statistics half, worst row {e:.2e} (bitwise: {})", same_bits(&r, &h));
            } else {
                assert!(same_bits(&r, &h), "{name}: halves, layer {l}");
            }
            // Same kernels on the same rows: the Gram matrix is bitwise GpuModel's; the column
            // sums go through f64 atomics (order varies).
            let gg: Vec<f64> = gstats[l]
                .gram
                .as_ref()
                .unwrap()
                .iter()
                .map(|&x| x as f64)
                .collect();
            assert_eq!(st.count, gstats[l].count, "{name}: layer {l} count");
            assert_eq!(st.gram_host().unwrap(), &gg[..], "{name}: layer {l} Gram");
            assert!(
                rel_f64(&st.sumsq, &gstats[l].sumsq) < 1e-9,
                "{name}: layer {l} Σa²"
            );
            // Against the CPU backend (f32 activations): close, not equal.
            cpu.begin_stats(spec(i, TokenWeight::Uniform, false))
                .unwrap();
            let wc = cpu.load_layer(&cfg, &store, l, &host).unwrap();
            cpu.run_layer(&cfg, l, &wc, Stream::Pruned, 0, Capture::Stats)
                .unwrap();
            let sc = cpu.take_stats().unwrap();
            let hc = cpu.hidden(Stream::Pruned, 0).unwrap();
            // (Both backends carry their own stream from their own embeddings, so the error
            // grows layer by layer as in a forward pass: the fixture's bf16 budget.)
            let tol = bf16_budget(name);
            let e = rows_rel_l2(&format!("{name} layer {l}"), &h, &hc, cfg.hidden_size, tol)
                .unwrap_or_else(|e| panic!("{e}"));
            let eg = rel_f64(st.gram_host().unwrap(), sc.gram_host().unwrap());
            assert!(eg < tol, "{name}: layer {l} Gram vs CPU {eg:.2e}");
            eprintln!(
                "{name} layer {l}: GPU backend vs CPU backend, worst row {e:.2e}, Gram {eg:.2e}"
            );
        }
        be.finish();
        assert!(
            be.hidden(Stream::Pruned, 0).is_err(),
            "finish kept the states"
        );
    }
}

#[test]
#[ignore = "needs a GPU"]
fn weighted_and_cross_statistics_match_cpu() {
    for name in ["tiny-gemma2", "tiny-gemma3", "tiny-llama", "tiny-qwen2"] {
        let dir = fixture(name);
        let cfg = ModelConfig::from_dir(&dir).unwrap();
        let store = WeightStore::open(&dir).unwrap();
        let batch = Batch {
            n_seq: 2,
            seq_len: 33,
        };
        let ids = ids(cfg.vocab_size, batch, cfg.bos_token_id, 4242);
        let mut be = CudaBackend::new(gpu());
        let mut cpu = CpuBackend::new();
        let layout = Layout::new(batch.n_seq, batch.seq_len, 1); // two batches of one sequence
        let i = cfg.intermediate_size;
        for l in [0, cfg.num_layers - 1] {
            let host = load_layer(&store, &cfg, l).unwrap();
            let mut cut = mlp_matrices(&host);
            for x in cut.mat_mut(LayerTensor::Up).unwrap() {
                *x *= 0.5; // a "pruned" stream with other activations
            }
            for (tw, cross) in [
                (TokenWeight::Out, false),
                (TokenWeight::OutResid, false),
                (TokenWeight::NextNorm, false),
                (TokenWeight::Out, true),
                (TokenWeight::NextNorm, true),
            ] {
                let mut got = Vec::new();
                for dev in [&mut be as &mut dyn Backend, &mut cpu as &mut dyn Backend] {
                    // Both streams start from the embeddings; layer l's MLP runs on them
                    // directly (the input does not need to be layer l's real input).
                    dev.start(&cfg, &store, &ids, layout.clone(), true).unwrap();
                    let w = dev.load_layer(&cfg, &store, l, &host).unwrap();
                    let wp = dev.load_pruned(&cfg, &host, &cut).unwrap();
                    dev.begin_stats(spec(i, tw, cross)).unwrap();
                    for b in 0..2 {
                        if cross {
                            dev.run_mlp(
                                &cfg,
                                l,
                                &w,
                                Stream::Reference,
                                b,
                                Capture::Reference,
                                true,
                            )
                            .unwrap();
                        }
                        dev.run_mlp(&cfg, l, &wp, Stream::Pruned, b, Capture::Stats, false)
                            .unwrap();
                    }
                    got.push(dev.take_stats().unwrap());
                    dev.finish();
                }
                let what = format!("{name} layer {l} {} cross={cross}", tw.name());
                let eg = rel_f64(got[0].gram_host().unwrap(), got[1].gram_host().unwrap());
                let es = rel_f64(&got[0].sumsq, &got[1].sumsq);
                assert!(
                    eg < 5e-2 && es < 5e-2,
                    "{what}: Gram {eg:.2e}, Σa² {es:.2e}"
                );
                if cross {
                    let ec = rel_f64(
                        got[0].cross.as_ref().unwrap(),
                        got[1].cross.as_ref().unwrap(),
                    );
                    assert!(ec < 5e-2, "{what}: cross {ec:.2e}");
                }
                eprintln!("{what}: GPU vs CPU Gram {eg:.2e}, Σa² {es:.2e}");
            }
        }
    }
}

/// The MLP matrices of `w` alone, as `prune::slice_mlp` returns them (here uncut).
fn mlp_matrices(w: &Layer<Vec<f32>>) -> Layer<Vec<f32>> {
    w.clone()
        .only(|t| t.half() == Half::Mlp && t.kind() == Kind::Matrix)
}

#[test]
#[ignore = "needs a GPU"]
fn backend_runs_the_pruned_weights_it_is_given() {
    let dir = fixture("tiny-gemma3");
    let cfg = ModelConfig::from_dir(&dir).unwrap();
    let store = WeightStore::open(&dir).unwrap();
    let batch = Batch {
        n_seq: 1,
        seq_len: 24,
    };
    let ids = ids(cfg.vocab_size, batch, cfg.bos_token_id, 99);
    let mut be = CudaBackend::new(gpu());
    let host = load_layer(&store, &cfg, 1).unwrap();
    let same = mlp_matrices(&host);
    let mut flipped = mlp_matrices(&host);
    for x in flipped.mat_mut(LayerTensor::Down).unwrap() {
        *x *= -1.0;
    }
    let layout = Layout::new(1, batch.seq_len, 1);
    let run = |be: &mut CudaBackend, cut: Option<&Layer<Vec<f32>>>| {
        be.start(&cfg, &store, &ids, layout.clone(), false).unwrap();
        let w = match cut {
            Some(c) => be.load_pruned(&cfg, &host, c).unwrap(),
            None => be.load_layer(&cfg, &store, 1, &host).unwrap(),
        };
        be.run_mlp(&cfg, 1, &w, Stream::Pruned, 0, Capture::None, true)
            .unwrap();
        be.hidden(Stream::Pruned, 0).unwrap()
    };
    let a = run(&mut be, None);
    // The full-width MLP re-uploaded from the caller's f32 copy: the same bf16 bytes.
    assert!(same_bits(&run(&mut be, Some(&same)), &a));
    // Another down_proj at the same width is run, not a cached one.
    assert!(!same_bits(&run(&mut be, Some(&flipped)), &a));
    // A CPU layer handed to the GPU backend is an error, not a panic.
    be.start(&cfg, &store, &ids, layout.clone(), false).unwrap();
    let cpu_w = CpuBackend::new()
        .load_layer(&cfg, &store, 1, &host)
        .unwrap();
    assert!(be
        .run_mlp(&cfg, 1, &cpu_w, Stream::Pruned, 0, Capture::None, true)
        .is_err());
}

use common::{run_any_device as run, s};

fn eval_json(device: &str, model: &Path, base: Option<&Path>, seq: &str) -> Value {
    let text = fixture("eval-text.txt");
    let mut args = vec![
        "--device",
        device,
        "eval",
        s(model),
        "--text",
        s(&text),
        "--seq",
        seq,
        "--json",
    ];
    if let Some(b) = base {
        args.extend(["--base", s(b)]);
    }
    let (code, out, err) = run(&args);
    assert_eq!(code, 0, "{args:?}: {err}");
    if device != "cpu" {
        assert!(err.contains("device: cuda:"), "{err}");
    }
    serde_json::from_str(&out).unwrap()
}

fn kept(report: &Value, l: usize) -> Vec<u64> {
    report["layers"][l]["kept"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

#[test]
#[ignore = "needs a GPU"]
fn compile_on_the_gpu_is_close_to_the_cpu_compile() {
    compile_close("tiny-gemma3");
}

/// The Llama family: SiLU statistics fused on the device, the default next-norm token weights,
/// biases (tiny-qwen2).
#[test]
#[ignore = "needs a GPU"]
fn llama_family_compile_on_the_gpu_is_close_to_the_cpu_compile() {
    compile_close("tiny-qwen2");
}

/// `whittle compile` of fixture `name` on both devices: valid checkpoints with the same tensors,
/// mostly the same kept neurons, KL to the base within a loose bound of the CPU compile's.
fn compile_close(name: &str) {
    let d = tempfile::tempdir().unwrap();
    let m = fixture(name);
    let text = fixture("eval-text.txt");
    let mut reports = Vec::new();
    for dev in ["cpu", "cuda"] {
        let out = d.path().join(dev);
        let (code, _, err) = run(&[
            "--device",
            dev,
            "compile",
            s(&m),
            "-o",
            s(&out),
            "--keep-ratio",
            "0.5",
            "--calib",
            s(&text),
            "--seq",
            "24",
            "--samples",
            "24",
            "--method",
            "obs",
            "--sequential",
        ]);
        assert_eq!(code, 0, "--device {dev}: {err}");
        // A valid checkpoint: it loads, and has the CPU compile's tensors, shapes and dtypes.
        Model::load(&out).unwrap_or_else(|e| panic!("--device {dev} output: {e}"));
        reports.push(
            serde_json::from_slice::<Value>(
                &std::fs::read(out.join("whittle_report.json")).unwrap(),
            )
            .unwrap(),
        );
    }
    let (rc, rg) = (&reports[0], &reports[1]);
    let backend = rg["backend"].as_str().unwrap();
    assert!(
        backend.starts_with("cuda:") && backend.ends_with("(bf16)"),
        "{backend}"
    );
    // The report names the kernels the GPU compile ran on (emulated Hopper: the TMA GEMM).
    let k = rg["gpu_kernels"].as_str().unwrap_or_default();
    assert!(
        k.starts_with("GEMM ") && k.contains("Gram") && k.contains("attention"),
        "{k}"
    );
    assert!(rc["gpu_kernels"].is_null(), "{}", rc["gpu_kernels"]);
    // Scoring and repair solved where the calibration ran.
    assert_eq!(
        (rc["solver"].as_str(), rg["solver"].as_str()),
        (Some("cpu"), Some("cuda"))
    );
    assert_eq!(rc["intermediate_size_after"], rg["intermediate_size_after"]);
    let (sc, sg) = (
        WeightStore::open(&d.path().join("cpu")).unwrap(),
        WeightStore::open(&d.path().join("cuda")).unwrap(),
    );
    let mut names: Vec<_> = sc.names().cloned().collect();
    names.sort();
    let mut ng: Vec<_> = sg.names().cloned().collect();
    ng.sort();
    assert_eq!(names, ng);
    for n in &names {
        let (a, b) = (sc.get(n).unwrap(), sg.get(n).unwrap());
        assert_eq!(a.info.shape, b.info.shape, "{n}");
        assert_eq!(a.info.dtype, b.info.dtype, "{n}");
    }

    // Mostly the same neurons kept.
    let layers = rc["layers"].as_array().unwrap().len();
    let mut overlaps = Vec::new();
    for l in 0..layers {
        let (a, b) = (kept(rc, l), kept(rg, l));
        assert_eq!(a.len(), b.len());
        let common = a.iter().filter(|j| b.contains(j)).count();
        overlaps.push(common as f64 / a.len() as f64);
    }
    eprintln!("{name}: kept-neuron overlap per layer, GPU vs CPU compile: {overlaps:.3?}");
    let mean = overlaps.iter().sum::<f64>() / layers as f64;
    assert!(
        mean >= 0.75,
        "{name}: mean overlap {mean:.3}: {overlaps:.3?}"
    );
    assert!(
        overlaps.iter().all(|&o| o >= 0.5),
        "{name}: a layer kept mostly other neurons: {overlaps:.3?}"
    );

    // The quality against the base model, both evaluated on the CPU.
    let kl = |dev: &str| {
        eval_json("cpu", &d.path().join(dev), Some(&m), "32")["kl"]
            .as_f64()
            .unwrap()
    };
    let (kc, kg) = (kl("cpu"), kl("cuda"));
    eprintln!("{name}: KL to the base: CPU compile {kc:.5}, GPU compile {kg:.5}");
    assert!(kg.is_finite() && kg > 0.0);
    assert!(
        kg <= 1.5 * kc + 0.02,
        "{name}: GPU compile KL {kg} is much worse than the CPU compile's {kc}"
    );
}

#[test]
#[ignore = "needs a GPU"]
fn eval_on_the_gpu_is_within_one_percent_of_the_cpu() {
    // tiny-gemma3-mm: the GPU loader reads a multimodal checkpoint's language model too.
    for name in [
        "tiny-gemma3",
        "tiny-gemma2",
        "tiny-gemma3-mm",
        "tiny-llama",
        "tiny-mistral",
        "tiny-qwen2",
        "tiny-qwen3",
    ] {
        let m = fixture(name);
        let (c, g) = (
            eval_json("cpu", &m, None, "64"),
            eval_json("cuda", &m, None, "64"),
        );
        assert_eq!(c["tokens"], g["tokens"]);
        let (pc, pg) = (c["ppl"].as_f64().unwrap(), g["ppl"].as_f64().unwrap());
        eprintln!("{name}: ppl cpu {pc:.4}, cuda {pg:.4}");
        assert!(
            ((pg - pc) / pc).abs() < 0.01,
            "{name}: ppl cpu {pc}, cuda {pg}"
        );
    }
    // With a base model: KL and top-1 on the GPU near the CPU's.
    let (m, b) = (fixture("tiny-gemma3-perturbed"), fixture("tiny-gemma3"));
    let (c, g) = (
        eval_json("cpu", &m, Some(&b), "32"),
        eval_json("cuda", &m, Some(&b), "32"),
    );
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap();
    eprintln!(
        "perturbed vs base: kl cpu {:.5} cuda {:.5}; top-1 cpu {:.4} cuda {:.4}",
        f(&c, "kl"),
        f(&g, "kl"),
        f(&c, "top1_agree"),
        f(&g, "top1_agree")
    );
    assert!(((f(&g, "ppl") - f(&c, "ppl")) / f(&c, "ppl")).abs() < 0.01);
    assert!((f(&g, "kl") - f(&c, "kl")).abs() <= 0.5 * f(&c, "kl") + 5e-3);
    assert!((f(&g, "top1_agree") - f(&c, "top1_agree")).abs() <= 0.05);

    if let Some(real) = real_model() {
        let text = fixture("eval-text.txt");
        let args = |dev: &'static str| {
            vec![
                "--device".to_string(),
                dev.into(),
                "eval".into(),
                s(&real).into(),
                "--text".into(),
                s(&text).into(),
                "--seq".into(),
                "256".into(),
                "--json".into(),
            ]
        };
        let ppl = |dev: &'static str| {
            let a = args(dev);
            let a: Vec<&str> = a.iter().map(|x| x.as_str()).collect();
            let (code, out, err) = run(&a);
            assert_eq!(code, 0, "{err}");
            serde_json::from_str::<Value>(&out).unwrap()["ppl"]
                .as_f64()
                .unwrap()
        };
        let (pc, pg) = (ppl("cpu"), ppl("cuda"));
        eprintln!("gemma-3-270m: ppl cpu {pc:.4}, cuda {pg:.4}");
        assert!(
            ((pg - pc) / pc).abs() < 0.01,
            "gemma-3-270m: cpu {pc}, cuda {pg}"
        );
    } else {
        eprintln!("gemma-3-270m not present: real-model eval skipped");
    }
}

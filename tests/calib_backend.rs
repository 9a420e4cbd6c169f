//! The CPU calibration backend's sequential advance: `run_pruned_mlp` from the activations kept
//! by the statistics pass (`StatsSpec::keep_acts`) gives the pruned stream bit for bit what
//! running the pruned MLP gives, for Gemma (gelu, post-FFN norm) and the Llama family (SiLU,
//! no post-norm), with the f32 GEMMs and with the bf16 kernel where the CPU has one. One test in
//! this binary: it switches the process-wide precision.

mod common;

use common::fixture;
use whittle::checkpoint::config::ModelConfig;
use whittle::checkpoint::safetensors::WeightStore;
use whittle::compile::prune::slice_mlp;
use whittle::cpu::bf16::{self, Kernel, Precision};
use whittle::cpu::calib::CpuBackend;
use whittle::cpu::model::load_layer;
use whittle::engine::calib::{Backend, Capture, Layout, StatsSpec, Stream, TokenWeight};
use whittle::rng::XorShift64;

fn ids(vocab: usize, rows: usize, seed: u64) -> Vec<u32> {
    let mut r = XorShift64::from_state(seed | 1);
    (0..rows)
        .map(|_| (r.next_u64() % vocab as u64) as u32)
        .collect()
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[test]
fn advance_from_kept_activations_equals_running_the_pruned_mlp() {
    let mut precisions = vec![Precision::F32];
    if Kernel::supported().is_empty() {
        eprintln!("bf16 skipped: this CPU has no bf16 kernel");
    } else {
        precisions.push(Precision::Bf16);
    }
    for p in precisions {
        bf16::set_precision(p);
        for name in ["tiny-gemma3", "tiny-qwen2", "tiny-llama"] {
            let dir = fixture(name);
            let cfg = ModelConfig::from_dir(&dir).unwrap();
            let store = WeightStore::open(&dir).unwrap();
            let (n_seq, seq_len) = (4, 24);
            let ids = ids(cfg.vocab_size, n_seq * seq_len, 99);
            let layout = Layout::new(n_seq, seq_len, 2); // two batches
            let (mut kept_be, mut rerun_be) = (CpuBackend::new(), CpuBackend::new());
            kept_be
                .start(&cfg, &store, &ids, layout.clone(), false)
                .unwrap();
            rerun_be.start(&cfg, &store, &ids, layout, false).unwrap();
            let hd = cfg.hidden_size;
            for l in 0..cfg.num_layers {
                let w = load_layer(&store, &cfg, l).unwrap();
                // Every third neuron removed, and the first: gathered columns are not a prefix.
                let kept: Vec<usize> = (1..w.width).filter(|j| j % 3 != 2).collect();
                let cut = slice_mlp(&w, hd, &kept, None);
                for (be, keep) in [(&mut kept_be, true), (&mut rerun_be, false)] {
                    let spec = StatsSpec {
                        width: w.width,
                        gram: false,
                        cross: false,
                        token_weight: TokenWeight::Out,
                        gram_on_device: false,
                        keep_acts: keep,
                    };
                    let we = be.load_layer(&cfg, &store, l, &w).unwrap();
                    be.begin_stats(spec).unwrap();
                    for b in 0..2 {
                        be.run_attention(&cfg, l, &we, Stream::Pruned, b).unwrap();
                        be.run_mlp(&cfg, l, &we, Stream::Pruned, b, Capture::Stats, false)
                            .unwrap();
                    }
                    be.take_stats().unwrap();
                    assert_eq!(be.kept_activation_batches(), if keep { 2 } else { 0 });
                    let wp = be.load_pruned(&cfg, &w, &cut).unwrap();
                    for b in 0..2 {
                        if keep {
                            be.run_pruned_mlp(&cfg, l, &wp, &kept, b).unwrap();
                        } else {
                            be.run_mlp(&cfg, l, &wp, Stream::Pruned, b, Capture::None, true)
                                .unwrap();
                        }
                    }
                    assert_eq!(be.kept_activation_batches(), 0, "freed as used");
                }
                for b in 0..2 {
                    let (a, r) = (
                        kept_be.hidden(Stream::Pruned, b).unwrap(),
                        rerun_be.hidden(Stream::Pruned, b).unwrap(),
                    );
                    assert!(
                        same_bits(&a, &r),
                        "{name} {}: layer {l} batch {b} differs",
                        p.name()
                    );
                }
            }
        }
    }
}

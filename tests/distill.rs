//! End-to-end distillation (`--distill`): the whole-model gradient against finite differences,
//! the held-out guarantee, thread independence and the flags' errors.

mod common;

use common::{fixture, report, run, s, write_ids};
use std::path::Path;
use whittle::checkpoint::registry::{Half, Kind};
use whittle::cpu::grad::{self, Mlp, Net};
use whittle::cpu::model::Model;
use whittle::engine::{Batch, LogitModel};
use whittle::layer::Layer;

/// A fixture as teacher and, with every other MLP neuron removed, as student: the frozen half
/// of each layer, the student's MLPs, and the head in f32.
fn student(model: &Model) -> (Vec<Layer<Vec<f32>>>, Vec<Mlp>, Vec<f32>) {
    let cfg = &model.cfg;
    let hd = cfg.hidden_size;
    let mut frozen = Vec::new();
    let mut mlps = Vec::new();
    for l in 0..cfg.num_layers {
        let full = model.layer_f32(l);
        let kept: Vec<usize> = (0..full.width).step_by(2).collect();
        let cut = whittle::compile::prune::slice_mlp(&full, hd, &kept, None);
        mlps.push(Mlp {
            gate: cut.gate().clone(),
            up: cut.up().clone(),
            down: cut.down().clone(),
        });
        frozen.push(full.only(|t| !(t.half() == Half::Mlp && t.kind() == Kind::Matrix)));
    }
    (frozen, mlps, grad::widen_table(model.head()))
}

fn net<'a>(
    model: &'a Model,
    frozen: &'a [Layer<Vec<f32>>],
    mlps: &'a [Mlp],
    head: &'a [f32],
) -> Net<'a> {
    Net {
        cfg: &model.cfg,
        layers: frozen
            .iter()
            .zip(mlps)
            .map(|(f, m)| grad::with_mlp(f, m))
            .collect(),
        final_norm: &model.final_norm,
        embed: model.embed_table(),
        head,
    }
}

fn ids(t: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut r = whittle::rng::XorShift64::new(seed);
    (0..t)
        .map(|i| {
            if i == 0 {
                2
            } else {
                4 + (r.next_f32() * (vocab - 4) as f32) as u32 % (vocab as u32 - 4)
            }
        })
        .collect()
}

/// The analytic gradient of the summed KL with respect to MLP entries of every layer against
/// central finite differences of the f32 forward. Per layer and matrix, the entry with the
/// largest gradient and one fixed entry are checked. Tolerance: the forward is f32, so the
/// summed KL (≈ T terms of size ≈ 0.1–1) carries a rounding error of a few 1e-6; with h = 1e-2
/// that is ≈ 1e-4 in the difference quotient, and the central difference's O(h²) truncation is
/// about as small for weights of size ≈ 0.2 — so 2% of the value plus 2e-3 absolute, with the
/// largest entries required to be far above the absolute part (the relative check must bite).
/// Sequences are longer than the fixtures' sliding window (16), so the window's mask is in play;
/// the fixtures cover gelu_tanh / SiLU, (1+w) / plain norms, post-norms, q/k norms, q/k/v
/// biases, attention and final softcaps (Gemma 2), tied and untied heads, GQA.
#[test]
fn gradient_matches_finite_differences() {
    for (name, t) in [
        ("tiny-gemma3", 40),
        ("tiny-gemma2", 40),
        ("tiny-qwen2", 24),
        ("tiny-llama", 24),
        ("tiny-mistral", 40),
    ] {
        let model = Model::load(&fixture(name)).unwrap();
        let cfg = &model.cfg;
        let x = ids(t, cfg.vocab_size, 17);
        let teacher = model
            .forward_hidden(
                &x,
                Batch {
                    n_seq: 1,
                    seq_len: t,
                },
                None,
            )
            .unwrap();
        let (frozen, mlps, head) = student(&model);
        let mut grads: Vec<Mlp> = mlps.iter().map(Mlp::zeros_like).collect();
        let kl0 = grad::kl_grad(
            &net(&model, &frozen, &mlps, &head),
            &x,
            &teacher,
            1.0,
            &mut grads,
        )
        .unwrap();
        let kl_only = grad::kl(&net(&model, &frozen, &mlps, &head), &x, &teacher).unwrap();
        assert_eq!(kl0, kl_only, "{name}: the two paths' losses differ");
        assert!(
            kl0 > 0.1,
            "{name}: KL {kl0}: the student equals the teacher"
        );
        let (mut worst, mut worst_abs) = (0f64, 0f64);
        let mut checked = 0;
        for l in 0..cfg.num_layers {
            for which in 0..3 {
                let gm = |m: &Mlp| -> Vec<f32> {
                    match which {
                        0 => m.gate.clone(),
                        1 => m.up.clone(),
                        _ => m.down.clone(),
                    }
                };
                let g = gm(&grads[l]);
                let top = (0..g.len())
                    .max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs()))
                    .unwrap();
                assert!(
                    g[top].abs() > 0.05,
                    "{name}: layer {l} matrix {which}: largest gradient {} is too small to test",
                    g[top]
                );
                for idx in [top, (7 * l + 13 * which + 5) % g.len()] {
                    let h = 1e-2f32;
                    let at = |delta: f32| {
                        let mut m = mlps.clone();
                        let w = match which {
                            0 => &mut m[l].gate,
                            1 => &mut m[l].up,
                            _ => &mut m[l].down,
                        };
                        w[idx] += delta;
                        grad::kl(&net(&model, &frozen, &m, &head), &x, &teacher).unwrap()
                    };
                    let fd = (at(h) - at(-h)) / (2.0 * h as f64);
                    let gv = g[idx] as f64;
                    let err = (fd - gv).abs();
                    assert!(
                        err <= 0.02 * fd.abs().max(gv.abs()) + 2e-3,
                        "{name}: layer {l} matrix {which} [{idx}]: analytic {gv:e} vs finite \
                         difference {fd:e}"
                    );
                    if idx == top {
                        worst = worst.max(err / fd.abs().max(gv.abs()));
                    } else {
                        worst_abs = worst_abs.max(err);
                    }
                    checked += 1;
                }
            }
        }
        assert!(
            worst < 1e-2,
            "{name}: largest entries' worst relative error {worst:e}"
        );
        eprintln!(
            "{name}: {checked} entries, KL sum {kl0:.3}; largest entries: worst relative error \
             {worst:.2e}; fixed entries: worst absolute error {worst_abs:.2e}"
        );
    }
}

/// A compile of tiny-gemma3 at half width from 64 pre-tokenized sequences of 32, with `extra`
/// flags: the output folder.
fn compile(d: &Path, name: &str, extra: &[&str]) -> std::path::PathBuf {
    let ids = d.join("calib.safetensors");
    if !ids.exists() {
        write_ids(&ids, 64, 32, 512, 5);
    }
    let out = d.join(name);
    let m = fixture("tiny-gemma3");
    // f32: the held-out KL the stage reports is compared with eval's, which is f32 (compile's
    // default is bf16 on some CPUs, whose forward differs in the last digits).
    let mut args = vec![
        "--precision",
        "f32",
        "compile",
        s(&m),
        "-o",
        s(&out),
        "--keep-ratio",
        "0.5",
        "--calib-ids",
        s(&ids),
    ];
    args.extend(extra);
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{name}: {err}");
    out
}

const DISTILL: [&str; 7] = [
    "--distill",
    "--distill-tokens",
    "2048",
    "--distill-epochs",
    "3",
    "--distill-lr",
    "0.01",
];

/// Mean KL(original ‖ compiled) over sequences `seqs` of the calibration file, as `whittle
/// eval` computes it.
fn heldout_kl(d: &Path, out: &Path, seqs: &[usize]) -> f64 {
    let base = Model::load(&fixture("tiny-gemma3")).unwrap();
    let comp = Model::load(out).unwrap();
    let c = whittle::compile::calib::CalibSet::from_ids_file(
        &d.join("calib.safetensors"),
        base.cfg.vocab_size,
    )
    .unwrap();
    let (mut kl, mut n) = (0f64, 0u64);
    for &q in seqs {
        let w = &c.ids[q * c.seq_len..(q + 1) * c.seq_len];
        let st =
            whittle::serve::eval::score_window(&comp, Some(&base as &dyn LogitModel), w).unwrap();
        kl += st.kl_sum;
        n += st.tokens;
    }
    kl / n as f64
}

/// The written model's KL on the held-out calibration sequences (every 8th of 64), measured by
/// eval's own code, is the report's, and no worse than the compile without `--distill`; on this
/// model distillation improves it. The same run with 1 and 2 threads writes the same bytes.
#[test]
fn distillation_keeps_the_best_held_out_point_and_is_thread_independent() {
    let d = tempfile::tempdir().unwrap();
    let plain = compile(d.path(), "plain", &[]);
    let one = compile(
        d.path(),
        "one",
        &[&["--threads", "1"][..], &DISTILL[..]].concat(),
    );
    let two = compile(
        d.path(),
        "two",
        &[&["--threads", "2"][..], &DISTILL[..]].concat(),
    );
    let bytes = |p: &Path| std::fs::read(p.join("model.safetensors")).unwrap();
    assert!(
        bytes(&one) == bytes(&two),
        "--threads changed the distilled model"
    );
    let r = report(&one);
    let dr = &r["distillation"];
    assert_eq!(dr["epochs"], 3);
    assert_eq!(dr["tokens"], 2048);
    assert_eq!(dr["train_sequences"], 56);
    assert_eq!(dr["heldout_sequences"], 8);
    let held: Vec<f64> = dr["heldout_kl"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(held.len(), 4);
    assert_eq!(dr["train_kl"].as_array().unwrap().len(), 3);
    let kept = dr["kept_epoch"].as_u64().unwrap() as usize;
    assert!(held.iter().all(|&h| held[kept] <= h), "{dr}");
    assert!(r["timings_s"]["distill"].as_f64().unwrap() > 0.0);
    assert!(report(&plain).get("distillation").is_none());

    let held_seqs: Vec<usize> = (7..64).step_by(8).collect();
    let kl_plain = heldout_kl(d.path(), &plain, &held_seqs);
    let kl_dist = heldout_kl(d.path(), &one, &held_seqs);
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-4 * a.abs().max(b.abs()) + 1e-7;
    assert!(
        close(held[0], kl_plain),
        "report's starting KL {} vs eval's {kl_plain}",
        held[0]
    );
    assert!(
        close(held[kept], kl_dist),
        "report's kept KL {} vs eval's {kl_dist}",
        held[kept]
    );
    assert!(kl_dist <= kl_plain, "{kl_dist} > {kl_plain}");
    assert!(
        kept > 0 && kl_dist < 0.98 * kl_plain,
        "distillation did not help: {dr}"
    );

    // The cosine schedule is a different run (same start, other steps), reported by name and
    // no worse than the start on the held-out sequences either.
    assert_eq!(dr["schedule"], "constant");
    let cos = compile(
        d.path(),
        "cos",
        &[&DISTILL[..], &["--distill-schedule", "cosine"][..]].concat(),
    );
    let rc = report(&cos);
    let dc = &rc["distillation"];
    assert_eq!(dc["schedule"], "cosine");
    assert_eq!(dc["heldout_kl"][0], dr["heldout_kl"][0]);
    assert!(bytes(&cos) != bytes(&one), "the schedule changed nothing");
    let kept_c = dc["kept_epoch"].as_u64().unwrap() as usize;
    let held_c = dc["heldout_kl"][kept_c].as_f64().unwrap();
    assert!(kept_c > 0 && held_c < held[0], "{dc}");
}

/// With a step that wrecks training, no epoch beats the start and the output is the plain
/// compile's, byte for byte.
#[test]
fn a_diverging_run_writes_the_starting_point() {
    let d = tempfile::tempdir().unwrap();
    let plain = compile(d.path(), "plain", &[]);
    let wild = compile(
        d.path(),
        "wild",
        &[
            "--distill",
            "--distill-tokens",
            "512",
            "--distill-lr",
            "0.1",
            "--distill-batch",
            "1",
        ],
    );
    let r = report(&wild);
    let dr = &r["distillation"];
    let held: Vec<f64> = dr["heldout_kl"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap_or(f64::NAN))
        .collect();
    let same = std::fs::read(plain.join("model.safetensors")).unwrap()
        == std::fs::read(wild.join("model.safetensors")).unwrap();
    if dr["kept_epoch"] == 0 {
        assert!(
            same,
            "the starting point was kept but the weights changed: {dr}"
        );
    } else {
        assert!(held[1] < held[0] && !same, "{dr}");
    }
}

#[test]
fn distillation_flags_are_checked() {
    let d = tempfile::tempdir().unwrap();
    let m = fixture("tiny-gemma3");
    let text = fixture("eval-text.txt");
    let out = d.path().join("o");
    let calib = ["--calib", s(&text)];
    let none: [&str; 0] = [];
    for (c, extra, want) in [
        (&none[..], &["--distill"][..], "--distill"),
        (
            &none[..],
            &["--distill", "--method", "magnitude", "--no-repair"][..],
            "--distill",
        ),
        (
            &calib[..],
            &["--distill", "--distill-epochs", "0"][..],
            "--distill-epochs",
        ),
        (
            &calib[..],
            &["--distill", "--distill-epochs", "101"][..],
            "--distill-epochs",
        ),
        (
            &calib[..],
            &["--distill", "--distill-lr", "0"][..],
            "--distill-lr",
        ),
        (
            &calib[..],
            &["--distill", "--distill-lr", "0.5"][..],
            "--distill-lr",
        ),
        (
            &calib[..],
            &["--distill", "--distill-tokens", "8"][..],
            "--distill-tokens",
        ),
        (
            &calib[..],
            &["--distill", "--distill-batch", "0"][..],
            "--distill-batch",
        ),
        (
            &calib[..],
            &["--distill", "--max-kl", "0.5"][..],
            "--distill",
        ),
        (&calib[..], &["--distill-epochs", "3"][..], "--distill"),
        (
            &calib[..],
            &["--distill", "--distill-schedule", "linear"][..],
            "--distill-schedule",
        ),
        (
            &calib[..],
            &["--distill-schedule", "cosine"][..],
            "--distill",
        ),
    ] {
        let mut args = vec!["compile", s(&m), "-o", s(&out)];
        args.extend(c);
        args.extend(extra);
        let (code, _, err) = run(&args);
        assert_ne!(code, 0, "{extra:?} was accepted");
        assert!(
            err.contains(want) && !err.contains("panicked"),
            "{extra:?}: {err}"
        );
        assert!(!out.exists());
    }
}

/// The Llama family through the CLI: tiny-llama (SiLU, plain norms, no post-norms, an untied
/// head, BF16) and tiny-qwen2 (q/k/v biases, F32); distillation improves the held-out KL there
/// too and the kept epoch's weights are the ones written.
#[test]
fn llama_family_distills() {
    let d = tempfile::tempdir().unwrap();
    let ids = d.path().join("calib.safetensors");
    write_ids(&ids, 64, 32, 512, 5);
    for name in ["tiny-llama", "tiny-qwen2"] {
        let out = |tag: &str| d.path().join(format!("{name}-{tag}"));
        let model = fixture(name);
        let mut args = vec![
            "compile",
            s(&model),
            "--keep-ratio",
            "0.5",
            "--calib-ids",
            s(&ids),
            "-o",
        ];
        let plain = out("plain");
        let dist = out("distill");
        let (code, _, err) = run(&[&args[..], &[s(&plain)]].concat());
        assert_eq!(code, 0, "{name}: {err}");
        args.push(s(&dist));
        let (code, _, err) = run(&[&args[..], &DISTILL[..]].concat());
        assert_eq!(code, 0, "{name}: {err}");
        let r = report(&dist);
        let dr = &r["distillation"];
        let held: Vec<f64> = dr["heldout_kl"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let kept = dr["kept_epoch"].as_u64().unwrap() as usize;
        assert!(
            kept > 0 && held[kept] < 0.99 * held[0] && held.iter().all(|&h| held[kept] <= h),
            "{name}: {dr}"
        );
        let st = |p: &Path| whittle::checkpoint::safetensors::WeightStore::open(p).unwrap();
        let (a, b) = (st(&plain), st(&dist));
        for l in 0..4 {
            for m in ["gate_proj", "up_proj", "down_proj"] {
                let n = format!("model.layers.{l}.mlp.{m}.weight");
                assert!(
                    a.get(&n).unwrap().bytes() != b.get(&n).unwrap().bytes(),
                    "{name}: {n} is unchanged"
                );
            }
        }
    }
}

/// Several widths in one run: each is distilled after its own layer loop, exactly as a
/// single-width run distills it (same sequences, same seeded order), and reported per width.
#[test]
fn several_widths_each_distill_as_alone() {
    let d = tempfile::tempdir().unwrap();
    let ids = d.path().join("calib.safetensors");
    write_ids(&ids, 64, 32, 512, 5);
    let m = fixture("tiny-gemma3");
    let run_ok = |extra: &[&str]| {
        let mut args = vec!["compile", s(&m), "--calib-ids", s(&ids)];
        args.extend(extra);
        args.extend(DISTILL);
        let (code, _, err) = run(&args);
        assert_eq!(code, 0, "{extra:?}: {err}");
    };
    let both = d.path().join("both");
    let alone = d.path().join("alone");
    run_ok(&["--widths", "48,24", "-o", s(&both)]);
    run_ok(&["--intermediate-size", "24", "-o", s(&alone)]);
    for w in ["width-48", "width-24"] {
        let r = report(&both.join(w));
        assert_eq!(r["distillation"]["tokens"], 2048, "{w}");
    }
    assert!(
        std::fs::read(both.join("width-24/model.safetensors")).unwrap()
            == std::fs::read(alone.join("model.safetensors")).unwrap(),
        "width 24 distilled in a two-width run differs from the run of that width alone"
    );
}

/// The run's memory estimate includes what distillation holds: at least the head in f32 and six
/// copies of every layer's MLP at the width.
#[test]
fn memory_estimate_counts_distillation() {
    use whittle::compile::{run_memory_bytes, CompileOptions};
    let cfg = whittle::checkpoint::config::ModelConfig::from_dir(&fixture("tiny-gemma3")).unwrap();
    let plain = CompileOptions::default().validate().unwrap();
    let dist = CompileOptions {
        distill: Some(whittle::compile::distill::DistillOptions::default()),
        ..Default::default()
    }
    .validate()
    .unwrap();
    let est = |p: &_| run_memory_bytes(&cfg, 4096, p, 1, 4, &[48]);
    let (h, v, l) = (
        cfg.hidden_size as u64,
        cfg.vocab_size as u64,
        cfg.num_layers as u64,
    );
    assert!(est(&dist) >= est(&plain) + 4 * v * h + l * 6 * 4 * 3 * h * 48);
}

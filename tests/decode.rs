//! The KV-cache decoder against recomputing the whole sequence with the batched forward pass
//! (itself checked against transformers in forward_fixtures.rs): prefill + single-token steps
//! that run past the sliding window (16 on the fixtures) so the ring cache wraps, on Gemma-2
//! (softcaps) and Gemma-3 (q/k norm, two RoPEs, linear scaling). Plus the sampler.

mod common;
use common::check::rel_l2;
use std::path::{Path, PathBuf};
use whittle::checkpoint::config::LayerType;
use whittle::checkpoint::safetensors::{SafeFile, TensorRef};
use whittle::cpu::decode::{
    argmax, layer_slots, sample, slot_of, visible_range, Decoder, Rng, Sampling,
};
use whittle::cpu::model::Model;
use whittle::engine::Batch;
use whittle::engine::Engine;

/// Per-position relative L2 tolerance of decoded logits vs the full recompute.
const TOL: f64 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The first sequence of the fixture's reference input_ids (40 tokens).
fn reference_ids(dir: &Path) -> Vec<u32> {
    let f = SafeFile::open(&dir.join("reference.safetensors")).unwrap();
    let info = &f.tensors["input_ids"];
    let ids = TensorRef {
        name: "input_ids",
        file: &f,
        info,
    }
    .to_i64()
    .unwrap();
    let t = info.shape[1];
    ids[..t].iter().map(|&i| i as u32).collect()
}

/// Prefill `prompt` tokens, then decode the rest of `ids` one at a time; every position's logits
/// must match `forward_logits` on the whole of `ids`. Returns the worst error.
fn check_decode(model: &Model, ids: &[u32], prompt: usize, max_len: usize) -> f64 {
    let (t, v) = (ids.len(), model.cfg.vocab_size);
    let full = model
        .forward_logits(
            ids,
            Batch {
                n_seq: 1,
                seq_len: t,
            },
        )
        .unwrap();
    let mut dec = Decoder::new(model, max_len);
    let h = dec.prefill_hidden(&ids[..prompt]).unwrap();
    let pre = model.logits(&h);
    let mut worst = 0f64;
    for p in 0..prompt {
        let e = rel_l2(&pre[p * v..(p + 1) * v], &full[p * v..(p + 1) * v]);
        assert!(
            e <= 1e-6,
            "prefill position {p}: rel err {e:.3e} (prefill must be the batched forward)"
        );
        worst = worst.max(e);
    }
    // prefill() returns the last row's logits through the GEMV head.
    dec.reset();
    let last = dec.prefill(&ids[..prompt]).unwrap();
    let e = rel_l2(&last, &full[(prompt - 1) * v..prompt * v]);
    assert!(e <= TOL, "prefill() last logits: rel err {e:.3e}");
    for p in prompt..t {
        assert_eq!(dec.pos(), p);
        let z = dec.step(ids[p]).unwrap();
        let e = rel_l2(&z, &full[p * v..(p + 1) * v]);
        assert!(
            e <= TOL,
            "decode position {p} (window {}): rel err {e:.3e} > {TOL:.0e}",
            model.cfg.sliding_window
        );
        worst = worst.max(e);
    }
    worst
}

fn decode_equals_recompute(name: &str) {
    let dir = fixture(name);
    let model = Model::load(&dir).unwrap();
    let ids = reference_ids(&dir);
    let w = model.cfg.sliding_window;
    assert_eq!(w, 16, "the fixtures have a window of 16");
    assert!(
        model.cfg.layer_types.contains(&LayerType::Sliding)
            && model.cfg.layer_types.contains(&LayerType::Full)
    );
    // 5-token prompt + 30 steps: decoding crosses the window boundary and the ring wraps twice.
    let a = check_decode(&model, &ids[..35], 5, 35);
    // A prompt longer than the window (prefill writes only the last W positions into the ring),
    // then steps to the end; capacity larger than needed.
    let b = check_decode(&model, &ids[..40], 20, 64);
    // A one-token prompt (BOS only) decoded all the way.
    let c = check_decode(&model, &ids[..24], 1, 24);
    eprintln!("{name}: worst per-position rel err {:.2e}", a.max(b).max(c));
}

#[test]
fn tiny_gemma2_decode_equals_full_recompute() {
    decode_equals_recompute("tiny-gemma2");
}

#[test]
fn tiny_gemma3_decode_equals_full_recompute() {
    decode_equals_recompute("tiny-gemma3");
}

#[test]
fn sliding_layers_use_a_ring_of_the_window() {
    let model = Model::load(&fixture("tiny-gemma3")).unwrap();
    let dec = Decoder::new(&model, 100);
    for (l, t) in model.cfg.layer_types.iter().enumerate() {
        let want = match t {
            LayerType::Sliding => model.cfg.sliding_window,
            LayerType::Full => 100,
        };
        assert_eq!(dec.cache().slots(l), want, "layer {l} ({t:?})");
    }
    // Shorter than the window: no ring needed.
    let dec = Decoder::new(&model, 8);
    assert!((0..model.cfg.num_layers).all(|l| dec.cache().slots(l) == 8));
}

/// The slot mapping both decoders share (`cuda::GpuDecoder` lays its cache out with the same
/// functions): simulating every write of a sequence, the slots a query reads hold exactly the
/// positions it may see, each once, for rings and plain caches.
#[test]
fn slot_mapping_holds_exactly_the_visible_positions() {
    for max_len in [1usize, 2, 5, 16, 17, 40] {
        for window in [None, Some(1), Some(3), Some(16), Some(40), Some(100)] {
            let (slots, ring) = layer_slots(window, max_len);
            assert_eq!(ring, matches!(window, Some(w) if w < max_len));
            assert_eq!(slots, if ring { window.unwrap() } else { max_len });
            // slot -> position last written there
            let mut held: Vec<Option<usize>> = vec![None; slots];
            // prompt lengths 1..=max_len, the rest decoded one step at a time
            for prompt in 1..=max_len {
                held.iter_mut().for_each(|h| *h = None);
                // prefill writes only the last `slots` rows on a ring (the CPU cache's rule)
                let first = if ring {
                    prompt.saturating_sub(slots)
                } else {
                    0
                };
                let mut written: Vec<usize> =
                    (first..prompt).map(|p| slot_of(p, slots, ring)).collect();
                written.sort_unstable();
                written.dedup();
                assert_eq!(written.len(), prompt - first, "prefill rows share a slot");
                for p in first..prompt {
                    held[slot_of(p, slots, ring)] = Some(p);
                }
                for pos in prompt - 1..max_len {
                    if pos >= prompt {
                        held[slot_of(pos, slots, ring)] = Some(pos);
                    }
                    let (lo, n) = visible_range(pos, window);
                    assert_eq!(lo + n, pos + 1);
                    assert_eq!(n, window.map_or(pos + 1, |w| w.min(pos + 1)));
                    assert!(n <= slots, "more visible keys than slots");
                    for j in lo..=pos {
                        assert_eq!(
                            held[slot_of(j, slots, ring)],
                            Some(j),
                            "max_len {max_len} window {window:?} prompt {prompt} pos {pos}: \
                             slot of position {j}"
                        );
                    }
                }
            }
        }
    }
}

/// The CPU engine behind `bench` and `generate`: the trait's decoder is `Decoder`, and the
/// batched picks are the argmax of each sequence's last-position logits.
#[test]
fn cpu_engine_matches_the_decoder_and_the_forward_pass() {
    let dir = fixture("tiny-gemma2");
    let model = Model::load(&dir).unwrap();
    let ids = reference_ids(&dir);
    let engine: &dyn Engine = &model;
    assert_eq!(engine.name(), "whittle cpu f32");
    let mut a = engine.decoder(30).unwrap();
    let mut b = Decoder::new(&model, 30);
    assert_eq!(a.prefill(&ids[..6]).unwrap(), b.prefill(&ids[..6]).unwrap());
    for &t in &ids[6..12] {
        assert_eq!(a.step(t).unwrap(), b.step(t).unwrap());
    }
    assert_eq!(a.pos(), 12);
    a.reset();
    let g = a.prefill_greedy(&ids[..6]).unwrap();
    b.reset();
    assert_eq!(g, argmax(&b.prefill(&ids[..6]).unwrap()));
    assert_eq!(a.step_greedy(g).unwrap(), argmax(&b.step(g).unwrap()));
    let batch = Batch {
        n_seq: 2,
        seq_len: 10,
    };
    let picks = engine.last_token_picks(&ids[..20], batch).unwrap();
    let full = model.forward_logits(&ids[..20], batch).unwrap();
    let v = model.cfg.vocab_size;
    assert_eq!(
        picks,
        vec![argmax(&full[9 * v..10 * v]), argmax(&full[19 * v..20 * v])]
    );
}

#[test]
fn cache_capacity_and_prefill_order_are_enforced() {
    let dir = fixture("tiny-gemma2");
    let model = Model::load(&dir).unwrap();
    let ids = reference_ids(&dir);
    let mut dec = Decoder::new(&model, 6);
    assert!(
        dec.prefill(&ids[..7]).is_err(),
        "prompt longer than the cache"
    );
    dec.prefill(&ids[..5]).unwrap();
    assert!(
        dec.prefill(&ids[..2]).is_err(),
        "second prefill without reset"
    );
    dec.step(ids[5]).unwrap();
    let err = dec.step(ids[6]).unwrap_err().to_string();
    assert!(err.contains("KV cache full"), "{err}");
    dec.reset();
    assert_eq!(dec.pos(), 0);
    dec.prefill(&ids[..3]).unwrap();
    assert_eq!(dec.pos(), 3);
    dec.reset();
    assert!(dec.prefill(&[]).is_err(), "empty prompt");
}

#[test]
fn greedy_and_degenerate_sampling_pick_the_argmax() {
    let z = [0.1f32, 2.0, -1.0, 2.0, 1.5];
    assert_eq!(argmax(&z), 1, "first index on ties, like torch.argmax");
    let mut rng = Rng::new(7);
    assert_eq!(sample(&z, Sampling::Greedy, &mut rng), 1);
    assert_eq!(Sampling::new(0.0, 0.9), Sampling::Greedy);
    for seed in 0..20 {
        let mut rng = Rng::new(seed);
        // top_p small: only the single most likely token survives.
        let s = sample(&[0.0, 5.0, 1.0], Sampling::new(1.0, 1e-6), &mut rng);
        assert_eq!(s, 1);
    }
}

#[test]
fn top_p_sampling_is_seeded_and_follows_the_distribution() {
    let z: Vec<f32> = [0.5f64, 0.3, 0.15, 0.05]
        .iter()
        .map(|p| p.ln() as f32)
        .collect();
    let draw = |seed: u64, s: Sampling, n: usize| -> Vec<u32> {
        let mut rng = Rng::new(seed);
        (0..n).map(|_| sample(&z, s, &mut rng)).collect()
    };
    let full = Sampling::new(1.0, 1.0);
    assert_eq!(
        draw(42, full, 200),
        draw(42, full, 200),
        "same seed, same draws"
    );
    assert_ne!(
        draw(42, full, 200),
        draw(43, full, 200),
        "another seed, other draws"
    );
    let n = 40_000;
    let freq = |d: &[u32], k: u32| d.iter().filter(|&&x| x == k).count() as f64 / d.len() as f64;
    let d = draw(1, full, n);
    for (k, p) in [0.5, 0.3, 0.15, 0.05].iter().enumerate() {
        assert!(
            (freq(&d, k as u32) - p).abs() < 0.01,
            "token {k}: {} vs {p}",
            freq(&d, k as u32)
        );
    }
    // top_p 0.6: mass before token 1 is 0.5 < 0.6 so it stays; after it 0.8 >= 0.6, stop.
    let d = draw(2, Sampling::new(1.0, 0.6), n);
    assert!((freq(&d, 0) - 0.625).abs() < 0.01 && (freq(&d, 1) - 0.375).abs() < 0.01);
    assert_eq!(freq(&d, 2) + freq(&d, 3), 0.0);
    // Temperature 0.5 squares the odds: 0.25 : 0.09 : 0.0225 : 0.0025.
    let d = draw(3, Sampling::new(0.5, 1.0), n);
    let tot = 0.25 + 0.09 + 0.0225 + 0.0025;
    assert!((freq(&d, 0) - 0.25 / tot).abs() < 0.01, "{}", freq(&d, 0));
}

/// The bf16 GEMV that decode steps use on BF16 checkpoints gives bit-identical results to the
/// f32 GEMV on the same (bf16-exact) values: same products, same summation order. Odd sizes
/// (tails of the 16-lane loop) and a matrix big enough for the parallel path.
#[test]
fn bf16_gemv_is_bit_identical_to_f32() {
    use whittle::cpu::decode::{gemv_mat, Mat};
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    for (n, k) in [(1, 1), (7, 15), (33, 17), (130, 640), (2049, 257)] {
        let w: Vec<f32> = (0..n * k)
            .map(|_| half::bf16::from_f32(rnd() * 3.0).to_f32())
            .collect();
        let x: Vec<f32> = (0..k).map(|_| rnd()).collect();
        let packed: Vec<u16> = w
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_bits())
            .collect();
        let (a, b) = (
            gemv_mat(&x, Mat::F32(&w), k, n),
            gemv_mat(&x, Mat::Bf16(&packed), k, n),
        );
        for (i, (p, q)) in a.iter().zip(&b).enumerate() {
            assert_eq!(p.to_bits(), q.to_bits(), "[{n}x{k}] row {i}: {p} vs {q}");
        }
    }
}

/// A BF16 checkpoint is held as bf16 bits (half the memory; decode steps read them, batched
/// passes widen them), with exactly the values the f32 loader reads; an F32 checkpoint is held
/// in f32. Decoding and the forward pass match the references either way (tests above and
/// forward_fixtures.rs).
#[test]
fn bf16_checkpoints_are_held_as_bf16() {
    use whittle::checkpoint::safetensors::WeightStore;
    use whittle::cpu::decode::Mat;
    use whittle::cpu::model::{load_layer, Table};
    let dir = fixture("tiny-gemma3");
    let g3 = Model::load(&dir).unwrap();
    let store = WeightStore::open(&dir).unwrap();
    let c = &g3.cfg;
    for l in 0..c.num_layers {
        assert!(
            g3.held_layer(l)
                .mats()
                .all(|(_, m)| matches!(m, Table::Bf16(_))),
            "layer {l} of a BF16 checkpoint is held as bf16"
        );
        let want = load_layer(&store, c, l).unwrap();
        let got = g3.layer_f32(l);
        for (a, b) in [
            (got.q(), want.q()),
            (got.o(), want.o()),
            (got.gate(), want.gate()),
            (got.down(), want.down()),
        ] {
            assert_eq!(a, b, "layer {l}");
        }
        assert_eq!(got.input_norm(), want.input_norm());
    }
    assert!(matches!(g3.head(), Mat::Bf16(_)));
    let (h, i, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
    let mats = c.num_layers * (2 * c.q_dim() * h + 2 * c.kv_dim() * h + 3 * i * h) + v * h;
    let norms = c.num_layers * (4 * h + 2 * c.head_dim) + h;
    assert_eq!(g3.held_bytes(), 2 * mats + 4 * norms);

    let g2 = Model::load(&fixture("tiny-gemma2")).unwrap();
    assert!(
        matches!(g2.held_layer(0).q(), Table::F32(_)),
        "tiny-gemma2 is F32"
    );
    assert!(matches!(g2.head(), Mat::F32(_)));
}

/// The reference top-p sampler: the whole vocabulary sorted, then the nucleus drawn from. The
/// library's sampler sorts only a prefix that holds the nucleus; it must pick the same token for
/// every draw.
fn sample_full_sort(logits: &[f32], temperature: f32, top_p: f32, rng: &mut Rng) -> u32 {
    let m = logits.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
    let mut probs: Vec<f64> = logits
        .iter()
        .map(|&z| ((z - m) as f64 * (1.0 / temperature as f64)).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    let mut order: Vec<u32> = (0..probs.len() as u32).collect();
    order.sort_by(|&a, &b| {
        probs[b as usize]
            .total_cmp(&probs[a as usize])
            .then(a.cmp(&b))
    });
    let (mut kept, mut mass) = (0usize, 0.0);
    for &i in &order {
        if kept > 0 && mass >= top_p as f64 {
            break;
        }
        mass += probs[i as usize];
        kept += 1;
    }
    let r = rng.next_f64() * mass;
    let mut acc = 0.0;
    for &i in &order[..kept] {
        acc += probs[i as usize];
        if r < acc {
            return i;
        }
    }
    order[kept - 1]
}

/// Peaked, flat (a nucleus of thousands of tokens, beyond the first sorted prefix) and tied
/// logits over a 50k vocabulary: the prefix sort draws exactly what a full sort draws.
#[test]
fn top_p_prefix_sort_draws_what_a_full_sort_draws() {
    let v = 50_000;
    let mut gen = Rng::new(7);
    let peaked: Vec<f32> = (0..v).map(|_| (gen.next_f64() * 20.0) as f32).collect();
    let flat: Vec<f32> = (0..v).map(|_| (gen.next_f64() * 0.5) as f32).collect();
    let tied: Vec<f32> = (0..v).map(|i| (i % 7) as f32 * 0.1).collect();
    for (name, z) in [("peaked", &peaked), ("flat", &flat), ("tied", &tied)] {
        for (t, p) in [(1.0f32, 0.95f32), (0.7, 0.5), (1.3, 0.999)] {
            let (mut a, mut b) = (Rng::new(11), Rng::new(11));
            for draw in 0..20 {
                let got = sample(z, Sampling::new(t, p), &mut a);
                let want = sample_full_sort(z, t, p, &mut b);
                assert_eq!(got, want, "{name} logits, T {t}, top-p {p}, draw {draw}");
            }
        }
    }
}

/// An engine that keeps `Engine::lanes`' default (one decoder per lane, stepped in turn), the
/// way the GPU engine serves lanes.
struct SerialOnly<'m>(&'m Model);

impl Engine for SerialOnly<'_> {
    fn cfg(&self) -> &whittle::checkpoint::config::ModelConfig {
        &self.0.cfg
    }
    fn name(&self) -> String {
        "serial lanes".into()
    }
    fn device(&self) -> String {
        "cpu".into()
    }
    fn last_token_picks(&self, ids: &[u32], batch: Batch) -> whittle::Result<Vec<u32>> {
        self.0.last_token_picks(ids, batch)
    }
    fn decoder(&self, max_len: usize) -> whittle::Result<Box<dyn whittle::engine::Decode + '_>> {
        self.0.decoder(max_len)
    }
}

/// Three lanes over one model, staggered: lane 1 starts two steps late, lane 0 resets half-way
/// and starts another sequence, steps name the lanes out of order and skip some. Every row of
/// every step must equal (CPU batched lanes: within the decoder tolerance; the default serial
/// lanes: bit for bit) what a single decoder gives for that lane's sequence. Runs past the
/// sliding window (16) so each lane's ring wraps; tiny-qwen2 adds biases and SiLU.
fn lanes_equal_single_decoders(name: &str) {
    let dir = fixture(name);
    let model = Model::load(&dir).unwrap();
    let ids = reference_ids(&dir);
    let v = model.cfg.vocab_size;
    // Lane sequences: lane 0 = ids[0..20], reset, ids[5..24] (step 20 idle); lane 1 = ids[3..31]
    // (steps 2..37 but every fifth); lane 2 = ids[10..40].
    let script: Vec<Vec<(usize, usize)>> = (0..40)
        .map(|step| {
            let mut s = Vec::new();
            if step < 20 {
                s.push((0, step));
            } else if step >= 21 {
                s.push((0, 5 + step - 21));
            }
            if (2..37).contains(&step) && step % 5 != 4 {
                s.push((1, 0));
            }
            if step < 30 {
                s.push((2, 10 + step));
            }
            s.reverse();
            s
        })
        .collect();
    for serial in [false, true] {
        let serial_engine = SerialOnly(&model);
        let engine: &dyn Engine = if serial { &serial_engine } else { &model };
        let mut lanes = engine.lanes(3, 40).unwrap();
        let mut singles: Vec<Decoder> = (0..3).map(|_| Decoder::new(&model, 40)).collect();
        let mut lane1 = 3usize; // lane 1's next index into ids
        let mut worst = 0f64;
        for (step, plan) in script.iter().enumerate() {
            if step == 20 {
                lanes.reset(0);
                singles[0].reset();
            }
            let (names, toks): (Vec<usize>, Vec<u32>) = plan
                .iter()
                .map(|&(lane, at)| {
                    let at = if lane == 1 {
                        lane1 += 1;
                        lane1 - 1
                    } else {
                        at
                    };
                    (lane, ids[at])
                })
                .unzip();
            if names.is_empty() {
                continue;
            }
            let z = lanes.step(&names, &toks).unwrap();
            assert_eq!(z.len(), names.len() * v);
            for (r, (&lane, &tok)) in names.iter().zip(&toks).enumerate() {
                let want = singles[lane].step(tok).unwrap();
                assert_eq!(lanes.pos(lane), singles[lane].pos(), "lane {lane} position");
                let got = &z[r * v..(r + 1) * v];
                if serial {
                    assert_eq!(got, &want[..], "serial lanes, step {step}, lane {lane}");
                } else {
                    let e = rel_l2(got, &want);
                    assert!(e <= TOL, "{name} step {step} lane {lane}: rel err {e:.3e}");
                    worst = worst.max(e);
                }
            }
        }
        eprintln!("{name} lanes (serial {serial}): worst rel err {worst:.2e}");
    }
    // The step contract: one id per lane, lanes distinct and in range.
    let mut lanes = Engine::lanes(&model, 2, 8).unwrap();
    for (names, toks) in [
        (vec![0, 0], vec![1, 2]),
        (vec![2], vec![1]),
        (vec![0, 1], vec![1]),
    ] {
        let err = lanes.step(&names, &toks).unwrap_err().to_string();
        assert!(err.contains("lane"), "{err}");
    }
}

#[test]
fn tiny_gemma3_lanes_equal_single_decoders() {
    lanes_equal_single_decoders("tiny-gemma3");
}

#[test]
fn tiny_qwen2_lanes_equal_single_decoders() {
    lanes_equal_single_decoders("tiny-qwen2");
}

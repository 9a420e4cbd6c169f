//! The GPU decode path (kernels/decode.cu, `cuda::GpuDecoder`): every decode kernel against a
//! plain CPU reference, then the GPU decoder against the CPU `Decoder` (the oracle) and against
//! recomputing the whole sequence with the GPU's batched forward pass, on the tiny fixtures
//! (Gemma 2 / 3 and the Llama family; window 16 where there is one; prompts shorter and longer
//! than the window, steps that wrap the ring) and on
//! models/gemma-3-270m when present; greedy picks; the CLI's `--device cuda` generate and bench.
//!
//! Comparisons go through `common::check::rows_rel_l2` (per row ‖Δ‖/‖ref‖; any NaN fails), and
//! outputs are poisoned with NaN before each launch, so an unwritten element fails.
//!
//! Tolerances:
//! - kernels: bf16 outputs 1e-2 and f32 outputs 1e-5, as tests/cuda_kernels.rs (inputs rounded to
//!   bf16 first, so the CPU sees the GPU's values; the only differences are the bf16 output
//!   rounding, 2^-9 relative, and the f32 summation order).
//! - decoder logits vs the CPU decoder: `bf16_budget` (5e-2 on Gemma's fixtures, more on the
//!   Llama family's, which transformers' own bf16 path rounds as far), the budget
//!   tests/cuda_model.rs sets for the GPU forward vs the CPU forward on the same fixtures (bf16
//!   weights and activations against f32).
//!   A step rounds at the same points as the batched GPU forward, so decoding adds only f32
//!   summation-order changes, far below one bf16 ulp per value; a wrong slot, position, window
//!   or split merge gives O(1) errors.
//! - decoder vs the GPU's own full recompute: the same budget (both are bf16 paths; they differ by
//!   the flash kernel rounding p to bf16 and by summation order); split counts 1 vs several:
//!   1e-2 (f32 merge order only).
//!
//! All but the first two tests need a GPU (`--ignored`). Fixture paths resolve against
//! `WHITTLE_ROOT`, the CLI binary is `WHITTLE_BIN` when set.
#![cfg(feature = "cuda")]

mod common;
#[path = "common/gpu.rs"]
mod gpu_common;
use gpu_common::{
    bf, bf16_budget, cpu_gate_up_act, down, gpu, llama3_rope, poisoned_bf16, poisoned_f32,
    rand_vals, real_model, root, rope_freqs, up_bf16, yarn_rope, ACTIVATIONS,
};

use common::check::assert_rows_rel_l2 as check;
use half::bf16;
use serde_json::Value;
use std::path::{Path, PathBuf};
use whittle::checkpoint::config::{LayerType, Rope, RopeParams};
use whittle::cpu::attention::{attention as cpu_attention, AttnShape};
use whittle::cpu::decode::{argmax, layer_slots, slot_of, Decoder};
use whittle::cpu::model::Model;
use whittle::cpu::ops as cpu;
use whittle::cuda::ops::{
    self, decode_attention_kernel, plan_decode_splits, DecodeAttnParams, DecodeWorkspace,
    DECODE_MAX_SPLITS,
};
use whittle::cuda::{DTensor, GpuDecoder, GpuModel, Residency};
use whittle::engine::Batch;
use whittle::engine::Engine;

// ---------------------------------------------------------------------------------------------
// Runs everywhere (host-side planning)

#[test]
fn split_planning_covers_every_key_once() {
    for n in 1..3000usize {
        for nh in [1usize, 4, 8, 16, 64] {
            for sms in [1usize, 46, 132] {
                for forced in [None, Some(0), Some(1), Some(3), Some(64), Some(10_000)] {
                    let (chunk, s) = plan_decode_splits(n, nh, sms, forced);
                    assert!(
                        (1..=DECODE_MAX_SPLITS).contains(&s)
                            && chunk >= 1
                            && (s - 1) * chunk < n
                            && n <= s * chunk,
                        "n {n} nh {nh} sms {sms} forced {forced:?}: chunk {chunk} splits {s}"
                    );
                    if let Some(f) = forced {
                        assert!(s <= f.max(1), "forced {f} gave {s}");
                    }
                }
            }
        }
    }
    // one split for short contexts, several for long ones
    assert_eq!(plan_decode_splits(20, 4, 132, None).1, 1);
    assert!(plan_decode_splits(4096, 4, 132, None).1 > 1);
}

#[test]
fn decode_attention_instantiation_follows_head_dim() {
    let k = decode_attention_kernel;
    assert_eq!(k(8), Some("decode_attention_d32"));
    assert_eq!(k(32), Some("decode_attention_d32"));
    assert_eq!(k(40), Some("decode_attention_d64"));
    assert_eq!(k(64), Some("decode_attention_d64"));
    assert_eq!(k(128), Some("decode_attention_d128"));
    assert_eq!(k(136), Some("decode_attention_d256"));
    assert_eq!(k(256), Some("decode_attention_d256"));
    for bad in [0, 4, 12, 33, 264, 512] {
        assert_eq!(k(bad), None, "head_dim {bad}");
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

const BF16_TOL: f64 = 1e-2;
const F32_TOL: f64 = 1e-5;
/// The NaN `poisoned_bf16` fills with (unwritten cache slots must still hold it).
const NAN_BF16: u16 = 0x7fc1;

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

/// Pseudo-random ids after BOS.
fn seq_ids(vocab: usize, bos: u32, n: usize, seed: u64) -> Vec<u32> {
    gpu_common::ids(
        vocab,
        Batch {
            n_seq: 1,
            seq_len: n,
        },
        bos,
        seed,
    )
}

// ---------------------------------------------------------------------------------------------
// GEMV

#[test]
#[ignore = "needs a GPU"]
fn gemv_matches_cpu_linear() {
    let g = gpu();
    // (M, N, K): decode rows, every M up to 8, ragged N, K % 8 != 0 (the unaligned kernel),
    // model shapes (q of gemma-2-2b, down of gemma-3-270m, an LM head of 262144 rows).
    let shapes = [
        (1, 1, 8),
        (1, 7, 64),
        (1, 9, 13),
        (2, 33, 72),
        (3, 100, 13),
        (5, 17, 200),
        (8, 65, 128),
        (8, 5, 7),
        (1, 2048, 2304),
        (1, 640, 2048),
        (4, 300, 9216),
        (1, 262_144, 64),
    ];
    for (i, &(m, n, k)) in shapes.iter().enumerate() {
        let x = rand_vals(m * k, 10 + i as u64, 1.0);
        let w = rand_vals(n * k, 100 + i as u64, 0.5);
        let want = cpu::linear(&x, &w, m, k, n);
        let xd = up_bf16(&g, &x, &[m, k]);
        let wd = up_bf16(&g, &w, &[n, k]);
        let mut yb = poisoned_bf16(&g, &[m, n]);
        let mut yf = poisoned_f32(&g, &[m, n]);
        ops::gemv(&g, &xd, &wd, Some(&mut yb), Some(&mut yf), None).unwrap();
        let what = format!("gemv {m}x{n}x{k}");
        check(&format!("{what} bf16"), &down(&g, &yb), &want, n, BF16_TOL);
        check(
            &format!("{what} f32"),
            &yf.to_host(&g).unwrap(),
            &want,
            n,
            F32_TOL,
        );
        // the fused final softcap, f32 only
        let mut capped = want.clone();
        cpu::softcap(&mut capped, 3.0);
        let mut yc = poisoned_f32(&g, &[m, n]);
        ops::gemv(&g, &xd, &wd, None, Some(&mut yc), Some(3.0)).unwrap();
        check(
            &format!("{what} softcap"),
            &yc.to_host(&g).unwrap(),
            &capped,
            n,
            F32_TOL,
        );
    }
}

#[test]
#[ignore = "needs a GPU"]
fn gemv_act_matches_cpu() {
    let g = gpu();
    for f in ACTIVATIONS {
        for (i, &(m, n, k)) in [
            (1, 96, 64),
            (1, 2048, 640),
            (1, 37, 13),
            (3, 130, 72),
            (8, 9, 8),
            (6, 11, 21),
        ]
        .iter()
        .enumerate()
        {
            let x = rand_vals(m * k, 20 + i as u64, 1.0);
            let wg = rand_vals(n * k, 200 + i as u64, 0.5);
            let wu = rand_vals(n * k, 300 + i as u64, 0.5);
            let want = cpu_gate_up_act(f, &x, &wg, &wu, m, k, n);
            let xd = up_bf16(&g, &x, &[m, k]);
            let (gd, ud) = (up_bf16(&g, &wg, &[n, k]), up_bf16(&g, &wu, &[n, k]));
            let mut act = poisoned_bf16(&g, &[m, n]);
            ops::gemv_act(&g, f, &xd, &gd, &ud, &mut act).unwrap();
            let what = format!("gemv_act {f:?} {m}x{n}x{k}");
            check(&what, &down(&g, &act), &want, n, BF16_TOL);
            // The activation is rounded like gemm_nt + act_mul: from the GEMV's own bf16 gate
            // and up outputs, act_mul reproduces it exactly unless an f32 sum order flips a
            // rounding.
            let (mut gb, mut ub) = (poisoned_bf16(&g, &[m, n]), poisoned_bf16(&g, &[m, n]));
            ops::gemv(&g, &xd, &gd, Some(&mut gb), None, None).unwrap();
            ops::gemv(&g, &xd, &ud, Some(&mut ub), None, None).unwrap();
            let mut act2 = poisoned_bf16(&g, &[m, n]);
            ops::act_mul(&g, f, &gb, &ub, &mut act2, None, None).unwrap();
            // (The same lane order sums gate and up in both, so the bf16 inputs of the
            // activation are the same; allow 1% of one-ulp differences in case the compiler
            // contracts it differently.)
            let (a, b) = (down(&g, &act), down(&g, &act2));
            let mut same = 0;
            for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                same += (x == y) as usize;
                assert!(
                    (x - y).abs() <= y.abs() / 128.0,
                    "{what} [{i}]: fused {x} vs gemv + act_mul {y}"
                );
            }
            assert!(
                same * 100 >= a.len() * 99,
                "{what}: {} of {} activations differ from gemv + act_mul",
                a.len() - same,
                a.len()
            );
        }
    }
}

#[test]
#[ignore = "needs a GPU"]
fn gemv_rejects_bad_shapes() {
    let g = gpu();
    let x = DTensor::<bf16>::zeros(&g, &[9, 16]).unwrap();
    let w = DTensor::<bf16>::zeros(&g, &[4, 16]).unwrap();
    let mut y = DTensor::<bf16>::zeros(&g, &[9, 4]).unwrap();
    let e = ops::gemv(&g, &x, &w, Some(&mut y), None, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("decode_gemv_bf16") && e.contains("at most 8"),
        "{e}"
    );
    let x = DTensor::<bf16>::zeros(&g, &[1, 16]).unwrap();
    let w2 = DTensor::<bf16>::zeros(&g, &[4, 24]).unwrap();
    let mut y = DTensor::<bf16>::zeros(&g, &[1, 4]).unwrap();
    let e = ops::gemv(&g, &x, &w2, Some(&mut y), None, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("inner dimensions"), "{e}");
    let mut y5 = DTensor::<bf16>::zeros(&g, &[1, 5]).unwrap();
    let e = ops::gemv(&g, &x, &w, Some(&mut y5), None, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("expected [1, 4]"), "{e}");
    let mut yf = DTensor::<f32>::zeros(&g, &[1, 4]).unwrap();
    let e = ops::gemv(&g, &x, &w, None, Some(&mut yf), Some(0.0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("softcap"), "{e}");
    let e = ops::gemv(&g, &x, &w, None, None, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no output"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Decode attention, RoPE + cache write, prefill cache write

/// (nh, nkv, d, window, max_len, pos, softcap, splits)
type DecCase = (
    usize,
    usize,
    usize,
    Option<usize>,
    usize,
    usize,
    Option<f32>,
    Option<usize>,
);

#[test]
#[ignore = "needs a GPU"]
fn decode_attention_matches_cpu() {
    let g = gpu();
    let cases: &[DecCase] = &[
        (4, 1, 256, None, 600, 599, None, None),
        (4, 1, 256, Some(512), 600, 599, None, Some(1)),
        (4, 1, 256, Some(512), 600, 599, None, None),
        (8, 4, 256, Some(100), 300, 250, Some(50.0), Some(5)),
        (8, 4, 128, None, 200, 130, Some(50.0), None),
        (4, 2, 128, Some(16), 64, 40, None, Some(3)),
        (4, 2, 64, Some(30), 130, 129, None, Some(2)),
        (2, 2, 64, None, 10, 0, None, None), // the first token sees only itself
        (4, 2, 32, Some(16), 64, 63, Some(5.0), Some(4)),
        (4, 2, 32, Some(16), 64, 15, Some(5.0), None),
        (4, 2, 32, Some(16), 64, 16, None, Some(64)),
        (2, 1, 48, Some(7), 30, 29, Some(3.0), Some(2)), // d = 48 on the d64 kernel
        (2, 1, 8, None, 20, 19, None, Some(3)),          // d = 8 on the d32 kernel
        (2, 1, 160, Some(9), 40, 33, None, None),        // d = 160 on the d256 kernel
        (2, 1, 256, Some(50), 40, 39, None, Some(2)),    // window >= max_len: no ring
        (16, 8, 128, None, 2048, 2047, None, None),      // long context, many splits
    ];
    for (ci, &(nh, nkv, d, window, max_len, pos, softcap, splits)) in cases.iter().enumerate() {
        let t = pos + 1;
        let (slots, ring) = layer_slots(window, max_len);
        let q = rand_vals(t * nh * d, 300 + ci as u64, 2.0);
        let k = rand_vals(t * nkv * d, 400 + ci as u64, 2.0);
        let v = rand_vals(t * nkv * d, 500 + ci as u64, 1.0);
        let scale = 1.0 / (d as f32).sqrt();
        // Reference: the causal (windowed) CPU attention over the whole sequence, last row.
        let full = cpu_attention(
            &q,
            &k,
            &v,
            AttnShape {
                n_seq: 1,
                seq_len: t,
                n_heads: nh,
                n_kv_heads: nkv,
                head_dim: d,
                scale,
                softcap,
                window,
            },
        );
        let want = &full[pos * nh * d..];
        // Cache: unwritten slots hold NaN (a read of one fails the test). A prefill of the first
        // half, then one write per position (pos0 > 0, wrapping the ring).
        let mut kc = poisoned_bf16(&g, &[nkv, slots, d]);
        let mut vc = poisoned_bf16(&g, &[nkv, slots, d]);
        let p0 = t.div_ceil(2);
        let row = nkv * d;
        let kd = up_bf16(&g, &k[..p0 * row], &[p0, row]);
        let vd = up_bf16(&g, &v[..p0 * row], &[p0, row]);
        ops::kv_cache_write(&g, &kd, &vd, &mut kc, &mut vc, nkv, d, slots, ring, 0).unwrap();
        for p in p0..t {
            let kd = up_bf16(&g, &k[p * row..(p + 1) * row], &[1, row]);
            let vd = up_bf16(&g, &v[p * row..(p + 1) * row], &[1, row]);
            ops::kv_cache_write(&g, &kd, &vd, &mut kc, &mut vc, nkv, d, slots, ring, p).unwrap();
        }
        let qd = up_bf16(&g, &q[pos * nh * d..], &[nh, d]);
        let mut ws = DecodeWorkspace::new(&g, nh, d).unwrap();
        let mut out = poisoned_bf16(&g, &[nh, d]);
        let p = DecodeAttnParams {
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: d,
            slots,
            ring,
            pos,
            window,
            scale,
            softcap,
            splits,
        };
        let used = ops::decode_attention(&g, &qd, &kc, &vc, &mut out, &mut ws, &p).unwrap();
        let what = format!(
            "decode attention nh={nh} nkv={nkv} d={d} W={window:?} slots={slots} ring={ring} \
             pos={pos} cap={softcap:?} splits={used}"
        );
        check(&what, &down(&g, &out), want, d, BF16_TOL);
    }
}

#[test]
#[ignore = "needs a GPU"]
fn decode_attention_rejects_bad_calls() {
    let g = gpu();
    let (nh, nkv, d, slots) = (4, 2, 32, 16);
    let q = DTensor::<bf16>::zeros(&g, &[nh, d]).unwrap();
    let kc = DTensor::<bf16>::zeros(&g, &[nkv, slots, d]).unwrap();
    let vc = DTensor::<bf16>::zeros(&g, &[nkv, slots, d]).unwrap();
    let mut out = DTensor::<bf16>::zeros(&g, &[nh, d]).unwrap();
    let mut ws = DecodeWorkspace::new(&g, nh, d).unwrap();
    let base = DecodeAttnParams {
        n_heads: nh,
        n_kv_heads: nkv,
        head_dim: d,
        slots,
        ring: false,
        pos: 3,
        window: None,
        scale: 1.0,
        softcap: None,
        splits: None,
    };
    let err = |p: DecodeAttnParams, ws: &mut DecodeWorkspace, out: &mut DTensor<bf16>| {
        ops::decode_attention(&g, &q, &kc, &vc, out, ws, &p)
            .unwrap_err()
            .to_string()
    };
    let e = err(DecodeAttnParams { pos: 16, ..base }, &mut ws, &mut out);
    assert!(e.contains("past the cache"), "{e}");
    let e = err(
        DecodeAttnParams {
            ring: true,
            window: Some(17),
            pos: 40,
            ..base
        },
        &mut ws,
        &mut out,
    );
    assert!(e.contains("ring"), "{e}");
    let e = err(
        DecodeAttnParams {
            head_dim: 12,
            ..base
        },
        &mut ws,
        &mut out,
    );
    assert!(e.contains("head_dim 12"), "{e}");
    let e = err(
        DecodeAttnParams {
            n_kv_heads: 3,
            ..base
        },
        &mut ws,
        &mut out,
    );
    assert!(e.contains("multiple"), "{e}");
    let mut ws2 = DecodeWorkspace::new(&g, 2, d).unwrap();
    let e = err(base, &mut ws2, &mut out);
    assert!(e.contains("workspace"), "{e}");
    let e = err(
        DecodeAttnParams {
            softcap: Some(-1.0),
            ..base
        },
        &mut ws,
        &mut out,
    );
    assert!(e.contains("softcap"), "{e}");
    let mut small = DTensor::<bf16>::zeros(&g, &[nh, d - 8]).unwrap();
    let e = err(base, &mut ws, &mut small);
    assert!(e.contains("out"), "{e}");
    // head_dim not a multiple of 8 is refused by the cache write too
    let k = DTensor::<bf16>::zeros(&g, &[1, 12]).unwrap();
    let mut c = DTensor::<bf16>::zeros(&g, &[1, 4, 12]).unwrap();
    let mut c2 = DTensor::<bf16>::zeros(&g, &[1, 4, 12]).unwrap();
    let e = ops::kv_cache_write(&g, &k, &k, &mut c, &mut c2, 1, 12, 4, false, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("multiple of 8"), "{e}");
}

#[test]
#[ignore = "needs a GPU"]
fn decode_rope_kv_matches_cpu_and_writes_one_slot() {
    let g = gpu();
    let linear = |theta: f64, factor: f64| {
        RopeParams::from(Rope {
            theta,
            linear_factor: factor,
        })
    };
    // (nh, nkv, d, slots, pos, rope)
    let cases = [
        (4, 1, 256, 512, 700, linear(10_000.0, 1.0)),
        (8, 4, 128, 40, 39, linear(1_000_000.0, 8.0)),
        (4, 2, 32, 16, 5000, linear(10_000.0, 1.0)),
        (2, 1, 48, 7, 0, linear(10_000.0, 1.0)),
        (4, 2, 64, 9000, 8999, llama3_rope()),
        (6, 2, 128, 64, 3000, yarn_rope(true)),
        (2, 2, 64, 30, 29, yarn_rope(false)),
    ];
    for (ci, &(nh, nkv, d, slots, pos, p)) in cases.iter().enumerate() {
        let ring = pos >= slots;
        let slot = slot_of(pos, slots, ring);
        let q = rand_vals(nh * d, 700 + ci as u64, 2.0);
        let k = rand_vals(nkv * d, 800 + ci as u64, 2.0);
        let v = rand_vals(nkv * d, 900 + ci as u64, 2.0);
        let (cos, sin) = whittle::cpu::rope::tables(pos + 1, d, &p);
        let half = d / 2;
        let (c, s) = (
            &cos[pos * half..(pos + 1) * half],
            &sin[pos * half..(pos + 1) * half],
        );
        let (mut wq, mut wk) = (q.clone(), k.clone());
        cpu::apply_rope(&mut wq, 1, nh, d, c, s);
        cpu::apply_rope(&mut wk, 1, nkv, d, c, s);
        let mut qd = up_bf16(&g, &q, &[nh, d]);
        let (kd, vd) = (up_bf16(&g, &k, &[nkv, d]), up_bf16(&g, &v, &[nkv, d]));
        let mut kc = poisoned_bf16(&g, &[nkv, slots, d]);
        let mut vc = poisoned_bf16(&g, &[nkv, slots, d]);
        let rope = rope_freqs(&g, d, &p);
        ops::decode_rope_kv(
            &g, &mut qd, &kd, &vd, &mut kc, &mut vc, nh, nkv, d, slots, pos, slot, &rope,
        )
        .unwrap();
        let what = format!("decode rope d={d} pos={pos} {p:?}");
        check(&format!("{what} q"), &down(&g, &qd), &wq, d, BF16_TOL);
        let (kh, vh) = (kc.to_host(&g).unwrap(), vc.to_host(&g).unwrap());
        let mut got_k = Vec::new();
        for gi in 0..nkv {
            for s2 in 0..slots {
                let row = &kh[(gi * slots + s2) * d..(gi * slots + s2 + 1) * d];
                let vrow = &vh[(gi * slots + s2) * d..(gi * slots + s2 + 1) * d];
                if s2 == slot {
                    got_k.extend(row.iter().map(|x| x.to_f32()));
                    let want_v: Vec<u16> = bf(&v[gi * d..(gi + 1) * d])
                        .iter()
                        .map(|x| x.to_bits())
                        .collect();
                    let got_v: Vec<u16> = vrow.iter().map(|x| x.to_bits()).collect();
                    assert_eq!(got_v, want_v, "{what}: v copied bit for bit");
                } else {
                    assert!(
                        row.iter().chain(vrow).all(|x| x.to_bits() == NAN_BF16),
                        "{what}: slot {s2} of kv head {gi} was written"
                    );
                }
            }
        }
        check(&format!("{what} k in the cache"), &got_k, &wk, d, BF16_TOL);
        // The same rotation as the batched rope kernel (prefill and step agree bit for bit).
        let t = pos + 1;
        let mut kb = DTensor::<bf16>::zeros(&g, &[t, nkv * d]).unwrap();
        let mut qb = DTensor::<bf16>::zeros(&g, &[t, nh * d]).unwrap();
        let kq: Vec<bf16> = bf(&k);
        let qq: Vec<bf16> = bf(&q);
        let mut kall = vec![bf16::ZERO; t * nkv * d];
        let mut qall = vec![bf16::ZERO; t * nh * d];
        kall[pos * nkv * d..].copy_from_slice(&kq);
        qall[pos * nh * d..].copy_from_slice(&qq);
        kb.copy_from_host(&g, &kall).unwrap();
        qb.copy_from_host(&g, &qall).unwrap();
        ops::rope(&g, &mut qb, Some(&mut kb), nh, nkv, d, t, &rope).unwrap();
        let kb = kb.to_host(&g).unwrap();
        let qb = qb.to_host(&g).unwrap();
        let kslot: Vec<u16> = (0..nkv)
            .flat_map(|gi| kh[(gi * slots + slot) * d..(gi * slots + slot + 1) * d].to_vec())
            .map(|x| x.to_bits())
            .collect();
        let kref: Vec<u16> = kb[pos * nkv * d..].iter().map(|x| x.to_bits()).collect();
        assert_eq!(kslot, kref, "{what}: k differs from rope_qk_bf16's");
        let qgot: Vec<u16> = qd
            .to_host(&g)
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect();
        let qref: Vec<u16> = qb[pos * nh * d..].iter().map(|x| x.to_bits()).collect();
        assert_eq!(qgot, qref, "{what}: q differs from rope_qk_bf16's");
    }
}

#[test]
#[ignore = "needs a GPU"]
fn kv_cache_write_fills_ring_and_plain_slots() {
    let g = gpu();
    // (nkv, d, slots, ring, pos0, T)
    for &(nkv, d, slots, ring, pos0, t) in &[
        (2, 32, 16, true, 0, 40), // longer than the ring: only the last 16 rows land
        (2, 32, 16, true, 0, 5),
        (1, 256, 512, true, 510, 1), // a step write that wraps
        (4, 64, 100, false, 0, 100),
        (4, 64, 100, false, 37, 1),
        (1, 8, 3, true, 2, 3),
    ] {
        let row = nkv * d;
        let k = rand_vals(t * row, 1000 + t as u64, 1.0);
        let v = rand_vals(t * row, 2000 + t as u64, 1.0);
        let (kd, vd) = (up_bf16(&g, &k, &[t, row]), up_bf16(&g, &v, &[t, row]));
        let mut kc = poisoned_bf16(&g, &[nkv, slots, d]);
        let mut vc = poisoned_bf16(&g, &[nkv, slots, d]);
        ops::kv_cache_write(&g, &kd, &vd, &mut kc, &mut vc, nkv, d, slots, ring, pos0).unwrap();
        let (kh, vh) = (kc.to_host(&g).unwrap(), vc.to_host(&g).unwrap());
        // expected: slot -> the last row r written there (rows in order, as the CPU cache)
        let mut holder: Vec<Option<usize>> = vec![None; slots];
        for r in 0..t {
            holder[slot_of(pos0 + r, slots, ring)] = Some(r);
        }
        for gi in 0..nkv {
            for (s, h) in holder.iter().enumerate() {
                let at = (gi * slots + s) * d;
                for (cache, src) in [(&kh, &k), (&vh, &v)] {
                    let got: Vec<u16> = cache[at..at + d].iter().map(|x| x.to_bits()).collect();
                    let want: Vec<u16> = match h {
                        Some(r) => bf(&src[r * row + gi * d..r * row + (gi + 1) * d])
                            .iter()
                            .map(|x| x.to_bits())
                            .collect(),
                        None => vec![NAN_BF16; d],
                    };
                    assert_eq!(
                        got, want,
                        "nkv {nkv} d {d} slots {slots} ring {ring} pos0 {pos0} T {t}: slot {s} head {gi}"
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The decoder

fn load_pair(dir: &Path) -> (Model, GpuModel) {
    let cpu = Model::load(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let gm = GpuModel::load(dir, gpu(), Residency::Resident).unwrap();
    (cpu, gm)
}

/// Prefill `prompt` tokens of `ids`, step through the rest; every position's GPU logits against
/// the CPU decoder and against the GPU's full recompute of the prefix. Returns the worst errors.
fn decode_vs_cpu(
    name: &str,
    cpu: &Model,
    gm: &GpuModel,
    ids: &[u32],
    prompt: usize,
    max_len: usize,
    tol: f64,
) -> (f64, f64) {
    let v = cpu.cfg.vocab_size;
    let mut cd = Decoder::new(cpu, max_len);
    let mut gd = GpuDecoder::new(gm, max_len).unwrap();
    let what = |p: usize| format!("{name} prompt {prompt} max_len {max_len} position {p}");
    let mut worst = (0f64, 0f64);
    let mut cmp = |p: usize, got: &[f32], want: &[f32]| {
        let e = check(&format!("{} vs cpu", what(p)), got, want, v, tol);
        // the GPU's batched forward on the whole prefix, LM head on its last row
        let h = gm
            .forward_hidden(
                &ids[..p + 1],
                Batch {
                    n_seq: 1,
                    seq_len: p + 1,
                },
                None,
            )
            .unwrap();
        let hd = gm.cfg.hidden_size;
        let full = gm.logits(&h[p * hd..]).unwrap();
        let r = check(&format!("{} vs gpu recompute", what(p)), got, &full, v, tol);
        worst = (worst.0.max(e), worst.1.max(r));
    };
    let (c, gz) = (
        cd.prefill(&ids[..prompt]).unwrap(),
        gd.prefill(&ids[..prompt]).unwrap(),
    );
    cmp(prompt - 1, &gz, &c);
    for (p, &id) in ids.iter().enumerate().skip(prompt) {
        assert_eq!(gd.pos(), p);
        let (c, gz) = (cd.step(id).unwrap(), gd.step(id).unwrap());
        cmp(p, &gz, &c);
    }
    worst
}

fn decoder_matches_cpu(name: &str) {
    let dir = fixture(name);
    let (cpu, gm) = load_pair(&dir);
    let cfg = &cpu.cfg;
    // Gemma's and Mistral's fixtures have a window of 16 (every Mistral layer slides), the other
    // Llama-family fixtures none: the same runs then cover a plain cache only.
    if cfg.layer_types.contains(&LayerType::Sliding) {
        assert_eq!(cfg.sliding_window, 16, "the fixtures have a window of 16");
    }
    let ids = seq_ids(cfg.vocab_size, cfg.bos_token_id, 48, 777);
    let tol = bf16_budget(name);
    // short prompt, steps wrap the ring twice
    let a = decode_vs_cpu(name, &cpu, &gm, &ids[..40], 5, 40, tol);
    // prompt longer than the window (prefill keeps only its last 16 rows in the ring)
    let b = decode_vs_cpu(name, &cpu, &gm, &ids[..48], 20, 64, tol);
    // one token prompt (BOS), capacity below the window: no ring at all
    let c = decode_vs_cpu(name, &cpu, &gm, &ids[..12], 1, 12, tol);
    eprintln!(
        "{name}: worst vs cpu {:.2e}, vs gpu recompute {:.2e}",
        a.0.max(b.0).max(c.0),
        a.1.max(b.1).max(c.1)
    );
}

#[test]
#[ignore = "needs a GPU"]
fn tiny_gemma2_gpu_decoder_matches_cpu() {
    decoder_matches_cpu("tiny-gemma2");
}

#[test]
#[ignore = "needs a GPU"]
fn tiny_gemma3_gpu_decoder_matches_cpu() {
    decoder_matches_cpu("tiny-gemma3");
}

// The Llama family: SiLU, plain-weight norms, no post-norms, no embedding scale; llama3 RoPE and
// an untied head (tiny-llama), a sliding window on every layer (tiny-mistral), q/k/v biases and
// yarn RoPE (tiny-qwen2), q/k norms (tiny-qwen3).

#[test]
#[ignore = "needs a GPU"]
fn tiny_llama_gpu_decoder_matches_cpu() {
    decoder_matches_cpu("tiny-llama");
}

#[test]
#[ignore = "needs a GPU"]
fn tiny_mistral_gpu_decoder_matches_cpu() {
    decoder_matches_cpu("tiny-mistral");
}

#[test]
#[ignore = "needs a GPU"]
fn tiny_qwen2_gpu_decoder_matches_cpu() {
    decoder_matches_cpu("tiny-qwen2");
}

#[test]
#[ignore = "needs a GPU"]
fn tiny_qwen3_gpu_decoder_matches_cpu() {
    decoder_matches_cpu("tiny-qwen3");
}

#[test]
#[ignore = "needs a GPU"]
fn gpu_decoder_invariants() {
    let dir = fixture("tiny-gemma3");
    let (cpu, gm) = load_pair(&dir);
    let cfg = cpu.cfg.clone();
    let ids = seq_ids(cfg.vocab_size, cfg.bos_token_id, 40, 99);
    let v = cfg.vocab_size;

    // prefill hidden states are the batched forward's, bit for bit
    let mut d = GpuDecoder::new(&gm, 40).unwrap();
    let h = d.prefill_hidden(&ids[..25]).unwrap();
    let want = gm
        .forward_hidden(
            &ids[..25],
            Batch {
                n_seq: 1,
                seq_len: 25,
            },
            None,
        )
        .unwrap();
    assert!(
        h == want,
        "prefill hidden states differ from forward_hidden"
    );
    for l in 0..cfg.num_layers {
        assert_eq!(
            d.slots(l),
            layer_slots(cfg.window(l), 40).0,
            "layer {l} slots"
        );
    }

    // split counts agree (1 launch vs split-K + combine)
    let run = |splits: Option<usize>| -> Vec<f32> {
        let mut d = GpuDecoder::new(&gm, 40).unwrap();
        d.set_attention_splits(splits);
        let mut out = d.prefill(&ids[..3]).unwrap();
        for &t in &ids[3..40] {
            out.extend(d.step(t).unwrap());
        }
        out
    };
    let one = run(Some(1));
    for s in [None, Some(2), Some(5), Some(64)] {
        check(&format!("splits {s:?} vs 1"), &run(s), &one, v, BF16_TOL);
    }

    // streamed weights (uploaded per layer per step) compute the same bits
    let gs = GpuModel::from_cpu(&cpu, gpu(), Residency::Streamed).unwrap();
    let mut ds = GpuDecoder::new(&gs, 40).unwrap();
    ds.set_attention_splits(Some(1));
    let mut out = ds.prefill(&ids[..3]).unwrap();
    for &t in &ids[3..40] {
        out.extend(ds.step(t).unwrap());
    }
    assert!(out == one, "streamed and resident decoders differ");

    // greedy picks on the device equal the argmax of the downloaded logits
    let mut a = GpuDecoder::new(&gm, 40).unwrap();
    let mut b = GpuDecoder::new(&gm, 40).unwrap();
    let mut t = a.prefill_greedy(&ids[..4]).unwrap();
    assert_eq!(t, argmax(&b.prefill(&ids[..4]).unwrap()));
    for _ in 0..20 {
        let next = a.step_greedy(t).unwrap();
        assert_eq!(next, argmax(&b.step(t).unwrap()));
        t = next;
    }

    // capacity, order and input errors
    let mut d = GpuDecoder::new(&gm, 6).unwrap();
    assert!(
        d.prefill(&ids[..7]).is_err(),
        "prompt longer than the cache"
    );
    d.prefill(&ids[..5]).unwrap();
    assert!(
        d.prefill(&ids[..2]).is_err(),
        "second prefill without reset"
    );
    d.step(ids[5]).unwrap();
    let e = d.step(ids[6]).unwrap_err().to_string();
    assert!(e.contains("KV cache full"), "{e}");
    d.reset();
    assert_eq!(d.pos(), 0);
    assert!(d.prefill(&[]).is_err(), "empty prompt");
    let e = d.prefill(&[v as u32]).unwrap_err().to_string();
    assert!(e.contains("vocabulary"), "{e}");
    d.prefill(&ids[..2]).unwrap();
    let e = d.step(v as u32 + 5).unwrap_err().to_string();
    assert!(e.contains("vocabulary"), "{e}");
    assert!(GpuDecoder::new(&gm, 0).is_err());

    // the Engine view (bench, generate): batched picks are the argmax of the last rows
    let engine: &dyn Engine = &gm;
    assert_eq!(engine.name(), "whittle cuda bf16");
    let batch = Batch {
        n_seq: 2,
        seq_len: 20,
    };
    let picks = engine.last_token_picks(&ids[..40], batch).unwrap();
    let full = gm.forward_logits(&ids[..40], batch).unwrap();
    assert_eq!(
        picks,
        vec![argmax(&full[19 * v..20 * v]), argmax(&full[39 * v..40 * v])]
    );
}

/// A step's pick must agree with the CPU wherever the CPU's top-2 margin exceeds this fraction
/// of its logit spread (max − min). The bf16 engine's logit errors are a few percent of the
/// logits' rms (tests/cuda_model.rs allows 5e-2 relative L2) and the spread is several rms, so
/// 0.1 of the spread is more than twice any plausible error. (On tiny-gemma2 the random-init
/// margins are 0.01–0.07 logits and bf16 weight rounding alone moves logits by 0.04, so almost
/// no step qualifies there; tiny-gemma3's margins are about 5 logits and all of them do.)
const MARGIN_FRAC: f32 = 0.1;

/// Greedy decoding teacher-forced on the CPU's tokens, then free-running `generate` on both
/// engines; returns how many steps had a large margin.
fn greedy_check(name: &str, cpu: &Model, gm: &GpuModel, prompt: usize, n: usize) -> usize {
    let cfg = &cpu.cfg;
    let ids = seq_ids(cfg.vocab_size, cfg.bos_token_id, prompt, 4242);
    let large = |z: &[f32]| {
        let a = argmax(z) as usize;
        let (mut lo, mut second) = (f32::INFINITY, f32::NEG_INFINITY);
        for (i, &x) in z.iter().enumerate() {
            lo = lo.min(x);
            if i != a {
                second = second.max(x);
            }
        }
        z[a] - second > MARGIN_FRAC * (z[a] - lo)
    };
    let mut cd = Decoder::new(cpu, ids.len() + n);
    let mut gd = GpuDecoder::new(gm, ids.len() + n).unwrap();
    let mut cz = cd.prefill(&ids).unwrap();
    let mut gt = gd.prefill_greedy(&ids).unwrap();
    let (mut checked, mut agreed) = (0, 0);
    let mut cpu_tokens = Vec::new();
    let mut sure = None;
    for step in 0..n {
        let ct = argmax(&cz);
        cpu_tokens.push(ct);
        if large(&cz) {
            checked += 1;
            assert_eq!(
                gt, ct,
                "{name} step {step}: GPU picked {gt}, CPU {ct} with a large margin"
            );
        } else if sure.is_none() {
            sure = Some(step);
        }
        agreed += (gt == ct) as usize;
        cz = cd.step(ct).unwrap();
        gt = gd.step_greedy(ct).unwrap();
    }
    eprintln!("{name}: {checked} of {n} steps had a large margin; {agreed} picks agreed overall");

    // Free-running: identical tokens up to the first small-margin step.
    let opts = whittle::serve::generate::GenOptions {
        max_new_tokens: n,
        sampling: whittle::cpu::decode::Sampling::Greedy,
        seed: 0,
        stop: Vec::new(),
    };
    let c = whittle::serve::generate::generate(cpu, &ids, &opts, |_| Ok(())).unwrap();
    let g = whittle::serve::generate::generate(gm, &ids, &opts, |_| Ok(())).unwrap();
    assert_eq!(c.tokens, cpu_tokens, "CPU generate = teacher-forced CPU");
    let sure = sure.unwrap_or(n);
    assert_eq!(
        g.tokens[..sure],
        c.tokens[..sure],
        "{name}: greedy tokens differ within the first {sure} large-margin steps"
    );
    checked
}

#[test]
#[ignore = "needs a GPU"]
fn greedy_tokens_match_cpu_where_the_margin_is_large() {
    let mut checked = 0;
    for name in [
        "tiny-gemma2",
        "tiny-gemma3",
        "tiny-llama",
        "tiny-mistral",
        "tiny-qwen2",
        "tiny-qwen3",
    ] {
        let (cpu, gm) = load_pair(&fixture(name));
        checked += greedy_check(name, &cpu, &gm, 8, 40);
    }
    assert!(checked > 0, "no step had a large margin on the fixtures");
    if let Some(dir) = real_model() {
        let (cpu, gm) = load_pair(&dir);
        greedy_check("gemma-3-270m", &cpu, &gm, 16, 24);
    }
}

#[test]
#[ignore = "needs a GPU"]
fn gemma3_270m_gpu_decoder_matches_cpu() {
    let Some(dir) = real_model() else {
        return;
    };
    let (cpu, gm) = load_pair(&dir);
    let cfg = &cpu.cfg;
    let ids = seq_ids(cfg.vocab_size, cfg.bos_token_id, 530, 5);
    // 18 real layers in bf16 against f32: 0.1 as tests/cuda_model.rs; 520 > the 512 window.
    let (e, r) = decode_vs_cpu("gemma-3-270m", &cpu, &gm, &ids, 520, 530, 0.1);
    eprintln!("gemma-3-270m: worst vs cpu {e:.2e}, vs gpu recompute {r:.2e}");
}

// ---------------------------------------------------------------------------------------------
// The CLI on the GPU

fn whittle(args: &[&str]) -> (String, String) {
    let out = std::process::Command::new(common::bin())
        .args(args)
        .output()
        .unwrap();
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "whittle {args:?} failed:\n{e}");
    (o, e)
}

#[test]
#[ignore = "needs a GPU"]
fn cli_generate_and_bench_run_on_the_gpu() {
    let m = fixture("tiny-gemma2");
    let m = m.to_str().unwrap();
    let gen = |device: &str| -> Value {
        let (o, e) = whittle(&[
            "--device",
            device,
            "generate",
            m,
            "--prompt",
            "The quick brown fox",
            "--max-new-tokens",
            "6",
            "--ignore-eos",
            "--json",
        ]);
        assert!(
            e.contains(if device == "cpu" {
                "device: cpu"
            } else {
                "device: cuda:"
            }),
            "{e}"
        );
        serde_json::from_str(&o).unwrap()
    };
    let (g, c) = (gen("cuda"), gen("cpu"));
    assert_eq!(g["prompt_ids"], c["prompt_ids"]);
    assert_eq!(g["engine"], "whittle cuda bf16");
    assert_eq!(c["engine"], "whittle cpu f32");
    assert_eq!(g["tokens"].as_array().unwrap().len(), 6, "{g}");
    eprintln!("generate tokens: cuda {} cpu {}", g["tokens"], c["tokens"]);
    let (o, _) = whittle(&["--device", "cuda", "bench", m, "--quick", "--json"]);
    let r: Value = serde_json::from_str(&o).unwrap();
    assert_eq!(r["engine"], "whittle cuda bf16");
    let k = r["kernels"].as_str().unwrap_or_default();
    assert!(k.starts_with("GEMM ") && k.contains("attention"), "{k}");
    let fig = &r["models"][0];
    for k in ["prefill_tok_s", "decode_tok_s"] {
        let x = fig[k]["median"].as_f64().unwrap();
        assert!(x.is_finite() && x > 0.0, "{k}: {x}");
    }
    assert!(fig["ttft_ms"]["p50"].as_f64().unwrap() > 0.0);
    eprintln!(
        "bench --device cuda (tiny-gemma2, quick): prefill {:.0} tok/s, TTFT p50 {:.2} ms, decode {:.0} tok/s",
        fig["prefill_tok_s"]["median"], fig["ttft_ms"]["p50"], fig["decode_tok_s"]["median"]
    );
}

#!/usr/bin/env python3
"""whittle's GPU forward against transformers bf16 eager, on the GPU machine.

Two steps around the Rust runner (tests/cuda_parity.rs, run by scripts/device-check.sh):

  parity.py prepare --model DIR --work WORK [--seq 4160] [--n-seq 1] [--rows 64] [--seed 0]
      writes WORK/ids.json: token ids (BOS + random ids) and the rows whose logits are compared
      (the first rows, rows on both sides of the sliding window, the last rows, random others)
  (runner) reads WORK/ids.json, writes WORK/whittle/{layer.L,final,logits}.f32 and meta.json
  parity.py compare --model DIR --work WORK [--json OUT] [thresholds]
      runs transformers (bf16, attn_implementation="eager", on cuda) on the same ids, captures
      every decoder layer's output and the final norm with forward hooks, computes the logits of
      the chosen rows exactly as Gemma2ForCausalLM does (lm_head, then the final softcap in bf16),
      and compares: per-row ‖Δ‖/‖ref‖ of every layer, the final hidden states and the logits,
      top-1 agreement and KL(transformers ‖ whittle) of the chosen rows. Exit 1 on a failed
      threshold.

Both accept --dry-run (parse arguments, check inputs that exist without torch, print the plan).
"""
import argparse
import json
import os
import sys
import time


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("prepare", help="write WORK/ids.json")
    pp.add_argument("--model", required=True)
    pp.add_argument("--work", required=True)
    pp.add_argument("--seq", type=int, default=4160, help="sequence length (default 4160 > window 4096)")
    pp.add_argument("--n-seq", type=int, default=1)
    pp.add_argument("--rows", type=int, default=64, help="rows whose logits are compared")
    pp.add_argument("--seed", type=int, default=0)
    pp.add_argument("--dry-run", action="store_true")
    pc = sub.add_parser("compare", help="run transformers and compare with WORK/whittle")
    pc.add_argument("--model", required=True)
    pc.add_argument("--work", required=True)
    pc.add_argument("--json", help="write the summary here")
    pc.add_argument("--max-hidden-rel", type=float, default=5e-2, help="worst row ‖Δ‖/‖ref‖, any layer")
    pc.add_argument("--max-logit-rel", type=float, default=5e-2, help="worst row ‖Δ‖/‖ref‖ of logits")
    pc.add_argument("--max-kl", type=float, default=1e-2, help="worst row KL(transformers ‖ whittle)")
    pc.add_argument("--device", default="cuda", help="where transformers runs (cpu: a local smoke test)")
    pc.add_argument("--dry-run", action="store_true")
    a = p.parse_args(argv)
    if a.cmd == "prepare" and (a.seq < 2 or a.n_seq < 1 or a.rows < 1):
        p.error("--seq >= 2, --n-seq >= 1 and --rows >= 1 are required")
    return a


def read_config(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        return json.load(f)


def prepare(a):
    if a.dry_run:
        print(f"parity prepare (dry run): {a.n_seq} x {a.seq} ids, {a.rows} logit rows -> {a.work}/ids.json")
        return 0
    import random

    cfg = read_config(a.model)
    vocab, bos = cfg["vocab_size"], cfg.get("bos_token_id", 2)
    window = cfg.get("sliding_window") or a.seq
    rng = random.Random(a.seed)
    ids = []
    for _ in range(a.n_seq):
        ids.append(bos)
        ids.extend(rng.randrange(4, vocab) for _ in range(a.seq - 1))
    n = a.n_seq * a.seq
    want = {0, 1, 2, n - 1, n - 2}
    for w in (window - 1, window, window + 1):
        for b in range(a.n_seq):
            if w < a.seq:
                want.add(b * a.seq + w)
    want = {r for r in want if 0 <= r < n}
    while len(want) < min(a.rows, n):
        want.add(rng.randrange(n))
    rows = sorted(want)  # the edge rows always, random ones up to --rows
    os.makedirs(a.work, exist_ok=True)
    with open(os.path.join(a.work, "ids.json"), "w") as f:
        json.dump({"n_seq": a.n_seq, "seq_len": a.seq, "ids": ids, "rows": rows}, f)
    print(f"parity prepare: {a.n_seq} x {a.seq} ids, {len(rows)} logit rows -> {a.work}/ids.json")
    return 0


def row_rel(got, want):
    """Per-row ‖got - want‖ / ‖want‖ (float64 numpy arrays [rows, cols])."""
    import numpy as np

    d = np.linalg.norm(got - want, axis=1)
    r = np.linalg.norm(want, axis=1)
    return d / np.where(r == 0, 1.0, r)


def compare(a):
    wdir = os.path.join(a.work, "whittle")
    if a.dry_run:
        print(f"parity compare (dry run): transformers vs {wdir}; thresholds hidden {a.max_hidden_rel}, "
              f"logits {a.max_logit_rel}, KL {a.max_kl}")
        return 0
    for f in (os.path.join(a.model, "config.json"), os.path.join(a.work, "ids.json"), os.path.join(wdir, "meta.json")):
        if not os.path.exists(f):
            print(f"parity compare: missing {f}", file=sys.stderr)
            return 2
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    with open(os.path.join(a.work, "ids.json")) as f:
        spec = json.load(f)
    with open(os.path.join(wdir, "meta.json")) as f:
        meta = json.load(f)
    cfg = read_config(a.model)
    H, V, L = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    n_seq, T, rows = spec["n_seq"], spec["seq_len"], spec["rows"]
    N = n_seq * T
    dev = a.device
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.bfloat16, attn_implementation="eager").to(dev)
    model.eval()
    ids = torch.tensor(spec["ids"], dtype=torch.int64, device=dev).view(n_seq, T)

    out = {}

    def first(x):
        return x[0] if isinstance(x, (tuple, list)) else x

    hooks = [
        layer.register_forward_hook(lambda m, i, o, l=l: out.__setitem__(f"layer.{l}", first(o).detach()))
        for l, layer in enumerate(model.model.layers)
    ]
    hooks.append(model.model.norm.register_forward_hook(lambda m, i, o: out.__setitem__("final", first(o).detach())))
    with torch.no_grad():
        model.model(input_ids=ids)
    for h in hooks:
        h.remove()
    # timing without hooks
    sync = torch.cuda.synchronize if dev.startswith("cuda") else (lambda: None)
    with torch.no_grad():
        sync()
        t0 = time.time()
        model.model(input_ids=ids)
        sync()
        hf_ms = (time.time() - t0) * 1e3
        # logits of the chosen rows, as Gemma2ForCausalLM computes them (bf16 throughout)
        fin = out["final"].reshape(N, H)[torch.tensor(rows, device=dev)]
        z = model.lm_head(fin)
        cap = cfg.get("final_logit_softcapping")
        if cap:
            z = torch.tanh(z / cap) * cap
        hf_logits = z.float().cpu().numpy().astype(np.float64)

    summary = {"model": a.model, "n_seq": n_seq, "seq_len": T, "logit_rows": len(rows),
               "hf_forward_ms": hf_ms, "whittle_forward_ms": meta.get("forward_ms"), "tensors": {}}
    worst_hidden = 0.0
    for name in [f"layer.{l}" for l in range(L)] + ["final"]:
        ref = out[name].reshape(N, H).float().cpu().numpy().astype(np.float64)
        got = np.fromfile(os.path.join(wdir, f"{name}.f32"), dtype=np.float32).astype(np.float64).reshape(N, H)
        r = row_rel(got, ref)
        bad = int(np.argmax(r))
        summary["tensors"][name] = {"worst_row_rel": float(r.max()), "median_row_rel": float(np.median(r)),
                                    "worst_row": bad, "nonfinite": int((~np.isfinite(got)).sum())}
        worst_hidden = max(worst_hidden, float(r.max()) if np.isfinite(got).all() else float("inf"))
    got_l = np.fromfile(os.path.join(wdir, "logits.f32"), dtype=np.float32).astype(np.float64).reshape(len(rows), V)
    r = row_rel(got_l, hf_logits)

    def logsoftmax(x):
        m = x.max(axis=1, keepdims=True)
        return x - (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))

    lp_ref, lp_got = logsoftmax(hf_logits), logsoftmax(got_l)
    kl = (np.exp(lp_ref) * (lp_ref - lp_got)).sum(axis=1)
    top1 = float((hf_logits.argmax(axis=1) == got_l.argmax(axis=1)).mean())
    summary["logits"] = {"worst_row_rel": float(r.max()), "median_row_rel": float(np.median(r)),
                         "kl_mean": float(kl.mean()), "kl_max": float(kl.max()), "top1_agree": top1,
                         "max_abs": float(np.abs(got_l - hf_logits).max())}
    ok = (worst_hidden <= a.max_hidden_rel and summary["logits"]["worst_row_rel"] <= a.max_logit_rel
          and summary["logits"]["kl_max"] <= a.max_kl)
    summary["status"] = "pass" if ok else "fail"
    summary["thresholds"] = {"hidden": a.max_hidden_rel, "logits": a.max_logit_rel, "kl": a.max_kl}

    print(f"{'tensor':<10} {'worst row':>10} {'median row':>11}")
    for name, t in summary["tensors"].items():
        print(f"{name:<10} {t['worst_row_rel']:>10.2e} {t['median_row_rel']:>11.2e}")
    lg = summary["logits"]
    print(f"{'logits':<10} {lg['worst_row_rel']:>10.2e} {lg['median_row_rel']:>11.2e}   "
          f"KL mean {lg['kl_mean']:.2e} max {lg['kl_max']:.2e}, top-1 {top1:.3f}, max |Δ| {lg['max_abs']:.3f}")
    print(f"forward: transformers {hf_ms:.1f} ms, whittle {meta.get('forward_ms', float('nan')):.1f} ms "
          f"({N} tokens); parity {summary['status']}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(summary, f, indent=1)
    return 0 if ok else 1


def main(argv=None):
    a = parse_args(argv)
    return prepare(a) if a.cmd == "prepare" else compare(a)


if __name__ == "__main__":
    sys.exit(main())

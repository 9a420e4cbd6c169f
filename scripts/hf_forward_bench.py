#!/usr/bin/env python3
"""Time the transformers fp32 eager CPU forward pass over the evaluation windows (the baseline
`whittle`'s forward speed is compared against).

usage: hf_forward_bench.py MODEL --text FILE [--seq 512] [--windows N] [--threads N] [--json]

Windows are those of the perplexity protocol (hfref.py / hf_eval.py), run one at a time
(batch 1, torch.no_grad, use_cache=False), in two modes:
  no_head    model.model(ids): the decoder stack + final norm, hidden states only
  with_head  model(ids): the same plus the LM head, full logits for every position
Each mode gets one warm-up window (not timed), then all N windows are timed.
tokens/s counts every position of every window (windows * seq).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import hfref


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--text", required=True)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--json", action="store_true", help="print one JSON object and nothing else on stdout")
    args = ap.parse_args()

    import torch

    n_cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = hfref.set_threads(args.threads if args.threads is not None else n_cores)
    ids = hfref.tokenize_file(args.model, args.text)
    wins = hfref.windows(ids, args.seq, args.windows, hfref.bos_id(args.model))
    model = hfref.load_model(args.model)
    xs = [torch.tensor([w], dtype=torch.long) for w in wins]

    def timed(fn) -> float:
        with torch.no_grad():
            fn(xs[0])  # warm-up
            t0 = time.perf_counter()
            for x in xs:
                fn(x)
            return time.perf_counter() - t0

    t_no_head = timed(lambda x: model.model(input_ids=x, use_cache=False).last_hidden_state)
    t_with_head = timed(lambda x: model(input_ids=x, use_cache=False).logits)
    n_tok = len(xs) * args.seq
    out = {
        "no_head_tok_s": n_tok / t_no_head,
        "with_head_tok_s": n_tok / t_with_head,
        "no_head_s": t_no_head,
        "with_head_s": t_with_head,
        "windows": len(xs),
        "seq": args.seq,
        "threads": threads,
        "model": args.model,
        **hfref.versions(),
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{args.model}: {len(xs)} windows x {args.seq} tokens, {threads} threads, "
              f"torch {out['torch']}, transformers {out['transformers']}")
        print(f"  hidden states only (model.model): {out['no_head_tok_s']:9.1f} tok/s  ({t_no_head:.2f} s)")
        print(f"  full logits        (model)      : {out['with_head_tok_s']:9.1f} tok/s  ({t_with_head:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

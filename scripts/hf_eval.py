#!/usr/bin/env python3
"""Perplexity (and KL / top-1 agreement against a base model) in transformers fp32 eager:
the ground truth for `whittle eval`.

usage: hf_eval.py MODEL --text FILE [--seq 512] [--windows N] [--base MODEL] [--json] [--threads N]

Protocol (see hfref.py): tokenize FILE without special tokens, cut into consecutive
non-overlapping chunks of seq-1 tokens (a final partial chunk is dropped), prefix each with
BOS, score all seq-1 predicted positions of the first N windows, one window at a time
(batch 1, torch.no_grad, fp32, eager attention).

  ppl        = exp(mean NLL over all scored tokens), NLL from a float64 log-softmax of the
               fp32 logits (exact for those logits)
  ppl_f32_ce = the same from torch's fp32 cross-entropy, i.e. what transformers' own loss
               gives; for a 262144-token vocabulary it is ~1.5e-5 lower in mean NLL
               (fp32 rounding in the log-sum-exp)
  kl         = mean over the same positions of KL(base || model)
             = sum_v p_base(v) * (log p_base(v) - log p_model(v)), log-softmax in float64
  top1_agree = fraction of positions where argmax(base logits) == argmax(model logits)

The tokenizer of MODEL is used (with --base, both models must share it).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import hfref


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="HF model folder")
    ap.add_argument("--text", required=True, help="UTF-8 text file")
    ap.add_argument("--seq", type=int, default=512, help="window length including BOS (default 512)")
    ap.add_argument("--windows", type=int, default=None, help="first N windows (default: all full ones)")
    ap.add_argument("--base", default=None, help="base model folder: also report KL(base||model) and top-1 agreement")
    ap.add_argument("--json", action="store_true", help="print one JSON object and nothing else on stdout")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    args = ap.parse_args()

    import torch

    threads = hfref.set_threads(args.threads)
    t0 = time.perf_counter()
    ids = hfref.tokenize_file(args.model, args.text)
    wins = hfref.windows(ids, args.seq, args.windows, hfref.bos_id(args.model))
    model = hfref.load_model(args.model)
    base = hfref.load_model(args.base) if args.base else None
    if base is not None and base.config.vocab_size != model.config.vocab_size:
        sys.exit("--base has a different vocab_size")
    t_load = time.perf_counter()

    nll_sum = 0.0
    nll32_sum = 0.0
    kl_sum = 0.0
    agree = 0
    scored = 0
    with torch.no_grad():
        for k, w in enumerate(wins):
            x = torch.tensor([w], dtype=torch.long)
            logits = model(input_ids=x, use_cache=False).logits[0, :-1].float()  # [seq-1, V]
            target = x[0, 1:]
            lp = torch.log_softmax(logits.double(), dim=-1)
            nll_sum += float(-lp.gather(1, target[:, None]).sum())
            # What transformers' own loss computes (fp32 cross-entropy); differs from the exact
            # float64 value by the fp32 rounding of the log-sum-exp over the vocabulary.
            nll32_sum += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
            scored += target.numel()
            if base is not None:
                blogits = base(input_ids=x, use_cache=False).logits[0, :-1].float()
                agree += int((blogits.argmax(-1) == logits.argmax(-1)).sum())
                # Rows in blocks to keep float64 [rows, V] temporaries small for big vocabularies.
                for r in range(0, blogits.shape[0], 64):
                    blp = torch.log_softmax(blogits[r:r + 64].double(), dim=-1)
                    kl_sum += float((blp.exp() * (blp - lp[r:r + 64])).sum())
            del lp
            if not args.json and (k + 1) % 8 == 0:
                print(f"  window {k + 1}/{len(wins)}: running ppl {math.exp(nll_sum / scored):.4f}", file=sys.stderr)
    t_end = time.perf_counter()

    nll = nll_sum / scored
    out = {
        "model": args.model,
        "text": args.text,
        "seq": args.seq,
        "windows": len(wins),
        "tokens": scored,
        "nll": nll,
        "ppl": math.exp(nll),
        "nll_f32_ce": nll32_sum / scored,
        "ppl_f32_ce": math.exp(nll32_sum / scored),
    }
    if base is not None:
        out.update({"base": args.base, "kl": kl_sum / scored, "top1_agree": agree / scored})
    out.update({"threads": threads, "load_s": round(t_load - t0, 3), "eval_s": round(t_end - t_load, 3),
                **hfref.versions()})
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{args.model}: ppl {out['ppl']:.4f}  nll {nll:.6f}  over {scored} tokens ({len(wins)} windows of {args.seq})")
        print(f"  (fp32 cross-entropy as in transformers' loss: ppl {out['ppl_f32_ce']:.4f}  nll {out['nll_f32_ce']:.6f})")
        if base is not None:
            print(f"  vs base {args.base}: kl {out['kl']:.6g}  top1_agree {out['top1_agree']:.4f}")
        print(f"  load {out['load_s']:.1f} s, eval {out['eval_s']:.1f} s, {threads} threads, "
              f"torch {out['torch']}, transformers {out['transformers']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

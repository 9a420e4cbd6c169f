#!/usr/bin/env python3
"""Zero-shot task scores in transformers fp32 eager: the ground truth for `whittle eval --tasks`.

usage: hf_tasks.py MODEL --tasks arc_easy,... [--tasks-dir data/tasks] [--limit N]
                   [--items-out FILE.jsonl] [--metrics-out FILE.json] [--json] [--threads N]

Builds every prompt itself from the raw documents that scripts/get-tasks.py wrote (an
implementation independent of whittle's src/serve/tasks.rs), with lm-eval-harness's conventions:

  arc_easy / arc_challenge  "Question: {question}\\nAnswer:"   choices: choices.text
  piqa                      "Question: {goal}\\nAnswer:"       choices: [sol1, sol2]
  hellaswag                 preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize()),
                            choices: preprocess(ending)
  lambada                   text.split(" ")[:-1] joined / " " + last word

Each choice is the continuation " " + choice. As lm-eval's HFLM: trailing context whitespace
moves to the continuation; context and context+continuation are tokenized with the tokenizer's
default special tokens (Gemma: BOS prepended); the continuation is the whole's tokens past the
context's length; the model is fed context + continuation, one request per forward (batch 1,
full logits, as transformers computes them), log-softmax in float64. acc / acc_norm (length in
characters) / LAMBADA greedy acc and perplexity as lm-eval aggregates them; stderr = sample
std / sqrt(n).

--items-out writes one line per item: {"task", "item", "lls": [...], "greedy": [...]}, the
file scripts/tasks-check.sh compares with whittle's --items-out.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time

import hfref


def preprocess(text: str) -> str:
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def doc_to_item(task: str, doc: dict) -> tuple[str, list[str], int]:
    if task in ("arc_easy", "arc_challenge"):
        return (f"Question: {doc['question']}\nAnswer:", doc["choices"]["text"],
                doc["choices"]["label"].index(doc["answerKey"]))
    if task == "piqa":
        return f"Question: {doc['goal']}\nAnswer:", [doc["sol1"], doc["sol2"]], int(doc["label"])
    if task == "hellaswag":
        ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
        return preprocess(doc["activity_label"] + ": " + ctx), [preprocess(e) for e in doc["endings"]], int(doc["label"])
    if task == "lambada":
        words = doc["text"].split(" ")
        return " ".join(words[:-1]), [words[-1]], 0
    sys.exit(f"unknown task {task!r}")


def load(task: str, tasks_dir: str, limit: int | None) -> list[tuple[str, list[str], int]]:
    with open(f"{tasks_dir}/{task}.jsonl", encoding="utf-8") as f:
        header = json.loads(f.readline())
        assert header["task"] == task, header
        items = []
        for line in f:
            if limit is not None and len(items) >= limit:
                break
            items.append(doc_to_item(task, json.loads(line)))
    return items


def encode_pair(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    n = len(context) - len(context.rstrip())
    if n > 0:
        continuation = context[-n:] + continuation
        context = context[:-n]
    whole = tok(context + continuation)["input_ids"]
    ctx = tok(context)["input_ids"]
    return ctx, whole[len(ctx):]


def mean_stderr(x: list[float]) -> tuple[float, float]:
    m = sum(x) / len(x)
    if len(x) < 2:
        return m, 0.0
    var = sum((v - m) ** 2 for v in x) / (len(x) - 1)
    return m, math.sqrt(var / len(x))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--tasks", required=True)
    ap.add_argument("--tasks-dir", default="data/tasks")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--items-out", default=None)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--metrics-out", default=None,
                    help="also write the metrics without timings (the committed fixture reference)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    import torch
    from transformers import AutoTokenizer

    threads = hfref.set_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(args.model)
    tok.model_max_length = sys.maxsize
    model = hfref.load_model(args.model)
    dump = open(args.items_out, "w") if args.items_out else None
    out = {"model": args.model, "threads": threads, "tasks": {}, **hfref.versions()}
    for task in args.tasks.split(","):
        items = load(task, args.tasks_dir, args.limit)
        t0 = time.perf_counter()
        acc, acc_norm, lls_all = [], [], []
        for i, (ctx, choices, gold) in enumerate(items):
            lls, greedy = [], []
            for ch in choices:
                c, k = encode_pair(tok, ctx, " " + ch)
                x = torch.tensor([c + k])
                with torch.no_grad():
                    # Full logits for every position, as HFLM computes them; the float64
                    # log-softmax only over the rows that predict the continuation.
                    logits = model(input_ids=x, use_cache=False).logits[0]
                lp = torch.log_softmax(logits[len(c) - 1:-1].double(), dim=-1)  # [len(k), V]
                tgt = torch.tensor(k)
                lls.append(float(lp.gather(1, tgt[:, None]).sum()))
                greedy.append(bool((lp.argmax(-1) == tgt).all()))
            lls_all.append(lls)
            if task == "lambada":
                acc.append(float(greedy[0]))
            else:
                # np.argmax: the first maximum wins
                acc.append(float(max(range(len(lls)), key=lambda j: (lls[j], -j)) == gold))
                norm = [l / len(ch) for l, ch in zip(lls, choices)]
                acc_norm.append(float(max(range(len(norm)), key=lambda j: (norm[j], -j)) == gold))
            if dump:
                dump.write(json.dumps({"task": task, "item": i, "lls": lls, "greedy": greedy}) + "\n")
            if not args.json and (i + 1) % 50 == 0:
                print(f"  {task}: {i + 1}/{len(items)}", file=sys.stderr)
        secs = time.perf_counter() - t0
        r = {"items": len(items), "seconds": secs, "items_per_s": len(items) / secs}
        r["acc"], r["acc_stderr"] = mean_stderr(acc)
        if task == "lambada":
            m, se = mean_stderr([l[0] for l in lls_all])
            r["ppl"], r["ppl_stderr"] = math.exp(-m), math.exp(-m) * se
        else:
            r["acc_norm"], r["acc_norm_stderr"] = mean_stderr(acc_norm)
        out["tasks"][task] = r
        if not args.json:
            print(f"{task}: " + "  ".join(f"{k} {v:.4f}" for k, v in r.items() if k != "items") + f"  ({len(items)} items)")
    if dump:
        dump.close()
    if args.metrics_out:
        ref = {k: v for k, v in out.items() if k != "threads"}
        ref["tasks"] = {t: {k: v for k, v in r.items() if k not in ("seconds", "items_per_s")}
                        for t, r in out["tasks"].items()}
        ref["command"] = "scripts/hf_tasks.py " + " ".join(sys.argv[1:])
        with open(args.metrics_out, "w") as f:
            json.dump(ref, f, indent=1)
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

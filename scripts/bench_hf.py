#!/usr/bin/env python3
"""The `whittle bench` serving figures measured with transformers, for one or more model folders.

usage: bench_hf.py MODEL [MODEL ...] [--device cpu|cuda] [--json] [--json-out FILE] [--quick]
                   [--runs N] [--repeats N] [--warmup N] [--prompt-file FILE] [--threads N]
                   [--prefill-batch 8] [--prefill-len 512] [--rag-len 2048]
                   [--decode-prompt 512] [--decode-tokens 128]

Same protocol as `whittle bench` (src/serve/bench.rs), so the two JSON outputs have the same shape:
  * model: AutoModelForCausalLM, attn_implementation="eager", fp32 on CPU, bf16 on CUDA, eval,
    torch.inference_mode;
  * prompts: the text of --prompt-file (default src/bench_prompt.txt, the text whittle compiles
    in), tokenized without special tokens, tiled; each prompt = BOS + len-1 tokens; sequence b of
    a batch starts b * (n_text // batch) tokens in;
  * weights GiB / parameters: exact, from the safetensors headers (tensor bytes, element counts);
  * chat prefill tok/s: model(ids [8, 512], use_cache=False, logits_to_keep=1) + argmax,
    tok/s = 8*512 / time; median (min-max) over --repeats (3);
  * RAG TTFT: model(ids [1, 2048], use_cache=True, logits_to_keep=1) + argmax (the KV cache is
    built as in generate), p50/p95 over --runs (30);
  * decode tok/s: a 512-token prefill with use_cache=True (not timed), then 128 greedy steps
    model(tok [1, 1], cache=CACHE, use_cache=True) + argmax (`past_key_values=` before
    transformers 5.2x; .item() each step, as a generation loop checking for EOS does);
    tok/s = 128 / time of the steps; median (min-max) over --repeats;
  * one untimed warm-up of each measurement per model (decode: 8 steps), then every measurement
    interleaved across the models (A, B, A, B, ...);
  * percentiles interpolate linearly between order statistics (numpy's default);
  * CUDA timings are bracketed by torch.cuda.synchronize().
With exactly two models, "ratios" = first / second for every figure.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WARMUP_DECODE_STEPS = 8


def percentile(values: list[float], q: float) -> float:
    v = sorted(values)
    x = q * (len(v) - 1)
    lo, hi = int(x // 1), min(int(x // 1) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (x - lo)


def spread(values: list[float], scale: float = 1.0) -> dict:
    v = [x * scale for x in values]
    return {"median": percentile(v, 0.5), "p50": percentile(v, 0.5), "p95": percentile(v, 0.95),
            "min": min(v), "max": max(v), "mean": statistics.fmean(v), "n": len(v), "values": v}


def checkpoint_size(model_dir: str) -> tuple[int, int]:
    """(tensor bytes, parameters) summed over the checkpoint's safetensors headers: the files of
    model.safetensors.index.json when present, else model.safetensors (as whittle reads them)."""
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    nbytes = params = 0
    for fn in files:
        with open(os.path.join(model_dir, fn), "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        for k, v in header.items():
            if k == "__metadata__":
                continue
            a, b = v["data_offsets"]
            nbytes += b - a
            numel = 1
            for s in v["shape"]:
                numel *= s
            params += numel
    return nbytes, params


class Subject:
    def __init__(self, model_dir: str, text: str, device: str):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.dir = model_dir
        self.label = os.path.basename(os.path.normpath(model_dir))
        self.device = device
        dtype = torch.float32 if device == "cpu" else torch.bfloat16
        t0 = time.perf_counter()
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="eager")
        self.model.to(device).eval()
        params = inspect.signature(self.model.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        impl = getattr(self.model.config, "_attn_implementation", "eager")
        if impl != "eager":
            sys.exit(f"{model_dir}: attention implementation is {impl!r}, expected 'eager'")
        tok = AutoTokenizer.from_pretrained(model_dir)
        tok.model_max_length = sys.maxsize
        self.text_ids = tok(text, add_special_tokens=False)["input_ids"]
        if not self.text_ids:
            sys.exit("the benchmark prompt text has no tokens")
        with open(os.path.join(model_dir, "config.json")) as f:
            cfg = json.load(f)
        bos = cfg.get("bos_token_id", cfg.get("text_config", {}).get("bos_token_id", 2))
        self.bos = int(bos[0] if isinstance(bos, list) else 2 if bos is None else bos)
        self.weight_bytes, self.params = checkpoint_size(model_dir)
        print(f"loaded {model_dir} in {time.perf_counter() - t0:.1f}s ({device}, {dtype})", file=sys.stderr)

    def prompt(self, offset: int, n: int) -> list[int]:
        t = self.text_ids
        return [self.bos] + [t[(offset + i) % len(t)] for i in range(n - 1)]

    def tensor(self, rows: list[list[int]]):
        import torch

        return torch.tensor(rows, dtype=torch.long, device=self.device)

    def sync(self):
        if self.device != "cpu":
            import torch

            torch.cuda.synchronize()


def measure_prefill(s: Subject, p: dict) -> float:
    b, t = p["prefill_batch"], p["prefill_len"]
    stride = len(s.text_ids) // b
    x = s.tensor([s.prompt(i * stride, t) for i in range(b)])
    s.sync()
    t0 = time.perf_counter()
    z = s.model(input_ids=x, use_cache=False, logits_to_keep=1).logits
    picked = z[:, -1].argmax(-1).tolist()
    s.sync()
    secs = time.perf_counter() - t0
    del picked
    return b * t / secs


def measure_ttft(s: Subject, p: dict) -> float:
    x = s.tensor([s.prompt(0, p["rag_len"])])
    s.sync()
    t0 = time.perf_counter()
    out = s.model(input_ids=x, use_cache=True, logits_to_keep=1)
    tok = int(out.logits[0, -1].argmax())
    s.sync()
    secs = time.perf_counter() - t0
    del tok, out
    return secs


def returned_cache(out):
    """The KV cache of a forward's output (`cache` in transformers >= 5.2x, `past_key_values`
    before)."""
    c = out.get("cache")
    return c if c is not None else out.get("past_key_values")


def measure_decode(s: Subject, p: dict, steps: int) -> float:
    x = s.tensor([s.prompt(0, p["decode_prompt"])])
    out = s.model(input_ids=x, use_cache=True, logits_to_keep=1)
    cache = returned_cache(out)
    tok = int(out.logits[0, -1].argmax())
    s.sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        out = s.model(input_ids=s.tensor([[tok]]), use_cache=True, **{s.cache_kw: cache})
        cache = returned_cache(out)
        tok = int(out.logits[0, -1].argmax())
    s.sync()
    return steps / (time.perf_counter() - t0)


def run(subjects: list[Subject], p: dict) -> list[dict]:
    import torch

    m = [{"prefill": [], "ttft": [], "decode": []} for _ in subjects]
    with torch.inference_mode():
        for w in range(p["warmup"]):
            for s in subjects:
                print(f"warm-up {w + 1}/{p['warmup']} {s.label}", file=sys.stderr)
                measure_prefill(s, p)
                measure_ttft(s, p)
                measure_decode(s, p, min(WARMUP_DECODE_STEPS, p["decode_tokens"]))
        for r in range(p["repeats"]):
            for s, mm in zip(subjects, m):
                print(f"prefill {r + 1}/{p['repeats']} {s.label}", file=sys.stderr)
                mm["prefill"].append(measure_prefill(s, p))
        for r in range(p["runs"]):
            for s, mm in zip(subjects, m):
                mm["ttft"].append(measure_ttft(s, p))
            print(f"ttft {r + 1}/{p['runs']}", file=sys.stderr)
        for r in range(p["repeats"]):
            for s, mm in zip(subjects, m):
                print(f"decode {r + 1}/{p['repeats']} {s.label}", file=sys.stderr)
                mm["decode"].append(measure_decode(s, p, p["decode_tokens"]))
    return m


ROWS = [
    ("weight_gib", lambda v: v["weight_gib"]),
    ("params", lambda v: v["params"]),
    ("prefill_tok_s", lambda v: v["prefill_tok_s"]["median"]),
    ("ttft_p50_ms", lambda v: v["ttft_ms"]["p50"]),
    ("ttft_p95_ms", lambda v: v["ttft_ms"]["p95"]),
    ("decode_tok_s", lambda v: v["decode_tok_s"]["median"]),
]


def report_markdown(r: dict) -> str:
    p, models = r["protocol"], r["models"]
    two = len(models) == 2
    s = "| |" + "".join(f" {m['label']} |" for m in models) + (" ratio |" if two else "") + "\n"
    s += "|---|" + "---:|" * len(models) + ("---:|" if two else "") + "\n"

    def rng(v, d):
        return f"{v['median']:.{d}f} ({v['min']:.{d}f}–{v['max']:.{d}f})"

    cells = [
        ("weights (GiB)", lambda m: f"{m['weight_gib']:.4f}"),
        ("parameters", lambda m: f"{m['params'] / 1e6:.1f} M"),
        (f"chat prefill, tok/s ({p['prefill_batch']} × {p['prefill_len']}, no cache)", lambda m: rng(m["prefill_tok_s"], 1)),
        (f"RAG TTFT p50, ms (1 × {p['rag_len']})",
         lambda m: f"{m['ttft_ms']['p50']:.1f} ({m['ttft_ms']['min']:.1f}–{m['ttft_ms']['max']:.1f})"),
        (f"RAG TTFT p95, ms ({p['runs']} runs)", lambda m: f"{m['ttft_ms']['p95']:.1f}"),
        (f"decode, tok/s (1 × {p['decode_prompt']} + {p['decode_tokens']})", lambda m: rng(m["decode_tok_s"], 2)),
    ]
    for (key, _), (label, cell) in zip(ROWS, cells):
        s += f"| {label} |" + "".join(f" {cell(m)} |" for m in models)
        if two:
            s += f" {r['ratios'][key]:.3f} |"
        s += "\n"
    s += (f"\n{r['engine']}, {r['threads']} threads; tok/s and TTFT as median or p50 (min–max) over "
          f"{p['repeats']} repeats / {p['runs']} runs; prefill LM head on the last position only"
          + ("; ratio = first / second model" if two else "") + ".\n")
    return s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    ap.add_argument("--json-out", help="also write the JSON report to this file (the table still prints)")
    ap.add_argument("--quick", action="store_true", help="2x128 prefill, 256 RAG, 64+32 decode, 5 runs, 2 repeats")
    ap.add_argument("--prompt-file", default=os.path.join(ROOT, "src", "bench_prompt.txt"))
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    for k in ("runs", "repeats", "warmup", "prefill-batch", "prefill-len", "rag-len", "decode-prompt", "decode-tokens"):
        ap.add_argument(f"--{k}", type=int, default=None)
    args = ap.parse_args()

    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device visible to torch")
    n_cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(args.threads or n_cores)

    p = (dict(prefill_batch=2, prefill_len=128, rag_len=256, decode_prompt=64, decode_tokens=32, runs=5, repeats=2, warmup=1)
         if args.quick else
         dict(prefill_batch=8, prefill_len=512, rag_len=2048, decode_prompt=512, decode_tokens=128, runs=30, repeats=3, warmup=1))
    for k in list(p):
        v = getattr(args, k)
        if v is not None:
            if v < (0 if k == "warmup" else 1):
                sys.exit(f"--{k.replace('_', '-')} must be positive")
            p[k] = v
    with open(args.prompt_file, encoding="utf-8") as f:
        text = f.read()

    subjects = [Subject(d, text, args.device) for d in args.models]
    t0 = time.perf_counter()
    m = run(subjects, p)
    print(f"bench finished in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    models = [{
        "model": s.dir, "label": s.label, "weight_bytes": s.weight_bytes, "weight_gib": s.weight_bytes / 2**30,
        "params": s.params, "prefill_tok_s": spread(mm["prefill"]), "ttft_ms": spread(mm["ttft"], 1e3),
        "decode_tok_s": spread(mm["decode"]),
    } for s, mm in zip(subjects, m)]
    report = {
        "engine": f"transformers {transformers.__version__} eager {'fp32' if args.device == 'cpu' else 'bf16'} {device}",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": device,
        "threads": torch.get_num_threads(),
        "protocol": {**p, "prefill_cache": False, "prefill_lm_head": "last position of each sequence"},
        "models": models,
    }
    if len(models) == 2:
        report["ratios"] = {k: f(models[0]) / f(models[1]) for k, f in ROWS}
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    if args.json:
        print(json.dumps(report))
    else:
        print(report_markdown(report), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())

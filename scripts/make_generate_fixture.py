#!/usr/bin/env python3
"""Greedy-generation references from transformers, for `whittle generate`'s tests.

usage:
  make_generate_fixture.py                     regenerate the committed references:
        tests/fixtures/tiny-gemma2/generate-reference.json
        tests/fixtures/tiny-gemma3/generate-reference.json
        tests/real-model/gemma-3-270m-generate.json   (only if models/gemma-3-270m exists)
  make_generate_fixture.py MODEL --out FILE [--prompt TEXT | --prompts A B ...]
        [--max-new-tokens 32] [--chat] [--prepend-bos]

Regenerate with
    scripts/setup-python.sh --with-torch && .venv/bin/python scripts/make_generate_fixture.py

Protocol (what tests/generate.rs replays with `whittle generate --json`):
  * model loaded as hfref.load_model does: fp32, eager attention, CPU, eval mode;
  * prompt ids = the HF tokenizer's own encoding with special tokens (BOS first), checked to be
    BOS + the encoding without special tokens (what whittle builds). Tokenizers that add no BOS
    (SmolLM2, Qwen2.5: add_bos_token false) need --prepend-bos: the ids are then config's
    bos_token_id + the text ids, as whittle builds them, so both sides decode the same input;
  * --chat: the ids are one user turn through the model's own chat template (whittle's built-in
    Gemma 3 template, src/checkpoint/gemma3-chat.jinja, for a folder without one) as
    apply_chat_template renders it, tokenized without special tokens -- what `generate --chat` sends;
  * model.generate(do_sample=False, max_new_tokens=N, eos_token_id=STOP) where STOP is whittle's
    stop set: config.json eos_token_id + generation_config.json eos_token_id (int or list) +
    <end_of_turn> if the tokenizer has it. Generation may end early on a stop token, which is
    then the last id, as in whittle;
  * with several candidate prompts (the tiny random fixtures), the one whose continuation has the
    most distinct ids is kept (random-init models fall into loops quickly; a looping reference
    would test little). The candidates are fixed, so the choice is deterministic.
  * min_top2_margin: the smallest gap between the best and second-best logit over the greedy
    steps (a near-tie would make the comparison fragile across kernels);
  * top5: per generated token, the five best [id, logit] pairs of transformers' cached decode
    step (logits after the final softcap), so a test can compare decode-step logits too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

import hfref

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FIXTURE_PROMPTS = [
    "The river rises in a ring of low hills",
    "A lighthouse keeper kept a log of every ship",
    "Bread is one of the oldest prepared foods.",
    "In the winter of that year the school moved",
    "Mathematics often begins with counting",
    "The city council met on the first Monday",
    "Birds that migrate over long distances",
    "The museum holds a collection of maps",
]
REAL_PROMPT = "The capital of France is"


GEMMA_TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src", "checkpoint",
                              "gemma3-chat.jinja")


def chat_ids(tok, p: str) -> list[int]:
    """What `whittle generate --chat` sends: one user turn through the model's own chat template
    (whittle's built-in Gemma 3 template for a folder without one), as apply_chat_template renders
    it, tokenized without adding special tokens (BOS only where the template writes it)."""
    template = tok.chat_template
    if not template:
        with open(GEMMA_TEMPLATE, encoding="utf-8") as f:
            template = f.read()
    text = tok.apply_chat_template([{"role": "user", "content": p}], chat_template=template,
                                   add_generation_prompt=True, tokenize=False)
    return tok(text, add_special_tokens=False)["input_ids"]


def stop_tokens(model_dir: str, tok) -> list[int]:
    out: list[int] = []

    def add(v):
        if v is None:
            return
        for i in v if isinstance(v, list) else [v]:
            if int(i) not in out:
                out.append(int(i))

    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    add(cfg.get("eos_token_id"))
    add(cfg.get("text_config", {}).get("eos_token_id"))
    gc = os.path.join(model_dir, "generation_config.json")
    if os.path.exists(gc):
        with open(gc) as f:
            add(json.load(f).get("eos_token_id"))
    eot = tok.convert_tokens_to_ids("<end_of_turn>")
    if eot is not None and eot != tok.unk_token_id:
        add(eot)
    if not out and tok.eos_token_id is not None:
        add(tok.eos_token_id)
    return out


def prompt_ids(tok, text: str, bos: int, prepend_bos: bool) -> list[int]:
    """A plain prompt's ids as whittle builds them: BOS + the text's ids."""
    plain = tok(text, add_special_tokens=False)["input_ids"]
    if prepend_bos:
        return [bos] + plain
    ids = tok(text)["input_ids"]
    if ids != [bos] + plain:
        raise SystemExit(f"tokenizer's special-token encoding {ids[:4]}... is not BOS + text ids "
                         "(a tokenizer that adds no BOS needs --prepend-bos)")
    return ids


def greedy(model, tok, ids: list[int], n: int, stop: list[int]) -> dict:
    x = torch.tensor([ids], dtype=torch.long)
    with torch.no_grad():
        out = model.generate(
            x,
            attention_mask=torch.ones_like(x),
            do_sample=False,
            max_new_tokens=n,
            eos_token_id=stop,
            pad_token_id=stop[0] if stop else 0,
            output_scores=True,
            return_dict_in_generate=True,
        )
    new = out.sequences[0, len(ids):].tolist()
    margins, top5 = [], []
    for s in out.scores:  # greedy: the processed scores are the raw (softcapped) logits
        vals, idx = torch.topk(s[0].float(), 5)
        margins.append(float(vals[0] - vals[1]))
        top5.append([[int(i), float(v)] for i, v in zip(idx, vals)])
    return {"prompt_ids": ids, "tokens": new, "min_top2_margin": min(margins) if margins else None,
            "top5": top5, "text": tok.decode(new, skip_special_tokens=True)}


def make(model_dir: str, out_path: str, prompts: list[str], n: int, chat: bool, rel_model: str,
         prepend_bos: bool = False) -> dict:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = hfref.load_model(model_dir)
    bos = hfref.bos_id(model_dir)
    stop = stop_tokens(model_dir, tok)
    best = None
    for p in prompts:
        ids = chat_ids(tok, p) if chat else prompt_ids(tok, p, bos, prepend_bos)
        r = greedy(model, tok, ids, n, stop)
        r["prompt"] = p
        if best is None or len(set(r["tokens"])) > len(set(best["tokens"])):
            best = r
    ref = {
        "model": rel_model,
        "prompt": best["prompt"],
        "chat": chat,
        "max_new_tokens": n,
        "prepend_bos": prepend_bos,
        "stop_tokens": stop,
        "prompt_ids": best["prompt_ids"],
        "tokens": best["tokens"],
        "text": best["text"],
        "min_top2_margin": best["min_top2_margin"],
        "top5": best["top5"],
        "generate": "model.generate(do_sample=False, eos_token_id=stop_tokens), fp32, eager, CPU",
        "command": f"whittle generate {rel_model} --prompt {json.dumps(best['prompt'])} --max-new-tokens {n}"
                   + (" --chat" if chat else " --no-chat") + " --json",
        **hfref.versions(),
    }
    os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
    with open(out_path, "w") as f:
        json.dump(ref, f, indent=2)
        f.write("\n")
    print(f"{out_path}: prompt {best['prompt']!r}, {len(best['tokens'])} tokens "
          f"({len(set(best['tokens']))} distinct), min top-2 margin {best['min_top2_margin']:.4g}")
    return ref


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?")
    ap.add_argument("--out")
    ap.add_argument("--prompt")
    ap.add_argument("--prompts", nargs="+")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--chat", action="store_true")
    ap.add_argument("--prepend-bos", action="store_true",
                    help="feed config's BOS + the text ids (for tokenizers that add no BOS; whittle always does)")
    args = ap.parse_args()

    import transformers

    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    if args.model:
        if not args.out:
            ap.error("--out is required with MODEL")
        prompts = args.prompts or [args.prompt or REAL_PROMPT]
        make(args.model, args.out, prompts, args.max_new_tokens, args.chat, args.model, args.prepend_bos)
        return 0

    for name in ("tiny-gemma2", "tiny-gemma3"):
        d = os.path.join(ROOT, "tests", "fixtures", name)
        make(d, os.path.join(d, "generate-reference.json"), FIXTURE_PROMPTS, args.max_new_tokens, False,
             f"tests/fixtures/{name}")
    real = os.path.join(ROOT, "models", "gemma-3-270m")
    if os.path.exists(os.path.join(real, "config.json")):
        make(real, os.path.join(ROOT, "tests", "real-model", "gemma-3-270m-generate.json"), [REAL_PROMPT],
             args.max_new_tokens, False, "models/gemma-3-270m")
    else:
        print(f"{real} not found; skipping the real-model reference (make demo fetches it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

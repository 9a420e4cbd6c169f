#!/usr/bin/env python3
"""Writes a randomly initialised Gemma-2-2B-shaped checkpoint (full-size layers and vocabulary,
first N layers only) as a Hugging Face folder, in bf16, for whittle-vs-transformers parity on the
GPU machine (scripts/device-check.sh). No download: the config is written out here.

  python3 scripts/device/make_gemma2_2b.py --out /tmp/gemma2-2b-4l [--layers 4] [--seed 0]
  python3 scripts/device/make_gemma2_2b.py --out X --dry-run     # parse arguments, print the plan

Shapes are gemma-2-2b's: H 2304, I 9216, 8 heads of 256, 4 KV heads, vocabulary 256000,
query_pre_attn_scalar 256, sliding window 4096 on even layers, softcaps 50 / 30. Weights are
normal(0, std) per tensor kind; q/k projections get a larger std so the attention softcap bites,
and the norms get random (1 + w) so the Gemma (1 + w) convention is exercised. Everything is
generated on the GPU when there is one (seconds), else on the CPU. The tokenizer is the tiny
Gemma-2 fixture's (for the serving benchmarks, which tokenize a prompt text).
"""
import argparse
import json
import os
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The serving benchmarks (whittle bench, scripts/bench_hf.py) tokenize a prompt text: the model
# gets the tiny Gemma-2 fixture's tokenizer (512 ids, all inside the 256000-row embedding).
# Speed does not depend on which ids a prompt has.
TOKENIZER_FROM = os.path.join(ROOT, "tests", "fixtures", "tiny-gemma2")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")

GEMMA2_2B = dict(
    vocab_size=256000,
    hidden_size=2304,
    intermediate_size=9216,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=256,
    query_pre_attn_scalar=256,
    sliding_window=4096,
    attn_logit_softcapping=50.0,
    final_logit_softcapping=30.0,
    rms_norm_eps=1e-6,
    max_position_embeddings=8192,
    hidden_activation="gelu_pytorch_tanh",
    tie_word_embeddings=True,
    pad_token_id=0,
    eos_token_id=1,
    bos_token_id=2,
)


def std_for(name):
    """normal(0, std) per tensor kind."""
    if name.endswith("norm.weight"):
        return 0.1  # the stored w of (1 + w)
    if "q_proj" in name or "k_proj" in name:
        return 0.06  # scores of std ~6, tails past the softcap of 50 after scaling
    return 0.02  # embeddings and the other projections (transformers' initializer_range)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--layers", type=int, default=4, help="decoder layers to keep (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cuda | cpu (where weights are generated)")
    p.add_argument("--tokenizer-from", default=TOKENIZER_FROM,
                   help="folder whose tokenizer.json / tokenizer_config.json are copied (default: the tiny Gemma-2 fixture)")
    p.add_argument("--dry-run", action="store_true", help="parse arguments, print the plan, exit")
    a = p.parse_args(argv)
    if a.layers < 1:
        p.error("--layers must be at least 1")
    missing = [f for f in TOKENIZER_FILES if not os.path.isfile(os.path.join(a.tokenizer_from, f))]
    if missing:
        p.error(f"--tokenizer-from {a.tokenizer_from}: missing {', '.join(missing)}")
    return a


def main(argv=None):
    a = parse_args(argv)
    plan = {"out": a.out, "layers": a.layers, "seed": a.seed, "tokenizer_from": a.tokenizer_from,
            "config": GEMMA2_2B}
    if a.dry_run:
        print("make_gemma2_2b (dry run):", json.dumps({k: v for k, v in plan.items() if k != "config"}))
        return 0

    import torch
    from transformers import AutoModelForCausalLM, Gemma2Config

    dev = a.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.time()
    # Even layers slide (window 4096), odd layers are global: written out explicitly.
    types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(a.layers)]
    cfg = Gemma2Config(num_hidden_layers=a.layers, layer_types=types, **GEMMA2_2B)
    torch.manual_seed(a.seed)
    with torch.device(dev):
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.bfloat16)
    gen = torch.Generator(device=dev).manual_seed(a.seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            std = std_for(name)
            p.copy_((torch.randn(p.shape, generator=gen, device=dev, dtype=torch.float32) * std).to(p.dtype))
    model.config.dtype = torch.bfloat16
    os.makedirs(a.out, exist_ok=True)
    model.save_pretrained(a.out, safe_serialization=True)
    gc = os.path.join(a.out, "generation_config.json")
    if os.path.exists(gc):
        os.remove(gc)
    for f in TOKENIZER_FILES:
        shutil.copy(os.path.join(a.tokenizer_from, f), os.path.join(a.out, f))
    n = sum(p.numel() for p in model.parameters())
    print(f"make_gemma2_2b: {a.out}: {a.layers} layers, {n / 1e6:.0f}M parameters, bf16, "
          f"generated on {dev} in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

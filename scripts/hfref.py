"""Shared helpers for the transformers reference scripts (hf_eval.py, hf_forward_bench.py,
make_fixtures.py): loading a model the one way we compare against (fp32, eager attention,
CPU) and cutting a text into the evaluation windows.

The window protocol (keep `whittle eval` in step with it):
  * tokenize the whole file with the model's tokenizer, WITHOUT special tokens;
  * cut the ids into consecutive, non-overlapping chunks of seq-1 tokens; a final partial
    chunk is dropped;
  * prefix each chunk with BOS (config.bos_token_id, default 2), giving windows of `seq` ids;
  * every position but the last predicts the next id: seq-1 scored tokens per window;
  * take the first N windows.
"""

from __future__ import annotations

import json
import os
import sys


def versions() -> dict:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


def set_threads(n: int | None) -> int:
    import torch

    if n is not None:
        if n < 1:
            sys.exit("--threads must be >= 1")
        torch.set_num_threads(n)
    return torch.get_num_threads()


def bos_id(model_dir: str) -> int:
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    if "text_config" in cfg and "bos_token_id" not in cfg:
        cfg = cfg["text_config"]
    bos = cfg.get("bos_token_id")
    if isinstance(bos, list):
        bos = bos[0]
    return 2 if bos is None else int(bos)


def load_model(model_dir: str):
    """transformers causal LM in fp32 with eager attention, on CPU, eval mode."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    transformers.utils.logging.disable_progress_bar()

    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    except TypeError:  # transformers 4.x spelling
        model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32, attn_implementation="eager")
    model.eval()
    impl = getattr(model.config, "_attn_implementation", "eager")
    if impl != "eager":
        sys.exit(f"{model_dir}: attention implementation is {impl!r}, expected 'eager'")
    return model


def tokenize_file(model_dir: str, text_path: str) -> list[int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.model_max_length = sys.maxsize  # we window ourselves; silence the "sequence too long" warning
    with open(text_path, encoding="utf-8") as f:
        text = f.read()
    return list(tok(text, add_special_tokens=False)["input_ids"])


def windows(ids: list[int], seq: int, n: int | None, bos: int) -> list[list[int]]:
    """The first n windows [BOS] + ids[k*(seq-1) : (k+1)*(seq-1)] (all full chunks if n is None)."""
    if seq < 2:
        sys.exit("--seq must be >= 2")
    step = seq - 1
    full = len(ids) // step
    if n is None:
        n = full
    if n < 1 or n > full:
        sys.exit(f"the text has {len(ids)} tokens = {full} full windows of {step}; asked for {n}")
    return [[bos] + ids[k * step:(k + 1) * step] for k in range(n)]

#!/usr/bin/env python3
"""Conformance of compiled checkpoints with transformers.

For every `NAME.whittle-logits.safetensors` in DIR (written by the Rust test
tests/conformance_export.rs, beside the compiled folder DIR/NAME), load DIR/NAME with
transformers (AutoModelForCausalLM, fp32, eager attention, no custom code), run the same
input_ids and require ||whittle - transformers|| / ||transformers|| <= 1e-4 at every position.

usage: conformance.py DIR      (default DIR: target/tmp/conformance)
Prints one line per model and a summary; exit 1 on any failure.
"""
import glob
import os
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

TOL = 1e-4


def main(root: str) -> int:
    files = sorted(glob.glob(os.path.join(root, "*.whittle-logits.safetensors")))
    if not files:
        print(f"conformance: no *.whittle-logits.safetensors in {root}; run cargo test first")
        return 1
    passed = failed = 0
    for f in files:
        name = os.path.basename(f).split(".whittle-logits")[0]
        folder = os.path.join(root, name)
        ref = load_file(f)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
        model.eval()
        with torch.no_grad():
            hf = model(ref["input_ids"]).logits.float()
        ours = ref["logits"]
        err = ((ours - hf).norm(dim=-1) / hf.norm(dim=-1).clamp_min(1e-30)).max().item()
        width = model.config.get_text_config().intermediate_size  # nested for "gemma3"
        ok = err <= TOL
        print(f"{'ok  ' if ok else 'FAIL'} {name} ({type(model).__name__}): intermediate_size {width}, max per-position "
              f"||d||/||ref|| = {err:.2e} (tol {TOL:.0e})")
        passed += ok
        failed += not ok
    print(f"conformance: {passed} of {passed + failed} compiled models match transformers")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "target/tmp/conformance"))

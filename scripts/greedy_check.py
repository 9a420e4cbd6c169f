#!/usr/bin/env python3
"""`whittle generate` against a transformers greedy reference (scripts/make_generate_fixture.py).

usage: greedy_check.py --whittle BIN --model DIR --reference FILE

Runs `whittle generate DIR --prompt P --max-new-tokens N --json --device cpu` with the
reference's prompt, length and chat mode, and fails unless whittle's prompt ids and generated ids
are the reference's exactly (the reference was decoded by transformers fp32 eager from the same
prompt ids: BOS + the text ids). tests/generate.rs does the same for Gemma 3 270M and also
compares decode-step logits; this script is the check for models that have no Rust test (the
Llama family's real models in scripts/real-model-check.sh). Exit status 0 = identical.
"""

import argparse
import json
import subprocess
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--whittle", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--reference", required=True)
    args = ap.parse_args()

    with open(args.reference) as f:
        ref = json.load(f)
    cmd = [args.whittle, "generate", args.model, "--prompt", ref["prompt"],
           "--max-new-tokens", str(ref["max_new_tokens"]), "--json", "--device", "cpu",
           "--chat" if ref.get("chat") else "--no-chat"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"greedy_check: `{' '.join(cmd)}` failed ({r.returncode}):\n{r.stderr}")
    got = json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("{")][-1])
    name = ref.get("model", args.model)
    if got["prompt_ids"] != ref["prompt_ids"]:
        sys.exit(f"FAIL {name} greedy: prompt ids differ\n  whittle      {got['prompt_ids']}\n"
                 f"  transformers {ref['prompt_ids']}")
    want, have = ref["tokens"], got["tokens"]
    if have != want:
        at = next((i for i, (a, b) in enumerate(zip(have, want)) if a != b), min(len(have), len(want)))
        sys.exit(f"FAIL {name} greedy: tokens differ at {at} of {len(want)}\n  whittle      {have}\n"
                 f"  transformers {want}\n  whittle text      {got['text']!r}\n"
                 f"  transformers text {ref['text']!r}")
    print(f"ok   {name} greedy: {len(want)} identical tokens (min top-2 margin "
          f"{ref.get('min_top2_margin', float('nan')):.3g}) {got['text']!r}")


if __name__ == "__main__":
    main()

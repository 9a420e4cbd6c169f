#!/usr/bin/env bash
# Compile-quality benchmark (README "Quality" table): Gemma 3 270M, calibration 128 × 512 tokens
# of wiki-calib, evaluation wiki-dev (seq 512, 32 windows) against the original: PPL ratio, KL,
# top-1 agreement for each method, with and without --sequential (both re-fit targets), at width
# 1408 of 2048; and the two best methods at 1792 and 1024.
#
# usage: scripts/bench-quality.sh        env: MODEL, CALIB, DEV, WHITTLE (binary), OUT, ONLY (regex of names)
# Results: $OUT/<name>/ (compiled models), $OUT/<name>.json (eval), $OUT/quality.md (table).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
model=${MODEL:-models/gemma-3-270m}
calib=${CALIB:-../shared/data/wiki-calib.txt}
dev=${DEV:-../shared/data/wiki-dev.txt}
bin=${WHITTLE:-target/release/whittle}
out=${OUT:-target/quality}
only=${ONLY:-.}
mkdir -p "$out"

common=(--calib "$calib" --samples 128 --seq 512 --force)
# Token weighting (--token-weight) is part of the name: `-tw` = out (the default), `-twr` =
# out-resid; the rest were measured with uniform weighting.
configs=(
  "magnitude-1408|--intermediate-size 1408 --method magnitude --no-repair --one-shot"
  "energy-1408|--intermediate-size 1408 --method energy --no-repair --one-shot --token-weight uniform"
  "energy-seq-1408|--intermediate-size 1408 --method energy --no-repair --sequential --token-weight uniform"
  "energy-repair-1408|--intermediate-size 1408 --method energy --one-shot --token-weight uniform"
  "energy-repair-d0.01-1408|--intermediate-size 1408 --method energy --one-shot --damp 0.01 --token-weight uniform"
  "energy-repair-seq-1408|--intermediate-size 1408 --method energy --sequential --damp 0.01 --token-weight uniform"
  "energy-repair-seqorig-1408|--intermediate-size 1408 --method energy --sequential --refit-target original --damp 0.01 --token-weight uniform"
  "obs-repair-1408|--intermediate-size 1408 --method obs --one-shot --damp 0.01 --token-weight uniform"
  "obs-repair-seq-1408|--intermediate-size 1408 --method obs --sequential --token-weight uniform"
  "obs-repair-seqorig-1408|--intermediate-size 1408 --method obs --sequential --refit-target original --damp 0.01 --token-weight uniform"
  "energy-repair-1792|--intermediate-size 1792 --method energy --one-shot --token-weight uniform"
  "energy-repair-1024|--intermediate-size 1024 --method energy --one-shot --token-weight uniform"
  "obs-repair-seq-1792|--intermediate-size 1792 --method obs --sequential --token-weight uniform"
  "obs-repair-seq-1024|--intermediate-size 1024 --method obs --sequential --token-weight uniform"
  "obs-repair-tw-seq-1408|--intermediate-size 1408 --method obs --sequential --token-weight out"
  "obs-repair-tw-seq-d0.01-1408|--intermediate-size 1408 --method obs --sequential --token-weight out --damp 0.01"
  "obs-repair-twr-seq-1408|--intermediate-size 1408 --method obs --sequential --token-weight out-resid"
  "obs-repair-tw-1408|--intermediate-size 1408 --method obs --one-shot --token-weight out"
  "energy-repair-tw-1408|--intermediate-size 1408 --method energy --one-shot --token-weight out"
  "energy-repair-tw-seq-1408|--intermediate-size 1408 --method energy --sequential --token-weight out"
  "energy-tw-1408|--intermediate-size 1408 --method energy --no-repair --one-shot --token-weight out"
  "energy-tw-seq-1408|--intermediate-size 1408 --method energy --no-repair --sequential --token-weight out"
  "obs-repair-tw-seq-1792|--intermediate-size 1792 --method obs --sequential --token-weight out"
  "obs-repair-tw-seq-1024|--intermediate-size 1024 --method obs --sequential --token-weight out"
  # Whole-MLP reconstruction after the re-fit (`-recon`, defaults: 2 epochs, step 1e-3 × RMS,
  # 16384 tokens; `-reconE-LR` names other settings).
  "obs-repair-tw-seq-recon-1408|--intermediate-size 1408 --method obs --sequential --token-weight out --reconstruct"
  "obs-repair-tw-seq-recon4-0.003-1408|--intermediate-size 1408 --method obs --sequential --token-weight out --reconstruct --recon-epochs 4 --recon-lr 0.003"
)

if [ ! -f "$out/original.json" ]; then
  "$bin" eval "$model" --text "$dev" --seq 512 --windows 32 --json > "$out/original.json"
fi
for c in "${configs[@]}"; do
  name=${c%%|*}; flags=${c#*|}
  [[ "$name" =~ $only ]] || continue
  if [ -f "$out/$name.json" ]; then echo "== $name (done)"; continue; fi
  echo "== $name: whittle compile $flags"
  # shellcheck disable=SC2086
  "$bin" compile "$model" -o "$out/$name" "${common[@]}" $flags
  "$bin" eval "$out/$name" --base "$model" --text "$dev" --seq 512 --windows 32 --json > "$out/$name.json.tmp"
  mv "$out/$name.json.tmp" "$out/$name.json"
done

python3 - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
base = json.load(open(f"{out}/original.json"))
rows = []
for f in sorted(os.listdir(out)):
    if not f.endswith(".json") or f == "original.json":
        continue
    name = f[:-5]
    e = json.load(open(f"{out}/{f}"))
    r = json.load(open(f"{out}/{name}/whittle_report.json"))
    t = r["timings_s"]
    if not r["sequential"]:
        seq = "no"
    elif not r["repair"]:
        seq = "yes"  # no re-fit: the target does not apply
    else:
        seq = "yes (" + r.get("sequential_target", "original") + ")"
    tw = r.get("token_weight", "uniform") if (r["repair"] or r["method"] != "magnitude") else "–"
    rows.append((r["intermediate_size_after"], name, r["method"], tw, seq, f'yes ({r["damp"]:g})' if r["repair"] else "no", e["ppl"] / base["ppl"], e["kl"], e["top1_agree"],
                 sum(t.values()), r.get("peak_heap_mib"), r.get("peak_rss_mib")))
rows.sort(key=lambda x: (-x[0], x[7]))
lines = [f"original PPL {base['ppl']:.4f} on {base['tokens']} tokens ({base['windows']} windows x {base['seq']})", "",
         "| width | method | token weight | sequential (re-fit target) | repair (damp) | PPL ratio | KL | top-1 agree | compile s | peak heap / RSS MiB |",
         "|---|---|---|---|---|---|---|---|---|---|"]
for w, name, m, tw, s, rp, pr, kl, t1, secs, heap, rss in rows:
    mem = (f"{heap:.0f} / " if heap else "– / ") + f"{rss or 0:.0f}"
    lines.append(f"| {w} | {m} | {tw} | {s} | {rp} | {pr:.3f} | {kl:.4f} | {t1:.4f} | {secs:.0f} | {mem} |")
open(f"{out}/quality.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY

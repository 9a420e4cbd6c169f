#!/usr/bin/env bash
# Batch compilation on Gemma 3 270M: `--tier all` (four widths in one run) against one
# single-width compile, one-shot and sequential, wall time and peak RSS from each report; with
# CHECK=1 also the four single-width compiles of each mode, and every tensor file compared byte
# for byte with the batch run's folder.
#
# usage: scripts/bench-batch.sh [OUTDIR]     (default target/bench-batch; needs the release build
#        and models/gemma-3-270m, data/calib.txt: `make demo` fetches both)
# env:   SAMPLES (128), SEQ (512), CHECK (0), MODES ("one-shot sequential")
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bin=target/release/whittle
model=models/gemma-3-270m
out=${1:-target/bench-batch}
samples=${SAMPLES:-128}
seq=${SEQ:-512}
modes=${MODES:-one-shot sequential}
mkdir -p "$out"
common=(--device cpu compile "$model" --calib data/calib.txt --samples "$samples" --seq "$seq" --force)
secs() { python3 -c 'import sys,time; print(f"{time.time()-float(sys.argv[1]):.1f}")' "$1"; }
rss() { python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["peak_rss_mib"]))' "$1/whittle_report.json"; }
echo "| mode | run | wall s | peak RSS MiB |"
echo "|---|---|---:|---:|"
for mode in $modes; do
  t=$(date +%s.%N)
  "$bin" "${common[@]}" --"$mode" --tier throughput -o "$out/$mode-single" >/dev/null 2>"$out/$mode-single.log"
  echo "| $mode | --tier throughput | $(secs "$t") | $(rss "$out/$mode-single") |"
  t=$(date +%s.%N)
  "$bin" "${common[@]}" --"$mode" --tier all -o "$out/$mode-all" >/dev/null 2>"$out/$mode-all.log"
  echo "| $mode | --tier all (4 widths) | $(secs "$t") | $(rss "$out/$mode-all/throughput") |"
  cmp -s "$out/$mode-single/model.safetensors" "$out/$mode-all/throughput/model.safetensors" \
    || { echo "FAIL: $mode throughput differs between the single and the batch run"; exit 1; }
  if [ "${CHECK:-0}" = 1 ]; then
    for tier in default production experimental; do
      "$bin" "${common[@]}" --"$mode" --tier "$tier" -o "$out/$mode-$tier" >/dev/null 2>&1
      cmp -s "$out/$mode-$tier/model.safetensors" "$out/$mode-all/$tier/model.safetensors" \
        || { echo "FAIL: $mode $tier differs between the single and the batch run"; exit 1; }
    done
    echo "| $mode | check | all four tiers byte-identical to single-width compiles | |"
  fi
done

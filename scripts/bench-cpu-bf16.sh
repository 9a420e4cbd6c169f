#!/usr/bin/env bash
# f32 against bf16 CPU GEMMs on one machine, interleaved (A, B, A, B) so a neighbour's load hits
# both alike: the forward pass against transformers (scripts/bench-cpu-forward.sh), then a compile
# at each precision, timed, and its KL to the base on the dev text.
#
# usage: scripts/bench-cpu-bf16.sh [MODEL]      (default models/gemma-3-270m)
#
# Environment: REPS (forward repetitions, default 2), WINDOWS (forward windows, default 4),
# WIDTH (default 1408), SAMPLES (default 128), CALIB (default ../shared/data/wiki-calib.txt),
# DEV (default ../shared/data/wiki-dev.txt), EVAL_WINDOWS (default 32), WHITTLE (binary),
# OUT (scratch folder, default a temporary one), SKIP_COMPILE=1 (forward only), SKIP_FORWARD=1,
# BASELINE=COMMIT (also build that commit in a git worktree under target/ and time its default
# compile first, e.g. BASELINE=609c59f for issue 19's "2x faster than 609c59f").
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here/.."
model=${1:-models/gemma-3-270m}
whittle=${WHITTLE:-target/release/whittle}
reps=${REPS:-2}
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
calib=${CALIB:-../shared/data/wiki-calib.txt}
dev=${DEV:-../shared/data/wiki-dev.txt}
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(nproc) cores"
[ "${SKIP_FORWARD:-0}" = 1 ] && reps=0
for r in $(seq "$reps"); do
  for p in f32 bf16; do
    echo "## forward, precision $p, run $r"
    PRECISION=$p WHITTLE=$whittle WINDOWS=${WINDOWS:-4} bash "$here/bench-cpu-forward.sh" "$model"
  done
done
[ "${SKIP_COMPILE:-0}" = 1 ] && exit 0
labels="f32 bf16"
if [ -n "${BASELINE:-}" ]; then
  wt=target/baseline-$BASELINE
  [ -d "$wt" ] || git worktree add --detach "$wt" "$BASELINE" >/dev/null
  echo "## building $BASELINE ($(git -C "$wt" log --oneline -1))"
  (cd "$wt" && NVCC=${NVCC:-$PWD/../../.cuda/bin/nvcc} cargo build --release --bin whittle >/dev/null 2>&1)
  echo "## compile, $BASELINE (its default precision)"
  t0=$(date +%s.%N)
  "$wt/target/release/whittle" --device cpu compile "$model" -o "$out/c-base" --calib "$calib" \
    --samples "${SAMPLES:-128}" --seq 512 --intermediate-size "${WIDTH:-1408}" >/dev/null 2>&1
  t1=$(date +%s.%N)
  echo "compile $BASELINE: $(echo "$t1 - $t0" | bc) s"
  labels="base f32 bf16"
fi
for p in f32 bf16; do
  echo "## compile, precision $p"
  t0=$(date +%s.%N)
  "$whittle" --device cpu --precision "$p" compile "$model" -o "$out/c-$p" --calib "$calib" \
    --samples "${SAMPLES:-128}" --seq 512 --intermediate-size "${WIDTH:-1408}" >/dev/null 2>&1
  t1=$(date +%s.%N)
  echo "compile $p: $(echo "$t1 - $t0" | bc) s; report cpu_gemm: $(grep -o '"cpu_gemm": *"[^"]*"' "$out/c-$p/whittle_report.json" || true)"
done
for p in $labels; do
  echo "## eval of the $p compile (f32 eval)"
  "$whittle" --device cpu eval "$out/c-$p" --base "$model" --text "$dev" --seq 512 \
    --windows "${EVAL_WINDOWS:-32}" --json
done

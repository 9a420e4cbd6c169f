#!/usr/bin/env bash
# Issue 18, acceptance 2: kill a real-model compile with SIGKILL / SIGINT / SIGTERM at RUNS random
# points (half of them anywhere in the run, half in the write phase, 0-0.5 s after the run's temp
# folder appears) and check that
#   - the input folder is unchanged (sha256 of every file, before and after);
#   - OUT is absent or complete (its model.safetensors equals an uninterrupted run's, byte for
#     byte; compiles are deterministic), never partial;
#   - the temp folder a killed run leaves is removed by the next run on the same OUT, and none is
#     left after the last (uninterrupted) run.
# Every third run goes over an existing OUT with --force (the replace path); a run that ends
# before its signal arrives is reported as such ("finished first") and another is started.
# env: MODEL (models/gemma-3-270m), CALIB (data/calib.txt), RUNS (10), SAMPLES (8), SEQ (128),
#      SEED (random), WHITTLE (target/release/whittle)
set -euo pipefail
# Job control on: a background job of a non-interactive shell would otherwise ignore SIGINT.
set -m
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
model=${MODEL:-models/gemma-3-270m}
calib=${CALIB:-data/calib.txt}
runs=${RUNS:-10}
samples=${SAMPLES:-8}
seq=${SEQ:-128}
bin=${WHITTLE:-target/release/whittle}
RANDOM=${SEED:-$$}
work=$(mktemp -d "${TMPDIR:-/tmp}/whittle-kill.XXXXXX")
trap 'rm -rf "$work"' EXIT
args=(--device cpu compile "$model" --calib "$calib" --samples "$samples" --seq "$seq")

digest() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 sha256sum) | sha256sum | cut -d' ' -f1; }
temps() { find "$work" -maxdepth 1 -name '.out.whittle-tmp-*' -printf '%f\n'; }

input_before=$(digest "$model")
t0=$(date +%s.%N)
"$bin" "${args[@]}" -o "$work/ref" >/dev/null 2>"$work/ref.log"
dur=$(awk "BEGIN { printf \"%.2f\", $(date +%s.%N) - $t0 }")
ref=$(sha256sum <"$work/ref/model.safetensors" | cut -d' ' -f1)
echo "uninterrupted compile: ${dur}s, model.safetensors $ref"

fail=0
sigs=(KILL INT TERM)
killed=0
i=0
# A run that ends before its signal (the machine was faster than during the reference run) does
# not count: the loop goes on until RUNS runs were interrupted (at most 3 × RUNS tries).
while [ "$killed" -lt "$runs" ] && [ "$i" -lt $((3 * runs)) ]; do
  i=$((i + 1))
  sig=${sigs[$((i % 3))]}
  # Every third run replaces a complete OUT with --force; the others start with OUT absent (a
  # complete OUT left by the run before is removed here, as a user would).
  force=()
  if [ $((i % 3)) -eq 0 ]; then
    [ -d "$work/out" ] || cp -r "$work/ref" "$work/out"
    force=(--force)
  else
    rm -rf "$work/out"
  fi
  before=$(temps)
  t1=$(date +%s.%N)
  "$bin" "${args[@]}" -o "$work/out" "${force[@]}" >/dev/null 2>"$work/run$i.log" &
  pid=$!
  if [ $((i % 2)) -eq 0 ]; then
    # Anywhere in the run (mostly calibration: the write is the last ~2%).
    sleep "$(awk "BEGIN { printf \"%.3f\", $dur * $((RANDOM % 1000)) / 1000 }")"
  else
    # In the write phase: once this run's temp folder exists, 0-0.5 s into the write.
    while kill -0 "$pid" 2>/dev/null && [ ! -e "$work/.out.whittle-tmp-$pid/model.safetensors" ]; do sleep 0.02; done
    sleep "0.$((RANDOM % 500))"
  fi
  delay=$(awk "BEGIN { printf \"%.2f\", $(date +%s.%N) - $t1 }")
  frac=$(awk "BEGIN { printf \"%d\", 1000 * $delay / $dur }")
  if kill -s "$sig" "$pid" 2>/dev/null; then
    how="SIG$sig"
    killed=$((killed + 1))
  else
    how="finished first"
  fi
  wait "$pid" 2>/dev/null && rc=0 || rc=$?
  state=absent
  if [ -e "$work/out" ]; then
    if [ -f "$work/out/whittle_report.json" ] &&
      [ "$(sha256sum <"$work/out/model.safetensors" | cut -d' ' -f1)" = "$ref" ]; then
      state=complete
    else
      state=PARTIAL
      fail=1
    fi
  fi
  # Temp folders of earlier killed runs must be gone once this run got past its start.
  stale=""
  for t in $before; do [ -e "$work/$t" ] && stale="$stale $t"; done
  if [ -n "$stale" ] && grep -q "^compiling" "$work/run$i.log"; then
    echo "  stale temp folder not removed:$stale"
    fail=1
  fi
  printf 'run %2d: %-14s after %6.2fs (%3d%%)%s exit %3d, OUT %s, temp folders now: %s\n' \
    "$i" "$how" "$delay" "$((frac / 10))" "${force[*]:+ --force}" "$rc" "$state" "$(temps | wc -l)"
done

# The next (uninterrupted) run removes whatever the last killed one left.
"$bin" "${args[@]}" -o "$work/out" --force >/dev/null 2>"$work/final.log"
left=$(temps | wc -l)
final=$(sha256sum <"$work/out/model.safetensors" | cut -d' ' -f1)
input_after=$(digest "$model")
echo "final run: OUT $([ "$final" = "$ref" ] && echo complete || echo DIFFERENT), temp folders left: $left"
echo "input: $([ "$input_before" = "$input_after" ] && echo unchanged || echo CHANGED) ($input_after)"
[ "$final" = "$ref" ] && [ "$left" -eq 0 ] && [ "$input_before" = "$input_after" ] &&
  [ "$fail" -eq 0 ] && [ "$killed" -eq "$runs" ] ||
  { echo "FAIL"; exit 1; }
echo "ok: $killed interrupted compiles ($i runs), input unchanged, OUT never partial, no temp folder left"

#!/usr/bin/env bash
# Compile quality on the Llama family's real models (README, "Llama family"): SmolLM2-135M
# (llama) and Qwen2.5-Coder-0.5B (qwen2), both dequantized from Q4 GGUFs by scripts/get-model.sh.
#
#   scripts/bench-quality-llama.sh weights MODEL   token weighting study: one compile per
#        --token-weight (uniform, out, next-norm, out-resid) at the middle width (keep ≈ 0.71),
#        otherwise the defaults (obs, sequential, repair, damp 0.001)
#   scripts/bench-quality-llama.sh table MODEL     the family default (no --token-weight flag) at
#        three widths (keep ≈ 0.86, 0.71, 0.53) in one `--widths` run, then wiki-dev KL / PPL
#        ratio / top-1 against the original and the zero-shot tasks for the original and each width
#
# MODEL: smollm2-135m (MLP 1536 → 1344, 1088, 832) or qwen2.5-coder-0.5b (4864 → 4224, 3456,
# 2560): multiples of the --multiple-of default (128, clamped to 64 for SmolLM2).
# Calibration: CALIB (/work/shared/data/wiki-calib.txt, else ../shared/data/wiki-calib.txt),
# SAMPLES × SEQ tokens (128 × 512). Evaluation: DEV (wiki-dev.txt beside it), seq 512, WINDOWS
# windows (32); tasks TASKS (arc_easy,arc_challenge,hellaswag,piqa,lambada; data/tasks from
# `make tasks-data`), the first LIMIT items of each (100; 0 skips the tasks). Evaluation data is
# never calibrated on.
# Results: OUT/MODEL/... (target/quality-llama): compiled folders, one JSON per evaluation,
# weights.md / table.md. Finished steps (their JSON exists) are skipped, so a run can be resumed.
# EXTRA: more compile flags for both modes (e.g. "--one-shot"; the table's "mode" column says).
# env: WHITTLE (target/release/whittle), THREADS (whittle's default: all cores)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
mode=${1:?usage: $0 weights|table MODEL}
name=${2:?usage: $0 weights|table MODEL}
shared=/work/shared/data
[ -d "$shared" ] || shared=../shared/data
calib=${CALIB:-$shared/wiki-calib.txt}
dev=${DEV:-$shared/wiki-dev.txt}
bin=${WHITTLE:-target/release/whittle}
out=${OUT:-target/quality-llama}/$name
samples=${SAMPLES:-128}
seq=${SEQ:-512}
windows=${WINDOWS:-32}
limit=${LIMIT:-100}
tasks=${TASKS:-arc_easy,arc_challenge,hellaswag,piqa,lambada}
threads=()
[ -n "${THREADS:-}" ] && threads=(--threads "$THREADS")
model=models/$name
case "$name" in
  smollm2-135m) widths=(1344 1088 832) ;;
  qwen2.5-coder-0.5b) widths=(4224 3456 2560) ;;
  *) echo "bench-quality-llama: unknown model '$name' (smollm2-135m, qwen2.5-coder-0.5b)" >&2; exit 2 ;;
esac
[ -f "$model/model.safetensors" ] || bash scripts/get-model.sh "$name" "$model"
mkdir -p "$out"
# shellcheck disable=SC2206
common=(--calib "$calib" --samples "$samples" --seq "$seq" --force ${EXTRA:-})

# eval_text DIR JSON: wiki-dev against the original (KL, PPL, top-1).
eval_text() {
  [ -f "$2" ] && return 0
  "$bin" --device cpu eval "$1" --base "$model" --text "$dev" --seq 512 --windows "$windows" "${threads[@]}" \
    --json > "$2.tmp"
  mv "$2.tmp" "$2"
}
# eval_tasks DIR JSON: the zero-shot tasks, first $limit items each (no --base: the original is
# scored once, as a row of its own).
eval_tasks() {
  [ -f "$2" ] && return 0
  "$bin" --device cpu eval "$1" --tasks "$tasks" --limit "$limit" "${threads[@]}" --json > "$2.tmp"
  mv "$2.tmp" "$2"
}
timed() { # LOG CMD...: run, keep stderr in LOG
  local log=$1
  shift
  echo "== $(date -u +%H:%M:%S) $*" | tee -a "$log"
  "$@" 2>>"$log"
}

if [ ! -f "$out/original.json" ]; then
  "$bin" --device cpu eval "$model" --text "$dev" --seq 512 --windows "$windows" "${threads[@]}" --json > "$out/original.json"
fi

case "$mode" in
  weights)
    w=${widths[1]}
    for tw in uniform out next-norm out-resid; do
      dir=$out/tw-$tw-$w
      if [ ! -f "$dir.json" ]; then
        [ -f "$dir/whittle_report.json" ] ||
          timed "$dir.log" "$bin" --device cpu compile "$model" -o "$dir" "${common[@]}" "${threads[@]}" \
            --intermediate-size "$w" --token-weight "$tw"
        timed "$dir.log" eval_text "$dir" "$dir.json"
      fi
    done
    ;;
  table)
    dir=$out/widths
    # Widths not compiled yet (a width folder from an earlier run, or the study's width with the
    # default weighting copied in, is byte-identical to what a several-width run writes).
    todo=()
    for w in "${widths[@]}"; do [ -f "$dir/width-$w/whittle_report.json" ] || todo+=("$w"); done
    if [ ${#todo[@]} -gt 1 ]; then
      timed "$out/widths.log" "$bin" --device cpu compile "$model" -o "$dir" "${common[@]}" "${threads[@]}" \
        --widths "$(IFS=,; echo "${todo[*]}")"
    elif [ ${#todo[@]} = 1 ]; then
      mkdir -p "$dir"
      timed "$out/widths.log" "$bin" --device cpu compile "$model" -o "$dir/width-${todo[0]}" "${common[@]}" \
        "${threads[@]}" --intermediate-size "${todo[0]}"
    fi
    for w in "${widths[@]}"; do timed "$out/widths.log" eval_text "$dir/width-$w" "$dir/width-$w.json"; done
    if [ "$limit" != 0 ]; then
      timed "$out/widths.log" eval_tasks "$model" "$out/original-tasks.json"
      for w in "${widths[@]}"; do timed "$out/widths.log" eval_tasks "$dir/width-$w" "$dir/width-$w-tasks.json"; done
    fi
    ;;
  *) echo "bench-quality-llama: unknown mode '$mode' (weights, table)" >&2; exit 2 ;;
esac

.venv/bin/python - "$mode" "$out" "$model" "$tasks" <<'PY'
import json, math, os, sys
mode, out, model, tasks = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(",")
load = lambda p: json.load(open(p))
base = load(f"{out}/original.json")
full = load(f"{model}/config.json")["intermediate_size"]
head = f"{model}: original PPL {base['ppl']:.4f} on {base['tokens']} tokens of wiki-dev ({base['windows']} windows x {base['seq']})"

def calib_mode(r):
    c = r.get("calibration", {})
    toks = c.get("tokens") if isinstance(c, dict) else None
    return ("sequential" if r["sequential"] else "one-shot") + (f", {toks} tok" if toks else "")

def text_cols(e):
    return f"{e['ppl'] / base['ppl']:.3f} | {e['kl']:.4f} | {e['top1_agree']:.4f}"

if mode == "weights":
    rows = []
    for f in sorted(os.listdir(out)):
        if f.startswith("tw-") and f.endswith(".json"):
            e, r = load(f"{out}/{f}"), load(f"{out}/{f[:-5]}/whittle_report.json")
            secs = sum(r["timings_s"].values())
            rows.append((e["kl"], f"| {r['intermediate_size_after']} ({r['intermediate_size_after'] / full:.2f}) | "
                                  f"{r['token_weight']} | {calib_mode(r)} | {text_cols(e)} | {secs:.0f} |"))
    lines = [head, "", "| width (keep) | token weight | mode | PPL ratio | KL | top-1 agree | compile s |",
             "|---|---|---|---|---|---|---|"] + [r for _, r in sorted(rows)]
    path = f"{out}/weights.md"
else:
    def task_cells(t):
        cells = []
        for k in tasks:
            m = t["tasks"][k]
            cells.append(f"{m['acc']:.3f}" if k == "lambada" else f"{m['acc']:.3f} / {m['acc_norm']:.3f}")
        cells.append(f"{t['tasks']['lambada']['ppl']:.1f}" if "lambada" in tasks else "–")
        return " | ".join(cells)
    none = " | ".join(["–"] * (len(tasks) + 1))
    ot = f"{out}/original-tasks.json"
    n = load(ot)["tasks"][tasks[0]]["items"] if os.path.exists(ot) else "–"
    hdr = " | ".join(("acc" if k == "lambada" else "acc / acc_norm") + f" {k}" for k in tasks)
    lines = [head, f"tasks: first {n} items of each", "",
             f"| width (keep) | token weight | mode | PPL ratio | KL | top-1 agree | {hdr} | lambada ppl | compile s |",
             "|---|---|---|---|---|---|" + "---|" * (len(tasks) + 2)]
    lines.append(f"| {full} (1.00) | – | original | 1.000 | 0 | 1 | {task_cells(load(ot)) if os.path.exists(ot) else none} | – |")
    d = f"{out}/widths"
    ws = sorted((int(f[6:]) for f in os.listdir(d) if f.startswith("width-") and os.path.isdir(f"{d}/{f}")), reverse=True)
    for w in ws:
        r = load(f"{d}/width-{w}/whittle_report.json")
        e = load(f"{d}/width-{w}.json") if os.path.exists(f"{d}/width-{w}.json") else None
        t = load(f"{d}/width-{w}-tasks.json") if os.path.exists(f"{d}/width-{w}-tasks.json") else None
        secs = sum(r["timings_s"].values())
        lines.append(f"| {w} ({w / full:.2f}) | {r['token_weight']} | {calib_mode(r)} | {text_cols(e) if e else '– | – | –'} | "
                     f"{task_cells(t) if t else none} | {secs:.0f} |")
    path = f"{out}/table.md"
open(path, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY

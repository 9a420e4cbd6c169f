#!/usr/bin/env bash
# Calibration-mix study (README "Which calibration text"): Gemma 3 270M compiled to width 1408
# (the throughput tier; defaults otherwise: obs, sequential, repair) with each calibration mix,
# then the capability report of every compile against the original — KL / PPL ratio / top-1 on
# the English, Spanish and French dev splits and the zero-shot tasks.
#
#   en       --calib data/calib.txt
#   en-es    --calib data/calib.txt:0.5 data/calib-es.txt:0.5
#   self-en  --calib self:0.5 data/calib.txt:0.5        (the model writes half of it)
#   self     --calib self
#   self-en-es  --calib self:0.34 data/calib.txt:0.33 data/calib-es.txt:0.33
#   V-recon  variant V with whole-MLP reconstruction (--reconstruct, its defaults)
#   V-distill  variant V with end-to-end distillation (--distill, its defaults), on V's own
#            calibration set (OUT/V/calibration-ids.safetensors when V's compile saved one)
#   V@W      variant V compiled to width W instead of WIDTH, on V's own calibration set as above
#            (self-en-es@1792 self-en-es@1024: the README's other widths of the recommended mix)
#
# Calibration comes from the *calib* splits of scripts/get-wiki-text.py and evaluation from the
# *dev* splits (disjoint by title hash); the task data is never calibrated on.
#
# usage: scripts/bench-calib-mix.sh [VARIANT...]     (default: the first four above)
# env: MODEL (models/gemma-3-270m), WIDTH (1408), SAMPLES × SEQ (128 × 512), WINDOWS (32),
#      LIMIT (250: first items of each task, as issue 14 measured; 0 skips the tasks), WHITTLE (target/release/whittle),
#      OUT (target/calib-mix), PRECISION (f32: the README rows were made with it; bf16 is
#      compile's default on AMD CPUs and changes the self-generated text too). Needs `make tasks-data` (data/{calib,dev}*.txt and data/tasks).
# Results: OUT/VARIANT/ (compiled model), OUT/VARIANT.texts.json, OUT/VARIANT.tasks-LIMIT.json,
# OUT/base.tasks-LIMIT.json,
# OUT/mix.md (the table). Finished steps (their JSON exists) are skipped, so a run resumes.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
model=${MODEL:-models/gemma-3-270m}
width=${WIDTH:-1408}
samples=${SAMPLES:-128}
seq=${SEQ:-512}
windows=${WINDOWS:-32}
limit=${LIMIT:-250}
bin=${WHITTLE:-target/release/whittle}
out=${OUT:-target/calib-mix}
precision=${PRECISION:-f32}
tasks=arc_easy,arc_challenge,hellaswag,piqa,lambada
for f in data/calib.txt data/calib-es.txt data/dev.txt data/dev-es.txt data/dev-fr.txt; do
  [ -f "$f" ] || { echo "bench-calib-mix: $f is missing; run make tasks-data" >&2; exit 2; }
done
mkdir -p "$out"

calib_of() {
  case "$1" in
    en) echo "data/calib.txt" ;;
    en-es) echo "data/calib.txt:0.5 data/calib-es.txt:0.5" ;;
    self-en) echo "self:0.5 data/calib.txt:0.5" ;;
    self) echo "self" ;;
    self-en-es) echo "self:0.34 data/calib.txt:0.33 data/calib-es.txt:0.33" ;;
    *) echo "bench-calib-mix: unknown variant '$1' (en, en-es, self-en, self, self-en-es; V-recon)" >&2; exit 2 ;;
  esac
}

# run_json CMD... > FILE, only when FILE is missing; written whole or not at all.
run_json() {
  local dst=$1; shift
  [ -f "$dst" ] && return 0
  "$@" > "$dst.tmp"
  mv "$dst.tmp" "$dst"
}

if [ "$limit" != 0 ]; then
  echo "== base: tasks (first $limit items)"
  run_json "$out/base.tasks-$limit.json" "$bin" --device cpu eval "$model" --tasks "$tasks" --limit "$limit" --json
fi
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(en en-es self-en self)
for v in "${variants[@]}"; do
  extra=()
  w=$width
  if [[ "$v" == *@* ]]; then
    w=${v##*@}
    [[ "$w" =~ ^[0-9]+$ ]] || { echo "bench-calib-mix: '$v': the width after @ must be a number" >&2; exit 2; }
    base_v=${v%@*}
  elif [[ "$v" == *-recon ]]; then
    base_v=${v%-recon}; extra=(--reconstruct)
  elif [[ "$v" == *-distill ]]; then
    base_v=${v%-distill}; extra=(--distill)
  else
    base_v=$v
  fi
  # shellcheck disable=SC2207
  calib=(--calib $(calib_of "$base_v") --samples "$samples" --seq "$seq")
  if [ "$base_v" != "$v" ] && [ -f "$out/$base_v/calibration-ids.safetensors" ]; then
    calib=(--calib-ids "$out/$base_v/calibration-ids.safetensors") # its own samples × seq
  fi
  if [ ! -f "$out/$v/whittle_report.json" ]; then
    echo "== $v: whittle compile ${calib[*]}"
    "$bin" --device cpu --precision "$precision" compile "$model" -o "$out/$v" "${calib[@]}" \
      --intermediate-size "$w" --force "${extra[@]}"
  fi
  echo "== $v: texts"
  run_json "$out/$v.texts.json" "$bin" --device cpu eval "$out/$v" --base "$model" --text en=data/dev.txt \
    --text es=data/dev-es.txt --text fr=data/dev-fr.txt --seq 512 --windows "$windows" --json
  if [ "$limit" != 0 ]; then
    echo "== $v: tasks"
    run_json "$out/$v.tasks-$limit.json" "$bin" --device cpu eval "$out/$v" --tasks "$tasks" --limit "$limit" --json
  fi
done

python3 - "$out" "$limit" <<'PY'
import json, os, sys
out, limit = sys.argv[1], sys.argv[2]
order = [v + r for r in ("", "-recon", "-distill") for v in ("en", "en-es", "self-en", "self", "self-en-es")]
order += sorted((d for d in os.listdir(out) if "@" in d and os.path.isdir(f"{out}/{d}")), key=lambda d: -int(d.split("@")[1]))
base = json.load(open(f"{out}/base.tasks-{limit}.json"))["tasks"] if os.path.exists(f"{out}/base.tasks-{limit}.json") else {}
mean4 = ["arc_easy", "arc_challenge", "hellaswag", "piqa"]
head = ["calibration", "en KL", "es KL", "fr KL", "en PPL ratio"]
head += [f"{t} acc" for t in mean4] + ["mean Δ acc (4 tasks)", "lambada acc", "lambada PPL", "compile s"]
lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
if base:
    row = ["original", "0", "0", "0", "1"] + [f"{base[t]['acc']:.3f}" for t in mean4] + ["–", f"{base['lambada']['acc']:.3f}", f"{base['lambada']['ppl']:.2f}", "–"]
    lines.append("| " + " | ".join(row) + " |")
for v in order:
    if not os.path.exists(f"{out}/{v}.texts.json"):
        continue
    r = json.load(open(f"{out}/{v}/whittle_report.json"))
    tx = json.load(open(f"{out}/{v}.texts.json"))["texts"]
    sg = r["calibration"].get("self_generated")
    secs = sum(r["timings_s"].values()) + (sg["seconds"] if sg else 0)
    label = v.replace("@", " at width ") if "@" in v else v
    if r.get("reconstruction"):
        label = v[:-len("-recon")] + f" + reconstruct ({r['timings_s']['reconstruct']:.0f} s)"
    if r.get("distillation"):
        label = v[:-len("-distill")] + f" + distill ({r['timings_s']['distill']:.0f} s)"
    row = [label, *(f"{tx[l]['kl']:.4f}" for l in ("en", "es", "fr")), f"{tx['en']['ppl_ratio']:.3f}"]
    tk = json.load(open(f"{out}/{v}.tasks-{limit}.json"))["tasks"] if os.path.exists(f"{out}/{v}.tasks-{limit}.json") else None
    if tk and base:
        row += [f"{tk[t]['acc']:.3f}" for t in mean4]
        row.append(f"{100 * sum(tk[t]['acc'] - base[t]['acc'] for t in mean4) / 4:+.1f} pts")
        row += [f"{tk['lambada']['acc']:.3f}", f"{tk['lambada']['ppl']:.2f}"]
    else:
        row += ["–"] * 7
    row.append(f"{secs:.0f}" + (f" (self-gen {sg['tokens']} tok at {sg['tok_per_s']:.0f} tok/s)" if sg else ""))
    lines.append("| " + " | ".join(row) + " |")
items = {t: v["items"] for t, v in base.items()}
lines.append("")
lines.append(f"Tasks: first items per task {items}; texts: {json.load(open(f'{out}/en.texts.json'))['texts']['en']['windows'] if os.path.exists(f'{out}/en.texts.json') else '?'} windows × 512 of data/dev*.txt.")
open(f"{out}/mix.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY

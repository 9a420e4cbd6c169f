#!/usr/bin/env bash
# whittle eval --tasks against the transformers fp32 eager reference (scripts/hf_tasks.py) on the
# same items: per-choice log-likelihoods within 1e-4 relative, identical greedy flags, acc and
# acc_norm; and the items/s of each (a benchmark: same machine, run one after the other).
#
# usage: scripts/tasks-check.sh [MODEL] [LIMIT] [TASKS]
#   MODEL  default models/gemma-3-270m     LIMIT  items per task, default 200
#   TASKS  default arc_easy,arc_challenge,hellaswag,piqa,lambada
# Needs: target/release/whittle, .venv with torch (scripts/setup-python.sh --with-torch),
# data/tasks (scripts/get-tasks.py). Exit status 1 if anything differs.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-models/gemma-3-270m}
limit=${2:-200}
tasks=${3:-arc_easy,arc_challenge,hellaswag,piqa,lambada}
py=.venv/bin/python
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

echo "tasks-check: whittle on $model, $tasks, $limit items each" >&2
target/release/whittle --device cpu eval "$model" --tasks "$tasks" --limit "$limit" \
  --items-out "$out/w.jsonl" --json > "$out/w.json"
echo "tasks-check: transformers fp32 eager" >&2
$py scripts/hf_tasks.py "$model" --tasks "$tasks" --limit "$limit" \
  --items-out "$out/h.jsonl" --json > "$out/h.json"

$py - "$out" <<'EOF'
import json, sys
d = sys.argv[1]
rd = lambda f: [json.loads(l) for l in open(f"{d}/{f}")]
w, h = rd("w.jsonl"), rd("h.jsonl")
W, H = json.load(open(f"{d}/w.json")), json.load(open(f"{d}/h.json"))
bad = 0
worst = 0.0
if len(w) != len(h):
    print(f"item counts differ: whittle {len(w)}, transformers {len(h)}"); bad += 1
for a, b in zip(w, h):
    for x, y in zip(a["lls"], b["lls"]):
        r = abs(x - y) / abs(y)
        worst = max(worst, r)
        if r > 1e-4:
            bad += 1; print(f"{a['task']} item {a['item']}: ll {x} vs {y} (rel {r:.2e})")
    if a["greedy"] != b["greedy"]:
        bad += 1; print(f"{a['task']} item {a['item']}: greedy {a['greedy']} vs {b['greedy']}")
print(f"per-choice log-likelihoods: {sum(len(a['lls']) for a in w)} compared, worst relative difference {worst:.2e}")
print("| task | items | metric | whittle | transformers | whittle items/s | transformers items/s | speed-up |")
print("|---|---|---|---|---|---|---|---|")
tw = th = 0.0
for t, hr in H["tasks"].items():
    wr = W["tasks"][t]
    tw += wr["seconds"]; th += hr["seconds"]
    for m in ("acc", "acc_norm"):
        if m in hr:
            same = wr[m] == hr[m]
            bad += not same
            print(f"| {t} | {hr['items']} | {m} | {wr[m]:.4f} | {hr[m]:.4f}{'' if same else ' DIFFERS'} | "
                  f"{wr['items_per_s']:.2f} | {hr['items_per_s']:.2f} | {wr['items_per_s'] / hr['items_per_s']:.1f}× |")
n = sum(r["items"] for r in H["tasks"].values())
print(f"all tasks: {n} items, whittle {tw:.1f} s ({n / tw:.2f} items/s), transformers {th:.1f} s "
      f"({n / th:.2f} items/s), {th / tw:.1f}× (torch {H['torch']}, transformers {H['transformers']}, {H['threads']} threads)")
print("tasks-check: OK" if not bad else f"tasks-check: {bad} differences")
sys.exit(1 if bad else 0)
EOF

#!/usr/bin/env bash
# whittle eval --tasks against EleutherAI's lm-evaluation-harness itself (not our port of its
# conventions, scripts/hf_tasks.py): the same first N items of each task, read from the local
# data/tasks files through task YAMLs that `include` lm-eval's own arc_easy / arc_challenge /
# hellaswag / piqa / lambada_openai configs and change only where the documents come from (JSON
# lines, the validation split). lm-eval runs the HF model in fp32, eager attention, on the CPU.
# Checks per-choice log-likelihoods within 1e-4 of max(|ll|, 1), identical greedy flags, and identical
# acc / acc_norm (LAMBADA: acc; its perplexity is printed).
#
# usage: scripts/lm-eval-check.sh [MODEL] [LIMIT] [TASKS]
#   MODEL default models/gemma-3-270m   LIMIT items per task, default 50
#   TASKS default arc_easy,arc_challenge,hellaswag,piqa,lambada
# env:   LMEVAL_PY  a Python with lm-eval installed (default: target/lmeval-venv, created here
#        from PyPI `lm-eval[hf]==0.4.13` on top of .venv's torch and transformers).
# Needs: target/release/whittle, .venv with torch (scripts/setup-python.sh --with-torch),
# data/tasks (make tasks-data). Exit status 1 if anything differs.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-models/gemma-3-270m}
limit=${2:-50}
tasks=${3:-arc_easy,arc_challenge,hellaswag,piqa,lambada}
py=${LMEVAL_PY:-}
if [ -z "$py" ]; then
  venv=target/lmeval-venv
  if [ ! -x "$venv/bin/python" ]; then
    base=$(.venv/bin/python -c 'import sys; print(sys.base_prefix)')
    "$base/bin/python3" -m venv "$venv"
    # Reuse .venv's torch and transformers (a .pth line puts its site-packages on the path).
    site=$("$venv/bin/python" -c 'import site; print(site.getsitepackages()[0])')
    .venv/bin/python -c 'import site; print(site.getsitepackages()[0])' > "$site/whittle-venv.pth"
    "$venv/bin/pip" install -q "lm-eval[hf]==0.4.13"
  fi
  py=$venv/bin/python
fi
out=$(mktemp -d)
trap '[ -n "${KEEP:-}" ] || rm -rf "$out"' EXIT
lm_tasks=$("$py" -c 'import lm_eval.tasks, os; print(os.path.dirname(lm_eval.tasks.__file__))')

# One YAML and one headerless JSON-lines file (the first LIMIT documents) per task.
mkdir -p "$out/tasks"
IFS=, read -ra names <<< "$tasks"
lm_names=()
for t in "${names[@]}"; do
  case "$t" in
    arc_easy) inc=arc/arc_easy.yaml; extra="dataset_name: null" ;;
    arc_challenge) inc=arc/arc_challenge.yaml; extra="dataset_name: null" ;;
    hellaswag) inc=hellaswag/hellaswag.yaml; extra="" ;;
    piqa) inc=piqa/piqa.yaml; extra="" ;;
    lambada) inc=lambada/lambada_openai.yaml; extra="dataset_name: null" ;;
    *) echo "lm-eval-check: unknown task $t" >&2; exit 2 ;;
  esac
  [ -f "data/tasks/$t.jsonl" ] || { echo "lm-eval-check: data/tasks/$t.jsonl missing: make tasks-data" >&2; exit 2; }
  sed -n "2,$((limit + 1))p" "data/tasks/$t.jsonl" > "$out/tasks/$t.jsonl"
  cat > "$out/tasks/local_$t.yaml" <<EOF
include: $lm_tasks/$inc
task: local_$t
dataset_path: json
$extra
dataset_kwargs:
  data_files:
    validation: $out/tasks/$t.jsonl
training_split: null
validation_split: validation
test_split: null
EOF
  lm_names+=("local_$t")
done

echo "lm-eval-check: whittle on $model, $tasks, $limit items each" >&2
target/release/whittle --device cpu eval "$model" --tasks "$tasks" --limit "$limit" \
  --items-out "$out/w.jsonl" --json > "$out/w.json"
echo "lm-eval-check: lm-eval $("$py" -c 'import importlib.metadata as m; print(m.version("lm_eval"))'), hf fp32 eager" >&2
HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 "$py" -m lm_eval --model hf \
  --model_args "pretrained=$model,dtype=float32,attn_implementation=eager" --device cpu \
  --batch_size 8 --tasks "$(IFS=,; echo "${lm_names[*]}")" --include_path "$out/tasks" \
  --log_samples --output_path "$out/lm" > "$out/lm.log" 2>&1 \
  || { tail -30 "$out/lm.log" >&2; exit 1; }

"$py" - "$out" <<'EOF'
import glob, json, sys
d = sys.argv[1]
w = {}
for l in open(f"{d}/w.jsonl"):
    r = json.loads(l)
    w[(r["task"], r["item"])] = r
W = json.load(open(f"{d}/w.json"))["tasks"]
bad, worst, n = 0, 0.0, 0
print("| task | items | metric | whittle | lm-eval |")
print("|---|---|---|---|---|")
for res in sorted(glob.glob(f"{d}/lm/**/results_*.json", recursive=True)):
    R = json.load(open(res))["results"]
for f in sorted(glob.glob(f"{d}/lm/**/samples_local_*.jsonl", recursive=True)):
    task = f.split("samples_local_")[1].rsplit("_", 1)[0]
    rows = [json.loads(l) for l in open(f)]
    for s in rows:
        got = w[(task, s["doc_id"])]
        ll = [float(x[0]) for x in s["filtered_resps"]]
        gr = [str(x[1]) == "True" for x in s["filtered_resps"]]  # logged as strings
        for a, b in zip(got["lls"], ll):
            # Relative to max(|ll|, 1): lm-eval takes torch's fp32 log_softmax (absolute error
            # ~1e-6 per unit of logit), whittle's is f64, so a near-certain continuation
            # (ll ≈ -0.05) differs by ~2e-5 absolute, which is not 1e-4 of so small a number.
            r = abs(a - b) / max(abs(b), 1.0)
            worst, n = max(worst, r), n + 1
            if r > 1e-4:
                bad += 1; print(f"{task} item {s['doc_id']}: ll {a} vs {b} (diff {r:.2e})")
        if len(got["lls"]) != len(ll):
            bad += 1; print(f"{task} item {s['doc_id']}: {len(got['lls'])} vs {len(ll)} choices")
        if got["greedy"] != gr:
            bad += 1; print(f"{task} item {s['doc_id']}: greedy {got['greedy']} vs {gr}")
    r = R[f"local_{task}"]
    for m in (["acc"] if task == "lambada" else ["acc", "acc_norm"]):
        lm = r[f"{m},none"]
        print(f"| {task} | {len(rows)} | {m} | {W[task][m]:.4f} | {lm:.4f} |")
        if abs(W[task][m] - lm) > 1e-9:
            bad += 1
    if task == "lambada":
        print(f"| {task} | {len(rows)} | ppl | {W[task]['ppl']:.4f} | {r['perplexity,none']:.4f} |")
print(f"per-choice log-likelihoods: {n} compared, worst difference relative to max(|ll|, 1): {worst:.2e}")
if bad:
    print(f"lm-eval-check: {bad} differences"); sys.exit(1)
print("lm-eval-check: OK")
EOF

#!/usr/bin/env bash
# CPU forward-pass throughput, whittle vs transformers fp32 eager, on the same text and windows.
#
# usage: scripts/bench-cpu-forward.sh [MODEL]
#
#   MODEL      model folder (default: models/gemma-3-270m)
#
# Environment:
#   TEXT       UTF-8 text cut into evaluation windows (default: ../shared/data/wiki-dev.txt)
#   WINDOWS    windows timed per mode (default: 8)
#   SEQ        window length in tokens, BOS included (default: 512)
#   THREADS    worker threads for both engines (default: all cores)
#   PRECISION  whittle's CPU GEMM arithmetic, f32 or bf16 (default: f32; see `--precision`)
#   WHITTLE    whittle binary (default: target/release/whittle; build it with `make build` or
#              `cargo build --release --no-default-features`)
#   PY         Python with torch + transformers (default: .venv/bin/python, from
#              `scripts/setup-python.sh --with-torch`)
#   JSON_OUT   also write both results as one JSON object to this file
#
# Runs `whittle bench MODEL --forward --json` and `scripts/hf_forward_bench.py --json` one after
# the other (never at the same time) and prints a markdown table of tokens/s with the ratios
# whittle / transformers. Both count every position of every window (windows x seq tokens):
# "no head" is the decoder stack + final norm, "with head" adds the LM head on every position.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root"

model=${1:-models/gemma-3-270m}
text=${TEXT:-../shared/data/wiki-dev.txt}
windows=${WINDOWS:-8}
seq=${SEQ:-512}
whittle=${WHITTLE:-target/release/whittle}
py=${PY:-.venv/bin/python}
precision=${PRECISION:-f32}

[ -f "$model/config.json" ] || { echo "bench-cpu-forward.sh: $model/config.json not found (make demo fetches models/gemma-3-270m)" >&2; exit 2; }
[ -f "$text" ] || { echo "bench-cpu-forward.sh: text $text not found (set TEXT=FILE)" >&2; exit 2; }
[ -x "$whittle" ] || { echo "bench-cpu-forward.sh: $whittle not found; run make build or cargo build --release --no-default-features" >&2; exit 2; }
[ -x "$py" ] || { echo "bench-cpu-forward.sh: $py not found; run scripts/setup-python.sh --with-torch (or set PY=)" >&2; exit 2; }

threads_w=()
threads_h=()
if [ -n "${THREADS:-}" ]; then
  threads_w=(--threads "$THREADS")
  threads_h=(--threads "$THREADS")
fi

echo "bench-cpu-forward.sh: $model, $windows windows x $seq tokens of $text" >&2
echo "  whittle ..." >&2
w_json=$("$whittle" "${threads_w[@]}" --precision "$precision" bench "$model" --forward --text "$text" --seq "$seq" --windows "$windows" --json | tail -n 1)
echo "  transformers ..." >&2
h_json=$("$py" "$here/hf_forward_bench.py" "$model" --text "$text" --seq "$seq" --windows "$windows" "${threads_h[@]}" --json | tail -n 1)

W="$w_json" H="$h_json" OUT="${JSON_OUT:-}" "$py" - <<'EOF'
import json, os
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
w, h = json.loads(os.environ["W"]), json.loads(os.environ["H"])
if w["windows"] != h["windows"] or w["seq"] != h["seq"]:
    raise SystemExit(f"window mismatch: whittle {w['windows']}x{w['seq']}, transformers {h['windows']}x{h['seq']}")
print(f"| forward, {w['windows']} windows × {w['seq']} tokens | whittle (tok/s) | transformers fp32 eager (tok/s) | whittle / transformers |")
print("|---|---:|---:|---:|")
for key, label in (("no_head_tok_s", "no LM head"), ("with_head_tok_s", "with LM head (all positions)")):
    print(f"| {label} | {w[key]:.1f} | {h[key]:.1f} | {w[key] / h[key]:.2f}× |")
print(f"\nwhittle {w['threads']} threads, GEMM {w.get('cpu_gemm', '?')}; transformers {h.get('transformers', '?')} / torch {h.get('torch', '?')}, "
      f"{h['threads']} threads; model {w['model']}; CPU {cpu}")
if os.environ.get("OUT"):
    with open(os.environ["OUT"], "w") as f:
        json.dump({"whittle": w, "transformers": h,
                   "ratio": {k: w[k] / h[k] for k in ("no_head_tok_s", "with_head_tok_s")}}, f, indent=2)
        f.write("\n")
EOF

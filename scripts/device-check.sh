#!/usr/bin/env bash
# The one command for checking whittle's GPU path on a machine with an NVIDIA GPU.
#
# That machine gets a copy of the repository plus prebuilt binaries; it has python3 with torch and
# transformers but no Rust and no network. So the binaries are built here first:
#
#   bash scripts/device-check.sh --prepare   # here: cargo builds the test binaries and whittle,
#                                            # strips copies into target/device-carry/ (< 64 MiB)
#   bash scripts/device-check.sh --dry-run   # here (no GPU): checks every file the run needs,
#                                            # runs the binaries' test listings and the CPU-only
#                                            # tests, and the Python scripts' argument parsing
#   bash scripts/device-check.sh             # on the GPU machine (carry target/device-carry)
#
# The GPU run, in order (each step's status and time go into the summary; a failing step does not
# stop the later ones). Estimated seconds on an H100 in brackets (the whole run: about 8.5 minutes;
# past WHITTLE_CHECK_BUDGET = 540 s the remaining steps are skipped and the summary still written):
#   0. probe_tma [5]  the TMA + mbarrier GEMM alone under a 90 s cap (a hang or trap there must not
#                take the later steps with it: on failure they run with WHITTLE_GEMM=wgmma)
#   1. kernels   [45] cuda_kernels --ignored: every kernel against the CPU reference ops
#   1b. linalg   [5]  cuda_linalg --ignored: the f64 GEMM, SPD inverse, OBS selection and repair
#                of compile's device solver against the host
#   2. model     [10] cuda_model --ignored: GPU vs CPU forward on the tiny fixtures (and
#                gemma-3-270m when models/ holds it)
#   2b. backend  [20] cuda_backend --ignored: CudaBackend vs GpuModel (bitwise), `whittle --device
#                cuda` compile and eval against --device cpu (WHITTLE_BIN = the carried whittle)
#   2c. decode   [20] cuda_decode --ignored: the decode kernels (GEMV, decode attention, RoPE + cache
#                write) vs CPU references; GpuDecoder vs the CPU Decoder and vs the GPU full
#                recompute across the sliding window; greedy picks; `--device cuda` generate and
#                bench (WHITTLE_BIN = the carried whittle)
#   3. parity    [55] a random-init gemma-2-2b (full-size layers, 4 of them, bf16) made by
#                scripts/device/make_gemma2_2b.py; whittle (cuda_parity) vs transformers bf16
#                eager (scripts/device/parity.py) at 4160 tokens, past the 4096 sliding window
#   4. bench     [25] cuda_bench --ignored --exact bench_kernels: whittle's kernels at every shape
#                of scripts/device/bench_shapes.json (GEMM at gemma-2-2b/9b projection shapes over
#                4096 tokens and 8192³, Gram, attention T = 1k/4k/8k, RMSNorm, RoPE, gelu·up +
#                stats, NLL, copy); CUDA events, rotating inputs > L2, median/p10/p90 → JSON
#   4a. bench_torch [25] scripts/device/bench_torch.py: torch's peers at the same shapes
#                (cuBLAS matmul, SDPA, eager RMSNorm/RoPE/gelu/NLL, copy ceiling) → JSON
#   5. calib_ids [3]  128 × 2048 random token ids (safetensors input_ids, scripts/device/calib_hf.py)
#   5a. calib_whittle [10] cuda_bench --exact bench_calib: tokens/s through all layers with on-device
#                Σa, Σa², Gram capture, no LM head
#   5b. calib_hf [20] scripts/device/calib_hf.py run: the same with transformers bf16 eager and
#                forward hooks on every mlp.down_proj
#   6. compile_2b [≤120] `whittle --device cuda compile` of that model on those ids (--samples 128
#                --seq 2048 --tier throughput), wall time; capped by WHITTLE_COMPILE_TIMEOUT (default
#                120 s) and the time budget left; scoring and repair solve on the GPU in f64
#                (`solver: cuda` in the report)
#   6a. bench_whittle [25] `whittle --device cuda bench` of that model --against its compile
#                (issue 6's serving table: weights, prefill, TTFT, decode) → bench_whittle.json
#   6b. bench_hf [60] scripts/bench_hf.py --device cuda on the same two models (transformers bf16
#                eager, use_cache) → bench_hf.json
#   7. ratios    [1]  scripts/device/ratios.py joins 4/4a/5a/5b/6 into $OUT/perf.md (printed in the
#                summary) and $OUT/perf.json
#   8. sanitize  (only with WHITTLE_SANITIZE=1) compute-sanitizer memcheck over cuda_kernels
# The calibration model is the 4-layer parity model; WHITTLE_CALIB_LAYERS=26 makes a full-depth
# one for steps 5-6 instead (about +60 s to make, and the compile cap matters more).
# Output: the ratio table, then the step table, printed last; in $OUT (at most 8 files come
# back): summary.json, log.txt (every step's output), parity.json, bench_whittle.json,
# bench_hf.json, perf.md, perf.json (every record of steps 4-6, joined), and perf-raw.tgz only when
# the ratios step failed ($OUT defaults to target/device-check-out).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
CARRY="target/device-carry"
BINS=(cuda_kernels cuda_linalg cuda_model cuda_backend cuda_decode cuda_parity cuda_bench whittle)
PY="${PYTHON:-python3}"
MODE="${1:-run}"

die() { echo "device-check: $*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
prepare() {
  command -v cargo >/dev/null || die "cargo not found (--prepare runs where Rust is)"
  bash scripts/install-nvcc.sh >/dev/null || die "scripts/install-nvcc.sh failed"
  echo "device-check: building release test binaries and whittle" >&2
  local json
  json="$(cargo test --release --no-run --message-format=json 2>/dev/null)" \
    || die "cargo test --release --no-run failed (run it to see why)"
  cargo build --release --bin whittle >/dev/null 2>&1 || die "cargo build --release --bin whittle failed"
  rm -rf "$CARRY"
  mkdir -p "$CARRY"
  # test binaries: the executables cargo reports for the cuda_* test targets
  printf '%s\n' "$json" | "$PY" -c '
import json, sys, shutil
want = set(sys.argv[1].split(","))
found = set()
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    t = m.get("target", {})
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "test" in t.get("kind", []) \
            and t.get("name") in want:
        shutil.copy(m["executable"], sys.argv[2] + "/" + t["name"])
        found.add(t["name"])
missing = want - found
if missing:
    sys.exit("device-check: no test executable for " + ", ".join(sorted(missing)))
 ' "cuda_kernels,cuda_linalg,cuda_model,cuda_backend,cuda_decode,cuda_parity,cuda_bench" "$CARRY" || exit 1
  cp target/release/whittle "$CARRY/whittle"
  # Debug info (profile.release debug = 1) is most of each file; line tables are not needed there.
  for b in "${BINS[@]}"; do
    strip --strip-debug "$CARRY/$b" 2>/dev/null || objcopy --strip-debug "$CARRY/$b" || true
  done
  (cd "$CARRY" && sha256sum "${BINS[@]}" > MANIFEST.sha256)
  local total
  total=$(du -cb "$CARRY"/* | tail -1 | cut -f1)
  # shellcheck disable=SC2012  # a listing for people, not parsed
  ls -l "$CARRY" | tail -n +2 >&2
  echo "device-check: $CARRY holds $((total / 1024 / 1024)) MiB (limit 64 MiB with the tree)" >&2
  (( total < 56 * 1024 * 1024 )) || die "$CARRY is too large to carry ($total bytes)"
  echo "device-check: carry $CARRY and run: bash scripts/device-check.sh" >&2
}

# ---------------------------------------------------------------------------------------------
need_files() {
  local missing=0 f
  for f in "$@"; do
    if [[ ! -e "$f" ]]; then echo "device-check: missing $f" >&2; missing=1; fi
  done
  return $missing
}

NEEDED=(
  scripts/device/make_gemma2_2b.py scripts/device/parity.py
  scripts/device/bench_shapes.json scripts/device/bench_torch.py scripts/device/calib_hf.py
  scripts/device/ratios.py
  tests/fixtures/tiny-gemma2/config.json tests/fixtures/tiny-gemma2/model.safetensors
  tests/fixtures/tiny-gemma3/config.json tests/fixtures/tiny-gemma3/model.safetensors
  tests/fixtures/tiny-llama/config.json tests/fixtures/tiny-llama/model.safetensors
  tests/fixtures/tiny-mistral/config.json tests/fixtures/tiny-mistral/model.safetensors
  tests/fixtures/tiny-qwen2/config.json tests/fixtures/tiny-qwen2/model.safetensors
  tests/fixtures/tiny-qwen3/config.json tests/fixtures/tiny-qwen3/model.safetensors
)

dry_run() {
  local ok=1 b
  need_files "${NEEDED[@]}" || ok=0
  for b in "${BINS[@]}"; do need_files "$CARRY/$b" || ok=0; done
  if (( ok == 0 )); then
    die "dry run: files missing (binaries come from: bash scripts/device-check.sh --prepare)"
  fi
  (cd "$CARRY" && sha256sum --quiet -c MANIFEST.sha256) || die "dry run: $CARRY does not match its manifest"
  for b in cuda_kernels cuda_linalg cuda_model cuda_backend cuda_decode cuda_parity cuda_bench; do
    local n
    n=$("$CARRY/$b" --list --ignored 2>/dev/null | grep -c ': test$')
    echo "device-check: $b lists $n GPU tests"
    (( n > 0 )) || die "dry run: $CARRY/$b lists no ignored tests"
  done
  # The tests that need no GPU, from the carried binary (driver detection, --device parsing).
  WHITTLE_ROOT="$ROOT" "$CARRY/cuda_kernels" -q || die "dry run: cuda_kernels' CPU-side tests failed"
  "$CARRY/cuda_bench" -q || die "dry run: cuda_bench's CPU-side test (bench_shapes.json) failed"
  WHITTLE_ROOT="$ROOT" "$CARRY/cuda_decode" -q || die "dry run: cuda_decode's CPU-side tests failed"
  "$CARRY/whittle" --version >/dev/null || die "dry run: $CARRY/whittle does not start"
  "$PY" scripts/device/make_gemma2_2b.py --out /tmp/whittle-g2 --dry-run || die "make_gemma2_2b.py"
  "$PY" scripts/device/parity.py prepare --model /tmp/whittle-g2 --work /tmp/whittle-parity --dry-run \
    || die "parity.py prepare"
  "$PY" scripts/device/parity.py compare --model /tmp/whittle-g2 --work /tmp/whittle-parity --dry-run \
    || die "parity.py compare"
  "$PY" scripts/bench_hf.py --help >/dev/null || die "bench_hf.py"
  "$PY" scripts/device/bench_torch.py --dry-run --json /tmp/whittle-perf/bench_torch.json || die "bench_torch.py"
  "$PY" scripts/device/calib_hf.py ids --out /tmp/whittle-perf/calib_ids.safetensors --samples 128 \
    --seq 2048 --model /tmp/whittle-g2 --dry-run || die "calib_hf.py ids"
  "$PY" scripts/device/calib_hf.py run --model /tmp/whittle-g2 --ids /tmp/whittle-perf/calib_ids.safetensors \
    --json /tmp/whittle-perf/calib_hf.json --dry-run || die "calib_hf.py run"
  local tmp
  tmp="$(mktemp -d)"
  "$PY" scripts/device/ratios.py --dry-run --quiet --json "$tmp/perf.json" --md "$tmp/perf.md" \
    || die "ratios.py (synthetic records)"
  [[ -s "$tmp/perf.md" && -s "$tmp/perf.json" ]] || die "ratios.py wrote no table"
  rm -rf "$tmp"
  echo "device-check: dry run ok (GPU steps skipped: probe_tma, kernels, linalg, model, backend, decode, parity, bench, bench_torch, calib, compile, bench_whittle, bench_hf)"
}

# ---------------------------------------------------------------------------------------------
# compile_2b MODEL IDS WORK: `whittle --device cuda compile` of MODEL on the pre-tokenized IDS
# (128 × 2048, defaults otherwise), wall time, capped at WHITTLE_COMPILE_TIMEOUT seconds (default
# 120); writes WORK/compile_2b.json for ratios.py (rc 124: stopped at the cap).
compile_2b() {
  local model="$1" ids="$2" work="$3" cap="${WHITTLE_COMPILE_TIMEOUT:-120}"
  # run()'s budget: leave 90 s for the serving benchmarks and the summary.
  local left=$((${budget:-100000} - (SECONDS - ${t_start:-0}) - 90))
  (( left < cap )) && cap=$(( left > 10 ? left : 10 ))
  local out="$3/compiled" t0 t1 rc layers
  layers=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1] + "/config.json"))["num_hidden_layers"])' \
    "$model" 2>/dev/null) || layers=null
  rm -rf "$out"
  t0=$(date +%s.%N)
  timeout --kill-after=10 "$cap" "$CARRY/whittle" --device cuda compile "$model" -o "$out" \
    --calib-ids "$ids" --samples 128 --seq 2048 --tier throughput
  rc=$?
  t1=$(date +%s.%N)
  printf '{"rc": %d, "wall_s": %s, "timeout_s": %d, "layers": %s, "tokens": %d, "model": "%s", "output": "%s"}\n' \
    "$rc" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}')" "$cap" "$layers" $((128 * 2048)) \
    "$model" "$out" > "$work/compile_2b.json"
  if (( rc == 124 || rc == 137 )); then echo "compile_2b: stopped at the ${cap} s cap (WHITTLE_COMPILE_TIMEOUT)"; fi
  return "$rc"
}

# bench_whittle MODEL [COMPILED]: `whittle --device cuda bench` of MODEL (against COMPILED when
# given), 10 TTFT runs and 2 repeats like the transformers step; JSON to $OUT/bench_whittle.json,
# the table to the log.
bench_whittle() {
  local against=()
  [[ $# -gt 1 ]] && against=(--against "$2")
  local left=$((${budget:-100000} - (SECONDS - ${t_start:-0})))
  timeout --kill-after=5 "$left" "$CARRY/whittle" --device cuda bench "$1" "${against[@]}" --runs 10 \
    --repeats 2 --json > "$OUT/bench_whittle.json" || return
  "$PY" -m json.tool "$OUT/bench_whittle.json" | head -n 60
}

# ---------------------------------------------------------------------------------------------
run() {
  OUT="${OUT:-$ROOT/target/device-check-out}"
  mkdir -p "$OUT"
  LOG="$OUT/log.txt"
  : > "$LOG"
  need_files "${NEEDED[@]}" || die "files missing"
  local b
  for b in "${BINS[@]}"; do need_files "$CARRY/$b" || die "run --prepare here first and carry $CARRY"; done
  chmod +x "$CARRY"/* 2>/dev/null || true
  export WHITTLE_ROOT="$ROOT"
  for d in /usr/local/nvidia/lib64 /usr/lib/x86_64-linux-gnu; do
    [[ -d "$d" ]] && export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d"
  done
  { nvidia-smi -L; nvidia-smi --query-gpu=driver_version,memory.total --format=csv; } 2>&1 | tee -a "$LOG"

  # The device call is cut at 600 s; past WHITTLE_CHECK_BUDGET seconds (default 540) the remaining
  # steps are skipped (and each external command is capped at what is left), so the ratios, the
  # summary and its JSON are always written.
  local budget="${WHITTLE_CHECK_BUDGET:-540}" t_start=$SECONDS
  STEPS=()
  step() {  # step NAME NOTE-FILE COMMAND...
    local name="$1" note="$2"; shift 2
    local t0 t1 rc left=$((budget - (SECONDS - t_start)))
    if [[ "$name" != ratios ]] && (( left < 15 )); then
      echo "=== $name: skipped, the ${budget} s budget is spent" | tee -a "$LOG"
      STEPS+=("$name|skipped|0.0|$note")
      return
    fi
    echo "=== $name: $*" | tee -a "$LOG"
    t0=$(date +%s.%N)
    if declare -F "$1" >/dev/null || [[ "$name" == ratios ]]; then
      "$@" 2>&1 | tee -a "$LOG" | tail -n 40
    else
      timeout --kill-after=5 "$left" "$@" 2>&1 | tee -a "$LOG" | tail -n 40
    fi
    rc=${PIPESTATUS[0]}
    t1=$(date +%s.%N)
    local secs
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')
    STEPS+=("$name|$([[ $rc == 0 ]] && echo ok || echo "FAIL($rc)")|$secs|$note")
  }

  # The TMA GEMM waits on mbarriers: a protocol bug would hang or trap (a trap poisons the whole
  # process's context). Probe it alone first, under a timeout; when it fails, every later step
  # runs with WHITTLE_GEMM=wgmma (the cp.async wgmma kernel, still self-checked) so the rest of
  # the device time still measures something.
  step probe_tma "TMA GEMM alone, 90 s cap" timeout --kill-after=5 90 "$CARRY/cuda_kernels" --ignored \
    --exact gemm_tma_walks_tiles_across_ctas --nocapture
  if [[ "${STEPS[-1]}" != *"|ok|"* ]]; then
    export WHITTLE_GEMM=wgmma
    echo "device-check: the TMA GEMM probe failed; WHITTLE_GEMM=wgmma for the remaining steps" | tee -a "$LOG"
  fi
  step kernels "all kernels vs CPU ops" "$CARRY/cuda_kernels" --ignored --test-threads=4
  step linalg "f64 GEMM, SPD inverse, OBS, repair vs host" "$CARRY/cuda_linalg" --ignored --test-threads=1
  step model "GPU vs CPU forward" "$CARRY/cuda_model" --ignored --nocapture --test-threads=1
  step backend "CudaBackend; --device cuda compile/eval" env WHITTLE_BIN="$ROOT/$CARRY/whittle" \
    "$CARRY/cuda_backend" --ignored --nocapture --test-threads=1
  step decode "decode kernels; GpuDecoder vs CPU; --device cuda generate/bench" \
    env WHITTLE_BIN="$ROOT/$CARRY/whittle" "$CARRY/cuda_decode" --ignored --nocapture --test-threads=1

  local g2=/tmp/whittle-gemma2-2b-4l work=/tmp/whittle-parity
  step make_model "random gemma-2-2b, 4 layers" "$PY" scripts/device/make_gemma2_2b.py --out "$g2" --layers 4
  step parity_prepare "ids" "$PY" scripts/device/parity.py prepare --model "$g2" --work "$work" --seq 4160
  step parity_whittle "whittle forward" env WHITTLE_PARITY_WORK="$work" WHITTLE_PARITY_MODEL="$g2" \
    "$CARRY/cuda_parity" --ignored --nocapture
  step parity_compare "vs transformers (parity.json)" "$PY" scripts/device/parity.py compare \
    --model "$g2" --work "$work" --json "$OUT/parity.json"

  local perf=/tmp/whittle-perf
  rm -rf "$perf"
  mkdir -p "$perf"
  step bench "whittle kernel timings" env WHITTLE_BENCH_OUT="$perf/bench.json" \
    "$CARRY/cuda_bench" --ignored --exact bench_kernels --nocapture --test-threads=1
  step bench_torch "torch peers, same shapes" "$PY" scripts/device/bench_torch.py --json "$perf/bench_torch.json"

  # Calibration throughput and the whole compile, on the same 128 × 2048 ids.
  local cm="$g2" ids="$perf/calib_ids.safetensors"
  if [[ -n "${WHITTLE_CALIB_LAYERS:-}" ]]; then
    cm="/tmp/whittle-gemma2-2b-${WHITTLE_CALIB_LAYERS}l"
    step make_calib_model "random gemma-2-2b, ${WHITTLE_CALIB_LAYERS} layers" "$PY" \
      scripts/device/make_gemma2_2b.py --out "$cm" --layers "$WHITTLE_CALIB_LAYERS"
  fi
  step calib_ids "128 x 2048 ids" "$PY" scripts/device/calib_hf.py ids --out "$ids" --samples 128 \
    --seq 2048 --model "$cm"
  step calib_whittle "whittle calibration tokens/s" env WHITTLE_CALIB_MODEL="$cm" WHITTLE_CALIB_IDS="$ids" \
    WHITTLE_CALIB_OUT="$perf/calib_whittle.json" "$CARRY/cuda_bench" --ignored --exact bench_calib --nocapture
  step calib_hf "transformers + hooks tokens/s" "$PY" scripts/device/calib_hf.py run --model "$cm" \
    --ids "$ids" --json "$perf/calib_hf.json"
  step compile_2b "whittle --device cuda compile, wall time" compile_2b "$cm" "$ids" "$perf"
  # Serving figures (issue 6) of that model and its throughput-tier compile, whittle on its CUDA
  # engine and transformers (bf16, eager, use_cache), each interleaving the two models.
  local served=("$cm")
  [[ -f "$perf/compiled/config.json" ]] && served+=("$perf/compiled")
  step bench_whittle "whittle --device cuda bench (bench_whittle.json)" bench_whittle "${served[@]}"
  step bench_hf "transformers serving figures (bench_hf.json)" "$PY" scripts/bench_hf.py "${served[@]}" \
    --device cuda --runs 10 --repeats 2 --json-out "$OUT/bench_hf.json"
  step ratios "whittle vs peers (perf.md, perf.json)" "$PY" scripts/device/ratios.py --quiet \
    --whittle "$perf/bench.json" --torch "$perf/bench_torch.json" \
    --calib-whittle "$perf/calib_whittle.json" --calib-hf "$perf/calib_hf.json" \
    --compile "$perf/compile_2b.json" --json "$OUT/perf.json" --md "$OUT/perf.md"
  if [[ "${STEPS[-1]}" != *"|ok|"* ]]; then
    (cd "$perf" && tar czf "$OUT/perf-raw.tgz" -- *.json) 2>/dev/null || true
  fi
  if [[ "${WHITTLE_SANITIZE:-0}" == 1 ]] && command -v compute-sanitizer >/dev/null; then
    step sanitize "memcheck" compute-sanitizer --tool memcheck --error-exitcode 9 \
      "$CARRY/cuda_kernels" --ignored --test-threads=1
  fi

  # Summary: the tables go last so they end the output; JSON alongside.
  echo
  [[ -s "$OUT/perf.md" ]] && cat "$OUT/perf.md"
  "$PY" - "$OUT/summary.json" "${STEPS[@]}" <<'EOF'
import json, sys
path, rows = sys.argv[1], [r.split("|", 3) for r in sys.argv[2:]]
json.dump([{"step": s, "status": st, "seconds": float(t), "what": w} for s, st, t, w in rows],
          open(path, "w"), indent=1)
print()
print(f"{'step':<16} {'status':<9} {'seconds':>8}  what")
for s, st, t, w in rows:
    print(f"{s:<16} {st:<9} {t:>8}  {w}")
EOF
  local failed=0 r
  for r in "${STEPS[@]}"; do [[ "$r" == *"|ok|"* ]] || failed=1; done
  return $failed
}

case "$MODE" in
  --prepare) prepare ;;
  --dry-run) dry_run ;;
  run|--run) run ;;
  -h|--help) sed -n '2,25p' "$0" ;;
  *) die "unknown argument $MODE (use --prepare, --dry-run or no argument)" ;;
esac

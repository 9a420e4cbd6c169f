#!/usr/bin/env bash
# The device check's benchmark steps on the CPU emulator of the CUDA engine, at tiny sizes
# (tests/emu/bench_shapes_tiny.json; make test-emu builds the emulator): bench_kernels with every
# kernel variant a Hopper part runs (the emulated device is compute capability 9.0),
# calib_hf.py ids + bench_calib on the tiny Gemma-2 fixture, bench_torch.py's CPU smoke run, then
# ratios.py joining them. It runs the benchmark code paths (kernel choice, records, JSON, the
# join) so that a device session does not spend its minutes finding a panic there. Timings here
# mean nothing.
# usage: tests/emu/bench.sh [PYTHON]   (default .venv/bin/python)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
py="${1:-$root/.venv/bin/python}"
cd "$root"
[ -f target/emu/libcuda.so.1 ] || bash tests/emu/build.sh
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$root/tests/emu/run.sh"
WHITTLE_BENCH_SHAPES="$root/tests/emu/bench_shapes_tiny.json" WHITTLE_BENCH_OUT="$work/bench.json" \
  cargo test --release --quiet --test cuda_bench -- --ignored --exact bench_kernels --nocapture
"$py" scripts/device/calib_hf.py ids --out "$work/ids.safetensors" --samples 4 --seq 32 \
  --model tests/fixtures/tiny-gemma2
WHITTLE_CALIB_MODEL="$root/tests/fixtures/tiny-gemma2" WHITTLE_CALIB_IDS="$work/ids.safetensors" \
  WHITTLE_CALIB_BATCH=2 WHITTLE_CALIB_OUT="$work/calib_whittle.json" \
  cargo test --release --quiet --test cuda_bench -- --ignored --exact bench_calib --nocapture
"$py" scripts/device/bench_torch.py --device cpu --smoke --shapes tests/emu/bench_shapes_tiny.json \
  --json "$work/bench_torch.json" | tail -1
"$py" scripts/device/ratios.py --shapes tests/emu/bench_shapes_tiny.json --whittle "$work/bench.json" \
  --torch "$work/bench_torch.json" --calib-whittle "$work/calib_whittle.json" --json "$work/perf.json" \
  --md "$work/perf.md" --quiet
# Every shape has a whittle row, and on the (emulated) Hopper part the TMA kernel is the choice.
"$py" - "$work/perf.json" "$work/bench.json" <<'PY'
import json, sys
perf, bench = (json.load(open(p)) for p in sys.argv[1:3])
shapes = json.load(open("tests/emu/bench_shapes_tiny.json"))
want = {e["key"] for op, es in shapes.items() if isinstance(es, list) for e in es}
rows = {r["key"]: r for r in perf["rows"]}
missing = [k for k in sorted(want) if rows.get(k, {}).get("whittle_ms") is None]
assert not missing, f"no whittle timing for {missing}"
no_peer = [k for k in sorted(want) if rows[k].get("torch_ms") is None and not rows[k].get("no_peer")]
assert not no_peer, f"no torch timing (and no reason) for {no_peer}"
names = {r["key"]: r["impl"] for r in bench["records"]}
assert names["gemm M=200 N=320 K=136"] == "whittle gemm_nt_bf16_sm90_tma", names
assert "gemm M=200 N=320 K=136 wgmma cp.async" in names and "gemm M=200 N=320 K=136 mma.sync" in names, names
assert "gemm M=200 N=320 K=136 fused gate/up + gelu" in names, names
assert names["gemm M=33 N=40 K=13"] == "whittle gemm_nt_bf16_unaligned", names
assert "sm90_tma" in names["gram T=64 I=520"], names
att = "attention B=1 T=80 nh=2 nkv=1 d=256 causal W=48 softcap=none"
assert names[att] == "whittle attention_fwd_d256_w8" and names[att + " 4 warps"] == "whittle attention_fwd_d256", names
print(f"emu-bench: {len(want)} shapes timed, {len(names)} records; kernel choice as on Hopper")
PY

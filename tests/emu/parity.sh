#!/usr/bin/env bash
# The device check's parity step (scripts/device/parity.py + tests/cuda_parity.rs) end to end on
# the CPU emulator of the CUDA engine (make test-emu builds it): ids prepared, whittle's bf16 "GPU"
# forward dumped, transformers bf16 (on the CPU) compared with the device check's thresholds, on
# both tiny fixtures with 48-token sequences (past their 16-token sliding windows). It checks the
# step's plumbing and the GPU path's numerics against transformers before a device ever runs it.
# usage: tests/emu/parity.sh [PYTHON]   (default .venv/bin/python, with torch + transformers)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
py="${1:-$root/.venv/bin/python}"
cd "$root"
[ -f target/emu/libcuda.so.1 ] || bash tests/emu/build.sh
for m in tiny-gemma2 tiny-gemma3; do
  work="$(mktemp -d)"
  "$py" scripts/device/parity.py prepare --model "tests/fixtures/$m" --work "$work" --seq 48
  WHITTLE_PARITY_WORK="$work" WHITTLE_PARITY_MODEL="$root/tests/fixtures/$m" \
    CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$root/tests/emu/run.sh" \
    cargo test --release --quiet --test cuda_parity -- --ignored
  "$py" scripts/device/parity.py compare --model "tests/fixtures/$m" --work "$work" --device cpu 2>&1 |
    grep -v "Loading weights"
  rm -rf "$work"
done
echo "emu-parity: both fixtures pass"

#!/usr/bin/env bash
# Builds the CPU emulator of the CUDA engine: target/emu/libcuda.so(.1), a fake driver library
# whose kernels are kernels/*.cu compiled as C++ (tests/emu/). With it on LD_LIBRARY_PATH the
# ignored GPU tests run on a machine without a GPU (`make test-emu`). Needs g++ and the CUDA
# headers of scripts/install-nvcc.sh (.cuda/include) or CUDA_HOME/include.
# EMU_ASAN=1 builds it with AddressSanitizer (tests/emu/run.sh then preloads the runtime):
# an out-of-bounds device access is reported with the kernel and source line.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
inc="${CUDA_HOME:+$CUDA_HOME/include}"
[ -n "$inc" ] && [ -f "$inc/cuda.h" ] || inc="$root/.cuda/include"
if [ ! -f "$inc/cuda.h" ]; then
  echo "build-emu: no cuda.h in $inc; run scripts/install-nvcc.sh first" >&2
  exit 1
fi
out="$root/target/emu"
mkdir -p "$out"
{
  for f in "$root"/kernels/*.cu; do echo "#include \"$f\""; done
} >"$out/all_kernels.inc"
flags=(-std=c++17 -DWHITTLE_EMU -I"$inc" -I"$root/kernels" -I"$root/tests/emu" -include "$root/tests/emu/emu.h"
  -Wno-unknown-pragmas -fPIC)
[ "${EMU_ASAN:-0}" = 1 ] && flags+=(-fsanitize=address -fno-omit-frame-pointer)
g++ "${flags[@]}" -x c++ -E "$out/all_kernels.inc" -o "$out/kernels.ii"
python3 "$root/tests/emu/gen_registry.py" "$out/kernels.ii" "$out/all_kernels.inc" "$out/registry.cpp"
# Written beside and renamed: a test still running keeps its mapped copy.
g++ "${flags[@]}" -O2 -g -shared "$out/registry.cpp" "$root/tests/emu/runtime.cpp" -o "$out/libcuda.so.1.tmp"
mv -f "$out/libcuda.so.1.tmp" "$out/libcuda.so.1"
ln -sf libcuda.so.1 "$out/libcuda.so"
# The emulator's own checks (deadlock report, missing barrier, driver-style refusals), both orders.
g++ "${flags[@]}" -O1 "$root/tests/emu/selftest.cpp" "$root/tests/emu/runtime.cpp" -o "$out/selftest"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0}"
"$out/selftest" 2>/dev/null && "$out/selftest" reverse 2>/dev/null || {
  echo "build-emu: the emulator's self-test failed" >&2
  exit 1
}
# tests/emu/run.sh preloads the sanitizer runtime named here.
if [ "${EMU_ASAN:-0}" = 1 ]; then g++ -print-file-name=libasan.so >"$out/asan"; else rm -f "$out/asan"; fi
echo "build-emu: $out/libcuda.so.1"

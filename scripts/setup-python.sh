#!/usr/bin/env bash
# Create the Python environment used by whittle's helper scripts.
#
# usage: scripts/setup-python.sh [--with-torch] [VENV_DIR]
#
#   VENV_DIR      where to create the venv (default: .venv in the repo root)
#   --with-torch  also install torch (needed by hf_eval.py, hf_forward_bench.py,
#                 make_fixtures.py; NOT needed by get-gemma3-270m.sh / gguf_to_hf.py).
#                 Same as WHITTLE_WITH_TORCH=1.
#
# Environment:
#   PYTHON              interpreter to build the venv from (default: python3, needs >= 3.10)
#   TORCH_INDEX_URL     extra pip index for torch, e.g. https://download.pytorch.org/whl/cpu
#                       for the small CPU-only wheel (default: plain PyPI)
#
# Idempotent: a stamp file in the venv records the installed pins; if they already
# cover what is asked for, nothing is done.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

with_torch=${WHITTLE_WITH_TORCH:-0}
venv=""
for arg in "$@"; do
  case "$arg" in
    --with-torch) with_torch=1 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    -*) echo "setup-python.sh: unknown option $arg" >&2; exit 2 ;;
    *) [ -z "$venv" ] || { echo "setup-python.sh: only one VENV_DIR" >&2; exit 2; }; venv=$arg ;;
  esac
done
venv=${venv:-$root/.venv}
python=${PYTHON:-python3}

req_files=("$here/requirements.txt")
[ "$with_torch" = 1 ] && req_files+=("$here/requirements-torch.txt")

# The wanted pins: non-comment lines of the requirement files, sorted.
wanted=$(cat "${req_files[@]}" | sed -e 's/#.*//' -e 's/[[:space:]]//g' | grep -v '^$' | sort -u)
stamp="$venv/.whittle-pins"

if [ -x "$venv/bin/python" ] && [ -f "$stamp" ]; then
  missing=$(comm -23 <(echo "$wanted") <(sort -u "$stamp"))
  if [ -z "$missing" ]; then
    echo "setup-python.sh: $venv is already set up ($(echo "$wanted" | tr '\n' ' '))"
    exit 0
  fi
fi

if [ ! -x "$venv/bin/python" ]; then
  "$python" -c 'import sys; assert sys.version_info >= (3, 10), "need Python >= 3.10"'
  echo "setup-python.sh: creating venv $venv"
  "$python" -m venv "$venv"
fi

# No wheel cache: torch and its CUDA wheels are ~4 GB, and a cached copy would double that on
# small CI disks.
pip=("$venv/bin/python" -m pip install --disable-pip-version-check --no-cache-dir -q)
"${pip[@]}" --upgrade pip >/dev/null 2>&1 || true

if [ "$with_torch" = 1 ]; then
  torch_pin=$(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$here/requirements-torch.txt" | grep -v '^$')
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    echo "setup-python.sh: installing $torch_pin from $TORCH_INDEX_URL"
    "${pip[@]}" --index-url "$TORCH_INDEX_URL" $torch_pin
  else
    echo "setup-python.sh: installing $torch_pin"
    "${pip[@]}" $torch_pin
  fi
fi
echo "setup-python.sh: installing $(sed -e 's/#.*//' "$here/requirements.txt" | grep -v '^[[:space:]]*$' | tr '\n' ' ')"
"${pip[@]}" -r "$here/requirements.txt"

# Record what is installed now (union with an earlier stamp).
{ [ -f "$stamp" ] && cat "$stamp"; echo "$wanted"; } | sort -u > "$stamp.tmp"
mv "$stamp.tmp" "$stamp"
echo "setup-python.sh: done ($venv)"

#!/usr/bin/env bash
# Download, on a machine with network access, the few pure-Python (or abi3) packages that
# scripts/gpu_check.py needs beside a GPU machine's own Python 3.12 + CUDA PyTorch + numpy,
# as cp312 manylinux x86-64 wheels, and copy the two fixtures it checks parity on. The folder
# (default build/gpu_check, git-ignored, about 45 MB) travels with the checkout:
#
#   bash scripts/gpu_wheels.sh [DIR]
#   python3 scripts/gpu_check.py --assets DIR          # on the GPU machine, no network needed
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${1:-$ROOT/build/gpu_check}"
PY="${H3R_VENV:-$ROOT/.venv}/bin/python"
[[ -x "$PY" ]] || PY=python3
mkdir -p "$DEST/wheels" "$DEST/fixtures"
# The versions of requirements.lock; no dependencies (torch and numpy come with the GPU machine).
pins=$(grep -iE '^(pillow|smplx|roma|safetensors)==' "$ROOT/requirements.lock")
# shellcheck disable=SC2086
"$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 -d "$DEST/wheels" $pins 2>&1 | { grep -v '^WARNING: Location .* is ignored' || true; }
FIXTURES="$ROOT/../shared/fixtures"
for name in h3r_tiny_base h3r_tiny_reset3_ttt3r; do
  if [[ -f "$FIXTURES/$name.pt" ]]; then
    cp "$FIXTURES/$name.pt" "$DEST/fixtures/"
  else
    echo "warning: $FIXTURES/$name.pt not found: the GPU check will skip its parity rows" >&2
  fi
done
du -sh "$DEST"
ls "$DEST/wheels"

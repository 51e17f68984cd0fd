#!/usr/bin/env bash
# Download a released Human3R checkpoint from the Hugging Face Hub into models/, verify its
# SHA-256 and convert it to the .safetensors + .json pair the node loads.
#
#   bash scripts/fetch_weights.sh                    # human3r_672S (3.4 GB)
#   bash scripts/fetch_weights.sh --variant 896L     # 672S | 672B | 672L | 896L
#   bash scripts/fetch_weights.sh --dest /data/models
#
# Honours HF_ENDPOINT, HF_HUB_OFFLINE, HF_HOME, HF_TOKEN. Options: --help
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "${H3R_VENV:-$ROOT/.venv}/bin/python" -m h3r_ros.weights fetch "$@"

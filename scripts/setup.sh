#!/usr/bin/env bash
# One-command environment: a virtual environment with the pinned dependencies
# (PyTorch CPU, ROS 2 Kilted wheels, colcon, smplx, ...), the wheels' CMake
# paths repaired, and this package's messages (plus a wire-compatible tf2_msgs
# where the environment has none) built into it. Idempotent: each step is
# skipped while its inputs are unchanged.
#
#   bash scripts/setup.sh            # venv at ./.venv (H3R_VENV overrides)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${H3R_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
STAMPS="$VENV/.h3r_stamps"
BUILD="$VENV/.h3r_build"

log() { printf '[setup] %s\n' "$*"; }

# Each step runs only when the hash of its inputs differs from its stamp.
inputs_hash() { (cd "$ROOT" && for p in "$@"; do if [[ -e "$p" ]]; then echo "$p"; fi; done | xargs -r -I{} find {} -type f ! -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum) | sha256sum | cut -d' ' -f1; }
stamp_ok() { [[ -f "$STAMPS/$1" && "$(cat "$STAMPS/$1")" == "$2" ]]; }
stamp_set() { mkdir -p "$STAMPS"; echo "$2" > "$STAMPS/$1"; }

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "error: Python 3.11 is required (the ROS 2 wheels are cp311); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

h=$(inputs_hash requirements.lock)
if ! stamp_ok requirements "$h"; then
  log "installing pinned dependencies (requirements.lock)"
  # (pip's notices about this machine's optional local index folders are noise)
  "$PY" -m pip install --quiet --disable-pip-version-check -r "$ROOT/requirements.lock" 2>&1 \
    | { grep -v '^WARNING: Location .* is ignored' || true; }
  "$PY" - <<'PYCHECK'
import torch
if torch.version.cuda is not None:
    raise SystemExit(f"error: a CUDA build of torch was installed ({torch.__version__}); expected the CPU build")
print(f"[setup] torch {torch.__version__} (CPU build)")
PYCHECK
  "$PY" "$ROOT/scripts/fix_ros_wheel_cmake.py" "$VENV"
  rm -f "$STAMPS"/interfaces-*
  stamp_set requirements "$h"
fi

colcon_build() {  # colcon_build <name> <package dir>
  AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV" PATH="$VENV/bin:$PATH" \
    "$VENV/bin/colcon" --log-base "$BUILD/log" build \
      --paths "$2" --build-base "$BUILD/$1" --install-base "$VENV" --merge-install \
      --cmake-args -DPython3_EXECUTABLE="$PY" -DBUILD_TESTING=OFF \
      > "$BUILD/$1.log" 2>&1 || { tail -n 40 "$BUILD/$1.log" >&2; echo "error: colcon build of $1 failed (log: $BUILD/$1.log)" >&2; exit 1; }
}
mkdir -p "$BUILD"

# The real tf2_msgs is not on PyPI; build the stand-in only where none exists.
h=$(inputs_hash scripts/tf2_msgs_compat)
if ! stamp_ok interfaces-tf2_msgs "$h"; then
  if "$PY" -c 'import tf2_msgs.msg' 2>/dev/null && [[ ! -f "$STAMPS/interfaces-tf2_msgs" ]]; then
    log "tf2_msgs already present"
  else
    log "building wire-compatible tf2_msgs"
    rm -rf "$BUILD/src/tf2_msgs" && mkdir -p "$BUILD/src"
    cp -r "$ROOT/scripts/tf2_msgs_compat" "$BUILD/src/tf2_msgs"
    rm -f "$BUILD/src/tf2_msgs/COLCON_IGNORE"
    colcon_build tf2_msgs "$BUILD/src/tf2_msgs"
  fi
  stamp_set interfaces-tf2_msgs "$h"
fi

h=$(inputs_hash package.xml CMakeLists.txt msg h3r_ros scripts/human3r_node.in launch config rviz)
if ! stamp_ok interfaces-h3r_ros "$h"; then
  log "building h3r_ros (messages, Python package, launch and config files)"
  colcon_build h3r_ros "$ROOT"
  if [[ -e "$VENV/lib/h3r_ros/human3r_node" ]]; then
    ln -sf "../lib/h3r_ros/human3r_node" "$VENV/bin/human3r_node"
  fi
  stamp_set interfaces-h3r_ros "$h"
fi

"$PY" -c 'import rclpy, torch, smplx, tf2_msgs.msg, h3r_ros.msg' || { echo "error: environment check failed" >&2; exit 1; }
log "environment ready: $VENV"

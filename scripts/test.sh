#!/usr/bin/env bash
# Set up the environment (idempotent) and run the whole test suite, once per supported ROS 2
# distribution (Kilted, then Jazzy), each in its own venv; H3R_ROS_DISTRO=kilted|jazzy runs
# one. Extra arguments go to pytest, e.g. `bash scripts/test.sh -k checkpoint`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${H3R_ROS_DISTRO:-}" ]]; then
  for distro in kilted jazzy; do
    echo "=== ROS 2 $distro ==="
    start=$SECONDS
    H3R_ROS_DISTRO=$distro bash "$ROOT/scripts/test.sh" "$@"
    echo "=== ROS 2 $distro: suite passed in $((SECONDS - start)) s ==="
  done
  exit 0
fi
source "$ROOT/scripts/distro.sh"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
set +e
"$H3R_VENV/bin/python" -m pytest "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit $rc

#!/usr/bin/env bash
# Set up the environment (idempotent) and run the test suite once per supported ROS 2
# distribution, each in its own venv: the whole suite on Kilted, then on Jazzy the tests whose
# modules import ROS 2 (pytest mark "ros", see test/conftest.py); the others are pure
# PyTorch/NumPy with the same pins in both locks. H3R_ROS_DISTRO=kilted|jazzy runs the whole
# suite on one. Extra arguments go to pytest, e.g. `bash scripts/test.sh -k checkpoint`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${H3R_ROS_DISTRO:-}" ]]; then
  for distro in kilted jazzy; do
    marks=""
    [[ $distro == jazzy ]] && marks=ros
    echo "=== ROS 2 $distro${marks:+ (tests marked $marks)} ==="
    start=$SECONDS
    H3R_ROS_DISTRO=$distro H3R_TEST_MARKS=$marks bash "$ROOT/scripts/test.sh" "$@"
    echo "=== ROS 2 $distro: suite passed in $((SECONDS - start)) s ==="
  done
  exit 0
fi
source "$ROOT/scripts/distro.sh"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
marks="${H3R_TEST_MARKS:-}"
set +e
"$H3R_VENV/bin/python" -m pytest ${marks:+-m "$marks"} "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
  if [[ -n $marks && $# -gt 0 ]]; then
    echo "no test marked $marks among the selected ones"
    exit 0
  fi
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit $rc

#!/usr/bin/env bash
# The main job in one command: set up the environment (idempotent), then run the Human3R
# node end to end on a short generated sequence (or on your input) and record the result.
#
#   bash scripts/demo.sh                                   # synthetic room, 10 frames
#   bash scripts/demo.sh --frames 16
#   bash scripts/demo.sh --input video.mp4 --stride 5      # or an image folder / rosbag2
#   bash scripts/demo.sh --input bag_dir --topic /camera/image_raw
#
# Output in output/demo/: bag/ (MCAP rosbag2 of every topic), preview.png, summary.txt,
# node.log, params.yaml. Options: .venv/bin/python -m h3r_ros.demo --help
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/distro.sh"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "$H3R_VENV/bin/python" -m h3r_ros.demo "$@"

#!/usr/bin/env python3
"""Cost of the node's rectification (h3r_ros/ros/rectification.py) on this CPU: map build once
per calibration, then the per-frame remap (median over the frames), for plumb_bob and
equidistant calibrations of common camera sizes.

    python scripts/benchmark_rectification.py
    python scripts/benchmark_rectification.py --sizes 1920x1080 --frames 50 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from h3r_ros.ros.rectification import Rectifier  # noqa: E402

COEFFICIENTS = {"plumb_bob": [-0.3, 0.1, 0.001, -0.001, 0.0], "equidistant": [0.05, -0.01, 0.002, 0.0]}


def camera_info(model: str, width: int, height: int) -> SimpleNamespace:
    """A CameraInfo-shaped calibration: focal about the image width, P = K."""
    f, cx, cy = 0.8 * width, width / 2, height / 2
    return SimpleNamespace(width=width, height=height, distortion_model=model, d=COEFFICIENTS[model],
                           k=[f, 0, cx, 0, f, cy, 0, 0, 1], r=[1, 0, 0, 0, 1, 0, 0, 0, 1],
                           p=[f, 0, cx, 0, 0, f, cy, 0, 0, 0, 1, 0], binning_x=0, binning_y=0,
                           roi=SimpleNamespace(x_offset=0, y_offset=0, width=0, height=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["640x480", "1280x720"], help="WIDTHxHEIGHT")
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--threads", type=int, default=0, help="OpenCV threads; 0 = its default")
    args = parser.parse_args()
    if args.threads:
        cv2.setNumThreads(args.threads)
    print(f"OpenCV {cv2.__version__}, {cv2.getNumThreads()} threads")
    rng = np.random.default_rng(0)
    for size in args.sizes:
        width, height = map(int, size.split("x"))
        frame = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        for model in COEFFICIENTS:
            rectifier, info = Rectifier(), camera_info(model, width, height)
            rectifier.rectify(frame, info)  # builds the maps
            times = []
            for _ in range(args.frames):
                start = time.perf_counter()
                rectifier.rectify(frame, info)
                times.append(time.perf_counter() - start)
            print(f"{width}x{height} {model:12s} map build {1000 * rectifier.build_seconds:6.1f} ms, "
                  f"per frame {1000 * statistics.median(times):5.2f} ms (median of {args.frames})")


if __name__ == "__main__":
    main()

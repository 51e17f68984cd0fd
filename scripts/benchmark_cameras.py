#!/usr/bin/env python3
"""Several cameras on one CPU: one process serving N cameras with one model (N engines,
``step_together``: frames of one size batched) against N one-camera processes, each with its
own model, started together.

Per row: peak RSS (summed over the processes), aggregate processed frames per second (all
cameras' frames over the wall time from the first process's first timed frame to the last
one's end) and the per-camera frame latency p50 / p90 (in one process a frame's result comes
with the round's, so its latency is the round's time). Weights are random, detections forced
(``--humans`` per frame), frames random, one per camera, reused every round. Every row runs in
fresh processes, so each peak RSS is its own.

    python scripts/benchmark_cameras.py                        # tiny model, 1-3 cameras
    python scripts/benchmark_cameras.py --variant 672S --frames 4 --threads 16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


def worker(args) -> None:
    """One process: build the model and ``args.worker`` engines over it, warm up, say
    'ready', wait for a line on stdin, time ``args.frames`` rounds, print them as JSON."""
    import torch
    from bench_models import TINY_SIZE, camera_frames, force_detections, peak_rss_gib, random_model, tiny_config

    from h3r_ros.engine.engine import EngineConfig, Human3REngine
    from h3r_ros.engine.multi_camera import step_together
    from h3r_ros.model import Human3RConfig

    torch.set_num_threads(args.threads)
    tiny = args.variant == "tiny"
    cfg, size = (tiny_config(), TINY_SIZE) if tiny else (Human3RConfig.variant(args.variant), 512)
    model = random_model(cfg, getattr(torch, args.dtype), "cpu")
    force_detections(model, args.humans)
    engines = [Human3REngine(model, EngineConfig(size=size, dtype=args.dtype, reset_interval=0))
               for _ in range(args.worker)]
    frames = camera_frames(args.worker, size)
    for _ in range(args.warmup):
        step_together(engines, frames)
    print("ready", flush=True)
    sys.stdin.readline()
    start, rounds = time.time(), []
    for _ in range(args.frames):
        began = time.perf_counter()
        step_together(engines, frames)
        rounds.append(time.perf_counter() - began)
    print(json.dumps(dict(start=start, end=time.time(), rounds=rounds, frames=args.frames * args.worker,
                          rss=peak_rss_gib())), flush=True)


def measure(args, cameras_per_process: list[int], threads: int) -> dict:
    """Start one worker per entry, let them all go at once, and combine their reports."""
    command = [sys.executable, __file__, "--variant", args.variant, "--dtype", args.dtype, "--frames",
               str(args.frames), "--warmup", str(args.warmup), "--humans", str(args.humans), "--threads", str(threads)]
    procs = [subprocess.Popen(command + ["--worker", str(n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for n in cameras_per_process]
    for proc in procs:
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"a worker failed before its frames (exit {proc.wait()})")
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    reports = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"a worker failed (exit {proc.returncode})")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    p50, p90 = np.percentile([t for r in reports for t in r["rounds"]], [50, 90])
    wall = max(r["end"] for r in reports) - min(r["start"] for r in reports)
    return dict(rss=sum(r["rss"] for r in reports), fps=sum(r["frames"] for r in reports) / wall, p50=p50, p90=p90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="tiny", help="tiny (built here, 160 px input) or 672S, 672B, 672L, "
                                                          "896L (512 px input); random weights")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                        help="auto: bfloat16 where the CPU computes it natively, as the node picks")
    parser.add_argument("--cameras", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--frames", type=int, default=8, help="timed rounds (frames per camera)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--humans", type=int, default=2, help="forced detections per frame")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="CPU threads per row: all to the one process, split evenly among N processes")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # internal: cameras of this process
    args = parser.parse_args()
    if args.worker is not None:
        return worker(args)

    from h3r_ros.engine.precision import bf16_capability, resolve_precision

    if args.dtype == "auto":
        args.dtype = resolve_precision("auto", "cpu").dtype
    print(f"{args.variant}, {args.dtype}, {args.threads} threads, {args.frames} frames per camera, "
          f"{args.humans} people per frame; {bf16_capability('cpu')[1]}", flush=True)
    header = f"{'cameras':>7}  {'processes':>9}  {'peak RSS GiB':>12}  {'frames/s':>8}  {'p50 ms':>7}  {'p90 ms':>7}"
    print(header, flush=True)
    one_process_rss = {}
    for n in args.cameras:
        layouts = [[n]] + ([[1] * n] if n > 1 else [])
        for layout in layouts:
            row = measure(args, layout, max(1, args.threads // len(layout)))
            if len(layout) == 1:
                one_process_rss[n] = row["rss"]
            print(f"{n:>7}  {len(layout):>9}  {row['rss']:>12.2f}  {row['fps']:>8.2f}  {1e3 * row['p50']:>7.0f}  "
                  f"{1e3 * row['p90']:>7.0f}", flush=True)
    if len(one_process_rss) > 1:
        (low, rss_low), *_, (high, rss_high) = sorted(one_process_rss.items())
        print(f"one process: {1024 * (rss_high - rss_low) / (high - low):.0f} MiB peak RSS per added camera")


if __name__ == "__main__":
    main()

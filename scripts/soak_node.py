#!/usr/bin/env python3
"""Soak run: many frames through the node (tiny random model), every output subscribed.

    .venv/bin/python scripts/soak_node.py [--frames 10000] [--warmup 500] [--bad-every 100]
        [--path-max-poses 2000] [--map-max-points 200000]

The node runs as its own process (``python -m h3r_ros.ros.node_main``) with meshes, vertices
and per-body TF on, so every structure it keeps is exercised; this process publishes one
frame, waits for its ``humans`` message (closed loop: the node is never idle, nothing queues),
and now and then sends a broken message too. Prints the node's RSS slope in MiB per 1,000
frames after warm-up (least squares over samples every 50 frames; flat memory is the target),
latency percentiles (publish -> humans received), and the largest size seen of every bounded
structure next to its bound, as reported on /diagnostics. Not a test.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "test"))

from h3r_ros.dds_env import apply_loopback_env  # noqa: E402

NODE = "h3r_soak_node"
SIZE_KEYS = ("map points", "camera path poses", "tracks in the bank", "markers shown")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=500, help="frames before the RSS slope is measured")
    parser.add_argument("--bad-every", type=int, default=100, help="send a broken message every N frames (0: never)")
    parser.add_argument("--timeout", type=float, default=60.0, help="s to wait for one frame's output")
    # Small bounds fill within the warm-up, so a shorter run measures memory with every structure full.
    parser.add_argument("--path-max-poses", type=int, default=2000)
    parser.add_argument("--map-max-points", type=int, default=200_000)
    args = parser.parse_args()
    apply_loopback_env(domain_id=1 + os.getpid() % 100)

    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.signals import SignalHandlerOptions
    from ros_helpers import stamp_key, synthetic_frames, tiny_assets
    from sensor_msgs.msg import Image

    from h3r_ros.demo.recorder import OUTPUTS, qos_profile
    from h3r_ros.msg import HumanArray

    assets = tiny_assets()
    params = assets.parameters(publish_mesh=True, publish_vertices=True, publish_body_tf=True,
                               diagnostics_period=1.0, path_max_poses=args.path_max_poses,
                               map_max_points=args.map_max_points)
    command = [sys.executable, "-m", "h3r_ros.ros.node_main", "--ros-args", "-r", f"__node:={NODE}"]
    for key, value in params.items():
        command += ["-p", f"{key}:={str(value).lower() if isinstance(value, bool) else value}"]
    log = tempfile.NamedTemporaryFile("w", prefix="h3r_soak_", suffix=".log", delete=False)
    node_process = subprocess.Popen(command, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                                    stdout=log, stderr=subprocess.STDOUT)

    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)  # Ctrl-C ends the loop, figures still print
    probe = rclpy.create_node("h3r_soak_probe")
    arrived: dict[int, float] = {}
    sizes: dict[str, int] = {}
    lock = threading.Condition()

    def on_humans(msg):
        with lock:
            arrived[stamp_key(msg.header.stamp)] = time.monotonic()
            lock.notify_all()

    def on_diagnostics(msg):
        for status in msg.status:
            if NODE in status.name:
                values = {kv.key: kv.value for kv in status.values}
                with lock:
                    for key in SIZE_KEYS:
                        if key in values:
                            sizes[key] = max(sizes.get(key, 0), int(values[key]))

    for topic in OUTPUTS:
        if topic.msg_class not in (HumanArray, DiagnosticArray):
            probe.create_subscription(topic.msg_class, topic.name, lambda msg: None, qos_profile(topic))
    probe.create_subscription(HumanArray, "humans", on_humans, 10)
    probe.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    publisher = probe.create_publisher(Image, "image", 10)
    spinner = threading.Thread(target=rclpy.spin, args=(probe,), daemon=True)
    spinner.start()

    frames = synthetic_frames(64)
    latencies, samples = [], []
    try:
        deadline = time.monotonic() + 300.0
        while publisher.get_subscription_count() == 0 or probe.count_publishers("humans") == 0:
            if time.monotonic() > deadline or node_process.poll() is not None:
                raise RuntimeError(f"node did not come up; see {log.name}")
            time.sleep(0.2)
        start = time.monotonic()
        done = _run(args, probe, publisher, frames, arrived, lock, latencies, samples, node_process, log, start)
        time.sleep(2.5)  # one more diagnostics period for the final sizes
    finally:
        node_process.terminate()
        node_process.wait(timeout=60)
        probe.destroy_node()
        rclpy.try_shutdown()
    _report(args, done, samples, latencies, sizes, params, log)
    return 0


def _run(args, probe, publisher, frames, arrived, lock, latencies, samples, node_process, log, start) -> int:
    """Closed-loop frames; returns how many went through (a failure or Ctrl-C ends early)."""
    from ros_helpers import image_msg, stamp_key

    i = 0
    try:
        for i in range(args.frames):
            if args.bad_every and i % args.bad_every == args.bad_every - 1:
                bad = image_msg(frames[0], probe.get_clock().now().to_msg())
                bad.step -= 1  # inconsistent layout: dropped by the node, counted
                publisher.publish(bad)
            stamp = probe.get_clock().now().to_msg()
            key = stamp_key(stamp)
            sent = time.monotonic()
            publisher.publish(image_msg(frames[i % len(frames)], stamp))
            with lock:
                if not lock.wait_for(lambda: key in arrived, args.timeout):
                    raise RuntimeError(f"frame {i}: no output within {args.timeout} s; see {log.name}")
                latencies.append(arrived.pop(key) - sent)
            if i % 50 == 0:
                samples.append((i, rss_mib(node_process.pid)))
            if i % 100 == 99:
                print(f"  {i + 1} frames, {time.monotonic() - start:.0f} s, node RSS {samples[-1][1]:.1f} MiB",
                      flush=True)
        return args.frames
    except (KeyboardInterrupt, RuntimeError) as exc:
        print(f"stopped after {i} frames: {exc or 'interrupted'}", flush=True)
        return i


def _report(args, done, samples, latencies, sizes, params, log) -> None:
    measured = [(i, rss) for i, rss in samples if i >= args.warmup]
    print(f"frames: {done} of {args.frames} (warm-up {args.warmup}), {len(samples)} RSS samples, node log {log.name}")
    if len(measured) >= 2:
        x, y = np.array(measured, dtype=np.float64).T
        slope = np.polyfit(x, y, 1)[0] * 1000.0
        print(f"node RSS after warm-up: {y[0]:.1f} -> {y[-1]:.1f} MiB (max {y.max():.1f}); "
              f"slope {slope:+.3f} MiB per 1000 frames")
    else:
        print("node RSS: too few samples after warm-up for a slope (use more --frames)")
    if latencies:
        ms = np.array(latencies) * 1000.0
        print("latency publish -> humans (ms): " + ", ".join(
            f"p{p} {np.percentile(ms, p):.1f}" for p in (50, 90, 99)) + f", max {ms.max():.1f}")
    bounds = {"map points": f"<= ~2 x map_max_points = {2 * params['map_max_points']}",
              "camera path poses": f"<= path_max_poses = {params['path_max_poses']}",
              "tracks in the bank": "<= 512 (tracker max_tracks)",
              "markers shown": "<= 3 x people in the last frame"}
    print("bounded structures (largest seen on /diagnostics):")
    for key in SIZE_KEYS:
        print(f"  {key}: {sizes.get(key, 'n/a')} ({bounds[key]})")
    print("  frame hand-off slot: 1 (newest frame only, by construction)")


if __name__ == "__main__":
    sys.exit(main())

"""The demo: run the Human3R node end to end on a short sequence and record everything.

    python -m h3r_ros.demo                                  # synthetic room
    python -m h3r_ros.demo --input walk.mp4 --frames 30 --stride 5
    python -m h3r_ros.demo --input my_bag/ --topic /camera/image_raw

It picks the weights (a checkpoint in models/; without one it fetches the released 672S
from the Hugging Face Hub when the Hub answers, else runs random weights) and the SMPL-X
model (else a synthetic stand-in), flagging every stand-in loudly, starts the lifecycle
node as its own process (``python -m h3r_ros.ros.node_main``, autostart) with DDS confined to loopback, publishes
every frame as a sensor_msgs/Image and waits for that frame's outputs before the next (so
no frame is dropped), records every output topic to an MCAP rosbag2, prints per-stage and
end-to-end latencies and renders a preview PNG.
"""

from __future__ import annotations

import argparse
import array
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import fields, replace
from pathlib import Path

import cv2
import numpy as np
import yaml

from h3r_ros.dds_env import apply_loopback_env
from h3r_ros.weights import DEFAULT_VARIANT, VARIANTS

NODE_NAME = "human3r_node"  # the node's default name
CAMERA_FRAME = "camera_optical"
HUB_CHECK_TIMEOUT = 3.0  # s: the demo must not hang on a network that drops packets
# With random weights every confidence is meaningless (and stays below the default 2.0):
# let every point through, keep the "human" pixels (all of them) in the map, and use voxels
# small enough for the few centimetres random weights spread their points over.
RANDOM_WEIGHT_PARAMS = {"cloud_conf_threshold": 1.0, "map_exclude_humans": False, "map_voxel_size": 0.002}
BANNER_WIDTH = 78
MAX_DRAWN_PEOPLE = 20  # highest scores first; random weights "detect" hundreds


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m h3r_ros.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", help="video file, image folder or rosbag2 (default: a synthetic room)")
    parser.add_argument("--topic", help="image topic to read from a rosbag2 (default: the first image topic)")
    parser.add_argument("--frames", type=int, default=10, help="number of frames to process (default 10)")
    parser.add_argument("--stride", type=int, default=1, help="use every N-th input frame (default 1)")
    parser.add_argument("--size", default="512x288", help="synthetic frame size WxH (default 512x288)")
    parser.add_argument("--output", default="output/demo", help="output folder (default output/demo)")
    parser.add_argument("--models", help="folder with human3r*.pth|.safetensors and smplx/ (default: the node's models/)")
    parser.add_argument("--checkpoint", help="Human3R weights (default: the one in models/)")
    parser.add_argument(
        "--variant", default=DEFAULT_VARIANT, choices=VARIANTS,
        help="checkpoint to fetch when models/ has none, and the architecture of random weights (default 672S)",
    )
    parser.add_argument("--no-fetch", action="store_true",
                        help="never download weights: without a checkpoint, run random weights")
    parser.add_argument("--smplx-dir", help="folder with SMPLX_NEUTRAL.npz (default: models/smplx)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    parser.add_argument(
        "--param", action="append", default=[], metavar="NAME:=VALUE",
        help="extra node parameter (YAML value), repeatable, e.g. --param input_size:=384",
    )
    parser.add_argument("--startup-timeout", type=float, default=900.0, help="seconds to wait for the node (900)")
    parser.add_argument("--frame-timeout", type=float, default=600.0, help="seconds to wait for one frame (600)")
    args = parser.parse_args(argv)
    if args.frames < 1 or args.stride < 1:
        parser.error("--frames and --stride must be >= 1")
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        parser.error(f"--size {args.size!r} is not WxH")
    args.size = (width, height)
    return args


def model_parameters(args, output: Path) -> tuple[dict, list[str]]:
    """Node parameters for the weights and body model, and the warnings to shout.

    Files are looked up where the node itself looks (models/ of the checkout or of the
    installed share folder), or in --models, and then passed explicitly.
    """
    from h3r_ros.demo.synthetic_smplx import write_synthetic_smplx
    from h3r_ros.ros.engine_loader import find_checkpoint, models_dirs
    from h3r_ros.weights import default_dest, fetch_command

    searched = [Path(args.models)] if args.models else models_dirs()
    where = " or ".join(f"{d}/" for d in searched) or "models/"
    warnings = []
    params = {"device": args.device}
    checkpoint = Path(args.checkpoint) if args.checkpoint else find_checkpoint(searched)
    if checkpoint is None and not args.no_fetch:
        checkpoint = fetch_weights(args.variant, searched[0] if searched else default_dest())
    if checkpoint is not None:
        if not checkpoint.is_file():
            raise FileNotFoundError(f"checkpoint {checkpoint} not found")
        params["checkpoint"] = str(checkpoint.resolve())
    else:
        params.update(checkpoint="", allow_random_weights=True, variant=args.variant, **RANDOM_WEIGHT_PARAMS)
        warnings.append(
            f"RANDOM WEIGHTS: no human3r*.pth / human3r*.safetensors in {where}. The node runs the released "
            f"{args.variant} architecture with random weights: people, cloud and camera path are MEANINGLESS "
            f"and only exercise the pipeline. Get the real weights with: {fetch_command(args.variant)}"
        )
        warnings.append(
            "RANDOM-WEIGHT SETTINGS: so that every output carries data, cloud_conf_threshold is lowered from "
            f"2.0 to {RANDOM_WEIGHT_PARAMS['cloud_conf_threshold']} (every point passes), map_exclude_humans "
            "is off (random weights call every pixel human) and map_voxel_size is "
            f"{RANDOM_WEIGHT_PARAMS['map_voxel_size']} m (their points lie within centimetres)."
        )
    if args.smplx_dir:
        smplx_dir = Path(args.smplx_dir)
        if not (smplx_dir / "SMPLX_NEUTRAL.npz").is_file():
            raise FileNotFoundError(f"{smplx_dir}/SMPLX_NEUTRAL.npz not found")
    else:
        smplx_dir = next((d / "smplx" for d in searched if (d / "smplx" / "SMPLX_NEUTRAL.npz").is_file()), None)
    if smplx_dir is None:
        stand_in = output / "synthetic_smplx"
        if not (stand_in / "smplx" / "SMPLX_NEUTRAL.npz").is_file():
            write_synthetic_smplx(stand_in)
        smplx_dir = stand_in / "smplx"
        warnings.append(
            f"SYNTHETIC SMPL-X: no smplx/SMPLX_NEUTRAL.npz in {where}; bodies use a generated stand-in with "
            "random shapes (not a human body). Get SMPL-X from https://smpl-x.is.tue.mpg.de and put "
            "SMPLX_NEUTRAL.npz in models/smplx/."
        )
    params["smplx_dir"] = str(smplx_dir.resolve())
    return params, warnings


def fetch_weights(variant: str, dest: Path) -> Path | None:
    """The released checkpoint, fetched into ``dest`` when the Hub answers quickly; None
    (after one line saying why) when it does not or the fetch fails."""
    from h3r_ros import weights

    started = time.monotonic()
    remote, why_not = weights.hub_reachable(variant, HUB_CHECK_TIMEOUT)
    if remote is None:
        print(f"Hugging Face Hub not reachable ({why_not}; checked in {time.monotonic() - started:.1f} s): "
              f"running random weights. Fetch the weights later with: {weights.fetch_command(variant)}", flush=True)
        return None
    print(f"no checkpoint in {dest}/: fetching human3r_{variant}.pth ({remote.size / 1e9:.1f} GB) from the "
          "Hugging Face Hub (--no-fetch skips this)", flush=True)
    try:
        path = weights.fetch(variant, dest)
    except weights.FetchError as exc:
        print(f"fetch failed ({exc}): running random weights. Try again with: {weights.fetch_command(variant)}",
              flush=True)
        return None
    print(f"fetched {path}\n{weights.LICENCE_NOTE}", flush=True)
    return path


def user_parameters(items: list[str]) -> dict:
    params = {}
    for item in items:
        name, sep, value = item.partition(":=")
        if not sep or not name:
            raise ValueError(f"--param {item!r}: expected NAME:=VALUE")
        params[name] = yaml.safe_load(value)
    return params


def banner(lines: list[str]) -> str:
    rule = "!" * BANNER_WIDTH
    body = [w for line in lines for w in textwrap.wrap(line, BANNER_WIDTH - 4) + [""]][:-1]
    return "\n".join([rule] + [f"! {w:<{BANNER_WIDTH - 4}} !" for w in body] + [rule])


def start_node(params_file: Path, log_file: Path) -> subprocess.Popen:
    """The lifecycle node in its own process (as ``ros2 run`` would start it), autostarted."""
    command = [sys.executable, "-m", "h3r_ros.ros.node_main", "--ros-args", "--params-file", str(params_file)]
    with open(log_file, "wb") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())


def stop_node(process: subprocess.Popen) -> None:
    """SIGINT (node_main deactivates and cleans up), then SIGKILL if it hangs."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class NodeDied(RuntimeError):
    pass


def main(argv=None) -> int:
    args = parse_args(argv)
    # DDS stays on loopback for this process and the node it starts. An explicit
    # ROS_DOMAIN_ID (a test's, a user's) is kept; otherwise a random one isolates the run.
    domain = os.environ.get("ROS_DOMAIN_ID")
    apply_loopback_env(domain_id=int(domain) if domain else None)
    # A sourced ROS environment sets the ament prefix; in the project's venv (colcon
    # installs the package into it) nothing does, and package look-ups need it.
    if not os.environ.get("AMENT_PREFIX_PATH") and (Path(sys.prefix) / "share" / "ament_index").is_dir():
        os.environ["AMENT_PREFIX_PATH"] = sys.prefix

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    bag_dir = output / "bag"
    shutil.rmtree(bag_dir, ignore_errors=True)  # rosbag2 writers never overwrite

    from h3r_ros.demo.sources import open_source
    from h3r_ros.ros.parameters import DEFAULTS, Settings

    params, warnings = model_parameters(args, output)
    # Short diagnostics windows hold one frame each (per-frame stage times); the map is
    # published with every frame so the bag holds its final state.
    params.update(diagnostics_period=0.1, map_publish_period=0.0, image_qos="reliable", autostart=True)
    params.update(user_parameters(args.param))
    unknown = set(params) - {f.name for f in fields(Settings)}
    if unknown:
        raise ValueError(f"unknown node parameters: {sorted(unknown)}")
    settings = replace(DEFAULTS, **params)
    params_file = output / "params.yaml"
    params_file.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}, sort_keys=True))

    if warnings:
        print(banner(warnings), flush=True)
    source = open_source(args.input, args.frames, args.stride, args.topic, args.size)
    print(f"input: {source.description}", flush=True)

    log_file = output / "node.log"
    node_process = start_node(params_file, log_file)
    print(f"node: pid {node_process.pid}, log {log_file}", flush=True)
    try:
        result = _play(source, settings, node_process, bag_dir, args)
    except NodeDied as exc:
        print(f"error: {exc}\n--- last lines of {log_file} ---\n{tail(log_file)}", file=sys.stderr)
        return 1
    finally:
        stop_node(node_process)

    from h3r_ros.demo.summary import latency_table, stage_times

    recorder, frame_log, elapsed = result
    lost = sum(1 for entry in frame_log if entry["/humans"] is None)
    people = [len(m.humans) for m in recorder.humans]
    tracks = {h.track_id for m in recorder.humans for h in m.humans}
    track_text = f"{len(tracks)} track ids" + (f" ({min(tracks)}..{max(tracks)})" if tracks else "")
    end_to_end: dict[str, list[float]] = {}
    for entry in frame_log:
        for topic, received in entry.items():
            if topic.startswith("/") and received is not None:
                end_to_end.setdefault(topic, []).append((received - entry["stamp"]) / 1e6)
    lines = [
        "",
        f"Processed {len(frame_log) - lost}/{len(frame_log)} frames, {elapsed:.1f} s including model loading "
        f"({lost} without output); people per frame {people}; {track_text}",
        "Weights: " + (params["checkpoint"] or f"RANDOM ({params['variant']} architecture)"),
        "Messages recorded: " + ", ".join(f"{t} {n}" for t, n in sorted(recorder.counts.items())),
        *latency_table(stage_times(recorder.diagnostics), end_to_end),
        f"Bag (MCAP rosbag2): {bag_dir}",
    ]
    preview_path = output / "preview.png"
    _write_preview(preview_path, recorder, source, warnings)
    lines.append(f"Preview: {preview_path}")
    if warnings:
        lines.append(banner(warnings))
    text = "\n".join(lines)
    print(text)
    (output / "summary.txt").write_text(text.lstrip() + "\n")
    return 0 if lost == 0 else 2


def _expected_topics(settings) -> list[str]:
    """Per-frame outputs the node publishes with the image stamp under these settings."""
    from h3r_ros.demo.recorder import TFMessage

    wanted = {
        "/cloud": settings.publish_cloud,
        "/camera_path": settings.publish_path,
        "/depth/image": settings.publish_depth,
        "/depth/camera_info": settings.publish_depth,
        "/estimated_camera_info": settings.publish_camera_info,
        "/tf": settings.tf_mode != "none" and TFMessage is not None,
        "/map_cloud": settings.publish_map and settings.map_publish_period == 0.0,
    }
    return ["/humans"] + [topic for topic, on in wanted.items() if on]


def _wait_active(node, alive, timeout: float) -> None:
    """Wait for the autostarted node to become active; fail if it falls back to unconfigured.

    node_main answers while autostart configures and activates (``configuring``, then briefly
    ``inactive`` and ``activating``); a failed configure leaves it unconfigured, not dead.
    """
    from lifecycle_msgs.srv import GetState

    client = node.create_client(GetState, f"/{NODE_NAME}/get_state")
    deadline = time.monotonic() + timeout
    future = None
    while time.monotonic() < deadline:
        alive()
        if future is None and client.service_is_ready():
            future = client.call_async(GetState.Request())
        if future is not None and future.done():
            label = future.result().current_state.label
            if label == "active":
                return
            if label in ("unconfigured", "finalized"):
                raise NodeDied(f"the node is '{label}' after autostart (configure failed?)")
            future = None  # still on its way: ask again
        time.sleep(0.1)
    raise NodeDied(f"the node did not become active within {timeout:.0f} s")


def _play(source, settings, node_process, bag_dir: Path, args):
    """Publish the frames one at a time, waiting for each frame's outputs; returns
    (recorder, per-frame log of receive times, seconds since the node was started)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import Header

    from h3r_ros.demo.recorder import Recorder
    from h3r_ros.ros.conversions import camera_info_msg

    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("h3r_demo", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    started = time.monotonic()
    recorder = None
    try:
        recorder = Recorder(node, bag_dir)
        qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        image_pub = node.create_publisher(Image, "/image", qos)
        info_pub = node.create_publisher(CameraInfo, "/camera_info", qos)
        spinner.start()

        def alive():
            if node_process.poll() is not None:
                raise NodeDied(f"the node exited with code {node_process.returncode}")

        print("waiting for the node to load the model and activate ...", flush=True)
        _wait_active(node, alive, args.startup_timeout)
        print(f"node active after {time.monotonic() - started:.1f} s", flush=True)
        while image_pub.get_subscription_count() == 0:  # matching takes a moment after activation
            alive()
            time.sleep(0.05)

        expected = _expected_topics(settings)
        frame_log = []
        for i, rgb in enumerate(source.frames):
            header = Header(stamp=node.get_clock().now().to_msg(), frame_id=CAMERA_FRAME)
            stamp = header.stamp.sec * 1_000_000_000 + header.stamp.nanosec
            if source.K is not None:
                info = camera_info_msg(source.K, rgb.shape[:2], header)
                info_pub.publish(info)
                recorder.write_input("/camera_info", info)
            image = Image(header=header, height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8",
                          is_bigendian=0, step=3 * rgb.shape[1], data=array.array("B", rgb.tobytes()))
            image_pub.publish(image)
            recorder.write_input("/image", image)

            entry = {"stamp": stamp}
            deadline = time.monotonic() + args.frame_timeout
            entry["/humans"] = None
            while entry["/humans"] is None and time.monotonic() < deadline:
                alive()
                entry["/humans"] = recorder.wait_for("/humans", stamp, 0.5)
            # The other outputs of the frame follow within moments of 'humans'.
            for topic in expected[1:]:
                entry[topic] = recorder.wait_for(topic, stamp, 2.0) if entry["/humans"] else None
            frame_log.append(entry)
            got = "ok" if entry["/humans"] else "NO OUTPUT"
            latency = f"{(entry['/humans'] - stamp) / 1e9:.2f} s" if entry["/humans"] else "-"
            print(f"frame {i + 1}/{len(source.frames)}: {got}, stamp -> humans {latency}", flush=True)

        return recorder, frame_log, time.monotonic() - started
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=context)
        if recorder is not None:
            recorder.close()


def _write_preview(path: Path, recorder, source, warnings: list[str]) -> None:
    from h3r_ros.demo.preview import decode_cloud, render_preview

    # The accumulated map, or every frame's cloud when the map stayed empty.
    map_msg = recorder.latest.get("/map_cloud")
    clouds = [map_msg] if map_msg is not None and map_msg.width * map_msg.height else recorder.clouds
    decoded = [decode_cloud(c) for c in clouds]
    points = np.concatenate([p for p, _ in decoded]) if decoded else np.zeros((0, 3), np.float32)
    colours = np.concatenate([c for _, c in decoded]) if decoded else np.zeros((0, 3), np.uint8)

    last_with_people = next((m for m in reversed(recorder.humans) if m.humans), None)
    people = sorted(last_with_people.humans if last_with_people else [], key=lambda h: -h.score)
    skeletons = [(h.track_id, np.array([[p.x, p.y, p.z] for p in h.joints]))
                 for h in people[:MAX_DRAWN_PEOPLE] if h.has_body]
    path_msg = recorder.latest.get("/camera_path")
    cameras = np.array([[p.pose.position.x, p.pose.position.y, p.pose.position.z] for p in path_msg.poses]) \
        if path_msg is not None and path_msg.poses else np.zeros((0, 3))

    title = f"h3r_ros demo: {source.description}; {len(recorder.humans)} frames processed"
    if len(people) > MAX_DRAWN_PEOPLE:
        title += f"; {MAX_DRAWN_PEOPLE} of {len(people)} people drawn"
    short = [_short_warning(w) for w in warnings]
    image = render_preview(points, colours, skeletons, cameras, source.frames, title, short)
    cv2.imwrite(str(path), image)


def _short_warning(warning: str) -> str:
    """One preview line per banner entry."""
    title = warning.split(":")[0]
    if title == "RANDOM-WEIGHT SETTINGS":
        return f"{title}: cloud_conf_threshold {RANDOM_WEIGHT_PARAMS['cloud_conf_threshold']}, people kept in the map"
    return f"{title}: output is not a real reconstruction"

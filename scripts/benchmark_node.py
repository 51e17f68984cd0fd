"""Per-frame overhead of the node around inference: image decoding, building and
publishing every output. Prints p50 / p90 / max per stage; not a test.

    .venv/bin/python scripts/benchmark_node.py [--frames 300] [--people 2]

The node runs with default parameters, configured without a model (its engine loader is
replaced by a stub: inference is never run here). A synthetic FrameResult shaped like a
512x288 frame (288x512 points, 2 people) goes through the node's own publishing path
(``Human3RNode._publish``) with a subscriber to every output in a separate process, as
RViz or a recorder would be. Stages are timed by wrapping the conversion functions and
publishers the node calls, so the node's code runs unchanged.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from h3r_ros.dds_env import apply_loopback_env  # noqa: E402

HEIGHT, WIDTH = 288, 512


def subscriber_main() -> None:
    """Subscribe to every output and discard the messages, until SIGINT/SIGTERM."""
    import rclpy
    from rclpy.executors import ExternalShutdownException

    from h3r_ros.demo.recorder import OUTPUTS, qos_profile

    rclpy.init()
    node = rclpy.create_node("h3r_benchmark_subscriber")
    for topic in OUTPUTS:
        node.create_subscription(topic.msg_class, topic.name, lambda msg: None, qos_profile(topic))
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


def synthetic_result(index: int, people: int, template_joints: np.ndarray):
    """A FrameResult with the shapes the engine returns at 512x288; the camera moves 5 cm
    per frame so the map keeps growing as it would."""
    from h3r_ros.engine.result import FrameResult, Person

    rng = np.random.default_rng(index)
    v, u = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    depth = 3.0 + 0.5 * np.sin(u / 80.0) + rng.normal(0.0, 0.01, (HEIGHT, WIDTH)).astype(np.float32)
    f = 400.0
    points_cam = np.stack([(u - WIDTH / 2) / f * depth, (v - HEIGHT / 2) / f * depth, depth], -1)
    cam_to_world = np.eye(4)
    cam_to_world[:3, :3] = [[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]  # optical -> ROS axes
    cam_to_world[1, 3] = -0.05 * index
    points_world = (points_cam @ cam_to_world[:3, :3].T + cam_to_world[:3, 3]).astype(np.float32)
    human_mask = np.zeros((HEIGHT, WIDTH), np.float32)
    persons = []
    for k in range(people):
        left = 100 + 200 * k
        human_mask[60:280, left : left + 70] = 0.9
        offset = np.array([3.0, 1.0 - k, 0.0])
        persons.append(
            Person(
                track_id=k,
                score=0.9,
                rotmat=np.tile(np.eye(3), (53, 1, 1)),
                betas=np.zeros(10),
                expression=np.zeros(10),
                head_cam=np.array([0.0, -0.5, 3.0]),
                head_pixel=np.array([left + 35.0, 70.0]),
                head_world=template_joints[15] + offset,
                joints_cam=template_joints,
                joints_world=template_joints + offset,
                full_pose_world=rng.normal(0.0, 0.1, (55, 3)),
                transl_world=offset,
                pelvis_rotation_world=np.eye(3),
            )
        )
    return FrameResult(
        index=index,
        stamp=None,
        reset=index == 0,
        cam_to_world=cam_to_world,
        K=np.array([[f, 0.0, WIDTH / 2], [0.0, f, HEIGHT / 2], [0.0, 0.0, 1.0]]),
        input_size=(HEIGHT, WIDTH),
        crop_box=(0, 0, WIDTH, HEIGHT),
        scale=1.0,
        rgb=rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8),
        points_cam=points_cam.astype(np.float32),
        points_world=points_world,
        conf=rng.uniform(1.0, 10.0, (HEIGHT, WIDTH)).astype(np.float32),
        human_mask=human_mask,
        people=persons,
    )


class Stages:
    """Seconds per stage for the current frame, filled by wrapped callables."""

    def __init__(self) -> None:
        self.frame: dict[str, float] = defaultdict(float)
        self.history: dict[str, list[float]] = defaultdict(list)

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.frame[name] += time.perf_counter() - start

        return timed

    def end_frame(self, record: bool) -> None:
        if record:
            for name, seconds in self.frame.items():
                self.history[name].append(seconds)
        self.frame = defaultdict(float)


def instrument(outputs, stages: Stages) -> None:
    """Time what Outputs.publish calls: conversions, map, markers, publishers."""
    from h3r_ros.ros import conversions

    for name in ("camera_transform", "humans_msg", "cloud_msg", "path_pose", "path_msg",
                 "depth_msg", "camera_info_msg"):
        setattr(conversions, name, stages.wrap(f"build {name}", getattr(conversions, name)))
    outputs._markers.update = stages.wrap("build markers", outputs._markers.update)
    outputs._map.add = stages.wrap("map add", outputs._map.add)
    outputs._map.merge = stages.wrap("map merge", outputs._map.merge)
    for name, publisher in outputs._pubs.items():
        publisher.publish = stages.wrap(f"publish {name}", publisher.publish)


def report(stages: Stages, frames: int) -> None:
    print(f"\n{'stage':<30} {'p50 ms':>8} {'p90 ms':>8} {'max ms':>8} {'calls':>6}")
    total = stages.history.pop("TOTAL publish path")
    decode = {k: stages.history.pop(k) for k in [k for k in stages.history if k.startswith("decode")]}
    for name, values in [*sorted(stages.history.items()), *decode.items(), ("TOTAL publish path", total)]:
        ms = 1000.0 * np.asarray(values)
        p50, p90 = np.percentile(ms, [50, 90])
        # Stages that do not run every frame (map publication) have fewer samples.
        print(f"{name:<30} {p50:>8.2f} {p90:>8.2f} {ms.max():>8.2f} {len(ms):>6d}")
    print(f"({frames} frames; 'calls' counts the frames in which the stage ran)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # Enough frames (about 4 s) for a few map publications at the default 1 s period.
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--people", type=int, default=2)
    parser.add_argument("--subscriber", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.subscriber:
        subscriber_main()
        return 0
    apply_loopback_env()

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.lifecycle import TransitionCallbackReturn
    import torch
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from h3r_ros.engine.point_selection import select_on_device, selected_on_host
    from h3r_ros.engine.precision import Precision
    from h3r_ros.ros import node as node_module
    from h3r_ros.ros.engine_loader import LoadedEngine
    from h3r_ros.ros.image_decoding import check_image, decode_image

    # Publishing needs no model (the faces are only used for meshes, off by default).
    node_module.load_engine = lambda settings, progress=None: LoadedEngine(
        engine=SimpleNamespace(tracks=0), faces=np.zeros((0, 3), np.int64), device=torch.device("cpu"),
        precision=Precision("float32", "benchmark"), description="benchmark: no model"
    )
    subscriber = subprocess.Popen([sys.executable, __file__, "--subscriber"])

    rclpy.init()
    node = node_module.Human3RNode()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    try:
        if node.trigger_configure() != TransitionCallbackReturn.SUCCESS or \
                node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
            print("error: the node did not configure/activate", file=sys.stderr)
            return 1
        deadline = time.monotonic() + 30.0
        outputs = node.cameras[0].outputs
        while any(p.get_subscription_count() == 0 for p in outputs._pubs.values()):
            if time.monotonic() > deadline:
                print("error: the subscriber process did not match every output", file=sys.stderr)
                return 1
            time.sleep(0.05)

        stages = Stages()
        instrument(outputs, stages)
        template = np.random.default_rng(0).normal(0.0, 0.3, (55, 3))
        rgb = np.random.default_rng(1).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        images = {
            enc: Image(height=HEIGHT, width=WIDTH, encoding=enc, step=3 * WIDTH, data=rgb.tobytes())
            for enc in ("rgb8", "bgr8")
        }
        results = [synthetic_result(i, args.people, template) for i in range(args.warmup + args.frames)]
        for i, result in enumerate(results):
            for encoding, msg in images.items():
                start = time.perf_counter()
                check_image(msg)
                decode_image(msg)
                stages.frame[f"decode Image {encoding}"] += time.perf_counter() - start
            header = Header(stamp=node.get_clock().now().to_msg(), frame_id="camera_optical")
            settings = node._settings
            wanted = outputs.wanted(settings)
            # What the engine does at the end of a step (on the CPU here): choose the cloud points.
            start = time.perf_counter()
            mask = torch.from_numpy(result.human_mask)
            for selection in wanted.engine_flags(settings)["point_selections"]:
                chosen = select_on_device(selection, torch.from_numpy(result.points_world),
                                          torch.from_numpy(result.conf), mask)
                host = {f"{selection.name}/{k}": v.numpy() for k, v in chosen.items()}
                result.selections[selection.name] = selected_on_host(host, f"{selection.name}/")
            stages.frame["engine point selection (CPU)"] = time.perf_counter() - start
            start = time.perf_counter()
            outputs.publish(result, header, settings, wanted, (WIDTH, HEIGHT))
            stages.frame["TOTAL publish path"] = time.perf_counter() - start
            stages.end_frame(record=i >= args.warmup)
        cloud_points = int(np.sum(results[-1].conf[::2, ::2] > node._settings.cloud_conf_threshold))
        print(f"{WIDTH}x{HEIGHT} frame, {args.people} people, cloud ~{cloud_points} points "
              f"(stride {node._settings.cloud_stride}); map {len(outputs._map.points)} points at its last "
              f"publication (map_publish_period {node._settings.map_publish_period} s)")
        report(stages, args.frames)
    finally:
        subscriber.send_signal(signal.SIGINT)
        subscriber.wait(timeout=10)
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

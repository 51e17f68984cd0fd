"""launch/human3r.launch.py run by the real launch / launch_ros (launch_pytest), as `ros2 launch`
runs it: a namespace, remapped inputs, a params file with the tiny checkpoint, rviz:=true with a
stand-in rviz2 package; images in, outputs out; then launch's shutdown (SIGINT to every process).
The node is also driven with the real `ros2` CLI (lifecycle, param, topic; --no-daemon)."""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from ros_tools import LAUNCH_TOOLS, REPO, require_modules, ros2_executable, tool_env

require_modules(*LAUNCH_TOOLS)

import launch  # noqa: E402
import launch_pytest  # noqa: E402
from launch.event_handlers import OnProcessExit, OnProcessIO, OnProcessStart, OnShutdown  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402
from ros_helpers import RosHarness, image_msg, stamp_key, stamp_of, tiny_assets, wait_until  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, PointCloud2  # noqa: E402
from sensor_msgs_py import point_cloud2  # noqa: E402
from tf2_msgs.msg import TFMessage  # noqa: E402

from h3r_ros.msg import HumanArray  # noqa: E402

LAUNCH_FILE = REPO / "launch" / "human3r.launch.py"
NAMESPACE = "robot1"
NODE = f"/{NAMESPACE}/human3r_node"
IMAGE_ARG = "cam/image_raw"  # relative: lands in the namespace
IMAGE_TOPIC = f"/{NAMESPACE}/{IMAGE_ARG}"
INFO_TOPIC = "/cam/camera_info"  # absolute: stays where it is
WORLD = "map"
SIGINT_TIMEOUT = 5.0  # launch's default before it escalates to SIGTERM
SHUTDOWN_BUDGET = 2.0  # s from launch's shutdown to the node's exit
STEP_TIMEOUT = 120.0  # s; the CPU is shared with other test processes

# A stand-in rviz2: records its command line, then waits for SIGINT like the real one.
RVIZ_STUB = """#!{python}
import json, os, signal, sys, time
with open(os.environ["H3R_TEST_RVIZ_ARGV"], "w") as f:
    json.dump(sys.argv[1:], f)
signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
while True:
    time.sleep(0.05)
"""


class Record:
    """What launch reported, filled by event handlers on launch's thread."""

    def __init__(self):
        self.lock = threading.Lock()
        self.started: dict[str, float] = {}
        self.exited: dict[str, tuple[int, float]] = {}
        self.output: dict[str, list[str]] = {}
        self.shutdown_at: float | None = None

    @staticmethod
    def _name(event) -> str:
        return "rviz2" if "rviz2" in event.action.process_details["name"] else "node"

    def on_start(self, event, _context):
        with self.lock:
            self.started[self._name(event)] = time.monotonic()

    def on_exit(self, event, _context):
        with self.lock:
            self.exited[self._name(event)] = (event.returncode, time.monotonic())

    def on_io(self, event):
        with self.lock:
            self.output.setdefault(self._name(event), []).append(event.text.decode(errors="replace"))

    def on_shutdown(self, _event, _context):
        with self.lock:
            if self.shutdown_at is None:
                self.shutdown_at = time.monotonic()

    def text(self, name: str) -> str:
        with self.lock:
            return "".join(self.output.get(name, []))


RECORD = Record()


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    """Params file, stand-in rviz2 package and the environment launch hands to its processes."""
    root = tmp_path_factory.mktemp("launch")
    params = tiny_assets().parameters(world_frame=WORLD, camera_frame="camera_optical")
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump({"/**/human3r_node": {"ros__parameters": params}}))
    prefix = root / "rviz_prefix"
    (prefix / "share" / "ament_index" / "resource_index" / "packages").mkdir(parents=True)
    (prefix / "share" / "ament_index" / "resource_index" / "packages" / "rviz2").touch()
    stub = prefix / "lib" / "rviz2" / "rviz2"
    stub.parent.mkdir(parents=True)
    stub.write_text(RVIZ_STUB.format(python=sys.executable))
    stub.chmod(0o755)
    argv_file = root / "rviz_argv.json"
    env = tool_env(H3R_TEST_RVIZ_ARGV=str(argv_file))
    env["AMENT_PREFIX_PATH"] = os.pathsep.join([str(prefix), env["AMENT_PREFIX_PATH"]])
    saved = dict(os.environ)
    os.environ.update(env)  # launch starts its processes with this process's environment
    yield {"params_file": params_file, "argv_file": argv_file, "params": params, "env": env}
    os.environ.clear()
    os.environ.update(saved)


@launch_pytest.fixture(scope="module")
def human3r_launch(stage):
    include = launch.actions.IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(LAUNCH_FILE)),
        launch_arguments={
            "namespace": NAMESPACE,
            "params_file": str(stage["params_file"]),
            "image_topic": IMAGE_ARG,
            "camera_info_topic": INFO_TOPIC,
            "world_frame": WORLD,
            "rviz": "true",
        }.items(),
    )
    return launch.LaunchDescription([
        launch.actions.RegisterEventHandler(OnProcessStart(on_start=RECORD.on_start)),
        launch.actions.RegisterEventHandler(OnProcessExit(on_exit=RECORD.on_exit)),
        launch.actions.RegisterEventHandler(OnProcessIO(on_stdout=RECORD.on_io, on_stderr=RECORD.on_io)),
        launch.actions.RegisterEventHandler(OnShutdown(on_shutdown=RECORD.on_shutdown)),
        include,
        launch_pytest.actions.ReadyToTest(),
    ])


def ros2(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run([ros2_executable(), *args], env=tool_env(), capture_output=True, text=True,
                          timeout=timeout)


def ros2_until(check, *args: str, timeout: float = 60.0) -> str:
    """Repeat a `ros2` verb until ``check(stdout)`` holds: without a daemon each call discovers
    the graph afresh and may return before it has seen everything."""
    out = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = ros2(*args)
        out = result.stdout + result.stderr
        if result.returncode == 0 and check(result.stdout):
            return result.stdout
        time.sleep(0.2)
    raise AssertionError(f"ros2 {' '.join(args)}: {out}")


def _wait_active() -> str:
    last = ""
    deadline = time.monotonic() + STEP_TIMEOUT
    while time.monotonic() < deadline:
        result = ros2("lifecycle", "get", NODE, "--no-daemon")
        last = result.stdout + result.stderr
        if result.returncode == 0 and last.startswith("active"):
            return last
        if "node" in RECORD.exited:
            break
        time.sleep(0.5)
    raise AssertionError(f"{NODE} never became active: {last}\n{RECORD.text('node')}")


@pytest.mark.launch(fixture=human3r_launch)
def test_node_goes_active_with_the_params_file_and_the_cli_sees_it(stage):
    assert _wait_active().strip() == "active [3]"
    got = ros2_until(lambda out: bool(out.strip()), "param", "get", NODE, "input_size", "--no-daemon")
    assert got.strip() == f"Integer value is: {stage['params']['input_size']}", got
    described = ros2_until(lambda out: "Type:" in out, "param", "describe", NODE, "track_timeout", "--no-daemon")
    assert "Type: double" in described and "Seconds (image stamps) a track may stay unseen" in described
    info = ros2_until(lambda out: "Subscription count: 1" in out, "topic", "info", IMAGE_TOPIC, "--no-daemon")
    assert "Type: sensor_msgs/msg/Image" in info
    expected = [f"{name} [{kind}]" for name, kind in (
        (f"/{NAMESPACE}/humans", "h3r_ros/msg/HumanArray"),
        (f"/{NAMESPACE}/depth/image", "sensor_msgs/msg/Image"),
        (f"/{NAMESPACE}/depth/camera_info", "sensor_msgs/msg/CameraInfo"),
        (INFO_TOPIC, "sensor_msgs/msg/CameraInfo"),
    )]
    ros2_until(lambda out: all(line in out.splitlines() for line in expected), "topic", "list", "-t", "--no-daemon")


@pytest.mark.launch(fixture=human3r_launch)
def test_images_in_give_humans_cloud_and_tf_with_the_image_stamp():
    _wait_active()
    ros = RosHarness()
    try:
        humans = ros.collect(HumanArray, f"/{NAMESPACE}/humans")
        cloud = ros.collect(PointCloud2, f"/{NAMESPACE}/cloud")
        tf = ros.collect(TFMessage, "/tf", 100)
        images = ros.probe.create_publisher(Image, IMAGE_TOPIC, 1)
        infos = ros.probe.create_publisher(CameraInfo, INFO_TOPIC, 1)
        assert wait_until(lambda: images.get_subscription_count() > 0 and infos.get_subscription_count() > 0
                          and humans.matched() and cloud.matched() and tf.matched(), 30.0)
        frame = tiny_assets().frames[0]
        for i in range(2):
            stamp = stamp_of(1000.0 + i)
            images.publish(image_msg(frame, stamp))
            arrays = humans.wait_stamp(stamp, STEP_TIMEOUT)
            assert arrays.header.frame_id == WORLD
            points = cloud.wait_stamp(stamp, STEP_TIMEOUT)
            transforms = tf.wait_for(lambda msgs: any(
                stamp_key(t.header.stamp) == stamp_key(stamp) for m in msgs for t in m.transforms), STEP_TIMEOUT)
        camera = [t for m in transforms for t in m.transforms if stamp_key(t.header.stamp) == stamp_key(stamp)]
        assert [(t.header.frame_id, t.child_frame_id) for t in camera] == [(WORLD, "camera_optical")]
        assert points.header.frame_id == WORLD and points.width > 0
        xyz = point_cloud2.read_points(points, field_names=("x", "y", "z"), skip_nans=False)
        assert len(xyz) == points.width
        assert all(abs(float(p[2])) < 1e3 for p in xyz)
        rgb = point_cloud2.read_points(points, field_names=("rgb",))
        assert rgb.dtype["rgb"] == "float32"
    finally:
        ros.close()


@pytest.mark.launch(fixture=human3r_launch)
def test_rviz_gets_the_config_fixed_frame_namespace_and_image_remap(stage):
    _wait_active()  # and the shutdown test then stops a running node, whichever tests ran
    assert wait_until(lambda: stage["argv_file"].is_file() and stage["argv_file"].read_text(), 60.0)
    import json

    argv = json.loads(stage["argv_file"].read_text())
    from ament_index_python.packages import get_package_share_directory

    config = Path(get_package_share_directory("h3r_ros")) / "rviz" / "human3r.rviz"
    assert argv[argv.index("-d") + 1] == str(config) and config.is_file()
    assert argv[argv.index("-f") + 1] == WORLD
    ros_args = argv[argv.index("--ros-args"):]
    rules = [ros_args[i + 1] for i, a in enumerate(ros_args) if a == "-r"]
    assert "__ns:=/" + NAMESPACE in rules and f"image:={IMAGE_ARG}" in rules, argv
    params = [ros_args[i + 1] for i, a in enumerate(ros_args) if a == "--params-file"]
    values = [yaml.safe_load(Path(p).read_text()) for p in params]
    assert {"use_sim_time": False} in [node["ros__parameters"] for v in values for node in v.values()], values


@pytest.mark.launch(fixture=human3r_launch, shutdown=True)
def test_shutdown_sigint_ends_every_process_cleanly_within_two_seconds():
    with RECORD.lock:
        exited, shutdown_at = dict(RECORD.exited), RECORD.shutdown_at
    assert shutdown_at is not None and set(exited) == {"node", "rviz2"}, exited
    node_text = RECORD.text("node")
    for name, (code, at) in exited.items():
        assert code == 0, (name, code, node_text)
        assert at - shutdown_at < SIGINT_TIMEOUT
    node_seconds = exited["node"][1] - shutdown_at
    print(f"node shutdown after launch's SIGINT: {node_seconds:.2f} s")
    assert node_seconds < SHUTDOWN_BUDGET, node_text
    assert 0 <= node_text.find("model released") < node_text.find("]: shut down"), node_text
    assert "Traceback" not in node_text

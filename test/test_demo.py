"""End to end: ``python -m h3r_ros.demo`` as a user runs it, twice.

1. Weights from the Hub: no checkpoint in its models folder, the Hub (the stand-in of
   test/hub_server.py on 127.0.0.1, serving the tiny random-weight model under the 672S
   file name) answers, so the demo fetches, verifies and converts the checkpoint and runs
   the node with it (3 frames).
2. Offline: no checkpoint and the Hub unreachable, so the demo says so in one line and runs
   the released 672S architecture with random weights and the settings that make every
   output carry data (2 small frames).

The demo runs in a subprocess exactly as scripts/demo.sh runs it: it starts the node as
another process, publishes the frames over DDS (loopback only: the environment from
test/conftest.py is inherited), records every output to an MCAP rosbag2 and renders a
preview. The bag is then decoded with rosbags alone, whose AnyReader builds its types from
the definitions stored in the bag (and checks their hashes), so this is a second decoder
of the package's own messages that does not go through rclpy.
"""

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from hub_server import FakeHub, closed_port_endpoint
from ros_tools import require_modules
from rosbags.highlevel import AnyReader

from h3r_ros import weights
from ros_helpers import TINY_INPUT_SIZE, synthetic_frames, write_tiny_checkpoint

REPO = Path(__file__).resolve().parent.parent
FRAMES = 3
RANDOM_FRAMES = 2


def _stamp(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def _run_demo(tmp: Path, endpoint: str, frames: int, *extra: str) -> tuple[Path, Path, str]:
    models = tmp / "models"  # no checkpoint and no SMPL-X: the demo must fetch / stand in
    models.mkdir()
    output = tmp / "out"
    env = dict(os.environ, HF_ENDPOINT=endpoint, HF_HOME=str(tmp / "hf_home"), HF_HUB_DISABLE_PROGRESS_BARS="1")
    env.pop("HF_HUB_OFFLINE", None)
    # Its own domain (conftest uses 1..100), away from nodes of other tests in this process.
    env["ROS_DOMAIN_ID"] = str(101 + (os.getpid() + frames) % 100)
    command = [
        sys.executable, "-m", "h3r_ros.demo",
        "--frames", str(frames), "--size", "320x180", "--output", str(output), "--models", str(models),
        "--device", "cpu", "--param", f"input_size:={TINY_INPUT_SIZE}",
        "--startup-timeout", "300", "--frame-timeout", "120", *extra,
    ]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"demo failed:\n{done.stdout}\n{done.stderr}"
    return output, models, done.stdout


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    # The node tests' tiny random model (detector calibrated to a few people per frame).
    checkpoint = write_tiny_checkpoint(tmp / "human3r_tiny.pth", synthetic_frames(4))
    with FakeHub(weights.REPO_ID, {"human3r_672S.pth": checkpoint.read_bytes()}) as hub:
        # Random weights call every pixel human: keep them in the map so it is not empty.
        output, models, stdout = _run_demo(tmp, hub.endpoint, FRAMES, "--param", "map_exclude_humans:=false")
    return output, stdout, models


@pytest.fixture(scope="module")
def random_run(tmp_path_factory):
    return _run_demo(tmp_path_factory.mktemp("demo_random"), closed_port_endpoint(), RANDOM_FRAMES)


def _messages(bag: Path) -> dict[str, list]:
    by_topic: dict[str, list] = {}
    with AnyReader([bag]) as reader:
        for connection, _, raw in reader.messages():
            by_topic.setdefault(connection.topic, []).append(reader.deserialize(raw, connection.msgtype))
    return by_topic


def test_without_a_checkpoint_the_demo_fetches_one_from_the_hub_and_uses_it(demo_run):
    output, stdout, models = demo_run
    assert "fetching human3r_672S.pth" in stdout and "CC BY-NC-SA 4.0" in stdout
    assert sorted(p.name for p in models.glob("human3r*")) == ["human3r_672S.json", "human3r_672S.safetensors"]
    converted = (models / "human3r_672S.safetensors").resolve()
    assert f"checkpoint: {converted}" in (output / "params.yaml").read_text()
    assert f"Weights: {converted}" in stdout


def test_bag_holds_every_output_with_the_input_stamps(demo_run):
    output, _, _ = demo_run
    bag = output / "bag"
    assert list(bag.glob("*.mcap")), "the bag must use MCAP storage"
    msgs = _messages(bag)

    image_stamps = [_stamp(m) for m in msgs["/image"]]
    assert len(image_stamps) == FRAMES and len(set(image_stamps)) == FRAMES
    humans = msgs["/humans"]
    assert [_stamp(m) for m in humans] == image_stamps
    for array in humans:
        assert array.header.frame_id == "world"
        assert array.camera_frame_id == "camera_optical"
        for person in array.humans:
            assert len(person.joints) == 55
            assert person.full_pose.shape == (165,)
    assert sum(len(m.humans) for m in humans) > 0, "random weights detect people (the test needs some)"

    clouds = msgs["/cloud"]
    assert [_stamp(m) for m in clouds] == image_stamps
    for cloud in clouds:
        assert [f.name for f in cloud.fields] == ["x", "y", "z", "rgb"]
        assert cloud.point_step == 16 and len(cloud.data) == 16 * cloud.width * cloud.height
    assert any(c.width > 0 for c in clouds)

    assert [_stamp(m) for m in msgs["/depth/image"]] == image_stamps
    assert [_stamp(m) for m in msgs["/depth/camera_info"]] == image_stamps
    assert len(msgs["/camera_path"][-1].poses) == FRAMES
    for topic in ("/markers", "/map_cloud", "/diagnostics", "/estimated_camera_info", "/camera_info"):
        assert msgs.get(topic), f"nothing recorded on {topic}"


def test_bag_holds_the_camera_tf_with_the_input_stamps(demo_run, random_run):
    require_modules("tf2_msgs.msg")  # without tf2 the node publishes no /tf
    msgs = _messages(demo_run[0] / "bag")
    transforms = [m.transforms[0] for m in msgs["/tf"]]
    assert [_stamp(t) for t in transforms] == [_stamp(m) for m in msgs["/image"]]
    assert {(t.header.frame_id, t.child_frame_id) for t in transforms} == {("world", "camera_optical")}
    assert len(_messages(random_run[0] / "bag").get("/tf", [])) >= RANDOM_FRAMES


def test_summary_printed(demo_run):
    output, stdout, _ = demo_run
    assert f"Processed {FRAMES}/{FRAMES} frames" in stdout
    assert "SYNTHETIC SMPL-X" in stdout and "RANDOM WEIGHTS" not in stdout
    for stage in ("model", "publish", "total", "/humans", "/cloud"):
        assert f"  {stage} " in stdout, f"no latency row for {stage}"
    assert "p50 ms" in stdout and "p90 ms" in stdout
    assert (output / "summary.txt").read_text().strip() in stdout


def test_preview_is_a_real_picture(demo_run):
    output, _, _ = demo_run
    image = cv2.imread(str(output / "preview.png"))
    assert image is not None and image.shape[0] >= 400 and image.shape[1] >= 1000
    assert image.std() > 20  # not a blank canvas
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 1000  # input strip + drawn content


def test_offline_the_demo_says_so_and_runs_random_weights(random_run):
    output, models, stdout = random_run
    (line,) = [text for text in stdout.splitlines() if "not reachable" in text]
    assert "bash scripts/fetch_weights.sh" in line and "running random weights" in line
    assert "RANDOM WEIGHTS" in stdout and "RANDOM-WEIGHT SETTINGS" in stdout
    assert not list(models.glob("human3r*")), "nothing may be left that looks like a checkpoint"
    params = (output / "params.yaml").read_text()
    assert "allow_random_weights: true" in params and "variant: 672S" in params
    assert "Weights: RANDOM (672S architecture)" in stdout


def test_random_weights_exercise_every_output(random_run):
    output, _, stdout = random_run
    assert f"Processed {RANDOM_FRAMES}/{RANDOM_FRAMES} frames" in stdout
    msgs = _messages(output / "bag")
    assert len(msgs["/cloud"]) == RANDOM_FRAMES and all(c.width > 0 for c in msgs["/cloud"])
    assert msgs["/map_cloud"][-1].width > 0
    for topic in ("/humans", "/markers", "/camera_path", "/depth/image", "/depth/camera_info", "/estimated_camera_info"):
        assert len(msgs.get(topic, [])) >= RANDOM_FRAMES, topic
    assert cv2.imread(str(output / "preview.png")) is not None

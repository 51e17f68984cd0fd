"""End to end: ``python -m h3r_ros.demo`` with a tiny random-weight model, 3 frames.

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
from rosbags.highlevel import AnyReader

from ros_helpers import TINY_INPUT_SIZE, synthetic_frames, write_tiny_checkpoint

REPO = Path(__file__).resolve().parent.parent
FRAMES = 3


def _stamp(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    # The node tests' tiny random model (detector calibrated to a few people per frame).
    checkpoint = write_tiny_checkpoint(tmp / "human3r_tiny.pth", synthetic_frames(4))
    empty_models = tmp / "models"  # no SMPL-X there: the demo must generate its stand-in
    empty_models.mkdir()
    output = tmp / "out"
    env = dict(os.environ)
    # Its own domain (conftest uses 1..100), away from nodes of other tests in this process.
    env["ROS_DOMAIN_ID"] = str(101 + os.getpid() % 100)
    command = [
        sys.executable, "-m", "h3r_ros.demo",
        "--frames", str(FRAMES), "--size", "320x180",
        "--output", str(output), "--checkpoint", str(checkpoint), "--models", str(empty_models),
        "--device", "cpu", "--param", f"input_size:={TINY_INPUT_SIZE}",
        # Random weights call every pixel human: keep them in the map so it is not empty.
        "--param", "map_exclude_humans:=false",
        "--startup-timeout", "120", "--frame-timeout", "60",
    ]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"demo failed:\n{done.stdout}\n{done.stderr}"
    return output, done.stdout


def _messages(bag: Path) -> dict[str, list]:
    by_topic: dict[str, list] = {}
    with AnyReader([bag]) as reader:
        for connection, _, raw in reader.messages():
            by_topic.setdefault(connection.topic, []).append(reader.deserialize(raw, connection.msgtype))
    return by_topic


def test_bag_holds_every_output_with_the_input_stamps(demo_run):
    output, _ = demo_run
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

    transforms = [m.transforms[0] for m in msgs["/tf"]]
    assert [_stamp(t) for t in transforms] == image_stamps
    assert {(t.header.frame_id, t.child_frame_id) for t in transforms} == {("world", "camera_optical")}
    assert [_stamp(m) for m in msgs["/depth"]] == image_stamps
    assert len(msgs["/camera_path"][-1].poses) == FRAMES
    for topic in ("/markers", "/map_cloud", "/diagnostics", "/estimated_camera_info", "/camera_info"):
        assert msgs.get(topic), f"nothing recorded on {topic}"


def test_summary_printed(demo_run):
    output, stdout = demo_run
    assert f"Processed {FRAMES}/{FRAMES} frames" in stdout
    assert "SYNTHETIC SMPL-X" in stdout and "RANDOM WEIGHTS" not in stdout
    for stage in ("model", "publish", "total", "/humans", "/cloud"):
        assert f"  {stage} " in stdout, f"no latency row for {stage}"
    assert "p50 ms" in stdout and "p90 ms" in stdout
    assert (output / "summary.txt").read_text().strip() in stdout


def test_preview_is_a_real_picture(demo_run):
    output, _ = demo_run
    image = cv2.imread(str(output / "preview.png"))
    assert image is not None and image.shape[0] >= 400 and image.shape[1] >= 1000
    assert image.std() > 20  # not a blank canvas
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 1000  # input strip + drawn content

"""Two cameras in one node, as a user runs it: ``ros2 launch h3r_ros human3r.launch.py
cameras:=[front,rear] output_frame:=odom tf_mode:=none`` in a fresh bash, beside a static robot
tree (``odom -> base_link -> front_optical``, ``base_link -> rear_optical``) read through tf2:

- one node process serves both cameras, each with its own outputs under its name, in odom;
- the top-level ``humans`` is the fused array in odom, whose people come from both cameras;
- a camera at 10 Hz and one at 1 Hz are both served;
- a bad image and a reset on the rear camera leave the front camera's outputs as they were;
- the REP-155 bodies are the fused people.
"""

import math
import shlex
import time

import numpy as np
import pytest
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from ros_helpers import RosHarness, image_msg, rigid, stamp_key, tiny_assets, wait_until
from ros_tools import LAUNCH_TOOLS, require_modules
from sensor_msgs.msg import Image
from std_srvs.srv import Trigger
from test_first_contact import ACTIVATE, STEP_TIMEOUT, Shell, user_env, wait_active

from h3r_ros.msg import Human, HumanArray
from h3r_ros.ros import conversions

NAMESPACE = "launch_cameras"  # a name no other test's node has
NODE = f"/{NAMESPACE}/human3r_node"
ODOM = "odom"
OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # base axes <- optical axes
TURN = np.diag([-1.0, -1.0, 1.0])  # half a turn about z: the rear camera looks back
TREE = [
    (ODOM, "base_link", rigid(np.eye(3), [2.0, 1.0, 0.0])),
    ("base_link", "front_optical", rigid(OPTICAL, [0.3, 0.0, 1.2])),
    ("base_link", "rear_optical", rigid(TURN @ OPTICAL, [-0.3, 0.0, 1.2])),
]


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    require_modules(*LAUNCH_TOOLS, "tf2_ros", "hri_msgs.msg")  # here, not at import (see test_first_contact)
    from builtin_interfaces.msg import Time
    from tf2_ros import StaticTransformBroadcaster

    tmp = tmp_path_factory.mktemp("launch_cameras")
    params = tmp / "params.yaml"
    params.write_text(yaml.safe_dump({"/**": {"ros__parameters": tiny_assets().parameters(
        track_timeout=60.0, output_frame_timeout=1.0, tf_mode="none")}}))
    arguments = (f"namespace:={NAMESPACE} params_file:={shlex.quote(str(params))} cameras:=[front,rear] "
                 f"output_frame:={ODOM} publish_hri_bodies:=true")
    env = user_env(tmp)
    shell = Shell(f"{ACTIVATE}\nexec ros2 launch h3r_ros human3r.launch.py {arguments}", env, tmp / "launch.log")
    ros = RosHarness()
    robot = StaticTransformBroadcaster(ros.probe)
    robot.sendTransform([conversions.transform_msg(m, parent, child, Time()) for parent, child, m in TREE])
    try:
        wait_active(ACTIVATE, env, shell, NODE)
        yield ros, shell
    finally:
        ros.close()
        assert shell.stop() == 0, shell.text()


class Cameras:
    def __init__(self, ros):
        from hri_msgs.msg import IdsList  # not at import: the fixture checked it is there

        self.ros = ros
        self.images = {n: ros.probe.create_publisher(Image, f"/{NAMESPACE}/{n}/image", 10) for n in ("front", "rear")}
        self.humans = {n: ros.collect(HumanArray, f"/{NAMESPACE}/{n}/humans") for n in ("front", "rear")}
        self.fused = ros.collect(HumanArray, f"/{NAMESPACE}/humans")
        self.bodies = ros.collect(IdsList, "/humans/bodies/tracked")
        self.diagnostics = ros.collect(DiagnosticArray, "/diagnostics")
        assert wait_until(lambda: all(p.get_subscription_count() > 0 for p in self.images.values())
                          and self.fused.matched() and all(c.matched() for c in self.humans.values()), 60.0)

    def send(self, name: str, index: int = 0, **changes):
        stamp = self.ros.probe.get_clock().now().to_msg()
        msg = image_msg(tiny_assets().frames[index % 8], stamp, f"{name}_optical")
        for key, value in changes.items():
            setattr(msg, key, value)
        self.images[name].publish(msg)
        return stamp

    def bad_messages(self, name: str) -> int:
        wanted = f"{NODE}: camera {name}"
        for msg in reversed(self.diagnostics.messages):
            for status in msg.status:
                if status.name == wanted:
                    return int({kv.key: kv.value for kv in status.values}["bad messages (total)"])
        return -1


def test_two_cameras_in_one_launched_node_fused_in_odom(launched):
    ros, shell = launched
    cams = Cameras(ros)
    # Front at 10 Hz, rear at 1 Hz, until both have been served (the first frames also wait
    # for the robot's tree to arrive).
    start, rear_stamps = time.monotonic(), []
    while time.monotonic() < start + STEP_TIMEOUT:
        elapsed = time.monotonic() - start
        cams.send("front", int(elapsed * 10))
        if len(rear_stamps) <= elapsed:  # one rear frame a second
            rear_stamps.append(cams.send("rear", len(rear_stamps)))
        time.sleep(0.1)
        if cams.humans["front"].messages and len(cams.humans["rear"].messages) >= 2:
            break
    for name in ("front", "rear"):
        msgs = cams.humans[name].messages
        assert msgs, f"{name}: no humans\n{shell.text()}"
        assert {(m.header.frame_id, m.camera_name, m.camera_frame_id) for m in msgs} == {(ODOM, name, f"{name}_optical")}
    # The slow camera's frames are each served (keep-latest per camera: none replaced).
    served = {stamp_key(m.header.stamp) for m in cams.humans["rear"].messages}
    assert len(served) >= 2 and served <= {stamp_key(s) for s in rear_stamps}
    fused = cams.fused.wait_for(lambda msgs: any(m.humans for m in msgs), 30.0)
    people = [h for m in fused for h in m.humans if h.track_state in (Human.TRACK_NEW, Human.TRACK_TRACKED)]
    assert all(m.header.frame_id == ODOM and m.camera_name == "" for m in fused)
    assert {c for h in people for c in h.source_cameras} == {"front", "rear"}
    for h in people:
        assert len(h.source_cameras) == len(h.source_track_ids) >= 1
        assert all(math.isfinite(v) for v in (h.head.x, h.head.y, h.head.z))
    # REP-155 follows the fused ids (one body per person, whatever the cameras that see them).
    by_stamp = {stamp_key(m.header.stamp): m for m in fused}
    tracked = [m for m in cams.bodies.messages if stamp_key(m.header.stamp) in by_stamp]
    assert tracked and all(
        sorted(m.ids) == sorted(f"b{h.track_id}" for h in by_stamp[stamp_key(m.header.stamp)].humans
                                if h.track_state in (Human.TRACK_NEW, Human.TRACK_TRACKED)) for m in tracked)
    # The rear camera sees behind the robot, the front one ahead: in odom, the base is at x = 2.
    ahead = {h.source_cameras[0]: h.head.x > 2.0 for h in people if len(h.source_cameras) == 1}
    assert ahead.get("front", True) and not ahead.get("rear", False)

    # A bad image and a reset on the rear camera: the front camera's world and outputs go on.
    assert wait_until(lambda: cams.bad_messages("rear") >= 0, 10.0)
    bad_before, front_bad = cams.bad_messages("rear"), cams.bad_messages("front")
    bad = image_msg(tiny_assets().frames[0], ros.probe.get_clock().now().to_msg(), "rear_optical")
    bad.step -= 1
    cams.images["rear"].publish(bad)
    assert ros.call(Trigger, f"{NODE}/rear/reset", Trigger.Request()).success
    assert wait_until(lambda: cams.bad_messages("rear") == bad_before + 1, 30.0)
    front = cams.humans["front"].wait_stamp(cams.send("front", 3), STEP_TIMEOUT)
    rear = cams.humans["rear"].wait_stamp(cams.send("rear", 3), STEP_TIMEOUT)
    assert rear.reset and not front.reset and cams.bad_messages("front") == front_bad

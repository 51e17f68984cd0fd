"""Several cameras in one node: one model, a world per camera, fair rounds, per-camera outputs,
resets, bad input and diagnostics that never touch the other camera."""

import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from ros_helpers import RosHarness, image_msg, stamp_key, tiny_assets, wait_until
from sensor_msgs.msg import Image
from std_srvs.srv import Trigger

from h3r_ros.msg import HumanArray
from h3r_ros.ros.node import Human3RNode

STEP_TIMEOUT = 120.0
NAMES = ("front", "rear")


class TwoCameras:
    def __init__(self, **overrides):
        self.ros = RosHarness()
        params = tiny_assets().parameters(cameras=list(NAMES), **overrides)
        node = Human3RNode(context=self.ros.context, parameter_overrides=[
            Parameter(k, value=v) for k, v in params.items()])
        self.node = self.ros.add_node(node)
        success = TransitionCallbackReturn.SUCCESS
        assert node.trigger_configure() == success and node.trigger_activate() == success
        self.images = {n: self.ros.probe.create_publisher(Image, f"{n}/image", 10) for n in NAMES}
        self.humans = {n: self.ros.collect(HumanArray, f"{n}/humans") for n in NAMES}
        self.fused = self.ros.collect(HumanArray, "humans")
        self.diagnostics = self.ros.collect(DiagnosticArray, "/diagnostics")
        assert wait_until(lambda: all(p.get_subscription_count() > 0 for p in self.images.values())
                          and all(c.matched() for c in self.humans.values()), 30.0)

    def send(self, name: str, index: int = 0, wait: bool = True, **kwargs):
        stamp = self.ros.probe.get_clock().now().to_msg()
        self.images[name].publish(image_msg(tiny_assets().frames[index % 8], stamp, f"{name}_optical", **kwargs))
        return self.humans[name].wait_stamp(stamp, STEP_TIMEOUT) if wait else stamp

    def camera_values(self, name: str) -> dict[str, str]:
        wanted = f"{self.node.get_fully_qualified_name()}: camera {name}"
        since = stamp_key(self.ros.probe.get_clock().now().to_msg())

        def latest(msgs):
            for msg in reversed(msgs):
                if stamp_key(msg.header.stamp) >= since:
                    return next(({kv.key: kv.value for kv in s.values} for s in msg.status if s.name == wanted), None)
            return None

        self.diagnostics.wait_for(lambda msgs: latest(msgs) is not None, 10.0)
        return latest(self.diagnostics.messages)


@pytest.fixture(scope="module")
def rig():
    rig = TwoCameras()
    yield rig
    rig.node.trigger_shutdown()  # joins the round in progress before the node is destroyed
    rig.ros.close()


def test_one_model_and_a_world_per_camera(rig):
    front, rear = (c.processor.engine for c in rig.node.cameras)
    assert front is not rear and front.model is rear.model  # the weights once
    a, b = rig.send("front"), rig.send("rear")
    assert (a.header.frame_id, a.camera_frame_id) == ("world_front", "front_optical")
    assert (b.header.frame_id, b.camera_frame_id) == ("world_rear", "rear_optical")
    assert rig.fused.messages == []  # no common frame without output_frame: nothing fused


def test_each_camera_is_reset_alone_and_by_the_node_wide_reset(rig):
    rig.send("front"), rig.send("rear")
    assert rig.ros.call(Trigger, f"/{rig.node.get_name()}/front/reset", Trigger.Request()).success
    assert rig.send("front", 1).reset and not rig.send("rear", 1).reset
    assert rig.ros.call(Trigger, f"/{rig.node.get_name()}/reset", Trigger.Request()).success
    assert rig.send("front", 2).reset and rig.send("rear", 2).reset


def test_bad_input_on_one_camera_leaves_the_other_alone(rig):
    rig.send("front"), rig.send("rear")
    front_bad, rear_bad = (int(rig.camera_values(n)["bad messages (total)"]) for n in NAMES)
    rear_frames = len(rig.humans["rear"].messages)
    bad = image_msg(tiny_assets().frames[0], rig.ros.probe.get_clock().now().to_msg(), "rear_optical")
    bad.step -= 1  # inconsistent layout
    rig.images["rear"].publish(bad)
    assert wait_until(lambda: int(rig.camera_values("rear")["bad messages (total)"]) == rear_bad + 1, 30.0)
    assert int(rig.camera_values("front")["bad messages (total)"]) == front_bad
    humans = rig.send("front", 3)  # front goes on, its world untouched
    assert not humans.reset and len(rig.humans["rear"].messages) == rear_frames


def test_a_slow_camera_is_served_beside_a_fast_one(rig):
    """Keep-latest per camera: ten front frames for one rear frame, and rear still gets its turn."""
    before = len(rig.humans["rear"].messages)
    rear_processed = int(rig.camera_values("rear")["processed frames (total)"])
    rear_stamp = None
    for k in range(10):
        rig.send("front", k, wait=False)
        if k == 5:
            rear_stamp = rig.send("rear", k, wait=False)
        time.sleep(0.1)
    assert rig.humans["rear"].wait_stamp(rear_stamp, STEP_TIMEOUT)
    assert len(rig.humans["rear"].messages) == before + 1
    front = rig.camera_values("front")
    assert int(front["dropped frames (total)"]) > 0  # the fast camera's backlog is dropped, not queued
    assert int(rig.camera_values("rear")["processed frames (total)"]) == rear_processed + 1


def test_diagnostics_report_each_camera(rig):
    rig.send("front"), rig.send("rear")
    for name in NAMES:
        values = rig.camera_values(name)
        assert int(values["processed frames (total)"]) > 0 and values["lifecycle state"] == "active"
        assert values["TF"] == f"publishing world_{name} -> {name}_optical"
        assert np.isfinite(float(values["processed rate (Hz)"]))


def test_cameras_waiting_together_are_stepped_as_one_batch(rig):
    """Two cameras' frames of one size in one round go through the encoder as one batch."""
    front, rear = (c.processor.engine for c in rig.node.cameras)
    batches, busy = [], []
    hook = front.model.get_submodule("enc_blocks.0").register_forward_hook(
        lambda _module, args, _out: batches.append(args[0].shape[0]))
    step = front.step

    def slow_step(rgb, stamp):  # keeps the round busy while both cameras' next frames arrive
        busy.append(stamp)
        time.sleep(1.0)
        return step(rgb, stamp)

    front.step = slow_step
    try:
        first = rig.send("front", 0, wait=False)
        assert wait_until(lambda: busy, STEP_TIMEOUT)
        pair = rig.send("front", 1, wait=False), rig.send("rear", 1, wait=False)
        rig.humans["front"].wait_stamp(first, STEP_TIMEOUT)
        for name, stamp in zip(NAMES, pair):
            rig.humans[name].wait_stamp(stamp, STEP_TIMEOUT)
    finally:
        del front.step
        hook.remove()
    assert 2 in batches and len(busy) == 1  # the pair went through step_together, not front.step

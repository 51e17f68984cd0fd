"""A moving output_frame (base_link on a driving, turning robot): a person who stops being
detected is reported LOST where they were in the world, not where base_link was when they
were last seen. Read back through a real tf2 buffer at each message's stamp."""

import math

from dataclasses import replace

import numpy as np
import pytest
from ros_tools import require_modules
from ros_helpers import image_msg, stamp_key, stamp_of
from test_node_topics import CAMERA, Rig
from tf2_msgs.msg import TFMessage
from tf_helpers import TfListener, rigid_from

from h3r_ros.msg import Human
from h3r_ros.ros import conversions
from h3r_ros.ros.outputs import TF_QOS

ODOM, BASE = "odom", "base_link"
ROS_FROM_OPTICAL = np.array([[0.0, 0.0, 1.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0, 0, 1]])
BASE_FROM_CAMERA = ROS_FROM_OPTICAL.copy()
BASE_FROM_CAMERA[:3, 3] = [0.2, 0.0, 1.2]
PERSON_IN_ODOM = np.array([4.0, 1.0, 0.9])
TRACK = 7


def odom_from_base(t: float) -> np.ndarray:
    """1 m/s forward while turning at 0.5 rad/s."""
    yaw = 0.5 * t
    pose = np.eye(4)
    pose[:2, :2] = [[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]]
    pose[:2, 3] = [math.sin(yaw) / 0.5, (1.0 - math.cos(yaw)) / 0.5]
    return pose


class ScriptedWorld:
    """The model's world is odom itself (its camera pose is the robot's) and one person, track
    TRACK, stands still at PERSON_IN_ODOM while ``visible``."""

    def __init__(self, rig, t0: float) -> None:
        self.rig, self.t0, self.visible = rig, t0, True
        self.tf = rig.ros.probe.create_publisher(TFMessage, "/tf", TF_QOS)
        engine = rig.node._loaded.engine
        original = engine.step

        def step(rgb, stamp):
            result = original(rgb, stamp)
            person = next(p for p in result.people if p.joints_world is not None)
            shift = np.eye(4)
            shift[:3, 3] = PERSON_IN_ODOM - person.position_world
            result.cam_to_world = odom_from_base(self.since(stamp)) @ BASE_FROM_CAMERA
            result.people = [replace(person.transformed(shift), track_id=TRACK)] if self.visible else []
            return result

        engine.step = step
        self.restore = lambda: vars(engine).pop("step")

    def since(self, stamp) -> float:
        return stamp_key(stamp) * 1e-9 - self.t0

    def send(self, t: float):
        stamp = stamp_of(self.t0 + t)
        self.tf.publish(TFMessage(transforms=[
            conversions.transform_msg(odom_from_base(t), ODOM, BASE, stamp),
            conversions.transform_msg(BASE_FROM_CAMERA, BASE, CAMERA, stamp)]))
        return self.rig.send(image_msg(self.rig.assets.frames[0], stamp, CAMERA))


@pytest.fixture(scope="module")
def rig():
    require_modules("tf2_ros")
    rig = Rig(output_frame=BASE, tf_mode="none")
    yield rig
    rig.close()


def test_a_lost_person_stays_where_they_were_in_the_world(rig):
    tf = TfListener(rig.ros.probe)
    rig.reset()
    script = ScriptedWorld(rig, stamp_key(rig.next_stamp()) * 1e-9)
    try:
        states = []
        for k in range(6):
            script.visible = k < 2
            humans = script.send(0.4 * k)
            assert humans.header.frame_id == BASE
            (person,) = [h for h in humans.humans if h.track_id == TRACK]
            states.append(person.track_state)
            pelvis = person.pelvis.position
            odom_from_base_now = rigid_from(*_parts(tf.lookup(ODOM, BASE, humans.header.stamp)))
            in_odom = odom_from_base_now @ np.array([pelvis.x, pelvis.y, pelvis.z, 1.0])
            np.testing.assert_allclose(in_odom[:3], PERSON_IN_ODOM, atol=1e-4)
        assert states == [Human.TRACK_NEW, Human.TRACK_TRACKED] + [Human.TRACK_LOST] * 4
    finally:
        script.restore()
        tf.close()


def _parts(stamped):
    return stamped.transform.rotation, stamped.transform.translation

"""People in a frame of the robot's TF tree (output_frame), through real tf2.

The camera moves through ``odom`` (the test publishes odom -> camera, as a robot's odometry
would); the engine's people are scripted so that one person is static, or walks, in odom
while the model's own world is whatever the tiny model makes of the frames. The node must
place them with the robot's transforms: a static person stays put with ~0 velocity, a
walking one has the walking velocity, and the world is fixed in odom at the first image.
"""

import dataclasses
import math

import cv2
import numpy as np
import pytest
from ros_tools import require_modules
from geometry_msgs.msg import TransformStamped
from rclpy.time import Time
from ros_helpers import image_msg, settings_for, stamp_key, stamp_of, tiny_assets, wait_until
from test_node_topics import CAMERA, LATCHED, STEP_TIMEOUT, Rig, pose_matrix, transform_matrix
from tf2_msgs.msg import TFMessage

from h3r_ros.msg import Human
from h3r_ros.ros import conversions, parameters
from h3r_ros.ros.outputs import TF_QOS

ODOM = "odom"
ROS_FROM_OPTICAL = np.array([[0.0, 0.0, 1.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0, 0, 1]])
MISSING = "images without the output_frame transform (total)"
# Columns: the ROS body axes (x forward, y left, z up) in SMPL-X body axes (x left, y up, z forward).
SMPLX_FROM_ROS_BODY = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])


def odom_from_camera(t: float) -> np.ndarray:
    """The robot drives forward at 1 m/s while turning at 0.2 rad/s, camera 1.2 m up."""
    yaw = 0.2 * t
    turn = np.eye(4)
    turn[:2, :2] = [[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]]
    turn[:3, 3] = [1.0 * t, 0.0, 1.2]
    return turn @ ROS_FROM_OPTICAL


def translation(v) -> np.ndarray:
    shift = np.eye(4)
    shift[:3, 3] = v
    return shift


def moved(person, transform: np.ndarray):
    """``person`` with its world fields mapped by the rigid ``transform``, derived here rather
    than with ``Person.transformed``, which the node uses to place people in output_frame."""
    rot, shift = transform[:3, :3], transform[:3, 3]
    rest_pelvis = person.joints_world[0] - person.transl_world  # a stock forward adds transl to J0
    joints = person.joints_world @ rot.T + shift
    full_pose = np.array(person.full_pose_world, dtype=np.float64)
    full_pose[0] = cv2.Rodrigues(rot @ cv2.Rodrigues(full_pose[0])[0])[0].ravel()
    return dataclasses.replace(
        person,
        head_world=person.head_world @ rot.T + shift,
        joints_world=joints,
        full_pose_world=full_pose,
        transl_world=joints[0] - rest_pelvis,
        pelvis_rotation_world=rot @ person.pelvis_rotation_world,
        vertices_world=None if person.vertices_world is None else person.vertices_world @ rot.T + shift,
    )


class ScriptedPerson:
    """Replaces the engine's people by one person whose pelvis in odom is
    ``start + velocity * (t - t0)``: it sends odom -> camera before each image and makes the
    engine's world-frame person agree with it (whatever the model's own camera pose)."""

    def __init__(self, rig, t0: float, velocity) -> None:
        self.rig, self.t0, self.velocity = rig, t0, np.asarray(velocity, dtype=np.float64)
        self.tf = rig.ros.probe.create_publisher(TFMessage, "/tf", TF_QOS)
        self.in_odom = None  # the person at t0, in odom
        engine = rig.node._loaded.engine
        original = engine.step

        def step(rgb, stamp):
            result = original(rgb, stamp)
            t = stamp_key(stamp) * 1e-9
            odom_from_world = odom_from_camera(t) @ np.linalg.inv(result.cam_to_world)
            if self.in_odom is None:
                self.in_odom = moved(next(p for p in result.people if p.joints_world is not None), odom_from_world)
            result.people = [moved(self.expected(t), np.linalg.inv(odom_from_world))]
            return result

        engine.step = step
        self.restore = lambda: vars(engine).pop("step")

    def expected(self, t: float):
        """The person at ``t``, in odom."""
        return moved(self.in_odom, translation(self.velocity * (t - self.t0)))

    def send(self, t: float, with_tf: bool = True):
        stamp = stamp_of(t)
        if with_tf:
            self.tf.publish(TFMessage(transforms=[conversions.transform_msg(odom_from_camera(t), ODOM, CAMERA, stamp)]))
        return self.rig.send(image_msg(self.rig.assets.frames[0], stamp, CAMERA), wait=with_tf)


@pytest.fixture(scope="module")
def rig():
    require_modules("tf2_ros")  # here, not at import: a module-level skip breaks launch_testing's collection
    rig = Rig(output_frame=ODOM, tf_mode="none")
    yield rig
    rig.close()


def pelvis_and_velocity(humans):
    (person,) = [h for h in humans.humans if h.track_state in (Human.TRACK_NEW, Human.TRACK_TRACKED)]
    p, v = person.pelvis.position, person.velocity
    return np.array([p.x, p.y, p.z]), np.array([v.x, v.y, v.z]), person


@pytest.mark.parametrize("velocity", [(0.0, 0.0, 0.0), (0.8, -0.6, 0.0)], ids=["static", "walking"])
def test_velocity_is_estimated_in_the_output_frame(rig, velocity):
    rig.reset()
    t0 = stamp_key(rig.next_stamp()) * 1e-9
    script = ScriptedPerson(rig, t0, velocity)
    try:
        start = None
        for k in range(4):
            t = t0 + 0.25 * k
            humans = script.send(t)
            assert humans.header.frame_id == ODOM and humans.camera_frame_id == CAMERA
            np.testing.assert_allclose(pose_matrix(humans.camera_pose), odom_from_camera(t), atol=1e-6)
            pelvis, v, person = pelvis_and_velocity(humans)
            start = pelvis if start is None else start
            np.testing.assert_allclose(pelvis, start + np.asarray(velocity) * (t - t0), atol=1e-4)
            expected = script.expected(t)
            np.testing.assert_allclose(pelvis, expected.joints_world[0], atol=1e-4)
            np.testing.assert_allclose(person.transl, expected.transl_world, atol=1e-4)
            np.testing.assert_allclose(pose_matrix(person.pelvis)[:3, :3], expected.pelvis_rotation_world @ SMPLX_FROM_ROS_BODY,
                                       atol=1e-4)
            root = cv2.Rodrigues(np.asarray(person.full_pose[:3], dtype=np.float64))[0]
            np.testing.assert_allclose(root, cv2.Rodrigues(expected.full_pose_world[0])[0], atol=1e-4)
            if k == 0:
                assert np.isnan(v).all()
            else:  # the camera moves at 1 m/s and turns: none of that is in the person's velocity
                np.testing.assert_allclose(v, velocity, atol=1e-3)
                assert 0 < person.velocity_std < 1.0
    finally:
        script.restore()


def test_the_world_is_fixed_in_odom_and_read_back_through_tf2(rig):
    import tf2_ros

    buffer = tf2_ros.Buffer(node=rig.ros.probe)
    listener = tf2_ros.TransformListener(buffer, rig.ros.probe, spin_thread=False)
    rig.reset()
    t0 = stamp_key(rig.next_stamp()) * 1e-9
    script = ScriptedPerson(rig, t0, (0.0, 0.0, 0.0))
    try:
        first = script.send(t0)
        assert first.reset
        script.send(t0 + 0.25)
        # The first camera is the world's origin, so odom <- world is odom <- camera at t0
        # without the optical axes.
        expected = odom_from_camera(t0) @ np.linalg.inv(ROS_FROM_OPTICAL)
        assert wait_until(lambda: buffer.can_transform(ODOM, "world", Time()), 10.0)
        anchor: TransformStamped = buffer.lookup_transform(ODOM, "world", Time())
        np.testing.assert_allclose(transform_matrix(anchor.transform), expected, atol=1e-5)
        # tf2 keeps static transforms without a stamp (a lookup says 0); the message has the image's.
        static = rig.ros.collect(TFMessage, "/tf_static", LATCHED).wait_for()[-1]
        assert [(t.header.frame_id, t.child_frame_id, stamp_key(t.header.stamp)) for t in static.transforms] == [
            (ODOM, "world", stamp_key(first.header.stamp))]
        # The map is published in the world frame, which tf2 now places in odom.
        cloud = rig.out["map"].wait_for(lambda msgs: bool(msgs), STEP_TIMEOUT)[-1]
        assert cloud.header.frame_id == "world"
        assert buffer.can_transform(ODOM, cloud.header.frame_id, Time())
    finally:
        script.restore()
        listener.unregister()


def test_an_image_without_the_transform_drops_its_people_and_is_counted(rig):
    rig.reset()
    t0 = stamp_key(rig.next_stamp()) * 1e-9
    script = ScriptedPerson(rig, t0, (0.0, 0.0, 0.0))
    try:
        script.send(t0)
        before = rig.counter(MISSING)
        late = t0 + 5.0  # beyond the last odometry: tf2 cannot extrapolate
        script.send(late, with_tf=False)
        assert wait_until(lambda: rig.counter(MISSING) == before + 1, STEP_TIMEOUT)
        assert not [m for m in rig.out["humans"].messages if stamp_key(m.header.stamp) == stamp_key(stamp_of(late))]
        assert rig.out["path"].wait_stamp(stamp_of(late)) is not None  # the rest of the image still goes out
        humans = script.send(late + 0.25)  # and the next image with its transform has its people
        pelvis, _, _ = pelvis_and_velocity(humans)
        assert np.isfinite(pelvis).all()
    finally:
        script.restore()


def test_output_frame_needs_tf_mode_none():
    settings = settings_for(tiny_assets().parameters(output_frame=ODOM))
    problems = parameters.check_settings(settings)
    assert problems and all("set tf_mode to 'none'" in p for p in problems)
    assert parameters.check_settings(settings_for(tiny_assets().parameters(output_frame=ODOM, tf_mode="none"))) == []

"""The camera transform as tf2 itself sees it: the node (tiny random model, in this process)
publishes /tf, a real ``tf2_ros.Buffer`` + ``TransformListener`` (geometry2) receives it, and
in each ``tf_mode`` the buffer holds exactly the documented edge, at the image's stamp, with
the camera pose the node reports in ``HumanArray.camera_pose``."""

import numpy as np
import pytest
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.time import Time
from ros_helpers import RosHarness, image_msg, stamp_key, tiny_assets, wait_until
from sensor_msgs.msg import Image
from tf_helpers import TfListener, rigid_from  # without tf2, test/conftest.py skips this module

from h3r_ros.msg import Human, HumanArray
from h3r_ros.ros.node import Human3RNode

WORLD = "world"
CAMERA = "camera_optical"  # the images' frame_id
STEP_TIMEOUT = 120.0  # s; the CPU is shared with other test processes


class Rig:
    def __init__(self):
        self.assets = tiny_assets()
        self.ros = RosHarness()
        overrides = [Parameter(k, value=v) for k, v in self.assets.parameters(world_frame=WORLD).items()]
        self.node = self.ros.add_node(Human3RNode(context=self.ros.context, parameter_overrides=overrides))
        success = TransitionCallbackReturn.SUCCESS
        assert self.node.trigger_configure() == success and self.node.trigger_activate() == success
        self.images = self.ros.probe.create_publisher(Image, "image", 10)
        self.humans = self.ros.collect(HumanArray, "humans")
        self.frame = 0

    def send(self):
        """One image stamped now; the HumanArray of it."""
        stamp = self.ros.probe.get_clock().now().to_msg()
        self.images.publish(image_msg(self.assets.frames[self.frame % len(self.assets.frames)], stamp, CAMERA))
        self.frame += 1
        return self.humans.wait_stamp(stamp, STEP_TIMEOUT)

    def listen(self, tf_mode: str) -> TfListener:
        """Switch tf_mode (a live parameter), then a fresh tf2 buffer that hears the node."""
        (result,) = self.node.set_parameters([Parameter("tf_mode", value=tf_mode)])
        assert result.successful, result.reason
        tf = TfListener(self.ros.probe)
        assert wait_until(lambda: tf.matched() and self.images.get_subscription_count() > 0
                          and self.humans.matched(), 30.0)
        return tf


@pytest.fixture(scope="module")
def rig():
    rig = Rig()
    yield rig
    rig.ros.close()


def camera_in_world(humans) -> np.ndarray:
    pose = humans.camera_pose
    return rigid_from(pose.orientation, pose.position)


@pytest.mark.parametrize("tf_mode, parent, child", [
    ("world_to_camera", WORLD, CAMERA),
    ("camera_to_world", CAMERA, WORLD),
])
def test_tf2_gives_the_camera_pose_at_the_image_stamp(rig, tf_mode, parent, child):
    tf = rig.listen(tf_mode)
    try:
        humans = rig.send()
        assert (humans.header.frame_id, humans.camera_frame_id) == (WORLD, CAMERA)
        published = tf.lookup(parent, child, humans.header.stamp)
        assert tf.parents() == {child: parent}
        assert (published.header.frame_id, published.child_frame_id) == (parent, child)
        assert stamp_key(published.header.stamp) == stamp_key(humans.header.stamp)
        pose = camera_in_world(humans)
        assert not np.allclose(pose, np.linalg.inv(pose), atol=1e-3), "a pose equal to its inverse tells nothing"
        expected = pose if tf_mode == "world_to_camera" else np.linalg.inv(pose)
        np.testing.assert_allclose(rigid_from(published.transform.rotation, published.transform.translation),
                                   expected, atol=1e-6)
        # Either way round, tf2 answers "where is the camera in the world" with the reported pose.
        looked_up = tf.lookup(WORLD, CAMERA, humans.header.stamp).transform
        np.testing.assert_allclose(rigid_from(looked_up.rotation, looked_up.translation), pose, atol=1e-6)
    finally:
        tf.close()


def test_tf_mode_none_gives_tf2_nothing(rig):
    tf = rig.listen("none")
    try:
        # TF goes out before the HumanArray: after two frames' arrays a stray transform has arrived.
        stamps = [rig.send().header.stamp for _ in range(2)]
        assert tf.parents() == {}, tf.buffer.all_frames_as_yaml()
        assert not tf.buffer.can_transform(WORLD, CAMERA, Time.from_msg(stamps[0]))
    finally:
        tf.close()
        rig.node.set_parameters([Parameter("tf_mode", value="world_to_camera")])


def test_tf2_gives_each_person_at_their_pelvis(rig):
    """Per-body frames (REP-155) below the camera: through tf2, world <- body_<id> at the
    image stamp is Human.pelvis of that image."""
    (result,) = rig.node.set_parameters([Parameter("publish_body_tf", value=True)])
    assert result.successful
    tf = rig.listen("world_to_camera")
    try:
        humans = next((h for h in (rig.send() for _ in range(4)) if h.humans), None)
        assert humans is not None, "the calibrated tiny model should detect people"
        seen = [h for h in humans.humans if h.track_state != Human.TRACK_LOST]
        for person in seen:
            frame = f"body_{person.track_id}"
            body = tf.lookup(WORLD, frame, humans.header.stamp).transform
            pelvis = rigid_from(person.pelvis.orientation, person.pelvis.position)
            np.testing.assert_allclose(rigid_from(body.rotation, body.translation), pelvis, atol=1e-5)
            assert tf.parents()[frame] == CAMERA
    finally:
        tf.close()
        rig.node.set_parameters([Parameter("publish_body_tf", value=False)])

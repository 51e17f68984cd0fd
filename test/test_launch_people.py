"""People in the robot's frame, as a user runs it: ``ros2 launch h3r_ros human3r.launch.py
output_frame:=odom tf_mode:=none publish_hri_bodies:=true publish_body_tf:=true`` in a fresh
bash, the robot's odometry (odom -> camera) published by the test at every image stamp, and
every output read back through real rclpy and a real tf2 buffer:

- humans are in odom, with the robot's camera pose, and the world is anchored in odom;
- one pose per person: Human.pelvis, the REP-155 position and the body's TF frame (looked up
  through tf2 across odom -> camera -> body) agree, and each person has one frame;
- velocity is unknown (NaN, with NaN std) on a track's first image and nothing is published
  on its REP-155 velocity topic then.
"""

import math
import shlex

import numpy as np
import pytest
import yaml
from geometry_msgs.msg import PointStamped
from ros_helpers import RosHarness, image_msg, stamp_key, stamp_of, tiny_assets, wait_until
from ros_tools import LAUNCH_TOOLS, require_modules
from sensor_msgs.msg import Image
from test_first_contact import ACTIVATE, STEP_TIMEOUT, Shell, user_env, wait_active
from test_node_topics import CAMERA, pose_matrix
from test_output_frame import ODOM, odom_from_camera

from h3r_ros.msg import Human, HumanArray
from h3r_ros.ros import conversions

NAMESPACE = "launch_people"  # a name no other test's node has


@pytest.fixture(scope="module")
def ros2_cli():
    require_modules(*LAUNCH_TOOLS, "tf2_ros")  # here, not at import (see test_first_contact)


@pytest.fixture(scope="module")
def launched(ros2_cli, tmp_path_factory):
    """The launched node, active, and a harness to talk to it."""
    tmp = tmp_path_factory.mktemp("launch_people")
    params = tmp / "params.yaml"
    params.write_text(yaml.safe_dump({"/**": {"ros__parameters": tiny_assets().parameters(track_timeout=60.0)}}))
    arguments = (f"namespace:={NAMESPACE} params_file:={shlex.quote(str(params))} output_frame:={ODOM} "
                 "tf_mode:=none publish_hri_bodies:=true publish_body_tf:=true output_frame_timeout:=1.0")
    env = user_env(tmp)
    shell = Shell(f"{ACTIVATE}\nexec ros2 launch h3r_ros human3r.launch.py {arguments}", env, tmp / "launch.log")
    ros = RosHarness()
    try:
        wait_active(ACTIVATE, env, shell, f"/{NAMESPACE}/human3r_node")
        yield ros
    finally:
        ros.close()
        assert shell.stop() == 0, shell.text()


def test_people_in_odom_one_pose_each_and_velocity_unknown_at_first(launched):
    import tf2_ros
    from rclpy.duration import Duration
    from rclpy.time import Time
    from tf2_msgs.msg import TFMessage

    from h3r_ros.ros.outputs import TF_QOS

    ros = launched
    probe = ros.probe
    humans = ros.collect(HumanArray, f"/{NAMESPACE}/humans")
    images = probe.create_publisher(Image, f"/{NAMESPACE}/image", 1)
    odometry = probe.create_publisher(TFMessage, "/tf", TF_QOS)
    buffer = tf2_ros.Buffer(node=probe)
    listener = tf2_ros.TransformListener(buffer, probe, spin_thread=False)
    try:
        assert wait_until(lambda: images.get_subscription_count() > 0 and humans.matched(), 30.0)
        t0 = stamp_key(probe.get_clock().now().to_msg()) * 1e-9
        first = None
        while first is None and stamp_key(probe.get_clock().now().to_msg()) * 1e-9 < t0 + STEP_TIMEOUT:
            t = stamp_key(probe.get_clock().now().to_msg()) * 1e-9  # resend until matched both ways
            odometry.publish(TFMessage(transforms=[conversions.transform_msg(odom_from_camera(t - t0), ODOM, CAMERA,
                                                                             stamp_of(t))]))
            images.publish(image_msg(tiny_assets().frames[0], stamp_of(t)))
            if wait_until(lambda: bool(humans.messages), 2.0):
                first = humans.messages[0]
        assert first is not None, "no humans from the launched node"
        t = stamp_key(first.header.stamp) * 1e-9
        assert first.header.frame_id == ODOM and first.camera_frame_id == CAMERA
        np.testing.assert_allclose(pose_matrix(first.camera_pose), odom_from_camera(t - t0), atol=1e-5)
        seen = [h for h in first.humans if h.track_state == Human.TRACK_NEW]
        assert seen, "the calibrated tiny model should detect people"
        for h in seen:  # a first sighting: velocity unknown
            assert np.isnan([h.velocity.x, h.velocity.y, h.velocity.z]).all() and math.isnan(h.velocity_std)

        # The world is anchored in odom, and each body's frame (camera -> body_b<id>, in
        # tf2 below the robot's odom -> camera) is Human.pelvis.
        stamp = Time.from_msg(first.header.stamp)
        assert buffer.can_transform(ODOM, "world", Time(), Duration(seconds=10.0))
        for h in seen:
            frame = f"body_b{h.track_id}"
            assert buffer.can_transform(ODOM, frame, stamp, Duration(seconds=10.0)), buffer.all_frames_as_yaml()
            body = buffer.lookup_transform(ODOM, frame, stamp)
            np.testing.assert_allclose(conversions.transform_matrix(body.transform), pose_matrix(h.pelvis), atol=1e-5)
        frames = yaml.safe_load(buffer.all_frames_as_yaml())
        assert not [f for f in frames if f.startswith("body_") and not f.startswith("body_b")]  # one frame each

        # The REP-155 position of the next image is that image's Human.pelvis.
        body = seen[0]
        position = ros.collect(PointStamped, f"/humans/bodies/b{body.track_id}/position")
        assert wait_until(position.matched, 30.0)
        t = stamp_key(probe.get_clock().now().to_msg()) * 1e-9
        odometry.publish(TFMessage(transforms=[conversions.transform_msg(odom_from_camera(t - t0), ODOM, CAMERA,
                                                                         stamp_of(t))]))
        images.publish(image_msg(tiny_assets().frames[0], stamp_of(t)))
        second = humans.wait_stamp(stamp_of(t), STEP_TIMEOUT)
        (again,) = [h for h in second.humans if h.track_id == body.track_id]
        point = position.wait_stamp(stamp_of(t))
        assert point.header.frame_id == ODOM
        p = again.pelvis.position
        assert (point.point.x, point.point.y, point.point.z) == pytest.approx((p.x, p.y, p.z), abs=1e-6)
    finally:
        listener.unregister()
        probe.destroy_publisher(images)
        probe.destroy_publisher(odometry)

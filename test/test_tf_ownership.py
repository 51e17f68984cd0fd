"""The node never gives a frame of the robot's TF tree a second parent, nor closes a loop.

A robot's URDF already holds the camera (``base_link -> camera_link ->
camera_color_optical_frame``, static, as robot_state_publisher sends it). The node runs with
its defaults (camera frame from the image header, world_frame ``world``) in each ``tf_mode``;
every transform on /tf and /tf_static is collected raw, and a real ``tf2_ros.Buffer`` reads
the tree back: every frame has one parent, the robot's transforms are unchanged, and the
node's world is reachable from the camera.
"""

import math

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from builtin_interfaces.msg import Time
from geometry_msgs.msg import TransformStamped
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from ros_helpers import RosHarness, image_msg, rigid, tiny_assets, wait_until
from sensor_msgs.msg import Image
from tf2_msgs.msg import TFMessage
from tf_helpers import TfListener, rigid_from  # without tf2, test/conftest.py skips this module

from h3r_ros.msg import HumanArray
from h3r_ros.ros import conversions
from h3r_ros.ros.node import Human3RNode
from h3r_ros.ros.outputs import TF_QOS
from h3r_ros.ros.tf_tree import plan_tf

CAMERA = "camera_color_optical_frame"
ROS_FROM_OPTICAL = np.array([[0.0, 0.0, 1.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0, 0, 1]])
STEP_TIMEOUT = 120.0
LATCHED_DEPTH = 100


def _rotation_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


# The robot's URDF: a camera 0.3 m ahead of and 1.1 m above the base, turned 20 degrees left.
BASE_FROM_LINK = rigid(_rotation_z(math.radians(20.0)), [0.3, 0.0, 1.1])
LINK_FROM_OPTICAL = rigid(ROS_FROM_OPTICAL[:3, :3], [0.0, 0.02, 0.0])
URDF = [("base_link", "camera_link", BASE_FROM_LINK), ("camera_link", CAMERA, LINK_FROM_OPTICAL)]


def _transform(parent: str, child: str, matrix: np.ndarray) -> TransformStamped:
    return conversions.transform_msg(matrix, parent, child, Time())


class Edges:
    """Every (parent, child) sent on /tf and /tf_static, as received."""

    def __init__(self, ros) -> None:
        from rclpy.qos import DurabilityPolicy, QoSProfile

        latched = QoSProfile(depth=LATCHED_DEPTH, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.tf = ros.collect(TFMessage, "/tf", TF_QOS)
        self.static = ros.collect(TFMessage, "/tf_static", latched)

    def parents(self) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for msg in self.tf.messages + self.static.messages:
            for t in msg.transforms:
                found.setdefault(t.child_frame_id, set()).add(t.header.frame_id)
        return found


@pytest.fixture(scope="module")
def robot():
    """A harness whose probe node publishes the robot's URDF on /tf_static (latched)."""
    from tf2_ros import StaticTransformBroadcaster

    ros = RosHarness()
    broadcaster = StaticTransformBroadcaster(ros.probe)
    broadcaster.sendTransform([_transform(*edge) for edge in URDF])
    yield ros
    ros.close()


def _diagnostics_tf(ros, node, predicate, timeout: float = 30.0) -> str:
    arrays = ros.collect(DiagnosticArray, "/diagnostics")
    name = f"{node.get_fully_qualified_name()}: inference"

    def value():
        for msg in reversed(arrays.messages):
            for status in msg.status:
                if status.name == name:
                    return {kv.key: kv.value for kv in status.values}.get("TF", "")
        return ""

    assert wait_until(lambda: predicate(value()), timeout), value()
    ros.probe.destroy_subscription(arrays.subscription)
    return value()


@pytest.mark.parametrize("tf_mode", ["world_to_camera", "camera_to_world", "none"])
def test_defaults_on_a_robot_whose_urdf_holds_the_camera(robot, tf_mode):
    edges = Edges(robot)
    tf = TfListener(robot.probe)
    params = tiny_assets().parameters(tf_mode=tf_mode, tf_listen_time=1.0)
    overrides = [Parameter(k, value=v) for k, v in params.items()]
    node = robot.add_node(Human3RNode(context=robot.context, parameter_overrides=overrides))
    try:
        success = TransitionCallbackReturn.SUCCESS
        assert node.trigger_configure() == success and node.trigger_activate() == success
        images = robot.probe.create_publisher(Image, "image", 10)
        humans = robot.collect(HumanArray, "humans")
        assert wait_until(lambda: images.get_subscription_count() > 0 and humans.matched(), 30.0)
        sent = []
        for k in range(3):
            stamp = robot.probe.get_clock().now().to_msg()
            images.publish(image_msg(tiny_assets().frames[k], stamp, CAMERA))
            sent.append(humans.wait_stamp(stamp, STEP_TIMEOUT))
        last = sent[-1]
        assert (last.header.frame_id, last.camera_frame_id) == ("world", CAMERA)

        # Every frame has exactly one parent, and the robot's own edges are the URDF's.
        found = edges.parents()
        assert {child: parents for child, parents in found.items() if len(parents) > 1} == {}
        assert found[CAMERA] == {"camera_link"} and found["camera_link"] == {"base_link"}
        assert "base_link" not in found
        np.testing.assert_allclose(rigid_from(*_parts(tf.lookup("base_link", CAMERA, last.header.stamp))),
                                   BASE_FROM_LINK @ LINK_FROM_OPTICAL, atol=1e-9)
        if tf_mode == "none":
            assert "world" not in found
            return
        # The node's world is reachable from the robot's tree, where the model puts the camera.
        world_from_camera = rigid_from(*_parts(tf.lookup("world", CAMERA, last.header.stamp)))
        if tf_mode == "world_to_camera":
            # Anchored under the root at the first image, whose camera is the world's origin
            # (ROS axes): base_link <- world is the URDF's camera without the optical axes.
            assert found["world"] == {"base_link"}
            base_from_world = rigid_from(*_parts(tf.lookup("base_link", "world", last.header.stamp)))
            np.testing.assert_allclose(base_from_world, BASE_FROM_LINK @ LINK_FROM_OPTICAL
                                       @ np.linalg.inv(ROS_FROM_OPTICAL), atol=1e-6)
            text = _diagnostics_tf(robot, node, lambda v: "anchored under base_link" in v)
            assert "output_frame:=base_link tf_mode:=none" in text and "'camera_link'" in text
        else:
            assert found["world"] == {CAMERA}
            np.testing.assert_allclose(world_from_camera, _pose(last), atol=1e-6)
            _diagnostics_tf(robot, node, lambda v: v == f"publishing {CAMERA} -> world")
        robot.probe.destroy_publisher(images)
        robot.probe.destroy_subscription(humans.subscription)
    finally:
        node.trigger_shutdown()
        robot.remove_node(node)
        tf.close()
        for collector in (edges.tf, edges.static):
            robot.probe.destroy_subscription(collector.subscription)


def _parts(stamped):
    return stamped.transform.rotation, stamped.transform.translation


def _pose(humans) -> np.ndarray:
    pose = humans.camera_pose
    return rigid_from(pose.orientation, pose.position)


# ------------------------------------------------------------------ the decision itself

URDF_PARENTS = {"camera_link": "base_link", CAMERA: "camera_link", "base_link": "odom"}


def test_a_standalone_camera_gets_the_tf_mode_edge():
    assert plan_tf("world_to_camera", "world", CAMERA, {}).edge == ("world", CAMERA)
    assert plan_tf("camera_to_world", "world", CAMERA, {}).edge == (CAMERA, "world")
    assert plan_tf("none", "world", CAMERA, URDF_PARENTS).edge is None


def test_a_camera_with_a_parent_gets_the_world_anchored_under_its_root():
    plan = plan_tf("world_to_camera", "world", CAMERA, URDF_PARENTS)
    assert plan.edge is None and plan.anchor == "odom"
    assert "output_frame:=odom tf_mode:=none" in plan.note
    # The world may hang below the camera: the camera keeps its one parent.
    assert plan_tf("camera_to_world", "world", CAMERA, URDF_PARENTS).edge == (CAMERA, "world")


@pytest.mark.parametrize("tf_mode", ["world_to_camera", "camera_to_world"])
def test_a_world_frame_the_robot_already_uses_is_never_published(tf_mode):
    # A simulator whose root is 'world': camera -> world would close a loop, world -> camera
    # or an anchor would give the camera or 'world' a second parent.
    parents = {"base_link": "world", "camera_link": "base_link", CAMERA: "camera_link"}
    plan = plan_tf(tf_mode, "world", CAMERA, parents)
    assert plan.edge is None and plan.anchor == ""
    assert "world_frame:=human3r_world" in plan.note and "a root of it" in plan.note
    renamed = plan_tf(tf_mode, "human3r_world", CAMERA, parents)
    if tf_mode == "camera_to_world":
        assert renamed.edge == (CAMERA, "human3r_world")
    else:
        assert renamed.edge is None and renamed.anchor == "world"

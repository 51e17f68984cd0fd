"""The public messages on the wire: through rclpy between nodes, and through an MCAP
rosbag2 decoded by rosbags' own (independent) CDR implementation."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy
from geometry_msgs.msg import Point, Point32, Pose, TransformStamped
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.serialization import serialize_message
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from ros_tools import require_modules
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from h3r_ros.msg import Human, HumanArray

REPO = Path(__file__).resolve().parent.parent
SHARE = Path(sys.prefix) / "share"


def make_humans_msg(n_people: int = 2, n_vertices: int = 0, seed: int = 0) -> HumanArray:
    rng = np.random.default_rng(seed)
    msg = HumanArray()
    msg.header.stamp.sec = 1_700_000_000
    msg.header.stamp.nanosec = 123_456_789
    msg.header.frame_id = "world"
    msg.camera_name = "front"
    msg.camera_frame_id = "camera_optical_frame"
    msg.camera_pose.position.x, msg.camera_pose.position.y, msg.camera_pose.position.z = rng.normal(size=3).tolist()
    msg.camera_pose.orientation.w = 1.0
    msg.reset = True
    for k in range(n_people):
        h = Human()
        h.track_id = 7 + k
        h.source_cameras, h.source_track_ids = ["front", "rear"][: k + 1], [3 + k, 40 + k][: k + 1]
        h.score = float(rng.uniform(0.3, 1.0))
        h.pelvis.position = Point(x=1.0 + k, y=-0.5, z=0.9)
        h.pelvis.orientation.z, h.pelvis.orientation.w = 0.6, 0.8
        h.head = Point(x=1.0 + k, y=-0.5, z=1.6)
        h.joints = [Point(x=x, y=y, z=z) for x, y, z in rng.normal(size=(Human.NUM_JOINTS, 3)).tolist()]
        h.betas = rng.normal(size=10).astype(np.float32)
        h.expression = rng.normal(size=10).astype(np.float32)
        h.full_pose = rng.normal(scale=0.3, size=165).astype(np.float32)
        h.transl = rng.normal(size=3).astype(np.float32)
        h.vertices = [Point32(x=x, y=y, z=z) for x, y, z in rng.normal(size=(n_vertices, 3)).tolist()]
        msg.humans.append(h)
    return msg


def assert_humans_equal(a, b):
    """Field-by-field equality of two HumanArray-like objects (rclpy or rosbags)."""
    assert (a.header.stamp.sec, a.header.stamp.nanosec) == (b.header.stamp.sec, b.header.stamp.nanosec)
    assert a.header.frame_id == b.header.frame_id
    assert (a.camera_name, a.camera_frame_id) == (b.camera_name, b.camera_frame_id)
    assert a.reset == b.reset
    assert a.camera_pose.position.x == b.camera_pose.position.x
    assert len(a.humans) == len(b.humans)
    for ha, hb in zip(a.humans, b.humans):
        assert ha.track_id == hb.track_id
        assert list(ha.source_cameras) == list(hb.source_cameras)
        assert list(ha.source_track_ids) == list(hb.source_track_ids)
        assert ha.score == pytest.approx(hb.score)
        assert ha.pelvis.orientation.z == pytest.approx(hb.pelvis.orientation.z)
        assert ha.head.z == hb.head.z
        assert [(p.x, p.y, p.z) for p in ha.joints] == [(p.x, p.y, p.z) for p in hb.joints]
        for field in ("betas", "expression", "full_pose", "transl"):
            np.testing.assert_array_equal(np.asarray(getattr(ha, field)), np.asarray(getattr(hb, field)))
        np.testing.assert_allclose(  # Point32 is float32 on the wire
            [(p.x, p.y, p.z) for p in ha.vertices], [(p.x, p.y, p.z) for p in hb.vertices], rtol=1e-6
        )


def test_message_definition_constants_and_sizes():
    h = Human()
    assert Human.NUM_JOINTS == 55
    assert (Human.JOINT_PELVIS, Human.JOINT_HEAD, Human.JOINT_JAW, Human.JOINT_RIGHT_THUMB3) == (0, 15, 22, 54)
    assert len(h.betas) == 10 and len(h.expression) == 10
    assert len(h.full_pose) == 3 * Human.NUM_JOINTS and len(h.transl) == 3
    assert list(h.vertices) == []  # mesh vertices are opt-in


@pytest.fixture
def ros_context():
    context = rclpy.Context()
    rclpy.init(context=context)
    yield context
    rclpy.shutdown(context=context)


def spin_until(executor, predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.05)
    return predicate()


def test_humans_message_between_nodes(ros_context):
    pub_node = rclpy.create_node("h3r_test_publisher", context=ros_context)
    sub_node = rclpy.create_node("h3r_test_subscriber", context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(pub_node)
    executor.add_node(sub_node)
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    received = []
    sub_node.create_subscription(HumanArray, "humans", received.append, qos)
    pub = pub_node.create_publisher(HumanArray, "humans", qos)
    try:
        assert spin_until(executor, lambda: pub.get_subscription_count() > 0)
        sent = make_humans_msg(n_people=3, n_vertices=10475)
        pub.publish(sent)
        assert spin_until(executor, lambda: len(received) == 1)
        assert_humans_equal(received[0], sent)
        assert len(received[0].humans[0].vertices) == 10475
    finally:
        executor.shutdown()
        pub_node.destroy_node()
        sub_node.destroy_node()


PUBLISHER_SCRIPT = """
import sys, time, rclpy
sys.path.insert(0, {test_dir!r})
from test_messages import make_humans_msg
from h3r_ros.msg import HumanArray
rclpy.init()
node = rclpy.create_node("h3r_remote_publisher")
pub = node.create_publisher(HumanArray, "humans_remote", 10)
deadline = time.monotonic() + 20
while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
    time.sleep(0.02)
msg = make_humans_msg(n_people=2, seed=5)
for _ in range(50):  # until the subscriber has it (it exits the test early)
    pub.publish(msg)
    time.sleep(0.1)
"""


def test_humans_message_across_processes(ros_context, tmp_path):
    """A second process publishes over loopback DDS (the suite's environment is inherited)."""
    node = rclpy.create_node("h3r_test_listener", context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    received = []
    node.create_subscription(HumanArray, "humans_remote", received.append, 10)
    script = PUBLISHER_SCRIPT.format(test_dir=str(Path(__file__).parent))
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    try:
        assert spin_until(executor, lambda: len(received) >= 1, timeout=30.0), "no message from the other process"
        assert_humans_equal(received[0], make_humans_msg(n_people=2, seed=5))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        executor.shutdown()
        node.destroy_node()


def package_typestore():
    """rosbags' Jazzy type store plus this package's messages, registered from the .msg text."""
    store = get_typestore(Stores.ROS2_JAZZY)
    types = {}
    for name in ("Human", "HumanArray"):
        types.update(get_types_from_msg((REPO / "msg" / f"{name}.msg").read_text(), f"h3r_ros/msg/{name}"))
    store.register(types)
    return store


def generated_type_hash(package: str, name: str) -> str:
    description = json.loads((SHARE / package / "msg" / f"{name}.json").read_text())
    return description["type_hashes"][0]["hash_string"]


def test_type_hashes_match_an_independent_implementation():
    """rosidl's hashes (what DDS matches on) equal rosbags' for the same definitions."""
    store = package_typestore()
    for name in ("Human", "HumanArray"):
        assert generated_type_hash("h3r_ros", name) == store.hash_rihs01(f"h3r_ros/msg/{name}")


def test_tf2_msgs_is_the_real_package_with_the_official_hash():
    """The environment's tf2_msgs is geometry2's (its services and actions too, which no
    stand-in would carry), and /tf's type hash is the official Jazzy one."""
    require_modules("tf2_msgs.msg")
    from tf2_msgs.action import LookupTransform
    from tf2_msgs.srv import FrameGraph

    assert LookupTransform.Goal().target_frame == "" and hasattr(FrameGraph.Response(), "frame_yaml")
    store = get_typestore(Stores.ROS2_JAZZY)
    assert generated_type_hash("tf2_msgs", "TFMessage") == store.hash_rihs01("tf2_msgs/msg/TFMessage")


def test_mcap_bag_roundtrip_with_rosbags(tmp_path):
    require_modules("tf2_msgs.msg")
    from tf2_msgs.msg import TFMessage

    store = package_typestore()
    humans = [make_humans_msg(n_people=k, n_vertices=5 * k, seed=k) for k in range(3)]
    tf = TFMessage(transforms=[TransformStamped()])
    tf.transforms[0].header.frame_id = "world"
    tf.transforms[0].child_frame_id = "camera_optical_frame"
    tf.transforms[0].transform.translation.x = 1.25
    tf.transforms[0].transform.rotation.w = 1.0

    bag = tmp_path / "bag"
    with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        c_humans = writer.add_connection("/humans", "h3r_ros/msg/HumanArray", typestore=store)
        c_tf = writer.add_connection("/tf", "tf2_msgs/msg/TFMessage", typestore=store)
        for k, msg in enumerate(humans):
            writer.write(c_humans, 1000 + k, serialize_message(msg))
        writer.write(c_tf, 2000, serialize_message(tf))

    assert any(p.suffix == ".mcap" for p in bag.iterdir())
    decoded = {"/humans": [], "/tf": []}
    with Reader(bag) as reader:
        for connection, _, raw in reader.messages():
            decoded[connection.topic].append(store.deserialize_cdr(raw, connection.msgtype))
    assert len(decoded["/humans"]) == 3
    for sent, got in zip(humans, decoded["/humans"]):
        assert_humans_equal(got, sent)
    (got_tf,) = decoded["/tf"]
    assert got_tf.transforms[0].child_frame_id == "camera_optical_frame"
    assert got_tf.transforms[0].transform.translation.x == 1.25
    # And the other direction: rosbags' encoding decodes in rclpy.
    from rclpy.serialization import deserialize_message

    back = deserialize_message(bytes(store.serialize_cdr(decoded["/humans"][2], "h3r_ros/msg/HumanArray")), HumanArray)
    assert_humans_equal(back, humans[2])

"""The REP-155 (ROS4HRI) body interface, for HRI stacks that consume bodies the ROS4HRI way.

Per processed image: ``/humans/bodies/tracked`` (hri_msgs/IdsList, the ids of the bodies seen
in it, empty when nobody is), and per body ``/humans/bodies/<id>/position``
(geometry_msgs/PointStamped: the model's pelvis in this image, the same point as
``Human.pelvis`` and the body's TF frame; its head without a body model) and
``/humans/bodies/<id>/velocity`` (geometry_msgs/TwistStamped, linear part: the track filter's
velocity, published only while it is known), in the frame of ``humans``, as ROS4HRI's
``hri_body_detect`` publishes them. Body ids are ``b<track_id>`` (REP-155 ids start with a
letter); each body's TF frame is ``body_<id>``. A body's topics go when its track ends.

hri_msgs is optional: without it the package runs and this interface refuses to start.
"""

from __future__ import annotations

import numpy as np
from geometry_msgs.msg import Point, PointStamped, TwistStamped, Vector3
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Header

try:
    from hri_msgs.msg import IdsList
except ImportError:  # hri_msgs is not part of every ROS installation
    IdsList = None

TRACKED_TOPIC = "/humans/bodies/tracked"
ID_PREFIX = "b"
FRAME_PREFIX = "body_" + ID_PREFIX  # frame name = FRAME_PREFIX + track id = "body_" + body id
_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)


class HriUnavailable(RuntimeError):
    pass


def body_id(track_id: int) -> str:
    return f"{ID_PREFIX}{int(track_id)}"


def body_frame(track_id: int) -> str:
    return f"{FRAME_PREFIX}{int(track_id)}"


class HriBodies:
    """Publishers of the REP-155 body topics on ``node``; call ``publish`` once per frame."""

    def __init__(self, node) -> None:
        if IdsList is None:
            raise HriUnavailable(
                "publish_hri_bodies needs the hri_msgs package (ROS4HRI), which is not installed: "
                "install ros-<distro>-hri-msgs or set publish_hri_bodies to false"
            )
        self._node = node
        self._tracked = node.create_publisher(IdsList, TRACKED_TOPIC, _QOS)
        self._bodies: dict[int, tuple] = {}

    def publish(self, header: Header, seen, ended) -> None:
        """``seen``: TrackInfo of the bodies in this image (payload: the Person); ``ended``:
        tracks that ended now. ``header``: the image stamp and the frame the positions are in."""
        for info in ended:
            publishers = self._bodies.pop(info.track_id, None)
            if publishers is not None:
                for publisher in publishers:
                    self._node.destroy_publisher(publisher)
        self._tracked.publish(IdsList(header=header, ids=[body_id(info.track_id) for info in seen]))
        for info in seen:
            position_pub, velocity_pub = self._publishers(info.track_id)
            p, v = info.payload.position_world, info.velocity
            position_pub.publish(PointStamped(header=header, point=Point(x=float(p[0]), y=float(p[1]), z=float(p[2]))))
            if np.isfinite(v).all():
                twist = TwistStamped(header=header)
                twist.twist.linear = Vector3(x=float(v[0]), y=float(v[1]), z=float(v[2]))
                velocity_pub.publish(twist)

    def _publishers(self, track_id: int) -> tuple:
        if track_id not in self._bodies:
            base = f"/humans/bodies/{body_id(track_id)}"
            self._bodies[track_id] = (
                self._node.create_publisher(PointStamped, f"{base}/position", _QOS),
                self._node.create_publisher(TwistStamped, f"{base}/velocity", _QOS),
            )
        return self._bodies[track_id]

    def close(self) -> None:
        for publishers in self._bodies.values():
            for publisher in publishers:
                self._node.destroy_publisher(publisher)
        self._bodies.clear()
        self._node.destroy_publisher(self._tracked)

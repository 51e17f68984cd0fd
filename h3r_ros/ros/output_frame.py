"""People in a frame of the robot's TF tree (parameter ``output_frame``), through tf2.

For each image the camera's pose in ``output_frame`` comes from the robot's TF tree at the
image stamp (``output_frame <- camera optical frame``), not from the model: people measured
in the camera are placed with the robot's own odometry, so a velocity estimated in a fixed
frame such as ``odom`` is free of the robot's motion. The model's world (clouds, map,
markers, camera path) is fixed in the tree once per world: at the first image after start
or reset whose transform is known, ``output_frame -> world_frame`` is published on
/tf_static (a static transform: the last one published holds until the next reset).
"""

from __future__ import annotations

import numpy as np
from rclpy.duration import Duration
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time

from h3r_ros.ros import conversions

try:
    from tf2_msgs.msg import TFMessage
except ImportError:  # no tf2 at all: OutputFrame refuses to start (tf2_ros is missing too)
    TFMessage = None

_STATIC_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


class OutputFrameUnavailable(RuntimeError):
    pass


class OutputFrame:
    def __init__(self, node, frame: str) -> None:
        try:
            import tf2_ros
        except ImportError as exc:
            raise OutputFrameUnavailable(
                f"output_frame {frame!r} needs tf2_ros, which is not installed: install ros-<distro>-tf2-ros "
                "or leave output_frame empty") from exc
        self.frame = frame
        self._node = node
        self._errors = tf2_ros.TransformException
        self._buffer = tf2_ros.Buffer(node=node)
        self._listener = tf2_ros.TransformListener(self._buffer, node, spin_thread=False)
        self._static = node.create_publisher(TFMessage, "/tf_static", _STATIC_QOS)
        self._anchored = False
        self.error = ""  # why the last lookup failed

    def reset(self) -> None:
        """A new world: anchor it again at its first image."""
        self._anchored = False

    def from_world(self, result, camera_frame: str, world_frame: str, stamp, timeout: float):
        """The rigid 4x4 taking this image's world-frame outputs to ``output_frame`` (the robot's
        ``output_frame <- camera`` at ``stamp`` after the model's ``camera <- world``); None when
        tf2 cannot give that transform within ``timeout`` s (the reason is in ``self.error``)."""
        try:
            msg = self._buffer.lookup_transform(self.frame, camera_frame, Time.from_msg(stamp),
                                                timeout=Duration(seconds=timeout))
        except self._errors as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            return None
        out_from_cam = conversions.transform_matrix(msg.transform)
        out_from_world = out_from_cam @ conversions.invert_transform(np.asarray(result.cam_to_world, np.float64))
        if not self._anchored:
            self._static.publish(TFMessage(transforms=[
                conversions.transform_msg(out_from_world, self.frame, world_frame, stamp)]))
            self._anchored = True
        return out_from_world

    def close(self) -> None:
        self._listener.unregister()
        self._node.destroy_publisher(self._static)

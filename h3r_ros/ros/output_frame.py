"""The model's world placed in a frame of the robot's TF tree, through tf2.

For ``output_frame`` (a parameter) the people of each image are placed there with the robot's
own ``output_frame <- camera optical frame`` at the image stamp, not with the model's camera
pose: people measured in the camera are placed with the robot's odometry, so a velocity
estimated in a fixed frame such as ``odom`` is free of the robot's motion. The same class
anchors the world when the robot's tree already holds the camera (tf_tree.plan_tf).

The model's world (clouds, map, markers, camera path) is fixed in the tree once per world: at
the first image after start or reset whose transform is known, ``frame -> world_frame`` is
published on /tf_static (a static transform: the last one published holds until the next
reset), unless the robot's tree already holds a frame named world_frame.
"""

from __future__ import annotations

import numpy as np
from rclpy.duration import Duration
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time

from h3r_ros.ros import conversions
from h3r_ros.ros.tf_tree import TfTree, anchor_problem

try:
    from tf2_msgs.msg import TFMessage
except ImportError:  # no tf2 at all: there is no TfTree either, and no OutputFrame
    TFMessage = None

_STATIC_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


class OutputFrameUnavailable(RuntimeError):
    pass


class OutputFrame:
    def __init__(self, node, tree: TfTree, frame: str) -> None:
        self.frame = frame
        self._node = node
        self._tree = tree
        self._static = node.create_publisher(TFMessage, "/tf_static", _STATIC_QOS)
        self.anchored = False
        self.error = ""  # why the last lookup failed

    def reset(self) -> None:
        """A new world: anchor it again at its first image."""
        self.anchored = False

    def from_world(self, result, camera_frame: str, world_frame: str, stamp, timeout: float):
        """The rigid 4x4 taking this image's world-frame outputs to ``frame`` (the robot's
        ``frame <- camera`` at ``stamp`` after the model's ``camera <- world``); None when
        tf2 cannot give that transform within ``timeout`` s (the reason is in ``self.error``)."""
        try:
            msg = self._tree.buffer.lookup_transform(self.frame, camera_frame, Time.from_msg(stamp),
                                                     timeout=Duration(seconds=timeout))
        except self._tree.errors as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            return None
        out_from_cam = conversions.transform_matrix(msg.transform)
        out_from_world = out_from_cam @ conversions.invert_transform(np.asarray(result.cam_to_world, np.float64))
        if not self.anchored:
            # Not where the tree already holds world_frame (Outputs says so).
            if not anchor_problem(world_frame, self.frame, self._tree.parents()):
                self._tree.publishing(self.frame, world_frame)
                self._static.publish(TFMessage(transforms=[
                    conversions.transform_msg(out_from_world, self.frame, world_frame, stamp)]))
            self.anchored = True
        return out_from_world

    def close(self) -> None:
        self._node.destroy_publisher(self._static)

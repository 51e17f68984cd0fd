"""A real tf2 listener for the tests: ``tf2_ros.Buffer`` fed by a ``TransformListener`` on a
test node (one that an executor spins, e.g. RosHarness.probe), and what it knows."""

from __future__ import annotations

import numpy as np
import yaml
from rclpy.duration import Duration
from rclpy.time import Time
from ros_helpers import matrix_from_quaternion, rigid
from tf2_ros import Buffer, TransformListener


def rigid_from(rotation, translation) -> np.ndarray:
    """4x4 of a geometry_msgs rotation (Quaternion) and translation (Vector3 or Point)."""
    r, t = rotation, translation
    return rigid(matrix_from_quaternion(r.x, r.y, r.z, r.w), [t.x, t.y, t.z])


class TfListener:
    """tf2's own buffer of everything published on /tf and /tf_static from now on."""

    def __init__(self, node) -> None:
        self.buffer = Buffer()
        self._listener = TransformListener(self.buffer, node)

    def matched(self) -> bool:
        """Whether a /tf publisher has been discovered (what is published before is missed)."""
        return self._listener.tf_sub.get_publisher_count() > 0

    def lookup(self, target: str, source: str, stamp, timeout: float = 10.0):
        """tf2's transform from ``source`` to ``target`` at ``stamp`` (builtin_interfaces Time),
        waiting at most ``timeout`` s for it to become available."""
        when = Time.from_msg(stamp)
        if not self.buffer.can_transform(target, source, when, Duration(seconds=timeout)):
            raise AssertionError(f"tf2 has no {source} -> {target} transform at {stamp.sec}.{stamp.nanosec:09d} "
                                 f"after {timeout} s; it knows: {self.buffer.all_frames_as_yaml()!r}")
        return self.buffer.lookup_transform(target, source, when)

    def parents(self) -> dict[str, str]:
        """frame -> parent frame, for every frame tf2 has received."""
        frames = yaml.safe_load(self.buffer.all_frames_as_yaml()) or {}
        return {frame: info["parent"] for frame, info in frames.items()}

    def close(self) -> None:
        self._listener.unregister()

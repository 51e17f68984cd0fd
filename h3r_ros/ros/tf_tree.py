"""The robot's TF tree as heard on /tf and /tf_static, and which transforms the node may add
to it without giving a frame a second parent or closing a loop.

``TfTree`` feeds one tf2 buffer (the node's lookups) and keeps, for every transform the node
did not publish itself, child -> parent. ``plan_tf`` decides from that what the node publishes:

- the tree does not hold the camera (a standalone camera): the ``tf_mode`` edge, as asked;
- ``world_to_camera`` and the camera already has a parent (a robot whose URDF holds it): not
  that edge, but the world anchored under the root of the camera's tree (``root -> world`` on
  /tf_static at the first image of each world, as ``output_frame`` does);
- ``camera_to_world`` hangs the world under the camera wherever the camera is;
- ``world_frame`` already names a frame of the tree: nothing at all (every edge to it would
  be a second parent or a loop), and the note says which setting fixes it.

Nothing is decided before the node has listened for ``listen_time`` s (counted from
configure): /tf_static is latched, so a robot's URDF arrives within that time.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Mapping

@dataclass(frozen=True)
class TfPlan:
    """What the node publishes for the camera and the world."""

    edge: tuple[str, str] | None = None  # (parent, child) of the per-image camera transform
    anchor: str = ""  # robot frame the world is anchored under (static, once per world)
    note: str = ""  # what was found in the tree and the setting that changes it

    def describe(self) -> str:
        if self.edge is not None:
            return f"publishing {self.edge[0]} -> {self.edge[1]}"
        if self.anchor:
            return f"world anchored under {self.anchor}: {self.note}"
        return self.note or "no camera or world transform (tf_mode none)"


def ancestors(frame: str, parents: Mapping[str, str]) -> list[str]:
    """``frame``'s parent, its parent, ... up to the root (a loop in the input ends the walk)."""
    chain, seen = [], {frame}
    while frame in parents and parents[frame] not in seen:
        frame = parents[frame]
        seen.add(frame)
        chain.append(frame)
    return chain


def plan_tf(tf_mode: str, world: str, camera: str, parents: Mapping[str, str]) -> TfPlan:
    """The transforms to publish for ``tf_mode`` given the robot's tree ``parents`` (child ->
    parent of every transform others publish)."""
    if tf_mode == "none":
        return TfPlan()
    known = set(parents) | set(parents.values())
    if world in known:
        where = f"child of {parents[world]!r}" if world in parents else "a root of it"
        return TfPlan(note=(
            f"world_frame {world!r} is already a frame of the robot's TF tree ({where}): the node publishes "
            f"no camera or world transform, since any edge to it would give it a second parent or close a "
            f"loop; set world_frame to a name the robot does not use (e.g. world_frame:=human3r_world)"))
    if tf_mode == "camera_to_world":
        return TfPlan(edge=(camera, world))
    parent = parents.get(camera)
    if parent is None:
        return TfPlan(edge=(world, camera))
    root = ancestors(camera, parents)[-1]
    return TfPlan(anchor=root, note=(
        f"camera frame {camera!r} already has the parent {parent!r} in the robot's TF tree (root {root!r}): "
        f"instead of {world} -> {camera}, the node publishes {root} -> {world} on /tf_static at the first image "
        f"of each world; set output_frame:={root} tf_mode:=none to get the people in {root} too, "
        f"tf_mode:=camera_to_world to hang {world} under the camera, or tf_mode:=none for no transform"))


def anchor_problem(world: str, frame: str, parents: Mapping[str, str]) -> str:
    """Why ``frame -> world`` (output_frame's anchor) cannot be published ('' if it can)."""
    known = set(parents) | set(parents.values())
    if world not in known:
        return ""
    return (f"world_frame {world!r} is already a frame of the robot's TF tree: {frame} -> {world} is not "
            f"published (it would give {world!r} a second parent or close a loop); set world_frame to a name "
            f"the robot does not use (e.g. world_frame:=human3r_world)")


class TfTree:
    """One tf2 buffer and listener for the node, and the parents the robot's tree gives."""

    def __init__(self, node, listen_time: float) -> None:
        """Raises ImportError without tf2_ros."""
        import tf2_ros

        tree = self

        class _Listener(tf2_ros.TransformListener):
            def callback(self, msg) -> None:
                super().callback(msg)
                tree._heard(msg)

            def static_callback(self, msg) -> None:
                super().static_callback(msg)
                tree._heard(msg)

        self.errors = tf2_ros.TransformException
        self.buffer = tf2_ros.Buffer(node=node)
        self._lock = threading.Lock()
        self._parents: dict[str, str] = {}
        self._own: set[tuple[str, str]] = set()
        self._ready_at = time.monotonic() + listen_time
        self._listener = _Listener(self.buffer, node)

    def _heard(self, msg) -> None:
        with self._lock:
            for transform in msg.transforms:
                edge = (transform.header.frame_id, transform.child_frame_id)
                if edge not in self._own:
                    self._parents[edge[1]] = edge[0]

    def publishing(self, parent: str, child: str) -> None:
        """The node publishes ``parent -> child`` from now on: hearing it back is not the robot."""
        with self._lock:
            self._own.add((parent, child))

    def parents(self) -> dict[str, str]:
        """child -> parent of every transform heard that the node did not publish, once the
        node has listened long enough (waits for the rest of ``listen_time``)."""
        time.sleep(max(0.0, self._ready_at - time.monotonic()))
        with self._lock:
            return dict(self._parents)

    def close(self) -> None:
        self._listener.unregister()

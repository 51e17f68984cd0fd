"""RViz markers for tracked people, with a per-track marker lifecycle.

Each track owns the namespace ``human_<track_id>`` with fixed marker ids (bones, joints,
mesh) and a colour derived from the id, so RViz replaces a person's markers in place.
When a track is no longer seen its markers are deleted; a reset deletes everything.
"""

from __future__ import annotations

import colorsys

import numpy as np
from geometry_msgs.msg import Point, Vector3
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

# SMPL-X kinematic tree (parent of each of the 55 skeleton joints; root = -1).
SMPLX_PARENTS = (
    -1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 15, 15, 15,
    20, 25, 26, 20, 28, 29, 20, 31, 32, 20, 34, 35, 20, 37, 38,
    21, 40, 41, 21, 43, 44, 21, 46, 47, 21, 49, 50, 21, 52, 53,
)
BONES = np.array([(parent, child) for child, parent in enumerate(SMPLX_PARENTS) if parent >= 0])

BONES_ID, JOINTS_ID, MESH_ID = 0, 1, 2
MARKER_IDS = (BONES_ID, JOINTS_ID, MESH_ID)
BONE_WIDTH = 0.02  # m
JOINT_DIAMETER = 0.04  # m
MESH_ALPHA = 0.6


def namespace(track_id: int) -> str:
    return f"human_{track_id}"


def track_color(track_id: int, alpha: float = 1.0) -> ColorRGBA:
    """A fixed, well separated colour per id (golden-ratio hue steps)."""
    r, g, b = colorsys.hsv_to_rgb((track_id * 0.618033988749895) % 1.0, 0.75, 0.95)
    return ColorRGBA(r=r, g=g, b=b, a=alpha)


def _points(xyz: np.ndarray) -> list[Point]:
    return [Point(x=x, y=y, z=z) for x, y, z in np.asarray(xyz, dtype=np.float64).tolist()]


def _marker(header: Header, track_id: int, marker_id: int, kind: int, scale: float, alpha: float = 1.0) -> Marker:
    marker = Marker(header=header, ns=namespace(track_id), id=marker_id, type=kind, action=Marker.ADD)
    marker.pose.orientation.w = 1.0
    marker.scale = Vector3(x=scale, y=scale, z=scale)
    marker.color = track_color(track_id, alpha)
    return marker


def skeleton_markers(header: Header, track_id: int, joints: np.ndarray) -> list[Marker]:
    """LINE_LIST bones and SPHERE_LIST joints of one person (joints: (55, 3))."""
    bones = _marker(header, track_id, BONES_ID, Marker.LINE_LIST, BONE_WIDTH)
    bones.points = _points(joints[BONES.reshape(-1)])
    spheres = _marker(header, track_id, JOINTS_ID, Marker.SPHERE_LIST, JOINT_DIAMETER)
    spheres.points = _points(joints)
    return [bones, spheres]


def mesh_marker(header: Header, track_id: int, vertices: np.ndarray, faces: np.ndarray) -> Marker:
    """TRIANGLE_LIST of one SMPL-X mesh (vertices (V, 3), faces (F, 3) int)."""
    mesh = _marker(header, track_id, MESH_ID, Marker.TRIANGLE_LIST, 1.0, MESH_ALPHA)
    mesh.points = _points(vertices[faces.reshape(-1)])
    return mesh


class TrackMarkers:
    """Builds each frame's MarkerArray and remembers which tracks have markers in RViz."""

    def __init__(self) -> None:
        self._shown: set[int] = set()
        self._clear_all = True  # start from a clean display (markers of an earlier run)

    def reset(self) -> None:
        """The next update begins with DELETEALL."""
        self._shown.clear()
        self._clear_all = True

    def update(self, header: Header, people, faces: np.ndarray | None = None) -> MarkerArray:
        """Markers for this frame's people (objects with ``track_id``, ``joints_world`` and,
        when ``faces`` is given, ``vertices_world``); tracks that vanished get DELETE."""
        markers: list[Marker] = []
        if self._clear_all:
            markers.append(Marker(header=header, action=Marker.DELETEALL))
            self._clear_all = False
        current = {int(p.track_id) for p in people}
        for track_id in sorted(self._shown - current):
            for marker_id in MARKER_IDS:
                markers.append(Marker(header=header, ns=namespace(track_id), id=marker_id, action=Marker.DELETE))
        for person in people:
            track_id = int(person.track_id)
            markers.extend(skeleton_markers(header, track_id, person.joints_world))
            if faces is not None:
                markers.append(mesh_marker(header, track_id, person.vertices_world, faces))
        self._shown = current
        return MarkerArray(markers=markers)

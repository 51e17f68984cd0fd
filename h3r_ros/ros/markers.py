"""RViz markers for tracked people, with a per-track marker lifecycle.

Three fixed namespaces (bones, joints, mesh); a person's markers carry its track id as
marker id and a colour derived from it, so RViz replaces them in place. RViz keeps every
namespace it has seen, so namespaces must not grow with the number of tracks. Every marker
has a lifetime (a few inference periods): markers vanish by themselves when the node stops
or a person stops being seen. A track that ends gets DELETE for the markers it had; a reset
deletes everything. People without a body (no SMPL-X model) are one sphere at the head,
in the joints namespace.
A lost (not yet ended) track's markers are not deleted: they stay at its last pose
until their lifetime runs out.
"""

from __future__ import annotations

import colorsys
import math
import time

import numpy as np
from builtin_interfaces.msg import Duration
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

BONES_NS, JOINTS_NS, MESH_NS = "human_bones", "human_joints", "human_mesh"
NAMESPACES = (BONES_NS, JOINTS_NS, MESH_NS)
_ID_RANGE = 2**31  # Marker.id is int32
BONE_WIDTH = 0.02  # m
JOINT_DIAMETER = 0.04  # m
HEAD_DIAMETER = 0.25  # m, about a head
MESH_ALPHA = 0.6


def marker_id(track_id: int) -> int:
    return int(track_id) % _ID_RANGE


def track_color(track_id: int, alpha: float = 1.0) -> ColorRGBA:
    """A fixed, well separated colour per id (golden-ratio hue steps)."""
    r, g, b = colorsys.hsv_to_rgb((track_id * 0.618033988749895) % 1.0, 0.75, 0.95)
    return ColorRGBA(r=r, g=g, b=b, a=alpha)


def _points(xyz: np.ndarray) -> list[Point]:
    return [Point(x=x, y=y, z=z) for x, y, z in np.asarray(xyz, dtype=np.float64).tolist()]


def _duration(seconds: float) -> Duration:
    nanoseconds = max(int(round(seconds * 1e9)), 0)
    return Duration(sec=nanoseconds // 1_000_000_000, nanosec=nanoseconds % 1_000_000_000)


def _marker(header: Header, track_id: int, ns: str, kind: int, scale: float, alpha: float = 1.0) -> Marker:
    marker = Marker(header=header, ns=ns, id=marker_id(track_id), type=kind, action=Marker.ADD)
    marker.pose.orientation.w = 1.0
    marker.scale = Vector3(x=scale, y=scale, z=scale)
    marker.color = track_color(track_id, alpha)
    return marker


def skeleton_markers(header: Header, track_id: int, joints: np.ndarray, lifetime: float = 0.0) -> list[Marker]:
    """LINE_LIST bones and SPHERE_LIST joints of one person (joints: (55, 3)); ``lifetime``
    in seconds, 0 = forever."""
    bones = _marker(header, track_id, BONES_NS, Marker.LINE_LIST, BONE_WIDTH)
    bones.points = _points(joints[BONES.reshape(-1)])
    spheres = _marker(header, track_id, JOINTS_NS, Marker.SPHERE_LIST, JOINT_DIAMETER)
    spheres.points = _points(joints)
    bones.lifetime = spheres.lifetime = _duration(lifetime)
    return [bones, spheres]


def head_marker(header: Header, track_id: int, head: np.ndarray, lifetime: float = 0.0) -> Marker:
    """A person without a body: one sphere at the head (head: (3,))."""
    sphere = _marker(header, track_id, JOINTS_NS, Marker.SPHERE_LIST, HEAD_DIAMETER)
    sphere.points = _points(np.reshape(head, (1, 3)))
    sphere.lifetime = _duration(lifetime)
    return sphere


def mesh_marker(header: Header, track_id: int, vertices: np.ndarray, faces: np.ndarray,
                lifetime: float = 0.0) -> Marker:
    """TRIANGLE_LIST of one SMPL-X mesh (vertices (V, 3), faces (F, 3) int)."""
    mesh = _marker(header, track_id, MESH_NS, Marker.TRIANGLE_LIST, 1.0, MESH_ALPHA)
    mesh.points = _points(vertices[faces.reshape(-1)])
    mesh.lifetime = _duration(lifetime)
    return mesh


LIFETIME_PERIODS = 3.0  # marker lifetime in publication periods
LIFETIME_RANGE = (0.5, 30.0)  # s


class MarkerLifetime:
    """A few publication periods (smoothed): markers outlive the gap to the next publication,
    not the node."""

    def __init__(self) -> None:
        self._last = -math.inf
        self._period: float | None = None

    def tick(self) -> None:
        """A publication now."""
        now = time.monotonic()
        if math.isfinite(self._last):
            period = now - self._last
            self._period = period if self._period is None else 0.8 * self._period + 0.2 * period
        self._last = now

    def seconds(self) -> float:
        low, high = LIFETIME_RANGE
        period = self._period if self._period is not None else low
        return min(max(LIFETIME_PERIODS * period, low), high)


class TrackMarkers:
    """Builds each frame's MarkerArray and remembers which markers each track has in RViz."""

    def __init__(self) -> None:
        self._skeletons: set[int] = set()  # track ids with bones and joints shown
        self._meshes: set[int] = set()  # track ids with a mesh shown
        self._clear_all = True  # start from a clean display (markers of an earlier run)

    def reset(self) -> None:
        """The next update begins with DELETEALL."""
        self._skeletons.clear()
        self._meshes.clear()
        self._clear_all = True

    @property
    def shown(self) -> int:
        """Markers currently tracked (bounded by the people of the last frame)."""
        return len(self._skeletons) * 2 + len(self._meshes)

    def update(self, header: Header, people, faces: np.ndarray | None = None, lifetime: float = 0.0,
               mesh_lifetime: float = 0.0, keep=()) -> MarkerArray:
        """Markers for this frame's people (objects with ``track_id``, ``head_world``,
        ``joints_world`` (None: head only) and, when ``faces`` is given, ``vertices_world``);
        tracks that vanished get DELETE for the markers they had, except those in ``keep``
        (lost, not ended). Lifetimes in seconds (0 = until deleted)."""
        markers: list[Marker] = []
        if self._clear_all:
            markers.append(Marker(header=header, action=Marker.DELETEALL))
            self._clear_all = False
        current = {int(p.track_id) for p in people}

        def delete(ns: str, track_id: int) -> Marker:
            return Marker(header=header, ns=ns, id=marker_id(track_id), action=Marker.DELETE)

        kept = {int(t) for t in keep}
        for track_id in sorted(self._skeletons - current - kept):
            markers += [delete(BONES_NS, track_id), delete(JOINTS_NS, track_id)]
        for track_id in sorted(self._meshes - current - kept):
            markers.append(delete(MESH_NS, track_id))
        self._meshes &= current | kept
        kept &= self._skeletons
        for person in people:
            track_id = int(person.track_id)
            if person.joints_world is None:
                markers.append(head_marker(header, track_id, person.head_world, lifetime))
                continue
            markers.extend(skeleton_markers(header, track_id, person.joints_world, lifetime))
            if faces is not None:
                markers.append(mesh_marker(header, track_id, person.vertices_world, faces, mesh_lifetime))
                self._meshes.add(track_id)
        self._skeletons = current | kept
        return MarkerArray(markers=markers)

"""What the node publishes for each processed frame, and the state behind it.

One ``Outputs`` is made at configure and handed to the frame processor, whose thread is then
the only one that publishes or touches the state (map, markers, path, track motion, REP-155
bodies and their publish times). The node calls ``close`` after stopping that thread; ``close``
also waits out a publication in progress, and after it nothing is published, so a frame
that outlives a transition cannot publish on destroyed publishers.

QoS: per-frame outputs reliable volatile; humans and markers keep a short queue (their
per-track ids and DELETE actions matter); map_cloud transient local for late joiners. The map's
points accumulate every frame, but the map is merged and sent only while map_cloud has a
subscriber, and at once when one joins.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, replace

import numpy as np
from nav_msgs.msg import Path
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header
from visualization_msgs.msg import MarkerArray

from h3r_ros.engine.fusion import CameraView
from h3r_ros.engine.point_selection import PointSelection
from h3r_ros.engine.track_motion import LOST, NEW, TRACKED, TrackInfo, TrackMotion
from h3r_ros.msg import HumanArray
from h3r_ros.ros import conversions, hri_bodies
from h3r_ros.ros.diagnostics import NO_TRANSFORM
from h3r_ros.ros.map_accumulator import VoxelMap
from h3r_ros.ros.markers import MarkerLifetime, TrackMarkers
from h3r_ros.ros.output_frame import OutputFrame, OutputFrameUnavailable
from h3r_ros.ros.tf_tree import TfPlan, TfTree, anchor_problem, plan_tf

try:
    from tf2_msgs.msg import TFMessage
except ImportError:  # ROS 2 from PyPI wheels alone has no tf2: the node runs without /tf
    TFMessage = None

FALLBACK_CAMERA_FRAME = "camera_optical_frame"  # when neither the parameter nor the header names one
WARN_PERIOD = 60.0  # s between repeated warnings about a missing frame id
TF_WARN_PERIOD = 5.0  # s between repeated warnings about a missing output_frame transform

FRAME_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
EVENT_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
LATCHED_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
TF_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)

# name -> (message type, topic, QoS) of the lifecycle publishers
_TOPICS = {
    "humans": (HumanArray, "humans", EVENT_QOS),
    **({} if TFMessage is None else {"tf": (TFMessage, "/tf", TF_QOS)}),
    "cloud": (PointCloud2, "cloud", FRAME_QOS),
    "map": (PointCloud2, "map_cloud", LATCHED_QOS),
    "markers": (MarkerArray, "markers", EVENT_QOS),
    "path": (Path, "camera_path", FRAME_QOS),
    "depth": (Image, "depth/image", FRAME_QOS),
    "depth_info": (CameraInfo, "depth/camera_info", FRAME_QOS),
    "camera_info": (CameraInfo, "estimated_camera_info", FRAME_QOS),
}


@dataclass(frozen=True)
class Wanted:
    """Which outputs this frame needs (subscribed and enabled), hence what to compute."""

    humans: bool
    cloud: bool
    markers: bool
    mesh: bool
    depth: bool
    camera_info: bool

    def engine_flags(self, settings) -> dict[str, object]:
        """Engine settings for this frame: the cloud and map points are chosen on the device,
        full point maps only travel to the host for depth."""
        common = dict(conf_threshold=settings.cloud_conf_threshold, stride=settings.cloud_stride)
        selections = []
        if self.cloud:
            selections.append(PointSelection("cloud", max_points=settings.cloud_max_points, **common))
        if settings.publish_map:
            selections.append(PointSelection("map", exclude_humans=settings.map_exclude_humans, **common))
        return {
            "with_points": self.depth,
            "with_vertices": (self.humans and settings.publish_vertices) or self.mesh,
            "point_selections": tuple(selections),
        }


NOTHING_WANTED = Wanted(humans=False, cloud=False, markers=False, mesh=False, depth=False, camera_info=False)


class Outputs:
    def __init__(self, node, settings, faces, stats, tree: TfTree | None, camera: str = "") -> None:
        """Publishers on ``node`` (a LifecycleNode), their relative topics under '<camera>/' for
        a named ``camera``, and fresh output state; ``faces``: SMPL-X triangles for mesh
        markers (None without a body model); ``stats``: the NodeStats that count images whose
        people could not be placed in output_frame; ``tree``: the robot's TF tree (None
        without tf2_ros: then no camera or world transform is published)."""
        self._node = node
        self._faces = faces
        self._stats = stats
        self._tree = tree
        if settings.output_frame and tree is None:
            raise OutputFrameUnavailable(
                f"output_frame {settings.output_frame!r} needs tf2_ros, which is not installed: install "
                "ros-<distro>-tf2-ros or leave output_frame empty")
        self._output_frame = OutputFrame(node, tree, settings.output_frame) if settings.output_frame else None
        self._anchor: OutputFrame | None = None  # the world under the robot's tree (TfPlan.anchor)
        self._plan: TfPlan | None = None
        self.tf_status = "no image yet" if tree is not None else (
            "tf2_ros is not installed: no camera or world transform is published (install ros-<distro>-tf2-ros)")
        self._lock = threading.Lock()  # one publication at a time, and none after close
        self._closed = False
        prefix = f"{camera}/" if camera else ""
        self._camera = camera
        self._pubs = {name: node.create_lifecycle_publisher(kind, topic if topic.startswith("/") else prefix + topic, qos)
                      for name, (kind, topic, qos) in _TOPICS.items()}
        # This frame's tracks as placed in output_frame, for the cross-camera fusion.
        self.fusion_view: tuple[CameraView, object] | None = None  # (view, image stamp message)
        if TFMessage is None:
            node.get_logger().warning("tf2_msgs is not installed: no /tf is published (tf_mode and body frames "
                                      "have no effect); install ros-<distro>-tf2-msgs for TF")
        self._hri = hri_bodies.HriBodies(node) if settings.publish_hri_bodies else None
        self._map = VoxelMap(settings.map_voxel_size, settings.map_max_points)
        self._markers = TrackMarkers()
        self._motion = TrackMotion(settings.track_timeout)
        self._unreported: list = []  # tracks that ended on an image whose people were dropped
        self._path: deque = deque(maxlen=settings.path_max_poses)
        self._last_map_publish = -math.inf
        self._map_subscribers = 0  # subscribers of map_cloud when it was last looked at
        self._last_mesh = -math.inf
        self._lifetime = MarkerLifetime()

    def sizes(self) -> dict[str, int]:
        """Sizes of the structures that grow with the run, each with a bound."""
        return {
            "map points": self._map.size,
            "camera path poses": len(self._path),
            "markers shown": self._markers.shown,
        }

    def subscription_count(self, name: str) -> int:
        """Subscribers of output ``name`` ('humans', 'cloud', 'depth', ... as in _TOPICS)."""
        return self._pubs[name].get_subscription_count()

    def wanted(self, settings) -> Wanted:
        """What to compute for the next frame; nothing once closed (the publishers are gone)."""
        with self._lock:
            if self._closed:
                return NOTHING_WANTED
            return self._wanted(settings)

    def _wanted(self, settings) -> Wanted:
        def subscribed(name: str) -> bool:
            return self.subscription_count(name) > 0

        markers = settings.publish_markers and subscribed("markers")
        return Wanted(
            humans=subscribed("humans"),
            cloud=settings.publish_cloud and subscribed("cloud"),
            markers=markers,
            mesh=markers and settings.publish_mesh
            and time.monotonic() - self._last_mesh >= settings.mesh_publish_period,
            depth=settings.publish_depth and (subscribed("depth") or subscribed("depth_info")),
            camera_info=settings.publish_camera_info and subscribed("camera_info"),
        )

    def reset(self) -> None:
        """A new world: map, markers and path start again (the tracks end with the next
        frame, whose result says it follows a reset, so that they are reported as ended)."""
        self._map.clear()
        self._markers.reset()
        self._path.clear()
        self._last_map_publish = -math.inf
        for anchor in (self._output_frame, self._anchor):
            if anchor is not None:
                anchor.reset()

    def publish(self, result, image_header: Header, settings, wanted: Wanted, source_wh) -> list[int]:
        """Everything for one frame, stamped with the image's stamp. Returns the ids of the
        tracks that ended (the engine forgets them); nothing is published after ``close``."""
        with self._lock:
            if self._closed:
                return []
            return self._publish(result, image_header, settings, wanted, source_wh)

    def close(self) -> None:
        """Destroy the publishers, after any publication in progress."""
        with self._lock:
            self._closed = True
            for publisher in self._pubs.values():
                self._node.destroy_lifecycle_publisher(publisher)
            self._pubs = {}
            if self._hri is not None:
                self._hri.close()
                self._hri = None
            for anchor in (self._output_frame, self._anchor):
                if anchor is not None:
                    anchor.close()
            self._output_frame = self._anchor = None

    def _publish(self, result, image_header: Header, settings, wanted: Wanted, source_wh) -> list[int]:
        out = self._pubs
        stamp = image_header.stamp
        self.fusion_view = None
        self._lifetime.tick()
        camera_frame = settings.camera_frame or image_header.frame_id
        if not camera_frame:
            camera_frame = FALLBACK_CAMERA_FRAME
            self._node.get_logger().warning(
                f"image header has no frame_id and camera_frame is unset: using '{camera_frame}'",
                throttle_duration_sec=WARN_PERIOD,
            )
        world = Header(stamp=stamp, frame_id=settings.world_frame)
        camera = Header(stamp=stamp, frame_id=camera_frame)

        now = Time.from_msg(stamp).nanoseconds * 1e-9
        transforms = self._camera_transforms(result, camera_frame, settings, stamp)
        people, out_from_world = self._people_in_output_frame(result, camera_frame, settings, stamp)
        ended_now = []
        if people is None and result.reset:  # the old world's tracks end; reported with the next people
            self._unreported += self._motion.reset()
        if people is not None:
            alive, ended, ended_now = self._update_tracks(result, people, out_from_world, settings, now)
            # One TF frame per person: REP-155's name when that interface is on.
            if self._hri is not None:
                transforms += conversions.body_transforms(result, camera_frame, hri_bodies.FRAME_PREFIX, stamp)
            elif settings.publish_body_tf:
                transforms += conversions.body_transforms(result, camera_frame, settings.body_frame_prefix, stamp)
        if transforms and "tf" in out:
            out["tf"].publish(TFMessage(transforms=transforms))
        if people is not None:
            header = Header(stamp=stamp, frame_id=self._output_frame.frame if self._output_frame else world.frame_id)
            if wanted.humans:
                out["humans"].publish(conversions.humans_msg(
                    people, header, camera_frame, settings.publish_vertices, alive + ended, now, self._camera))
            if self._output_frame is not None:
                tracks = [(t.track_id, t.state, t.payload) for t in alive + ended]
                self.fusion_view = (CameraView(self._camera, now, people.cam_to_world[:3, 3], tracks), stamp)
            if self._hri is not None:
                self._hri.publish(header, [t for t in alive if t.state != LOST], ended)
        self._publish_points(result, world, settings, wanted)
        if wanted.markers:
            lost = [] if people is None else [t.track_id for t in alive if t.state == LOST]
            self._publish_markers(result, world, settings, wanted, lost)
        if settings.publish_path:
            if self._path.maxlen != settings.path_max_poses:
                self._path = deque(self._path, maxlen=settings.path_max_poses)
            self._path.append(conversions.path_pose(result.cam_to_world, world))
            if self.subscription_count("path") > 0:
                out["path"].publish(conversions.path_msg(self._path, world))
        resized_wh = result.resized_size or source_wh
        if wanted.depth:
            out["depth"].publish(conversions.depth_msg(result.points_cam, camera))
            out["depth_info"].publish(
                conversions.depth_camera_info_msg(result.K, result.crop_box, resized_wh, camera))
        if wanted.camera_info:
            K_source = conversions.intrinsics_in_source(
                conversions.intrinsics_in_resized(result.K, result.crop_box), resized_wh, source_wh
            )
            out["camera_info"].publish(conversions.camera_info_msg(K_source, (source_wh[1], source_wh[0]), camera))
        return ended_now

    def _camera_transforms(self, result, camera_frame: str, settings, stamp) -> list:
        """The camera transform of tf_mode if the robot's tree lets the node publish it; the
        world anchored under the tree instead where the camera already has a parent."""
        if self._tree is None or "tf" not in self._pubs:
            return []
        parents = self._tree.parents()
        plan = plan_tf(settings.tf_mode, settings.world_frame, camera_frame, parents)
        if plan.anchor:
            if self._anchor is None or self._anchor.frame != plan.anchor:
                self._close_anchor()
                self._anchor = OutputFrame(self._node, self._tree, plan.anchor)
            if not self._anchor.anchored and self._anchor.from_world(
                    result, camera_frame, settings.world_frame, stamp, settings.output_frame_timeout) is None:
                self._node.get_logger().warning(
                    f"cannot anchor {settings.world_frame} under {plan.anchor} yet: no transform {plan.anchor} <- "
                    f"{camera_frame} at the image stamp ({self._anchor.error})", throttle_duration_sec=TF_WARN_PERIOD)
        else:
            self._close_anchor()
        self._report_plan(plan, settings.world_frame, parents)
        if plan.edge is None:
            return []
        self._tree.publishing(*plan.edge)
        return [conversions.camera_transform(result.cam_to_world, settings.world_frame, camera_frame,
                                             settings.tf_mode, stamp)]

    def _close_anchor(self) -> None:
        if self._anchor is not None:
            self._anchor.close()
            self._anchor = None

    def _report_plan(self, plan: TfPlan, world_frame: str, parents: dict[str, str]) -> None:
        """Say once (log and /diagnostics) what the node does with TF, and why."""
        frame = self._output_frame
        problem = "" if frame is None else anchor_problem(world_frame, frame.frame, parents)
        status = problem or plan.describe()
        if plan != self._plan or status != self.tf_status:
            log = self._node.get_logger()
            (log.warning if plan.note or problem else log.info)(f"TF: {status}")
        self._plan, self.tf_status = plan, status

    def _people_in_output_frame(self, result, camera_frame: str, settings, stamp):
        """(``result`` with its people and camera pose in output_frame, the 4x4 output_frame <-
        world of this image); (``result``, None) without output_frame; (None, None), counted and
        warned, when tf2 has no transform for this image."""
        if self._output_frame is None:
            return result, None
        if result.reset:
            self._output_frame.reset()
        from_world = self._output_frame.from_world(
            result, camera_frame, settings.world_frame, stamp, settings.output_frame_timeout)
        if from_world is None:
            self._stats.count(NO_TRANSFORM)
            self._node.get_logger().warning(
                f"no transform {self._output_frame.frame} <- {camera_frame} at the image stamp within "
                f"{settings.output_frame_timeout} s: this image's people are dropped "
                f"({self._output_frame.error})", throttle_duration_sec=TF_WARN_PERIOD)
            return None, None
        placed = replace(result, cam_to_world=from_world @ np.asarray(result.cam_to_world, np.float64),
                         people=[person.transformed(from_world) for person in result.people])
        return placed, from_world

    def _update_tracks(self, result, placed, out_from_world, settings, now: float):
        """Track states for this frame: (alive tracks, ended tracks, ids of the tracks that
        timed out now, which the engine still holds; a reset has emptied it already). Each
        TrackInfo's payload is the Person to report; ``placed`` is ``result`` in output_frame,
        by ``out_from_world`` (None: no output_frame)."""
        motion = self._motion
        motion.timeout = settings.track_timeout
        ended, self._unreported = [_as_sighted(t) for t in self._unreported], []
        if placed.reset:
            ended += [_as_sighted(t) for t in motion.reset()]
        observations = [(p.track_id, p.position_world, _Sighting(world, p, out_from_world))
                        for world, p in zip(result.people, placed.people)]
        alive, ended_now = motion.update(now, observations)
        return ([_at_now(t, out_from_world) for t in alive], ended + [_at_now(t, out_from_world) for t in ended_now],
                [t.track_id for t in ended_now])

    def _publish_markers(self, result, world: Header, settings, wanted: Wanted, lost: list[int]) -> None:
        faces = self._faces if wanted.mesh else None
        lifetime = self._lifetime.seconds()
        mesh_lifetime = lifetime + 2.0 * settings.mesh_publish_period
        self._pubs["markers"].publish(
            self._markers.update(world, result.people, faces, lifetime, mesh_lifetime, keep=lost))
        if wanted.mesh:
            self._last_mesh = time.monotonic()

    def _publish_points(self, result, world: Header, settings, wanted: Wanted) -> None:
        if wanted.cloud and "cloud" in result.selections:
            chosen = result.selections["cloud"]
            self._pubs["cloud"].publish(conversions.cloud_msg(chosen.points, chosen.colors(result.rgb), world))
        if not settings.publish_map or "map" not in result.selections:
            return
        chosen = result.selections["map"]
        self._map.add(chosen.points, chosen.colors(result.rgb))  # kept growing (bounded) for later subscribers
        subscribers = self.subscription_count("map")
        joined, self._map_subscribers = subscribers > self._map_subscribers, subscribers
        if not subscribers:
            return  # merged and sent only for someone; a late joiner gets it at its first frame
        now = time.monotonic()
        due = joined or now - self._last_map_publish >= settings.map_publish_period
        if due and self._map.merge():
            self._pubs["map"].publish(conversions.cloud_msg(self._map.points, self._map.colors, world))
            self._last_map_publish = now


@dataclass(frozen=True)
class _Sighting:
    """A track's latest sighting: the person in the world, as placed in output_frame then, and
    the output_frame <- world transform of that image (None without output_frame)."""

    world: object  # engine Person, world frame
    placed: object  # engine Person, output_frame (the world frame without one)
    out_from_world: np.ndarray | None


def _as_sighted(track: TrackInfo) -> TrackInfo:
    """A track reported where it was last seen (it ended with its world, on a reset)."""
    return replace(track, payload=track.payload.placed)


def _at_now(track: TrackInfo, out_from_world: np.ndarray | None) -> TrackInfo:
    """A track for this image, its person as payload. One not seen in it (lost, ended) is kept
    in the world and placed with this image's transform, so that in a moving output_frame
    (base_link) it stays where it was in the world, not where the frame was then."""
    sighting = track.payload
    then = sighting.out_from_world
    if track.state in (NEW, TRACKED) or out_from_world is None or np.array_equal(then, out_from_world):
        return replace(track, payload=sighting.placed)
    move = out_from_world @ np.linalg.inv(then)
    return replace(track, payload=sighting.world.transformed(out_from_world),
                   position=move[:3, :3] @ track.position + move[:3, 3], velocity=move[:3, :3] @ track.velocity)

"""The Human3R lifecycle node.

Data flows one way: image message -> (newest-frame slot) -> decoded frame -> engine step on
the inference thread -> FrameResult -> messages, each stamped with the source image's stamp.
The executor thread only validates and hands over messages, serves services, and reports
diagnostics, so it never waits for the model.

Lifecycle: configure loads weights and SMPL-X and creates publishers and services; activate
starts the inference thread and the subscriptions; deactivate stops both; cleanup releases
the model and its device memory.

Interface (relative names; remap in launch). QoS: inputs depth 1 (image_qos); per-frame
outputs reliable volatile; map_cloud reliable transient local.
  in   image (sensor_msgs/Image) or image/compressed (CompressedImage, compressed_input)
  in   camera_info: validated; its focal is reported next to the model's (Human3R itself
       has no intrinsics input)
  out  humans (h3r_ros/HumanArray, world frame), /tf (world -> camera optical, or inverse;
       optionally camera optical -> <body_frame_prefix><track_id> per person, REP-155),
       cloud and map_cloud (PointCloud2, world frame), markers (MarkerArray),
       camera_path (nav_msgs/Path), depth (32FC1) and estimated_camera_info (CameraInfo),
       both in the camera frame at model-input resolution, /diagnostics
  srv  ~/reset (std_srvs/Trigger), ~/enable (std_srvs/SetBool)
"""

from __future__ import annotations

import gc
import math
import time
from collections import deque
from dataclasses import dataclass, replace

import torch
from diagnostic_msgs.msg import DiagnosticArray
from nav_msgs.msg import Path
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Header
from std_srvs.srv import SetBool, Trigger
from tf2_msgs.msg import TFMessage
from visualization_msgs.msg import MarkerArray

from h3r_ros.msg import HumanArray
from h3r_ros.ros import conversions, parameters
from h3r_ros.ros.diagnostics import BAD, DROPPED, RECEIVED, STALE, NodeStats, diagnostics_msg
from h3r_ros.ros.engine_loader import LoadedEngine, LoadError, load_engine
from h3r_ros.ros.image_decoding import (
    ImageDecodeError,
    check_compressed,
    check_image,
    decode_compressed,
    decode_image,
)
from h3r_ros.ros.inference_worker import InferenceWorker
from h3r_ros.ros.map_accumulator import VoxelMap
from h3r_ros.ros.markers import TrackMarkers

NODE_NAME = "human3r_node"
FALLBACK_CAMERA_FRAME = "camera_optical_frame"  # when neither the parameter nor the header names one
HUMAN_MASK_THRESHOLD = 0.1  # the Human3R demo's msk_threshold for "human pixel"
WARN_PERIOD = 5.0  # s between repeated warnings of one kind

# Per-frame outputs: reliable, volatile, keep only what a slow subscriber can still use.
_FRAME_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
# Humans and markers carry per-track state (ids, DELETE actions): a short queue, not just the last.
_EVENT_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
# Late joiners (RViz) get the last map.
_LATCHED_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
_TF_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)


def input_qos(name: str) -> QoSProfile:
    """Depth 1 so that the middleware never queues stale images for us."""
    reliability = ReliabilityPolicy.BEST_EFFORT if name == "sensor_data" else ReliabilityPolicy.RELIABLE
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=1, reliability=reliability, durability=DurabilityPolicy.VOLATILE
    )


@dataclass
class _Outputs:
    humans: object
    tf: object
    cloud: object
    map: object
    markers: object
    path: object
    depth: object
    camera_info: object


@dataclass(frozen=True)
class _Wanted:
    """Which outputs this frame needs (subscribed and enabled), hence what to compute."""

    humans: bool
    cloud: bool
    markers: bool
    mesh: bool
    depth: bool
    camera_info: bool

    def engine_flags(self, settings) -> dict[str, bool]:
        return {
            "with_points": self.cloud or self.depth or settings.publish_map,
            "with_vertices": (self.humans and settings.publish_vertices) or self.mesh,
            "with_human_mask": settings.publish_map and settings.map_exclude_humans,
        }


class Human3RNode(LifecycleNode):
    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        parameters.declare(self)
        self.add_post_set_parameters_callback(self._on_parameters_set)
        self._settings = parameters.read(self)
        self._lifecycle_state = "unconfigured"
        self._enabled = True
        self._stats = NodeStats()
        self._loaded: LoadedEngine | None = None
        self._outputs: _Outputs | None = None
        self._service_handles: list = []
        self._diagnostics_pub = None
        self._diagnostics_timer = None
        self._inputs: list = []
        self._worker: InferenceWorker | None = None
        self._check = self._decode = None
        self._last_stamp: Time | None = None
        self._camera_info: CameraInfo | None = None
        self._focal = {"estimated": math.nan, "camera_info": math.nan}
        # Output state, touched only by the inference thread (or while it is stopped).
        self._map: VoxelMap | None = None
        self._markers = TrackMarkers()
        self._path: deque = deque()
        self._last_map_publish = -math.inf
        self._last_mesh = -math.inf

    @property
    def lifecycle_state(self) -> str:
        """'unconfigured', 'inactive', 'active' or 'finalized'."""
        return self._lifecycle_state

    # ------------------------------------------------------------------ lifecycle

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        settings = parameters.read(self)
        if not settings.world_frame:
            self.get_logger().error("configure failed: parameter world_frame must not be empty")
            return TransitionCallbackReturn.FAILURE
        try:
            self._loaded = load_engine(settings)
        except LoadError as exc:
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        self._settings = settings
        self.get_logger().info(f"loaded Human3R: {self._loaded.description}")

        self._outputs = _Outputs(
            humans=self.create_lifecycle_publisher(HumanArray, "humans", _EVENT_QOS),
            tf=self.create_lifecycle_publisher(TFMessage, "/tf", _TF_QOS),
            cloud=self.create_lifecycle_publisher(PointCloud2, "cloud", _FRAME_QOS),
            map=self.create_lifecycle_publisher(PointCloud2, "map_cloud", _LATCHED_QOS),
            markers=self.create_lifecycle_publisher(MarkerArray, "markers", _EVENT_QOS),
            path=self.create_lifecycle_publisher(Path, "camera_path", _FRAME_QOS),
            depth=self.create_lifecycle_publisher(Image, "depth", _FRAME_QOS),
            camera_info=self.create_lifecycle_publisher(CameraInfo, "estimated_camera_info", _FRAME_QOS),
        )
        self._service_handles = [
            self.create_service(Trigger, "~/reset", self._on_reset),
            self.create_service(SetBool, "~/enable", self._on_enable),
        ]
        # Diagnostics also report an inactive node, so this publisher is not lifecycle-managed.
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diagnostics_timer = self.create_timer(settings.diagnostics_period, self._publish_diagnostics)
        self._map = VoxelMap(settings.map_voxel_size, settings.map_max_points)
        self._reset_outputs()
        self._lifecycle_state = "inactive"
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        settings = self._settings
        enabled = super().on_activate(state)  # enables the lifecycle publishers
        if enabled != TransitionCallbackReturn.SUCCESS:
            return enabled
        self._stats = NodeStats()
        self._last_stamp = None
        self._worker = InferenceWorker(self._process, self._reset_state, self._on_worker_error)
        self._worker.start()
        qos = input_qos(settings.image_qos)
        if settings.compressed_input:
            self._check, self._decode = check_compressed, decode_compressed
            image_sub = self.create_subscription(CompressedImage, "image/compressed", self._on_image, qos)
        else:
            self._check, self._decode = check_image, decode_image
            image_sub = self.create_subscription(Image, "image", self._on_image, qos)
        self._inputs = [
            image_sub,
            self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, qos),
        ]
        self._lifecycle_state = "active"
        self.get_logger().info(f"active: reading {image_sub.topic_name}")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing()
        super().on_deactivate(state)
        self._lifecycle_state = "inactive"
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self._lifecycle_state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing()
        self._release()
        self._lifecycle_state = "finalized"
        self.get_logger().info("shut down: inference thread stopped, model released")
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"error while leaving state {state.label}: releasing everything")
        self._stop_processing()
        self._release()
        self._lifecycle_state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def _stop_processing(self) -> None:
        for subscription in self._inputs:
            self.destroy_subscription(subscription)
        self._inputs = []
        if self._worker is not None:
            self._worker.stop()  # waits for the frame in progress
            self._worker = None

    def _release(self) -> None:
        if self._outputs is not None:
            for publisher in vars(self._outputs).values():
                self.destroy_lifecycle_publisher(publisher)
            self._outputs = None
        for service in self._service_handles:
            self.destroy_service(service)
        self._service_handles = []
        if self._diagnostics_timer is not None:
            self.destroy_timer(self._diagnostics_timer)
            self.destroy_publisher(self._diagnostics_pub)
            self._diagnostics_timer = self._diagnostics_pub = None
        device = self._loaded.device if self._loaded is not None else None
        self._loaded = None
        self._map = None
        gc.collect()
        if device is not None and device.type == "cuda":
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ parameters

    def _on_parameters_set(self, changed) -> None:
        live = {p.name: p.value for p in changed if p.name in parameters.LIVE_PARAMETERS}
        if live:
            self._settings = replace(self._settings, **live)

    # ------------------------------------------------------------------ executor thread

    def _on_image(self, msg) -> None:
        self._stats.count(RECEIVED)
        worker = self._worker  # None while a transition (from another thread) tears down
        if not self._enabled or worker is None:
            return
        try:
            self._check(msg)
        except ImageDecodeError as exc:
            self._bad_message(exc)
            return
        stamp = Time.from_msg(msg.header.stamp)
        if self._last_stamp is not None and stamp < self._last_stamp:
            jump = (self._last_stamp - stamp).nanoseconds * 1e-9
            self.get_logger().warning(
                f"image stamp jumped back by {jump:.3f} s (bag loop or clock reset): resetting the reconstruction"
            )
            worker.request_reset()
        self._last_stamp = stamp
        if worker.submit(msg):
            self._stats.count(DROPPED)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        if conversions.valid_intrinsics(msg.k):
            self._camera_info = msg
            return
        self._camera_info = None
        self.get_logger().warning(
            "camera_info has an invalid K (all zero: uncalibrated camera?); ignoring it",
            throttle_duration_sec=30.0,
        )

    def _bad_message(self, error: Exception) -> None:
        self._stats.count(BAD)
        self.get_logger().warning(f"dropping image message: {error}", throttle_duration_sec=WARN_PERIOD)

    def _on_reset(self, request, response):
        if self._worker is not None:
            self._worker.request_reset()  # applied on the inference thread, before the next frame
        else:
            self._reset_state()
        response.success = True
        response.message = "reconstruction, tracks, trajectory and map reset"
        return response

    def _on_enable(self, request, response):
        self._enabled = bool(request.data)
        if not self._enabled and self._worker is not None:
            self._worker.discard()
        response.success = True
        response.message = "processing enabled" if self._enabled else "processing disabled"
        self.get_logger().info(response.message)
        return response

    def _publish_diagnostics(self) -> None:
        loaded = self._loaded
        state = {
            "lifecycle state": self._lifecycle_state,
            "enabled": str(self._enabled).lower(),
            "model": loaded.description if loaded is not None else "not loaded",
            "estimated focal (px, model input)": f"{self._focal['estimated']:.1f}",
            "camera_info focal (px, model input)": f"{self._focal['camera_info']:.1f}",
        }
        device = loaded.device if loaded is not None else None
        hardware_id = "none"
        if device is not None:
            hardware_id = str(device)
            if device.type == "cuda":
                hardware_id = f"{device} ({torch.cuda.get_device_name(device)})"
                state["device memory allocated (MiB)"] = f"{torch.cuda.memory_allocated(device) / 2**20:.0f}"
                state["device memory peak (MiB)"] = f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f}"
        msg = diagnostics_msg(
            self.get_clock().now().to_msg(),
            f"{self.get_fully_qualified_name()}: inference",
            hardware_id,
            self._stats.take_window(),
            state,
            idle_reason=self._idle_reason(),
        )
        self._diagnostics_pub.publish(msg)

    def _idle_reason(self) -> str:
        if self._lifecycle_state != "active":
            return f"{self._lifecycle_state}: not processing"
        return "" if self._enabled else "disabled through ~/enable"

    # ------------------------------------------------------------------ inference thread

    def _on_worker_error(self, error: BaseException) -> None:
        self._stats.error(f"{type(error).__name__}: {error}")
        self.get_logger().error(f"frame failed: {type(error).__name__}: {error}", throttle_duration_sec=WARN_PERIOD)

    def _reset_state(self) -> None:
        self._loaded.engine.reset()
        self._reset_outputs()

    def _reset_outputs(self) -> None:
        self._map.clear()
        self._markers.reset()
        self._path.clear()
        self._last_map_publish = -math.inf

    def _age(self, stamp) -> float:
        return (self.get_clock().now() - Time.from_msg(stamp)).nanoseconds * 1e-9

    def _process(self, msg) -> None:
        settings = self._settings
        if settings.max_image_age > 0.0:
            age = self._age(msg.header.stamp)
            if age > settings.max_image_age:
                self._stats.count(STALE)
                self.get_logger().warning(
                    f"skipping a frame {age:.2f} s old (max_image_age {settings.max_image_age} s)",
                    throttle_duration_sec=WARN_PERIOD,
                )
                return
        try:
            rgb = self._decode(msg)
        except ImageDecodeError as exc:
            self._bad_message(exc)
            return
        wanted = self._wanted(settings)
        engine = self._loaded.engine
        flags = wanted.engine_flags(settings)
        if any(getattr(engine.config, name) != value for name, value in flags.items()):
            engine.config = replace(engine.config, **flags)
        result = engine.step(rgb, msg.header.stamp)

        start = time.perf_counter()
        self._publish(result, msg.header, settings, wanted)
        timings = dict(result.timings, publish=time.perf_counter() - start)
        self._stats.processed(self._age(msg.header.stamp), timings, len(result.people))
        self._record_focal(result, rgb.shape[:2])

    def _wanted(self, settings) -> _Wanted:
        out = self._outputs

        def subscribed(publisher) -> bool:
            return publisher.get_subscription_count() > 0

        markers = settings.publish_markers and subscribed(out.markers)
        return _Wanted(
            humans=subscribed(out.humans),
            cloud=settings.publish_cloud and subscribed(out.cloud),
            markers=markers,
            mesh=markers and settings.publish_mesh
            and time.monotonic() - self._last_mesh >= settings.mesh_publish_period,
            depth=settings.publish_depth and subscribed(out.depth),
            camera_info=settings.publish_camera_info and subscribed(out.camera_info),
        )

    def _publish(self, result, image_header: Header, settings, wanted: _Wanted) -> None:
        out = self._outputs
        stamp = image_header.stamp
        camera_frame = settings.camera_frame or image_header.frame_id
        if not camera_frame:
            camera_frame = FALLBACK_CAMERA_FRAME
            self.get_logger().warning(
                f"image header has no frame_id and camera_frame is unset: using '{camera_frame}'",
                throttle_duration_sec=60.0,
            )
        world = Header(stamp=stamp, frame_id=settings.world_frame)
        camera = Header(stamp=stamp, frame_id=camera_frame)

        transform = conversions.camera_transform(
            result.cam_to_world, settings.world_frame, camera_frame, settings.tf_mode, stamp
        )
        transforms = [] if transform is None else [transform]
        if settings.publish_body_tf:
            transforms += conversions.body_transforms(result, camera_frame, settings.body_frame_prefix, stamp)
        if transforms:
            out.tf.publish(TFMessage(transforms=transforms))
        if wanted.humans:
            out.humans.publish(conversions.humans_msg(result, world, camera_frame, settings.publish_vertices))
        self._publish_points(result, world, settings, wanted)
        if wanted.markers:
            faces = self._loaded.faces if wanted.mesh else None
            out.markers.publish(self._markers.update(world, result.people, faces))
            if wanted.mesh:
                self._last_mesh = time.monotonic()
        if settings.publish_path:
            if self._path.maxlen != settings.path_max_poses:
                self._path = deque(self._path, maxlen=settings.path_max_poses)
            self._path.append(conversions.path_pose(result.cam_to_world, world))
            if out.path.get_subscription_count() > 0:
                out.path.publish(conversions.path_msg(self._path, world))
        if wanted.depth:
            out.depth.publish(conversions.depth_msg(result.points_cam, camera))
        if wanted.camera_info:
            out.camera_info.publish(conversions.camera_info_msg(result.K, result.input_size, camera))

    def _publish_points(self, result, world: Header, settings, wanted: _Wanted) -> None:
        if result.points_world is None:
            return
        select = dict(conf_threshold=settings.cloud_conf_threshold, stride=settings.cloud_stride)
        if wanted.cloud:
            points, colors = conversions.select_cloud_points(
                result.points_world, result.conf, result.rgb, max_points=settings.cloud_max_points, **select
            )
            self._outputs.cloud.publish(conversions.cloud_msg(points, colors, world))
        if not settings.publish_map:
            return
        exclude = None
        if settings.map_exclude_humans and result.human_mask is not None:
            exclude = result.human_mask > HUMAN_MASK_THRESHOLD
        points, colors = conversions.select_cloud_points(
            result.points_world, result.conf, result.rgb, exclude=exclude, **select
        )
        self._map.add(points, colors)
        now = time.monotonic()
        # Published whenever it changed, subscribers or not: transient local keeps it for late joiners.
        if now - self._last_map_publish >= settings.map_publish_period and self._map.merge():
            self._outputs.map.publish(conversions.cloud_msg(self._map.points, self._map.colors, world))
            self._last_map_publish = now

    def _record_focal(self, result, image_hw: tuple[int, int]) -> None:
        """The model's focal next to the camera's (both in model-input pixels), for diagnostics:
        Human3R has no intrinsics input, so a large mismatch explains scale and shape errors."""
        self._focal["estimated"] = float(result.K[0, 0])
        info = self._camera_info
        matches = info is not None and (info.height, info.width) == tuple(image_hw)
        self._focal["camera_info"] = float(info.k[0] * result.scale) if matches else math.nan

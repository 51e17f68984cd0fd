"""The Human3R lifecycle node.

Data flows one way: image message -> (newest-frame slot) -> decoded frame -> engine step on
the inference thread -> FrameResult -> messages, each stamped with the source image's stamp.
The executor thread only validates and hands over messages, serves services, and reports
diagnostics, so it never waits for the model.

Lifecycle: configure loads weights and SMPL-X and creates publishers and services; activate
starts the inference thread and the subscriptions; deactivate stops both; cleanup releases
the model and its device memory. A transition that raises is logged with its traceback and
fails cleanly (configure leaves the node unconfigured); /diagnostics is published from
construction on, with the lifecycle state and the last error.

Nothing a message holds can stop the node: invalid messages are dropped and counted, and an
exception escaping any callback is logged with its traceback while the node keeps spinning.

Interface (relative names; remap in launch). QoS: inputs depth 1 (image_qos); per-frame
outputs reliable volatile; map_cloud reliable transient local.
  in   image (sensor_msgs/Image) or image/compressed (CompressedImage, compressed_input)
  in   camera_info: validated; its focal is reported next to the model's (Human3R itself
       has no intrinsics input)
  in   (image and camera_info are relative: a namespace or remap moves them with the outputs)
  out  humans (h3r_ros/HumanArray, world frame; every track with its state, ages and
       velocity), /tf (world -> camera optical, or inverse; optionally camera optical ->
       <body_frame_prefix><track_id> per person), cloud and map_cloud (PointCloud2, world
       frame), markers (MarkerArray), camera_path (nav_msgs/Path), depth/image (32FC1) +
       depth/camera_info (model-input resolution, roi in the resized source image) and
       estimated_camera_info (source-image resolution), /diagnostics; with
       publish_hri_bodies the REP-155 body topics (h3r_ros/ros/hri_bodies.py)
  srv  ~/reset (std_srvs/Trigger), ~/enable (std_srvs/SetBool)
"""

from __future__ import annotations

import functools
import gc
import math
import time
import traceback
from collections import deque
from dataclasses import dataclass, replace

import torch
from diagnostic_msgs.msg import DiagnosticArray
from nav_msgs.msg import Path
from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Header
from std_srvs.srv import SetBool, Trigger
from visualization_msgs.msg import MarkerArray

try:
    from tf2_msgs.msg import TFMessage
except ImportError:  # ROS 2 from PyPI wheels alone has no tf2: the node runs without /tf
    TFMessage = None

from h3r_ros.engine.point_selection import PointSelection
from h3r_ros.engine.preprocess import crop_geometry
from h3r_ros.engine.track_motion import LOST, TrackMotion
from h3r_ros.msg import HumanArray
from h3r_ros.ros import conversions, hri_bodies, parameters
from h3r_ros.ros.diagnostics import BAD, BAD_INFO, DROPPED, OUT_OF_ORDER, RECEIVED, STALE, NodeStats, diagnostics_msg
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
WARN_PERIOD = 5.0  # s between repeated warnings of one kind
MARKER_LIFETIME_PERIODS = 3.0  # marker lifetime in inference periods
MARKER_LIFETIME_RANGE = (0.5, 30.0)  # s
_NANOSECONDS = 1_000_000_000
SHUTDOWN_JOIN_TIMEOUT = 1.0  # s the shutdown transition waits for the frame in progress

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
    depth_info: object
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


class Human3RNode(LifecycleNode):
    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self._lifecycle_state = "unconfigured"
        self._last_error = ""
        # Start-up values that failed their checks: name -> reason; configure refuses them.
        self._parameter_errors = parameters.declare(self)
        for name, reason in self._parameter_errors.items():
            self._report_error(f"parameter {name} rejected, default kept: {reason}")
        self.add_on_set_parameters_callback(self._check_parameter_change)
        self.add_post_set_parameters_callback(self._on_parameters_set)
        self._settings = parameters.read(self)
        self._enabled = True
        self._stats = NodeStats()
        self._loaded: LoadedEngine | None = None
        self._outputs: _Outputs | None = None
        self._service_handles: list = []
        self._inputs: list = []
        self._worker: InferenceWorker | None = None
        self._check = self._decode = None
        self._last_stamp: int | None = None  # ns of the newest accepted image
        self._frame_period: float | None = None  # smoothed s between processed frames
        self._last_processed = -math.inf
        self._camera_info: CameraInfo | None = None
        self._focal = {"estimated": math.nan, "camera_info": math.nan}
        # Output state, touched only by the inference thread (or while it is stopped).
        self._map: VoxelMap | None = None
        self._markers = TrackMarkers()
        self._motion = TrackMotion()
        self._hri: hri_bodies.HriBodies | None = None
        self._path: deque = deque()
        self._last_map_publish = -math.inf
        self._last_mesh = -math.inf
        # Diagnostics also report an unconfigured or inactive node: not lifecycle-managed.
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diagnostics_timer = None
        self._start_diagnostics(self._settings.diagnostics_period)

    def create_subscription(self, msg_type, topic, callback, *args, **kwargs):
        return super().create_subscription(msg_type, topic, self._guarded(callback), *args, **kwargs)

    def create_service(self, srv_type, name, callback, *args, **kwargs):
        return super().create_service(srv_type, name, self._guarded(callback), *args, **kwargs)

    def create_timer(self, period, callback, *args, **kwargs):
        return super().create_timer(period, self._guarded(callback), *args, **kwargs)

    def _guarded(self, callback):
        """``callback`` such that an exception is logged with its traceback and recorded
        instead of leaving the executor's spin (which would end the process). A service
        callback answers with success false."""
        name = getattr(callback, "__name__", repr(callback))
        last_logged = [-math.inf]  # rate limit per callback (rclpy throttles per call site)

        @functools.wraps(callback)
        def guarded(*args):
            try:
                return callback(*args)
            except Exception as exc:  # noqa: BLE001 - nothing may stop the executor
                now = time.monotonic()
                log = now - last_logged[0] >= WARN_PERIOD
                if log:
                    last_logged[0] = now
                self._report_error(f"{name} failed: {type(exc).__name__}: {exc}", traceback.format_exc(), log=log)
                if len(args) == 2 and hasattr(args[1], "success"):  # (request, response)
                    response = args[1]
                    response.success = False
                    if hasattr(response, "message"):
                        response.message = f"{type(exc).__name__}: {exc}"
                    return response
                return None

        return guarded

    def _report_error(self, text: str, trace: str = "", log: bool = True) -> None:
        """Log an error (with its traceback when given) and keep it for /diagnostics."""
        self._last_error = text
        if log:
            self.get_logger().error(f"{text}\n{trace.rstrip()}" if trace else text)

    def _start_diagnostics(self, period: float) -> None:
        if self._diagnostics_timer is not None:
            if abs(self._diagnostics_timer.timer_period_ns * 1e-9 - period) < 1e-9:
                return
            self.destroy_timer(self._diagnostics_timer)
        self._diagnostics_timer = self.create_timer(period, self._publish_diagnostics)

    @property
    def lifecycle_state(self) -> str:
        """'unconfigured', 'inactive', 'active' or 'finalized'."""
        return self._lifecycle_state

    # ------------------------------------------------------------------ lifecycle

    def _transition(self, name: str, body, state: LifecycleState, undo) -> TransitionCallbackReturn:
        """Run a transition; on an exception log it with its traceback, ``undo()`` what was
        done and fail (rclpy would otherwise swallow the cause)."""
        try:
            return body(state)
        except Exception as exc:  # noqa: BLE001 - any failure must leave a clean, explained state
            self._report_error(f"{name} failed: {type(exc).__name__}: {exc}", traceback.format_exc())
            try:
                undo()
            except Exception as cleanup_exc:  # noqa: BLE001
                self._report_error(f"{name} failed, and undoing it too: {cleanup_exc}", traceback.format_exc())
            return TransitionCallbackReturn.FAILURE

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("configure", self._configure, state, self._release)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("activate", self._activate, state, self._undo_activate)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("deactivate", self._deactivate, state, self._undo_activate)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("cleanup", self._cleanup, state, self._release)

    def _undo_activate(self) -> None:
        self._stop_processing()
        super().on_deactivate(None)

    def _configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        settings = parameters.read(self)
        problems = [f"{name} (start-up value rejected: {reason})" for name, reason in self._parameter_errors.items()]
        problems += parameters.check_settings(settings)
        if problems:
            self._report_error("configure failed: invalid parameters: " + "; ".join(problems))
            return TransitionCallbackReturn.FAILURE
        if settings.publish_hri_bodies and hri_bodies.IdsList is None:
            self.get_logger().error(
                "configure failed: publish_hri_bodies is true but hri_msgs (ROS4HRI) is not installed: "
                "install ros-<distro>-hri-msgs or set publish_hri_bodies to false")
            return TransitionCallbackReturn.FAILURE
        try:
            self._loaded = load_engine(settings)
        except LoadError as exc:
            self._report_error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        self._settings = settings
        self.get_logger().info(f"loaded Human3R: {self._loaded.description}")
        self.get_logger().info(f"precision {self._loaded.precision.dtype}: {self._loaded.precision.reason}")
        if self._loaded.warning:
            self.get_logger().warning(self._loaded.warning)
        if TFMessage is None:
            self.get_logger().warning("tf2_msgs is not installed: no /tf is published (tf_mode and body frames "
                                      "have no effect); install ros-<distro>-tf2-msgs for TF")

        self._outputs = _Outputs(
            humans=self.create_lifecycle_publisher(HumanArray, "humans", _EVENT_QOS),
            tf=None if TFMessage is None else self.create_lifecycle_publisher(TFMessage, "/tf", _TF_QOS),
            cloud=self.create_lifecycle_publisher(PointCloud2, "cloud", _FRAME_QOS),
            map=self.create_lifecycle_publisher(PointCloud2, "map_cloud", _LATCHED_QOS),
            markers=self.create_lifecycle_publisher(MarkerArray, "markers", _EVENT_QOS),
            path=self.create_lifecycle_publisher(Path, "camera_path", _FRAME_QOS),
            depth=self.create_lifecycle_publisher(Image, "depth/image", _FRAME_QOS),
            depth_info=self.create_lifecycle_publisher(CameraInfo, "depth/camera_info", _FRAME_QOS),
            camera_info=self.create_lifecycle_publisher(CameraInfo, "estimated_camera_info", _FRAME_QOS),
        )
        self._service_handles = [
            self.create_service(Trigger, "~/reset", self._on_reset),
            self.create_service(SetBool, "~/enable", self._on_enable),
        ]
        self._start_diagnostics(settings.diagnostics_period)
        self._map = VoxelMap(settings.map_voxel_size, settings.map_max_points)
        self._hri = hri_bodies.HriBodies(self) if settings.publish_hri_bodies else None
        self._motion = TrackMotion(settings.track_timeout)
        self._reset_outputs()
        self._lifecycle_state = "inactive"
        self._last_error = ""
        return TransitionCallbackReturn.SUCCESS

    def _activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        settings = self._settings
        enabled = super().on_activate(state)  # enables the lifecycle publishers
        if enabled != TransitionCallbackReturn.SUCCESS:
            return enabled
        self._stats = NodeStats()
        self._last_stamp = None
        self._frame_period = None
        self._last_processed = -math.inf
        self._worker = InferenceWorker(self._process, self._reset_state, self._on_worker_error)
        self._worker.start()
        qos = input_qos(settings.image_qos)
        if settings.compressed_input:
            self._check, self._decode = check_compressed, decode_compressed
            image_sub = self.create_subscription(CompressedImage, self._compressed_topic(), self._on_image, qos)
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

    def _compressed_topic(self) -> str:
        """image_transport's naming: the compressed stream of <image> is <image>/compressed, so it
        follows a remap of 'image' however compressed_input was set; an explicit remap of
        'image/compressed' still wins."""
        explicit = self.resolve_topic_name("image/compressed")
        if explicit != self.resolve_topic_name("image/compressed", only_expand=True):
            return explicit
        return self.resolve_topic_name("image") + "/compressed"

    def _deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing()
        super().on_deactivate(state)
        self._lifecycle_state = "inactive"
        return TransitionCallbackReturn.SUCCESS

    def _cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self._lifecycle_state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            # Bounded: a process shutting down must not wait out a multi-second CPU frame.
            self._stop_processing(timeout=SHUTDOWN_JOIN_TIMEOUT)
            self._release()
        except Exception as exc:  # noqa: BLE001 - shutting down regardless
            self._report_error(f"shutdown: {type(exc).__name__}: {exc}", traceback.format_exc())
        self._lifecycle_state = "finalized"
        self.get_logger().info("shut down: inference thread stopped, model released")
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._report_error(f"error while leaving state {state.label}: releasing everything")
        try:
            self._stop_processing()
            self._release()
        except Exception as exc:  # noqa: BLE001
            self._report_error(f"error recovery: {type(exc).__name__}: {exc}", traceback.format_exc())
        self._lifecycle_state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def _stop_processing(self, timeout: float | None = None) -> None:
        for subscription in self._inputs:
            self.destroy_subscription(subscription)
        self._inputs = []
        if self._worker is not None:
            if not self._worker.stop(timeout):  # waits for the frame in progress
                self.get_logger().warning(f"a frame was still being processed after {timeout} s: abandoning it")
            self._worker = None

    def _release(self) -> None:
        if self._outputs is not None:
            for publisher in vars(self._outputs).values():
                if publisher is not None:
                    self.destroy_lifecycle_publisher(publisher)
            self._outputs = None
        if self._hri is not None:
            self._hri.close()
            self._hri = None
        for service in self._service_handles:
            self.destroy_service(service)
        self._service_handles = []
        device = self._loaded.device if self._loaded is not None else None
        self._loaded = None
        self._map = None
        gc.collect()
        if device is not None and device.type == "cuda":
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ parameters

    def _check_parameter_change(self, changed):
        """Refuse changing a configure-time parameter while configured: it would be accepted
        and silently do nothing until the next configure."""
        if self._lifecycle_state in ("inactive", "active"):
            for parameter in changed:
                if parameter.name in parameters.LIVE_PARAMETERS or not self.has_parameter(parameter.name):
                    continue
                if parameter.value != self.get_parameter(parameter.name).value:
                    return SetParametersResult(successful=False, reason=(
                        f"{parameter.name} is read when the node is configured: deactivate and clean up "
                        "the node, set it, then configure (and activate) again"))
        return SetParametersResult(successful=True)

    def _on_parameters_set(self, changed) -> None:
        for parameter in changed:
            self._parameter_errors.pop(parameter.name, None)
        live = {p.name: p.value for p in changed if p.name in parameters.LIVE_PARAMETERS}
        if live:
            self._settings = replace(self._settings, **live)

    # ------------------------------------------------------------------ executor thread

    def _on_image(self, msg) -> None:
        self._stats.count(RECEIVED)
        worker = self._worker  # None while a transition (from another thread) tears down
        if not self._enabled or worker is None:
            return
        settings = self._settings
        try:
            stamp = _stamp_ns(msg.header.stamp)
            width, height = self._check(msg, settings.max_image_pixels)
            crop_geometry(width, height, settings.input_size)
            self._check_frame_id(msg.header.frame_id, settings)
        except ValueError as exc:  # ImageDecodeError, or a frame the model cannot take
            self._bad_message(exc)
            return
        if self._last_stamp is not None and stamp < self._last_stamp:
            jump = (self._last_stamp - stamp) * 1e-9
            if jump < settings.stamp_jump_threshold:
                self._stats.count(OUT_OF_ORDER)
                self.get_logger().warning(
                    f"dropping an image stamped {jump:.3f} s before the previous one (out of order; "
                    f"stamp_jump_threshold {settings.stamp_jump_threshold} s)", throttle_duration_sec=WARN_PERIOD,
                )
                return
            self.get_logger().warning(
                f"image stamp jumped back by {jump:.3f} s (bag loop or clock reset): resetting the reconstruction"
            )
            worker.request_reset()
        self._last_stamp = stamp
        if worker.submit(msg):
            self._stats.count(DROPPED)

    @staticmethod
    def _check_frame_id(frame_id: str, settings) -> None:
        """A header frame_id the node would publish (camera_frame unset) must be a frame name."""
        if settings.camera_frame or not frame_id:
            return  # the parameter wins; no frame_id falls back to FALLBACK_CAMERA_FRAME
        reason = parameters.valid_frame_name(frame_id)
        if reason:
            raise ImageDecodeError(f"header frame_id {reason}")
        if frame_id == settings.world_frame:
            raise ImageDecodeError(f"header frame_id {frame_id!r} is the world frame")

    def _on_camera_info(self, msg: CameraInfo) -> None:
        if conversions.valid_intrinsics(msg.k):
            self._camera_info = msg
            return
        # Dropped like any bad input: the last valid camera_info stays in use.
        self._stats.count(BAD_INFO)
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

    def bounded_sizes(self) -> dict[str, int]:
        """Sizes of every structure that grows with the run, each with a bound."""
        loaded, voxel_map = self._loaded, self._map
        return {
            "map points": 0 if voxel_map is None else voxel_map.size,
            "camera path poses": len(self._path),
            "tracks in the bank": 0 if loaded is None else loaded.engine.tracks,
            "markers shown": self._markers.shown,
        }

    def _publish_diagnostics(self) -> None:
        loaded = self._loaded
        state = {
            "lifecycle state": self._lifecycle_state,
            "last error": self._last_error or "none",
            **{key: str(value) for key, value in self.bounded_sizes().items()},
            "enabled": str(self._enabled).lower(),
            "model": loaded.description if loaded is not None else "not loaded",
            "precision": f"{loaded.precision.dtype} ({loaded.precision.reason})" if loaded is not None else "n/a",
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
            node_error=self._last_error if self._lifecycle_state == "unconfigured" else "",
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
        now = time.monotonic()
        if math.isfinite(self._last_processed):
            period = now - self._last_processed
            self._frame_period = period if self._frame_period is None else 0.8 * self._frame_period + 0.2 * period
        self._last_processed = now
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
            rgb = self._decode(msg, settings.max_image_pixels)
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
        self._publish(result, msg.header, settings, wanted, (rgb.shape[1], rgb.shape[0]))
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
            depth=settings.publish_depth and (subscribed(out.depth) or subscribed(out.depth_info)),
            camera_info=settings.publish_camera_info and subscribed(out.camera_info),
        )

    def _update_tracks(self, result, settings, now: float):
        """Track states for this frame: (alive tracks, ended tracks); ended ids leave the engine."""
        motion = self._motion
        motion.timeout = settings.track_timeout
        ended = motion.reset() if result.reset else []
        observations = [(p.track_id, _pelvis_world(p), p) for p in result.people]
        alive, ended_now = motion.update(now, observations)
        ended += ended_now
        if ended_now:
            self._loaded.engine.forget_tracks([t.track_id for t in ended_now])
        return alive, ended

    def _publish(self, result, image_header: Header, settings, wanted: _Wanted, source_wh) -> None:
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
        now = Time.from_msg(stamp).nanoseconds * 1e-9
        alive, ended = self._update_tracks(result, settings, now)
        transforms = [] if transform is None else [transform]
        if settings.publish_body_tf:
            transforms += conversions.body_transforms(result, camera_frame, settings.body_frame_prefix, stamp)
        if self._hri is not None:
            transforms += conversions.body_transforms(result, camera_frame, hri_bodies.FRAME_PREFIX, stamp)
        if transforms and out.tf is not None:
            out.tf.publish(TFMessage(transforms=transforms))
        if wanted.humans:
            out.humans.publish(
                conversions.humans_msg(result, world, camera_frame, settings.publish_vertices, alive + ended, now)
            )
        if self._hri is not None:
            self._hri.publish(world, [t for t in alive if t.state != LOST], ended)
        self._publish_points(result, world, settings, wanted)
        if wanted.markers:
            faces = self._loaded.faces if wanted.mesh else None
            lifetime = self._marker_lifetime()
            mesh_lifetime = lifetime + 2.0 * settings.mesh_publish_period
            lost = [t.track_id for t in alive if t.state == LOST]
            out.markers.publish(
                self._markers.update(world, result.people, faces, lifetime, mesh_lifetime, keep=lost))
            if wanted.mesh:
                self._last_mesh = time.monotonic()
        if settings.publish_path:
            if self._path.maxlen != settings.path_max_poses:
                self._path = deque(self._path, maxlen=settings.path_max_poses)
            self._path.append(conversions.path_pose(result.cam_to_world, world))
            if out.path.get_subscription_count() > 0:
                out.path.publish(conversions.path_msg(self._path, world))
        resized_wh = result.resized_size or source_wh
        if wanted.depth:
            out.depth.publish(conversions.depth_msg(result.points_cam, camera))
            out.depth_info.publish(conversions.depth_camera_info_msg(result.K, result.crop_box, resized_wh, camera))
        if wanted.camera_info:
            K_source = conversions.intrinsics_in_source(
                conversions.intrinsics_in_resized(result.K, result.crop_box), resized_wh, source_wh
            )
            out.camera_info.publish(conversions.camera_info_msg(K_source, (source_wh[1], source_wh[0]), camera))

    def _marker_lifetime(self) -> float:
        """A few inference periods: markers outlive the gap to the next frame, not the node."""
        low, high = MARKER_LIFETIME_RANGE
        period = self._frame_period if self._frame_period is not None else low
        return min(max(MARKER_LIFETIME_PERIODS * period, low), high)

    def _publish_points(self, result, world: Header, settings, wanted: _Wanted) -> None:
        if wanted.cloud and "cloud" in result.selections:
            chosen = result.selections["cloud"]
            self._outputs.cloud.publish(conversions.cloud_msg(chosen.points, chosen.colors(result.rgb), world))
        if not settings.publish_map or "map" not in result.selections:
            return
        chosen = result.selections["map"]
        self._map.add(chosen.points, chosen.colors(result.rgb))
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


def _stamp_ns(stamp) -> int:
    """A header stamp in nanoseconds; ImageDecodeError for stamps ROS time cannot hold."""
    if stamp.sec < 0 or not 0 <= stamp.nanosec < _NANOSECONDS:
        raise ImageDecodeError(f"invalid header stamp (sec {stamp.sec}, nanosec {stamp.nanosec})")
    return stamp.sec * _NANOSECONDS + stamp.nanosec


def _pelvis_world(person):
    """The pelvis in the world frame (the head for a person without a body)."""
    return person.head_world if person.joints_world is None else person.joints_world[0]

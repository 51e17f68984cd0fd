"""The Human3R lifecycle node: lifecycle, input gating and services; the rest is wired in.

The node serves one camera, or the N named in ``cameras``: each a ``Camera`` (camera.py) with
its own inputs, world (engine state over the node's one model) and outputs. Data flows one
way: image message -> (the camera's newest-frame slot, ``InferenceWorker``) -> a round on the
inference thread (each waiting camera's ``FrameProcessor``: decode, rectify, engine step) ->
each camera's ``Outputs`` (messages, each stamped with the source image's stamp) -> with
several cameras and output_frame, ``FusedOutputs`` (their people joined). The executor thread
only validates and hands over messages, serves services, and reports diagnostics, so it never
waits for the model.

Lifecycle: configure loads weights and SMPL-X and creates publishers and services; activate
starts the inference thread and the subscriptions; deactivate stops both; cleanup releases
the model and its device memory and forgets the camera (camera_info, last stamp). Stopping
waits for the frame in progress, at most STOP_TIMEOUT s (SHUTDOWN_TIMEOUT s when shutting
down); a frame still running then publishes nothing, and keeps what it uses until it ends.
A transition that raises is logged with its traceback and fails cleanly (configure leaves
the node unconfigured); /diagnostics is published from construction on, with the lifecycle
state and the last error (of a transition, a callback or a frame).

Nothing a message holds can stop the node: invalid messages are dropped and counted, and an
exception escaping any callback or frame is logged with its traceback while the node keeps
running.

Interface (relative names; remap in launch). Inputs are depth 1 (image_qos); outputs' QoS in
h3r_ros/ros/outputs.py.
  in   image (sensor_msgs/Image) or image/compressed (CompressedImage, compressed_input)
  in   camera_info: checked whole (camera_info_check.py); with distortion, images are
       rectified from it (rectification.py, parameter rectify); its focal is reported next to
       the model's (Human3R itself has no intrinsics input)
  out  humans (h3r_ros/HumanArray, world frame; every track with its state, ages and
       velocity), /tf (world -> camera optical, or inverse; optionally camera optical ->
       <body_frame_prefix><track_id> per person), cloud and map_cloud (PointCloud2, world
       frame), markers (MarkerArray), camera_path (nav_msgs/Path), depth/image (32FC1) +
       depth/camera_info (model-input resolution, roi in the resized source image) and
       estimated_camera_info (source-image resolution), /diagnostics; with
       publish_hri_bodies the REP-155 body topics (h3r_ros/ros/hri_bodies.py)
  srv  ~/reset (std_srvs/Trigger), ~/enable (std_srvs/SetBool)
With named cameras, each camera's inputs and outputs are under <name>/ (its world frame
<world_frame>_<name>), ~/<name>/reset resets it alone, and the top-level humans and markers
are the fused people (with output_frame; not published without it).
"""

from __future__ import annotations

import gc
import traceback
from dataclasses import replace
from functools import partial

import torch
from diagnostic_msgs.msg import DiagnosticArray
from std_msgs.msg import Header
from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_srvs.srv import SetBool, Trigger

from h3r_ros.engine.preprocess import crop_geometry
from h3r_ros.ros import hri_bodies, parameters
from h3r_ros.ros.callback_guard import RateLimit, guarded
from h3r_ros.ros.camera import Camera, process_round
from h3r_ros.ros.camera_info_check import camera_info_problem
from h3r_ros.ros.diagnostics import BAD, BAD_INFO, DROPPED, OUT_OF_ORDER, RECEIVED, NodeState, node_status
from h3r_ros.ros.engine_loader import LoadedEngine, LoadError, load_engine, restore_cpu_threads
from h3r_ros.ros.frame_processor import FrameProcessor
from h3r_ros.ros.fused_outputs import FusedOutputs
from h3r_ros.ros.image_decoding import ImageDecodeError
from h3r_ros.ros.inference_worker import ALL, InferenceWorker
from h3r_ros.ros.output_frame import OutputFrameUnavailable
from h3r_ros.ros.outputs import Outputs
from h3r_ros.ros.tf_tree import TfTree

NODE_NAME = "human3r_node"
WARN_PERIOD = 5.0  # s between repeated warnings of one kind
STOP_TIMEOUT = 30.0  # s deactivate and cleanup wait for the frame in progress
SHUTDOWN_TIMEOUT = 2.0  # s shutdown waits for it (ros2 launch sends SIGTERM after 5 s)
_NANOSECONDS = 1_000_000_000


def input_qos(name: str) -> QoSProfile:
    """Depth 1 so that the middleware never queues stale images for us."""
    reliability = ReliabilityPolicy.BEST_EFFORT if name == "sensor_data" else ReliabilityPolicy.RELIABLE
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=1, reliability=reliability, durability=DurabilityPolicy.VOLATILE
    )


class Human3RNode(LifecycleNode):
    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self._lifecycle_state = "unconfigured"
        self._loading = ""  # what configure is doing, while it runs
        self._last_error = ""
        # Start-up values that failed their checks: name -> reason; configure refuses them.
        self._parameter_errors = parameters.declare(self)
        for name, reason in self._parameter_errors.items():
            self._report_error(f"parameter {name} rejected, default kept: {reason}")
        self.add_on_set_parameters_callback(self._check_parameter_change)
        self.add_post_set_parameters_callback(self._on_parameters_set)
        self._settings = parameters.read(self)
        parameters.declare_cameras(self, self._settings)
        self._cameras = [Camera(c) for c in parameters.read_cameras(self, self._settings)]
        self._enabled = True
        self._frame_errors = RateLimit(WARN_PERIOD)
        self._loaded: LoadedEngine | None = None
        self._tree: TfTree | None = None
        self._fused: FusedOutputs | None = None  # several cameras' people, joined in output_frame
        self._service_handles: list = []
        self._inputs: list = []
        self._worker: InferenceWorker | None = None
        self._straggler: InferenceWorker | None = None  # stopped, its frame still running
        # Resets asked for while a cancelled frame still writes to the engines: applied before
        # the next round instead, so that frame's writes cannot undo them.
        self._resets_pending: list = []
        # Diagnostics also report an unconfigured or inactive node: not lifecycle-managed.
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diagnostics_timer = None
        self._start_diagnostics(self._settings.diagnostics_period)

    def create_subscription(self, msg_type, topic, callback, *args, **kwargs):
        return super().create_subscription(msg_type, topic, guarded(callback, self._report_error, WARN_PERIOD),
                                           *args, **kwargs)

    def create_service(self, srv_type, name, callback, *args, **kwargs):
        return super().create_service(srv_type, name, guarded(callback, self._report_error, WARN_PERIOD),
                                      *args, **kwargs)

    def create_timer(self, period, callback, *args, **kwargs):
        return super().create_timer(period, guarded(callback, self._report_error, WARN_PERIOD), *args, **kwargs)

    def _report_error(self, text: str, trace: str = "", log: bool = True) -> None:
        """Log an error (with its traceback when given) and keep it for /diagnostics."""
        self._last_error = text
        if log:
            self.get_logger().error(f"{text}\n{trace.rstrip()}" if trace else text)

    @property
    def cameras(self) -> list[Camera]:
        """The cameras the node serves (one, named '', without the ``cameras`` parameter)."""
        return list(self._cameras)

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
        self._lifecycle_state = "configuring"
        result = self._transition("configure", self._configure, state, self._release)
        self._loading = ""
        if result != TransitionCallbackReturn.SUCCESS:
            self._lifecycle_state = "unconfigured"
        return result

    def _progress(self, text: str) -> None:
        """What configure is doing now, for /diagnostics (which answers throughout)."""
        self._loading = text

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("activate", self._activate, state, self._undo_activate)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("deactivate", self._deactivate, state, self._undo_activate)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("cleanup", self._cleanup, state, self._release)

    def _undo_activate(self) -> None:
        self._stop_processing(STOP_TIMEOUT)
        super().on_deactivate(None)

    def _configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        settings = parameters.read(self)
        problems = [f"{name} (start-up value rejected: {reason})" for name, reason in self._parameter_errors.items()]
        problems += parameters.check_settings(settings)
        parameters.declare_cameras(self, settings)
        cameras = parameters.read_cameras(self, settings)
        problems += parameters.camera_problems(cameras)
        if problems:
            self._report_error("configure failed: invalid parameters: " + "; ".join(problems))
            return TransitionCallbackReturn.FAILURE
        if settings.publish_hri_bodies and settings.cameras and not settings.output_frame:
            self._report_error(
                "configure failed: with several cameras, the REP-155 bodies are the fused people, which need "
                "output_frame (a frame of the robot's tree, e.g. odom); set it, or publish_hri_bodies to false")
            return TransitionCallbackReturn.FAILURE
        if settings.publish_hri_bodies and hri_bodies.IdsList is None:
            self._report_error(
                "configure failed: publish_hri_bodies is true but hri_msgs (ROS4HRI) is not installed: "
                "install ros-<distro>-hri-msgs or set publish_hri_bodies to false")
            return TransitionCallbackReturn.FAILURE
        try:
            # Listening from here on, the robot's tree is known by the first image.
            self._tree = TfTree(self, settings.tf_listen_time)
        except ImportError:
            self._tree = None
        try:
            self._loaded = load_engine(settings, self._progress)
        except LoadError as exc:
            self._report_error(f"configure failed: {exc}")
            self._release()
            return TransitionCallbackReturn.FAILURE
        self._settings = settings
        self.get_logger().info(f"loaded Human3R: {self._loaded.description}")
        self.get_logger().info(f"precision {self._loaded.precision.dtype}: {self._loaded.precision.reason}")
        if self._loaded.warning:
            self.get_logger().warning(self._loaded.warning)

        self._cameras = [Camera(c) for c in cameras]
        try:
            for camera in self._cameras:
                self._attach(camera, settings)
            if settings.cameras and settings.output_frame:
                self._fused = FusedOutputs(self, settings)
        except OutputFrameUnavailable as exc:
            self._report_error(f"configure failed: {exc}")
            self._release()
            return TransitionCallbackReturn.FAILURE
        if len(self._cameras) > 1:
            names = ", ".join(c.name for c in self._cameras)
            self.get_logger().info(f"serving {len(self._cameras)} cameras ({names}) with one model, each in "
                                   f"its own world ({settings.world_frame}_<name>)")
            if not settings.output_frame:
                self.get_logger().warning(
                    "several cameras without output_frame: their people are in worlds of their own, with no "
                    "frame in common to fuse them in, so the top-level 'humans' is not published (each "
                    "camera's is, under <name>/humans); set output_frame (e.g. odom) to fuse them")
        self._service_handles = [
            self.create_service(Trigger, "~/reset", self._on_reset),
            self.create_service(SetBool, "~/enable", self._on_enable),
        ] + [self.create_service(Trigger, f"~/{c.name}/reset", partial(self._on_reset, name=c.name))
             for c in self._cameras if c.name]
        self._start_diagnostics(settings.diagnostics_period)
        self._lifecycle_state = "inactive"
        self._last_error = ""
        return TransitionCallbackReturn.SUCCESS

    def _activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._straggler is not None:
            if not self._straggler.wait(STOP_TIMEOUT):
                raise RuntimeError(f"the frame that outlived the last deactivation is still running after "
                                   f"{STOP_TIMEOUT:g} s more")
            self._straggler = None
        settings = self._settings
        enabled = super().on_activate(state)  # enables the lifecycle publishers
        if enabled != TransitionCallbackReturn.SUCCESS:
            return enabled
        for camera in self._cameras:
            camera.stats.restart()
            camera.input.last_stamp = None
            camera.processor.resume()
        self._worker = InferenceWorker(self._process_round, self._reset_camera, self._on_round_error)
        for key in self._resets_pending:
            self._worker.request_reset(key)
        self._resets_pending = []
        self._worker.start()
        qos = input_qos(settings.image_qos)
        self._inputs = []
        for camera in self._cameras:
            topic = camera.settings.image_topic
            if camera.settings.compressed_input:
                image_sub = self.create_subscription(CompressedImage, self._compressed_topic(topic),
                                                     partial(self._on_image, camera), qos)
            else:
                image_sub = self.create_subscription(Image, topic, partial(self._on_image, camera), qos)
            self._inputs += [image_sub, self.create_subscription(
                CameraInfo, camera.settings.camera_info_topic, partial(self._on_camera_info, camera), qos)]
            self.get_logger().info(f"active: reading {image_sub.topic_name}")
        self._lifecycle_state = "active"
        return TransitionCallbackReturn.SUCCESS

    def _attach(self, camera: Camera, settings) -> None:
        """The camera's world over the loaded model: the first camera gets the loaded engine,
        the others engines of their own over the same weights."""
        engine = self._loaded.engine if camera is self._cameras[0] else self._loaded.engine.sibling()
        camera.outputs = Outputs(self, camera.view(settings), self._loaded.faces, camera.stats, self._tree, camera.name)
        camera.processor = FrameProcessor(
            self, engine, camera.outputs, camera.stats, lambda: camera.view(self._settings),
            lambda: camera.input.camera_info, lambda error: self._bad_message(camera, error))

    def _compressed_topic(self, topic: str) -> str:
        """image_transport's naming: the compressed stream of <image> is <image>/compressed, so it
        follows a remap of the image topic however compressed_input was set; an explicit remap
        of '<image>/compressed' still wins."""
        explicit = self.resolve_topic_name(f"{topic}/compressed")
        if explicit != self.resolve_topic_name(f"{topic}/compressed", only_expand=True):
            return explicit
        return self.resolve_topic_name(topic) + "/compressed"

    def _deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing(STOP_TIMEOUT)
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
            self._stop_processing(SHUTDOWN_TIMEOUT)
            self._release()
        except Exception as exc:  # noqa: BLE001 - shutting down regardless
            self._report_error(f"shutdown: {type(exc).__name__}: {exc}", traceback.format_exc())
        self._lifecycle_state = "finalized"
        self.get_logger().info("shut down")
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._report_error(f"error while leaving state {state.label}: releasing everything")
        try:
            self._stop_processing(STOP_TIMEOUT)
            self._release()
        except Exception as exc:  # noqa: BLE001
            self._report_error(f"error recovery: {type(exc).__name__}: {exc}", traceback.format_exc())
        self._lifecycle_state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def _stop_processing(self, timeout: float) -> None:
        """No new input, then the inference thread stops after its frame in progress; a frame
        still running after ``timeout`` s is cancelled: it publishes nothing."""
        for subscription in self._inputs:
            self.destroy_subscription(subscription)
        self._inputs = []
        worker, self._worker = self._worker, None
        if worker is None:
            return
        if worker.stop(timeout):
            self.get_logger().info("inference thread stopped")
            return
        for camera in self._cameras:
            if camera.processor is not None:
                camera.processor.cancel()
        self._straggler = worker
        self.get_logger().warning(f"a frame was still being processed after {timeout:g} s: it is cancelled "
                                  "(publishes nothing) and keeps the model until it ends")

    def _release(self) -> None:
        """Outputs, services and the model go (the model stays with a frame still running)."""
        if any(camera.outputs is not None for camera in self._cameras):
            for camera in self._cameras:
                camera.release()
            if self._fused is not None:
                self._fused.close()
                self._fused = None
            self.get_logger().info("outputs closed")
        if self._tree is not None:
            self._tree.close()
            self._tree = None
        for service in self._service_handles:
            self.destroy_service(service)
        self._service_handles = []
        self._resets_pending = []  # the next configure starts new worlds anyway
        loaded, self._loaded = self._loaded, None
        for camera in self._cameras:
            camera.forget()
        restore_cpu_threads()
        if loaded is None:
            return
        if self._straggler is not None and self._straggler.running:
            self.get_logger().warning("model released by the node: the cancelled frame frees it when it ends")
            return
        del loaded
        gc.collect()
        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()
        self.get_logger().info("model released")

    # ------------------------------------------------------------------ parameters

    def _check_parameter_change(self, changed):
        """Refuse changing a configure-time parameter while configured: it would be accepted
        and silently do nothing until the next configure."""
        if self._lifecycle_state in ("configuring", "inactive", "active"):
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

    def _on_image(self, camera: Camera, msg) -> None:
        stats, known = camera.stats, camera.input
        stats.count(RECEIVED)
        worker = self._worker  # None while a transition (from another thread) tears down
        if not self._enabled or worker is None:
            return
        settings = camera.view(self._settings)
        try:
            stamp = _stamp_ns(msg.header.stamp)
            width, height = camera.check(msg, settings.max_image_pixels)
            crop_geometry(width, height, settings.input_size)
            self._check_frame_id(msg.header.frame_id, settings)
        except ValueError as exc:  # ImageDecodeError, or a frame the model cannot take
            self._bad_message(camera, exc)
            return
        if known.last_stamp is not None and stamp < known.last_stamp:
            jump = (known.last_stamp - stamp) * 1e-9
            if jump < settings.stamp_jump_threshold:
                stats.count(OUT_OF_ORDER)
                self.get_logger().warning(
                    f"{_of(camera)}dropping an image stamped {jump:.3f} s before the previous one (out of order; "
                    f"stamp_jump_threshold {settings.stamp_jump_threshold} s)", throttle_duration_sec=WARN_PERIOD,
                )
                return
            self.get_logger().warning(
                f"{_of(camera)}image stamp jumped back by {jump:.3f} s (bag loop or clock reset): resetting "
                "the reconstruction")
            worker.request_reset(camera.name)
        known.last_stamp = stamp
        known.image_size, known.image_frame = (width, height), msg.header.frame_id
        if worker.submit(msg, camera.name):
            stats.count(DROPPED)

    @staticmethod
    def _check_frame_id(frame_id: str, settings) -> None:
        """A header frame_id the node would publish (camera_frame unset) must be a frame name."""
        if settings.camera_frame or not frame_id:
            return  # the parameter wins; no frame_id falls back to outputs.FALLBACK_CAMERA_FRAME
        reason = parameters.valid_frame_name(frame_id)
        if reason:
            raise ImageDecodeError(f"header frame_id {reason}")
        if frame_id == settings.world_frame:
            raise ImageDecodeError(f"header frame_id {frame_id!r} is the world frame")

    def _on_camera_info(self, camera: Camera, msg: CameraInfo) -> None:
        known = camera.input
        problem = camera_info_problem(msg, self._settings.max_image_pixels, known.image_size, known.image_frame)
        if not problem:
            known.camera_info = msg
            return
        # Dropped like any bad input: the last valid camera_info stays in use.
        camera.stats.count(BAD_INFO)
        self.get_logger().warning(f"{_of(camera)}ignoring camera_info: {problem}", throttle_duration_sec=WARN_PERIOD)

    def _bad_message(self, camera: Camera, error: Exception) -> None:
        camera.stats.count(BAD)
        self.get_logger().warning(f"{_of(camera)}dropping image message: {error}", throttle_duration_sec=WARN_PERIOD)

    # ------------------------------------------------------------------ inference thread

    def _process_round(self, items: dict) -> None:
        published = process_round(self._cameras, items, self._on_frame_error)
        fused = self._fused
        if fused is not None:
            views = [c.outputs.fusion_view for c in published if c.outputs is not None and c.outputs.fusion_view]
            if views:
                newest = max(views, key=lambda v: v[0].stamp)[1]
                fused.publish([view for view, _ in views], newest, self._settings)

    def _reset_camera(self, name) -> None:
        """Reset one camera's world (every camera's for ALL)."""
        for camera in self._cameras:
            if name is ALL or camera.name == name:
                camera.processor.reset()

    def _on_frame_error(self, camera: Camera, error: BaseException) -> None:
        """A camera's frame raised (on the inference thread): counted, shown as the last error,
        logged with its traceback (rate-limited); the next frame goes on."""
        text = f"{_of(camera)}frame failed: {type(error).__name__}: {error}"
        camera.stats.error(f"{type(error).__name__}: {error}")
        trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        self._report_error(text, trace, log=self._frame_errors())

    def _on_round_error(self, error: BaseException) -> None:
        """What escaped a round or a reset: every camera's failure."""
        for camera in self._cameras:
            self._on_frame_error(camera, error)

    # ------------------------------------------------------------------ services

    def _on_reset(self, request, response, name=ALL):
        if self._worker is not None:
            self._worker.request_reset(name)  # applied on the inference thread, before the next frame
        elif self._straggler is not None and self._straggler.running:
            self._resets_pending.append(name)  # applied when the node is activated again
        else:
            self._reset_camera(name)
        response.success = True
        what = "reconstruction, tracks, trajectory and map reset"
        response.message = what if name is ALL else f"camera {name}: {what}"
        return response

    def _on_enable(self, request, response):
        self._enabled = bool(request.data)
        if not self._enabled and self._worker is not None:
            self._worker.discard()
        response.success = True
        response.message = "processing enabled" if self._enabled else "processing disabled"
        self.get_logger().info(response.message)
        return response

    # ------------------------------------------------------------------ diagnostics

    def bounded_sizes(self) -> dict[str, int]:
        """Sizes of every structure that grows with the run, each with a bound (all cameras')."""
        sizes = {"map points": 0, "camera path poses": 0, "markers shown": 0, "tracks in the bank": 0}
        for camera in self._cameras:
            if camera.processor is not None:
                for key, value in camera.processor.sizes().items():
                    sizes[key] += value
        return sizes

    def _state(self, camera: Camera) -> NodeState:
        loaded, processor = self._loaded, camera.processor
        sizes = self.bounded_sizes() if len(self._cameras) == 1 or processor is None else processor.sizes()
        state = NodeState(self._lifecycle_state, self._enabled, self._last_error, sizes, loading=self._loading)
        if loaded is None or processor is None:
            return state
        hardware_id, device_values = loaded.device_report()
        estimated, from_info = processor.focal
        return replace(state, model=loaded.description, tf=camera.outputs.tf_status,
                       precision=f"{loaded.precision.dtype} ({loaded.precision.reason})",
                       hardware_id=hardware_id, device_values=device_values,
                       focal_estimated=estimated, focal_camera_info=from_info,
                       input_values=processor.input_report())

    def _publish_diagnostics(self) -> None:
        """One status per camera (``<node>: inference`` for a node without ``cameras``)."""
        stamp = self.get_clock().now().to_msg()
        name = self.get_fully_qualified_name()
        statuses = [node_status(stamp, f"{name}: camera {c.name}" if c.name else f"{name}: inference",
                                self._state(c), c.stats.take_window()).status[0] for c in self._cameras]
        self._diagnostics_pub.publish(DiagnosticArray(header=Header(stamp=stamp), status=statuses))


def _of(camera: Camera) -> str:
    """A log line's camera, for a node with several."""
    return f"camera {camera.name}: " if camera.name else ""


def _stamp_ns(stamp) -> int:
    """A header stamp in nanoseconds; ImageDecodeError for stamps ROS time cannot hold."""
    if stamp.sec < 0 or not 0 <= stamp.nanosec < _NANOSECONDS:
        raise ImageDecodeError(f"invalid header stamp (sec {stamp.sec}, nanosec {stamp.nanosec})")
    return stamp.sec * _NANOSECONDS + stamp.nanosec

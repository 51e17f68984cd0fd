"""The inference thread's job: one image message -> decoded, rectified frame -> engine step ->
outputs.

One ``FrameProcessor`` per camera runs on the InferenceWorker's thread only (a reset while no
worker runs is the one call from the executor thread). It owns the camera's engine (its world,
over the node's one model) and its ``Outputs`` for as long as the node is configured; the node
reads only ``focal``, ``input_report`` and ``sizes`` from it. ``prepare`` and ``finish`` frame
the engine step, so that a round can step several cameras' engines together.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
from rclpy.time import Time

from h3r_ros.ros.diagnostics import STALE, NodeStats
from h3r_ros.ros.image_decoding import ImageDecodeError, decode_compressed, decode_image
from h3r_ros.ros.outputs import Outputs, Wanted
from h3r_ros.ros.rectification import RectificationError, Rectifier

WARN_PERIOD = 5.0  # s between repeated warnings of one kind


@dataclass
class Prepared:
    """One camera's frame, decoded and rectified, ready for its engine step."""

    msg: object
    settings: object  # parameters.Settings as this camera sees them
    rgb: np.ndarray
    camera_matrix: np.ndarray | None  # the rectified image's (or the camera_info's) K
    rectify_seconds: float
    wanted: Wanted


class FrameProcessor:
    def __init__(self, node, engine, outputs: Outputs, stats: NodeStats, settings: Callable,
                 camera_info: Callable, on_bad: Callable[[Exception], None]) -> None:
        """One camera's frames through its ``engine`` (a Human3REngine: that camera's world) to
        its ``outputs``. ``settings()`` gives the current parameters.Settings as the camera sees
        them, ``camera_info()`` its last valid CameraInfo (or None); ``on_bad(error)`` counts an
        undecodable message."""
        self._node = node
        self.engine = engine
        self._outputs = outputs
        self._stats = stats
        self._settings = settings
        self._camera_info = camera_info
        self._on_bad = on_bad
        self._decode = decode_compressed if settings().compressed_input else decode_image
        self._cancelled = threading.Event()
        self._rectifier = Rectifier()
        self.focal = (math.nan, math.nan)  # (model's, camera_info's), px of the model input
        self._sizes = ("n/a", "n/a")  # (processed image, model input), "W x H"

    def cancel(self) -> None:
        """The frame in progress (one that outlived a transition) publishes nothing."""
        self._cancelled.set()

    def resume(self) -> None:
        self._cancelled.clear()

    def input_report(self) -> dict[str, str]:
        """What the model is given, for /diagnostics."""
        build = self._rectifier.build_seconds
        return {
            "rectification": self._rectifier.status,
            "rectification map build (ms)": "n/a" if build is None else f"{1000.0 * build:.1f}",
            "processed image (px)": self._sizes[0],
            "model input (px)": self._sizes[1],
        }

    def sizes(self) -> dict[str, int]:
        return {**self._outputs.sizes(), "tracks in the bank": self.engine.tracks}

    def reset(self) -> None:
        self.engine.reset()
        self._outputs.reset()

    def prepare(self, msg) -> Prepared | None:
        """Decode and rectify ``msg`` and set the engine's output flags for it; None when the
        frame is skipped (stale) or dropped (bad input, counted)."""
        settings = self._settings()
        if settings.max_image_age > 0.0:
            age = self._age(msg.header.stamp)
            if age > settings.max_image_age:
                self._stats.count(STALE)
                self._node.get_logger().warning(
                    f"skipping a frame {age:.2f} s old (max_image_age {settings.max_image_age} s)",
                    throttle_duration_sec=WARN_PERIOD,
                )
                return None
        try:
            rgb = self._decode(msg, settings.max_image_pixels)
        except ImageDecodeError as exc:
            self._on_bad(exc)
            return None
        start = time.perf_counter()
        try:
            rgb, camera_matrix = self._rectifier.rectify(rgb, self._camera_info(), settings.rectify)
        except RectificationError as exc:  # bad input: the camera_info's calibration, not the node
            self._on_bad(ImageDecodeError(f"cannot rectify it with the last camera_info: {exc}"))
            return None
        rectify_seconds = time.perf_counter() - start
        if self._rectifier.warning:
            self._node.get_logger().warning(f"rectification: {self._rectifier.warning}",
                                            throttle_duration_sec=WARN_PERIOD)
        wanted = self._outputs.wanted(settings)
        flags = wanted.engine_flags(settings)
        if any(getattr(self.engine.config, name) != value for name, value in flags.items()):
            self.engine.config = replace(self.engine.config, **flags)
        return Prepared(msg, settings, rgb, camera_matrix, rectify_seconds, wanted)

    def finish(self, prepared: Prepared, result) -> None:
        """Publish the engine's ``result`` for ``prepared`` (nothing once cancelled, nothing of
        a frame with non-finite outputs)."""
        if self._cancelled.is_set():
            return
        nonfinite = result.nonfinite()
        if nonfinite:
            self._drop_non_finite(nonfinite)
            return
        msg, rgb = prepared.msg, prepared.rgb
        start = time.perf_counter()
        ended = self._outputs.publish(result, msg.header, prepared.settings, prepared.wanted,
                                      (rgb.shape[1], rgb.shape[0]))
        if ended:
            self.engine.forget_tracks(ended)
        timings = dict(result.timings, rectify=prepared.rectify_seconds, publish=time.perf_counter() - start)
        self._stats.processed(self._age(msg.header.stamp), timings, len(result.people))
        # The model's focal next to the camera's (both in model-input pixels): Human3R has no
        # intrinsics input, so a large mismatch explains scale and shape errors.
        matrix = prepared.camera_matrix
        self.focal = (float(result.K[0, 0]), math.nan if matrix is None else float(matrix[0, 0] * result.scale))
        self._sizes = (f"{rgb.shape[1]} x {rgb.shape[0]}", f"{result.input_size[1]} x {result.input_size[0]}")

    def _drop_non_finite(self, stage: str) -> None:
        """A NaN or Inf (a bf16 overflow, a bad weight) must not reach /tf or a planner: the
        frame publishes nothing. A world whose camera pose or recurrent state went non-finite
        cannot recover (every later pose builds on it): it starts again."""
        self._stats.non_finite(stage)
        restart = stage == "camera pose" or not self.engine.state_is_finite()
        if restart:
            self.reset()
        self._node.get_logger().warning(
            f"dropping a frame whose {stage} is not finite (NaN or Inf)"
            + ("; the reconstruction starts a new world" if restart else ""), throttle_duration_sec=WARN_PERIOD)

    def _age(self, stamp) -> float:
        return (self._node.get_clock().now() - Time.from_msg(stamp)).nanoseconds * 1e-9

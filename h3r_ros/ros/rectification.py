"""Undistort camera images from their camera_info as image_proc's rectify does (numpy + OpenCV).

The rectified image has the raw image's size and the camera matrix P's left 3x3 (K when P is
not a camera matrix: all zero, as some drivers leave it). Maps come from OpenCV's
``initUndistortRectifyMap`` (``cv2.fisheye`` for the equidistant model), are built once per
calibration and applied with bilinear interpolation, pixels from outside the raw image black.
Only the latest calibration's maps are kept: at most 6 bytes per pixel of one image.

Binning and a region of interest are not supported: such images go to the model unrectified,
with a warning (rectify them with image_proc and set ``rectify`` false).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import cv2
import numpy as np

PINHOLE_MODELS = ("plumb_bob", "rational_polynomial")
FISHEYE_MODEL = "equidistant"
MIN_INSIDE = 0.25  # share of the rectified image that must come from inside the raw image


class RectificationError(ValueError):
    """The camera_info's calibration cannot rectify images (a degenerate map); the text says why."""


@dataclass(frozen=True)
class Calibration:
    """What the maps depend on, as a hashable key."""

    model: str
    k: tuple[float, ...]
    d: tuple[float, ...]
    r: tuple[float, ...]
    p: tuple[float, ...]
    size: tuple[int, int]  # (width, height)

    @classmethod
    def of(cls, info) -> Calibration:
        """From a sensor_msgs/CameraInfo."""
        return cls(info.distortion_model, *(tuple(map(float, v)) for v in (info.k, info.d, info.r, info.p)),
                   (int(info.width), int(info.height)))

    @property
    def distorted(self) -> bool:
        """Whether images need rectifying: a fisheye model, or any non-zero coefficient."""
        return self.model == FISHEYE_MODEL or any(self.d)

    def camera_matrix(self) -> np.ndarray:
        """The rectified image's camera matrix: P's left 3x3, or K when P is not a camera matrix."""
        p = np.asarray(self.p).reshape(3, 4)[:, :3]
        if np.isfinite(p).all() and p[0, 0] > 0 and p[1, 1] > 0:
            return p
        return np.asarray(self.k).reshape(3, 3)


def unsupported(info) -> str:
    """'' if ``info``'s images can be rectified here, else why not (they are then used as they are)."""
    if max(info.binning_x, 1) != 1 or max(info.binning_y, 1) != 1:
        return f"binning {info.binning_x} x {info.binning_y} is not supported"
    roi = info.roi
    if (roi.x_offset, roi.y_offset) != (0, 0) or (roi.width, roi.height) not in ((0, 0), (info.width, info.height)):
        return (f"a region of interest ({roi.width} x {roi.height} at {roi.x_offset}, {roi.y_offset}) "
                "is not supported")
    if info.distortion_model not in (*PINHOLE_MODELS, FISHEYE_MODEL) and any(info.d):
        return f"distortion model {info.distortion_model!r} is unknown (plumb_bob, rational_polynomial, equidistant)"
    return ""


def build_maps(calibration: Calibration) -> tuple[np.ndarray, np.ndarray]:
    """image_proc's fixed-point maps (CV_16SC2 + CV_16UC1) for ``calibration``; RectificationError
    when the calibration maps most of the image outside the raw one (or not at all)."""
    k = np.asarray(calibration.k).reshape(3, 3)
    d = np.asarray(calibration.d)
    r = np.asarray(calibration.r).reshape(3, 3)
    if not r.any():
        r = np.eye(3)  # left unset by the driver: no rotation
    new_k = calibration.camera_matrix()
    width, height = calibration.size
    try:
        if calibration.model == FISHEYE_MODEL:
            if d.size != 4:
                raise RectificationError(f"the equidistant model has 4 coefficients, D has {d.size}")
            map_x, map_y = cv2.fisheye.initUndistortRectifyMap(k, d, r, new_k, (width, height), cv2.CV_32FC1)
        else:
            map_x, map_y = cv2.initUndistortRectifyMap(k, d, r, new_k, (width, height), cv2.CV_32FC1)
    except cv2.error as exc:
        raise RectificationError(f"OpenCV could not build the maps: {exc.err}") from None
    inside = np.isfinite(map_x) & np.isfinite(map_y)
    inside &= (map_x >= 0) & (map_x <= width - 1) & (map_y >= 0) & (map_y <= height - 1)
    share = float(inside.mean())
    if share < MIN_INSIDE:
        raise RectificationError(
            f"degenerate calibration: only {100 * share:.0f}% of the rectified image comes from inside "
            f"the raw image (K, D, R or P wrong)")
    # Pixels from outside the image stay outside (black) after the fixed-point conversion.
    map_x = np.where(inside, map_x, -1.0).astype(np.float32)
    map_y = np.where(inside, map_y, -1.0).astype(np.float32)
    return cv2.convertMaps(map_x, map_y, cv2.CV_16SC2)


class Rectifier:
    """Rectifies each frame with the maps of its camera_info's calibration, kept until it changes.

    ``status`` says what happens to frames (for /diagnostics); ``warning`` is why frames that
    should be rectified are not ('' when nothing is wrong); ``build_seconds`` is the cost of
    the last map build. A calibration whose maps failed is remembered, so a bad camera_info
    costs one build, not one per frame.
    """

    def __init__(self) -> None:
        self._calibration: Calibration | None = None
        self._maps: tuple[np.ndarray, np.ndarray] | None = None
        self._error = ""
        self.status = "waiting for camera_info: frames used as they are"
        self.warning = ""
        self.build_seconds: float | None = None

    def rectify(self, rgb: np.ndarray, info, enabled: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """The image for the model and its camera matrix (None when no camera_info describes it).

        ``info`` is the last valid sensor_msgs/CameraInfo or None. RectificationError when its
        calibration cannot rectify (the frame must be dropped).
        """
        self.warning = ""
        matches = info is not None and (info.width, info.height) == (rgb.shape[1], rgb.shape[0])
        raw_k = np.asarray(info.k, dtype=np.float64).reshape(3, 3) if matches else None
        if not enabled:
            self.status = "off (rectify false): frames used as they are"
            return rgb, raw_k
        if info is None:
            self.status = "waiting for camera_info: frames used as they are"
            return rgb, None
        if not matches:
            self.status = self.warning = (f"camera_info is for {info.width} x {info.height} images, not "
                                          f"{rgb.shape[1]} x {rgb.shape[0]}: frames used as they are")
            return rgb, None
        reason = unsupported(info)
        if reason:
            self.status = self.warning = f"{reason}: frames used unrectified"
            return rgb, raw_k
        calibration = Calibration.of(info)
        if not calibration.distorted:
            self.status = "not needed (no distortion)"
            return rgb, raw_k
        if calibration != self._calibration:
            self._load(calibration)
        if self._error:
            self.status = f"failed: {self._error}"
            raise RectificationError(self._error)
        self.status = f"rectifying ({calibration.model}, {len(calibration.d)} coefficients)"
        rectified = cv2.remap(rgb, *self._maps, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        return rectified, calibration.camera_matrix()

    def _load(self, calibration: Calibration) -> None:
        self._calibration, self._maps, self._error = calibration, None, ""
        start = time.perf_counter()
        try:
            self._maps = build_maps(calibration)
        except RectificationError as exc:
            self._error = str(exc)
        self.build_seconds = time.perf_counter() - start

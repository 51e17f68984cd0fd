"""sensor_msgs Image / CompressedImage -> RGB uint8 arrays (no cv_bridge, no ROS calls).

``check_*`` are O(1) header checks run in the subscription callback so a malformed message
is rejected at once; ``decode_*`` do the pixel work on the inference thread, and only for
the frames that are actually processed.
"""

from __future__ import annotations

import cv2
import numpy as np


class ImageDecodeError(ValueError):
    """The message cannot be turned into an RGB image; the text says why."""


# encoding -> (channels, OpenCV conversion to RGB or None when already RGB). 8UC1/3/4 follow
# cv_bridge, which reads them as mono, BGR and BGRA.
_RAW_ENCODINGS = {
    "rgb8": (3, None),
    "bgr8": (3, cv2.COLOR_BGR2RGB),
    "rgba8": (4, cv2.COLOR_RGBA2RGB),
    "bgra8": (4, cv2.COLOR_BGRA2RGB),
    "mono8": (1, cv2.COLOR_GRAY2RGB),
    "8UC1": (1, cv2.COLOR_GRAY2RGB),
    "8UC3": (3, cv2.COLOR_BGR2RGB),
    "8UC4": (4, cv2.COLOR_BGRA2RGB),
}
SUPPORTED_ENCODINGS = tuple(_RAW_ENCODINGS)
_COMPRESSED_FORMATS = ("jpeg", "jpg", "png")


def check_image(msg) -> None:
    """Raise ImageDecodeError unless ``msg`` (sensor_msgs/Image) has a consistent 8-bit layout."""
    if msg.encoding not in _RAW_ENCODINGS:
        raise ImageDecodeError(
            f"unsupported encoding {msg.encoding!r} (supported: {', '.join(SUPPORTED_ENCODINGS)})"
        )
    if msg.width == 0 or msg.height == 0:
        raise ImageDecodeError(f"empty image ({msg.width}x{msg.height})")
    channels = _RAW_ENCODINGS[msg.encoding][0]
    if msg.step < msg.width * channels:
        raise ImageDecodeError(f"step {msg.step} < width {msg.width} x {channels} bytes for {msg.encoding}")
    if len(msg.data) != msg.step * msg.height:
        raise ImageDecodeError(f"data has {len(msg.data)} bytes, step x height = {msg.step * msg.height}")


def decode_image(msg) -> np.ndarray:
    """sensor_msgs/Image -> (H, W, 3) uint8 RGB. Row padding (step > width x bytes) is skipped.

    Byte order (is_bigendian) does not matter for 8-bit channels.
    """
    check_image(msg)
    channels, conversion = _RAW_ENCODINGS[msg.encoding]
    rows = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.step)
    pixels = rows[:, : msg.width * channels].reshape(msg.height, msg.width, channels)
    if conversion is None:
        return np.ascontiguousarray(pixels)
    return cv2.cvtColor(pixels, conversion)


def check_compressed(msg) -> None:
    """Raise ImageDecodeError unless ``msg`` (sensor_msgs/CompressedImage) may hold a jpeg/png."""
    if len(msg.data) == 0:
        raise ImageDecodeError("empty compressed image")
    # image_transport writes e.g. "jpeg", "rgb8; jpeg compressed bgr8" or "bgr8; png compressed".
    fmt = msg.format.lower()
    if fmt and not any(name in fmt for name in _COMPRESSED_FORMATS):
        raise ImageDecodeError(f"unsupported compressed format {msg.format!r} (jpeg or png expected)")
    if "compresseddepth" in fmt.replace(" ", ""):
        raise ImageDecodeError(f"compressedDepth images are not colour images ({msg.format!r})")


def decode_compressed(msg) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg/png, any bit depth or channel count) -> (H, W, 3) uint8 RGB."""
    check_compressed(msg)
    bgr = cv2.imdecode(np.frombuffer(msg.data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageDecodeError(f"could not decode {len(msg.data)} bytes as {msg.format or 'jpeg/png'}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

"""sensor_msgs Image / CompressedImage -> RGB uint8 arrays (no cv_bridge, no ROS calls).

``check_*`` are cheap header checks run in the subscription callback so a malformed message
is rejected at once; they return the image's (width, height), read for compressed images
from the jpeg/png header without decoding, and refuse images of more than ``max_pixels``.
``decode_*`` do the pixel work on the inference thread, and only for the frames that are
actually processed.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image as PILImage

from h3r_ros.ros.parameters import DEFAULT_MAX_PIXELS


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
# What the data must start with; anything else (webp, tiff, bmp, ... which OpenCV would also
# decode) is refused. PIL reads only the header (the frame size) of these two formats.
_MAGIC = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG"}


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"image {width}x{height} has {width * height} pixels, more than max_image_pixels ({max_pixels})"
        )


def check_image(msg, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Raise ImageDecodeError unless ``msg`` (sensor_msgs/Image) has a consistent 8-bit layout
    of at most ``max_pixels`` pixels; returns (width, height)."""
    if msg.encoding not in _RAW_ENCODINGS:
        raise ImageDecodeError(
            f"unsupported encoding {msg.encoding!r} (supported: {', '.join(SUPPORTED_ENCODINGS)})"
        )
    if msg.width == 0 or msg.height == 0:
        raise ImageDecodeError(f"empty image ({msg.width}x{msg.height})")
    _check_pixels(msg.width, msg.height, max_pixels)
    channels = _RAW_ENCODINGS[msg.encoding][0]
    if msg.step < msg.width * channels:
        raise ImageDecodeError(f"step {msg.step} < width {msg.width} x {channels} bytes for {msg.encoding}")
    if len(msg.data) != msg.step * msg.height:
        raise ImageDecodeError(f"data has {len(msg.data)} bytes, step x height = {msg.step * msg.height}")
    return msg.width, msg.height


def decode_image(msg, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """sensor_msgs/Image -> (H, W, 3) uint8 RGB. Row padding (step > width x bytes) is skipped.

    Byte order (is_bigendian) does not matter for 8-bit channels.
    """
    check_image(msg, max_pixels)
    channels, conversion = _RAW_ENCODINGS[msg.encoding]
    rows = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.step)
    pixels = rows[:, : msg.width * channels].reshape(msg.height, msg.width, channels)
    if conversion is None:
        return np.ascontiguousarray(pixels)
    return cv2.cvtColor(pixels, conversion)


def check_compressed(msg, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Raise ImageDecodeError unless ``msg`` (sensor_msgs/CompressedImage) holds a jpeg or png
    of at most ``max_pixels`` pixels (read from its header); returns (width, height)."""
    if len(msg.data) == 0:
        raise ImageDecodeError("empty compressed image")
    # image_transport writes e.g. "jpeg", "rgb8; jpeg compressed bgr8" or "bgr8; png compressed".
    fmt = msg.format.lower()
    if fmt and not any(name in fmt for name in _COMPRESSED_FORMATS):
        raise ImageDecodeError(f"unsupported compressed format {msg.format!r} (jpeg or png expected)")
    if "compresseddepth" in fmt.replace(" ", ""):
        raise ImageDecodeError(f"compressedDepth images are not colour images ({msg.format!r})")
    data = bytes(msg.data[:8])
    kind = next((name for magic, name in _MAGIC.items() if data.startswith(magic)), None)
    if kind is None:
        raise ImageDecodeError(f"compressed data is neither jpeg nor png (starts with {data[:4].hex()})")
    try:
        # Image.open parses the header only; the pixels are never decoded by PIL.
        with PILImage.open(io.BytesIO(bytes(msg.data)), formats=[kind]) as header:
            width, height = header.size
    except Exception as exc:  # noqa: BLE001 - PIL raises many types on garbage headers
        raise ImageDecodeError(f"unreadable {kind.lower()} header: {type(exc).__name__}: {exc}") from None
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"empty {kind.lower()} image ({width}x{height})")
    _check_pixels(width, height, max_pixels)
    return width, height


def decode_compressed(msg, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg/png, any bit depth or channel count) -> (H, W, 3) uint8 RGB."""
    check_compressed(msg, max_pixels)
    bgr = cv2.imdecode(np.frombuffer(msg.data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageDecodeError(f"could not decode {len(msg.data)} bytes as {msg.format or 'jpeg/png'}")
    _check_pixels(bgr.shape[1], bgr.shape[0], max_pixels)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

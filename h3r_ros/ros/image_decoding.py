"""sensor_msgs Image / CompressedImage -> RGB uint8 arrays, as cv_bridge converts them (no ROS calls).

``check_*`` are cheap header checks run in the subscription callback so a malformed message
is rejected at once; they return the image's (width, height), read for compressed images
from the jpeg/png header without decoding, and refuse images of more than ``max_pixels``.
``decode_*`` do the pixel work on the inference thread, and only for the frames that are
actually processed.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image as PILImage

from h3r_ros.ros.parameters import DEFAULT_MAX_PIXELS


class ImageDecodeError(ValueError):
    """The message cannot be turned into an RGB image; the text says why."""


@dataclass(frozen=True)
class _Layout:
    channels: int
    bytes_per_channel: int  # 1 or 2
    conversion: int | None  # OpenCV conversion to RGB, None when already RGB


def _layouts() -> dict[str, _Layout]:
    """cv_bridge's conversions to rgb8 (its getConversionCode table), 8- and 16-bit.

    OpenCV names a Bayer pattern by the 2x2 block starting at the second row and column, so
    ROS's bayer_rggb is OpenCV's BayerBG, and so on (cv_bridge's mapping). ``uyvy`` and
    ``yuyv`` are newer sensor_msgs names of ``yuv422`` and ``yuv422_yuy2`` (cv_bridge knows
    only the old ones). 8UC1/3/4 follow cv_bridge, which reads them as mono, BGR and BGRA.
    """
    colour = {
        "rgb": (3, None), "bgr": (3, cv2.COLOR_BGR2RGB), "rgba": (4, cv2.COLOR_RGBA2RGB),
        "bgra": (4, cv2.COLOR_BGRA2RGB), "mono": (1, cv2.COLOR_GRAY2RGB),
        "bayer_rggb": (1, cv2.COLOR_BayerBG2RGB), "bayer_bggr": (1, cv2.COLOR_BayerRG2RGB),
        "bayer_gbrg": (1, cv2.COLOR_BayerGR2RGB), "bayer_grbg": (1, cv2.COLOR_BayerGB2RGB),
    }
    layouts = {f"{name}{bits}": _Layout(channels, bits // 8, conversion)
               for name, (channels, conversion) in colour.items() for bits in (8, 16)}
    for name in ("yuv422", "uyvy"):
        layouts[name] = _Layout(2, 1, cv2.COLOR_YUV2RGB_UYVY)
    for name in ("yuv422_yuy2", "yuyv"):
        layouts[name] = _Layout(2, 1, cv2.COLOR_YUV2RGB_YUY2)
    layouts |= {"8UC1": _Layout(1, 1, cv2.COLOR_GRAY2RGB), "8UC3": _Layout(3, 1, cv2.COLOR_BGR2RGB),
                "8UC4": _Layout(4, 1, cv2.COLOR_BGRA2RGB)}
    return layouts


_LAYOUTS = _layouts()
SUPPORTED_ENCODINGS = tuple(_LAYOUTS)
_DEPTH_ENCODINGS = ("16UC1", "32FC1")
_YUV422 = {cv2.COLOR_YUV2RGB_UYVY, cv2.COLOR_YUV2RGB_YUY2}
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
    """Raise ImageDecodeError unless ``msg`` (sensor_msgs/Image) has a supported encoding, a
    consistent layout and at most ``max_pixels`` pixels; returns (width, height)."""
    if msg.encoding in _DEPTH_ENCODINGS:
        raise ImageDecodeError(f"encoding {msg.encoding!r} is a depth image, not a camera's colour image")
    layout = _LAYOUTS.get(msg.encoding)
    if layout is None:
        raise ImageDecodeError(
            f"unsupported encoding {msg.encoding!r} (supported: {', '.join(SUPPORTED_ENCODINGS)})"
        )
    if msg.width == 0 or msg.height == 0:
        raise ImageDecodeError(f"empty image ({msg.width}x{msg.height})")
    _check_pixels(msg.width, msg.height, max_pixels)
    if layout.conversion in _YUV422 and msg.width % 2:
        raise ImageDecodeError(f"odd width {msg.width} for {msg.encoding} (two pixels share their chroma)")
    row_bytes = msg.width * layout.channels * layout.bytes_per_channel
    if msg.step < row_bytes:
        raise ImageDecodeError(f"step {msg.step} < width {msg.width} x {row_bytes // msg.width} bytes for {msg.encoding}")
    if msg.step % layout.bytes_per_channel:
        raise ImageDecodeError(f"step {msg.step} is not a whole number of 16-bit values ({msg.encoding})")
    if len(msg.data) != msg.step * msg.height:
        raise ImageDecodeError(f"data has {len(msg.data)} bytes, step x height = {msg.step * msg.height}")
    return msg.width, msg.height


def decode_image(msg, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """sensor_msgs/Image -> (H, W, 3) uint8 RGB, as cv_bridge converts it to rgb8: the colour
    conversion at the image's own depth, then 16-bit values scaled by 255/65535 and rounded.
    Row padding (step > width x bytes) is skipped; 16-bit data is read in its ``is_bigendian``
    byte order (which does not matter for 8-bit channels)."""
    check_image(msg, max_pixels)
    layout = _LAYOUTS[msg.encoding]
    dtype = np.dtype(np.uint8) if layout.bytes_per_channel == 1 else np.dtype(">u2" if msg.is_bigendian else "<u2")
    rows = np.frombuffer(msg.data, dtype).reshape(msg.height, msg.step // dtype.itemsize)
    pixels = rows[:, : msg.width * layout.channels].reshape(msg.height, msg.width, layout.channels)
    if not dtype.isnative:
        pixels = pixels.astype(np.uint16)
    rgb = np.ascontiguousarray(pixels) if layout.conversion is None else cv2.cvtColor(pixels, layout.conversion)
    if layout.bytes_per_channel == 2:
        rgb = cv2.convertScaleAbs(rgb, alpha=255.0 / 65535.0)  # cv_bridge's convertTo(CV_8U, 255/65535)
    return rgb


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

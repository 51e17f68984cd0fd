"""Is a camera_info message one the node can keep? Checked whole, as hostile input.

Human3R has no intrinsics input: the node keeps the last valid camera_info to rectify the
images (rectification.py: K, D, R, P) and to report its focal next to the model's. A message
that fails any check is dropped (counted), so a bad one never replaces a good one.
"""

from __future__ import annotations

import numpy as np

from h3r_ros.ros.parameters import valid_frame_name

# Coefficient counts of the distortion models camera drivers use (plumb_bob 5,
# rational_polynomial 8, equidistant 4; OpenCV's thin-prism and tilted forms 12 and 14).
DISTORTION_LENGTHS = (0, 4, 5, 8, 12, 14)


def valid_intrinsics(k) -> bool:
    """A usable K: finite, positive focal lengths (an all-zero K means 'uncalibrated')."""
    k = np.asarray(k, dtype=np.float64).reshape(9)
    return bool(np.isfinite(k).all() and k[0] > 0 and k[4] > 0 and k[8] != 0)


def camera_info_problem(msg, max_pixels: int, image_size: tuple[int, int] | None = None,
                        image_frame: str = "") -> str:
    """'' if ``msg`` is usable, else why not. ``image_size`` (width, height) and ``image_frame``
    are those of the latest valid image, when one arrived: the info must describe that camera."""
    width, height = msg.width, msg.height
    if width <= 0 or height <= 0:
        return f"size {width} x {height} is not positive"
    if width * height > max_pixels:
        return f"size {width} x {height} exceeds max_image_pixels ({max_pixels})"
    if image_size is not None and (width, height) != tuple(image_size):
        return f"size {width} x {height} differs from the images' {image_size[0]} x {image_size[1]}"
    if not valid_intrinsics(msg.k):
        return "K is invalid (all zero: uncalibrated camera?)"
    d = msg.d
    if len(d) not in DISTORTION_LENGTHS:
        return f"D has {len(d)} coefficients (a distortion model has {', '.join(map(str, DISTORTION_LENGTHS[1:]))})"
    for name, values in (("D", d), ("R", msg.r), ("P", msg.p)):
        if not np.isfinite(np.asarray(values, dtype=np.float64)).all():
            return f"{name} is not finite"
    frame = msg.header.frame_id
    if frame:
        reason = valid_frame_name(frame)
        if reason:
            return f"frame_id {reason}"
        if image_frame and frame != image_frame:
            return f"frame_id {frame!r} differs from the images' {image_frame!r}"
    return ""

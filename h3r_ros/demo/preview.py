"""A PNG summary of a run, rendered with numpy/OpenCV so no viewer is needed.

Left: top-down view of the world (x forward points up, y left points left). Right: a
perspective view from behind and above the first camera. Both show the point cloud in
its colours, every person's skeleton in the track colour RViz uses, and the camera path.
Below them, a strip of input frames.
"""

from __future__ import annotations

import cv2
import numpy as np

from h3r_ros.ros.markers import BONES, track_color

VIEW_SIZE = (640, 480)  # width, height of each of the two views
BACKGROUND = (32, 32, 32)
PATH_COLOUR = (0, 170, 255)  # BGR orange, as in the RViz config
TEXT_COLOUR = (230, 230, 230)
WARNING_COLOUR = (60, 60, 255)


def decode_cloud(msg) -> tuple[np.ndarray, np.ndarray]:
    """PointCloud2 with float32 x, y, z and packed rgb -> (N, 3) float32, (N, 3) uint8 RGB."""
    offsets = {f.name: f.offset for f in msg.fields}
    n = msg.width * msg.height
    raw = np.frombuffer(bytes(msg.data), np.uint8).reshape(n, msg.point_step)

    def column(name: str, dtype) -> np.ndarray:
        return raw[:, offsets[name] : offsets[name] + 4].copy().view(dtype).reshape(n)

    xyz = np.stack([column(axis, np.float32) for axis in "xyz"], -1)
    packed = column("rgb", np.uint32)
    rgb = np.stack([(packed >> 16) & 255, (packed >> 8) & 255, packed & 255], -1).astype(np.uint8)
    keep = np.isfinite(xyz).all(1)
    return xyz[keep], rgb[keep]


def _track_bgr(track_id: int) -> tuple[int, int, int]:
    c = track_color(track_id)
    return int(255 * c.b), int(255 * c.g), int(255 * c.r)


# A view is a projection: world points (N, 3) -> pixels (N, 2), depth (N,) (larger = farther).


def _top_down(bounds_min: np.ndarray, bounds_max: np.ndarray):
    w, h = VIEW_SIZE
    centre = (bounds_min + bounds_max) / 2
    extent = np.maximum(bounds_max - bounds_min, 1e-3)
    scale = 0.9 * min(w / extent[1], h / extent[0])

    def project(p):
        uv = np.stack([w / 2 - (p[:, 1] - centre[1]) * scale, h / 2 - (p[:, 0] - centre[0]) * scale], -1)
        return uv, -p[:, 2]  # higher points drawn last

    return project


def _perspective(bounds_min: np.ndarray, bounds_max: np.ndarray):
    """Look at the scene centre from behind (-x) and above (+z) the first camera."""
    w, h = VIEW_SIZE
    centre = (bounds_min + bounds_max) / 2
    radius = max(float(np.linalg.norm(bounds_max - bounds_min)) / 2, 0.5)
    eye = np.array([bounds_min[0] - 0.9 * radius, centre[1], bounds_max[2] + 0.8 * radius])
    forward = (centre - eye) / np.linalg.norm(centre - eye)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    rotation = np.stack([right, down, forward])  # world -> OpenCV camera axes
    focal = 0.9 * w

    def project(p):
        cam = (p - eye) @ rotation.T
        z = np.maximum(cam[:, 2], 1e-3)
        uv = np.stack([focal * cam[:, 0] / z + w / 2, focal * cam[:, 1] / z + h / 2], -1)
        return uv, np.where(cam[:, 2] > 1e-3, cam[:, 2], np.inf)

    return project


def _draw(project, points, colours, skeletons, camera_positions) -> np.ndarray:
    w, h = VIEW_SIZE
    canvas = np.full((h, w, 3), BACKGROUND, np.uint8)
    if len(points):
        uv, depth = project(points)
        order = np.argsort(-depth)  # far to near: near points overwrite
        uv, depth, bgr = uv[order], depth[order], colours[order][:, ::-1]
        u, v = np.round(uv[:, 0]).astype(int), np.round(uv[:, 1]).astype(int)
        inside = np.isfinite(depth) & (u >= 0) & (u < w - 1) & (v >= 0) & (v < h - 1)
        for du in (0, 1):  # 2x2 splats
            for dv in (0, 1):
                canvas[v[inside] + dv, u[inside] + du] = bgr[inside]
    if len(camera_positions):
        uv, _ = project(camera_positions)
        pts = np.round(uv).astype(np.int32)
        cv2.polylines(canvas, [pts.reshape(-1, 1, 2)], False, PATH_COLOUR, 2, cv2.LINE_AA)
        for p in pts:
            cv2.circle(canvas, tuple(int(c) for c in p), 3, PATH_COLOUR, -1, cv2.LINE_AA)
        cv2.circle(canvas, tuple(int(c) for c in pts[-1]), 6, (255, 255, 255), 2, cv2.LINE_AA)
    for track_id, joints in skeletons:
        uv, _ = project(joints)
        colour = _track_bgr(track_id)
        for parent, child in BONES:
            a, b = uv[parent], uv[child]
            if np.isfinite(a).all() and np.isfinite(b).all():
                cv2.line(canvas, tuple(int(c) for c in a), tuple(int(c) for c in b), colour, 2, cv2.LINE_AA)
    return canvas


def _label(image: np.ndarray, text: str, origin=(10, 24), colour=TEXT_COLOUR, scale=0.6) -> None:
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


def render_preview(
    points: np.ndarray,
    colours: np.ndarray,
    skeletons: list[tuple[int, np.ndarray]],
    camera_positions: np.ndarray,
    frames: list[np.ndarray],
    title: str,
    warnings: list[str],
) -> np.ndarray:
    """The preview image (BGR). ``skeletons``: (track id, (55, 3) world joints) to draw."""
    # The scene frames the view (people stand inside it); skeletons only when there is no cloud.
    everything = [points, camera_positions] if len(points) else [j for _, j in skeletons] + [camera_positions]
    stacked = np.concatenate([a.reshape(-1, 3) for a in everything if len(a)] or [np.zeros((1, 3))])
    # Percentiles keep a few far-away outlier points from shrinking the scene to a dot.
    lo, hi = np.percentile(stacked, 2, axis=0), np.percentile(stacked, 98, axis=0)
    lo = np.minimum(lo, camera_positions.min(0)) if len(camera_positions) else lo
    hi = np.maximum(hi, camera_positions.max(0)) if len(camera_positions) else hi

    top = _draw(_top_down(lo, hi), points, colours, skeletons, camera_positions)
    _label(top, "top-down (x forward = up, y left = left)")
    persp = _draw(_perspective(lo, hi), points, colours, skeletons, camera_positions)
    _label(persp, "perspective, from behind the first camera")
    views = np.concatenate([top, persp], 1)

    width = views.shape[1]
    strip = np.zeros((0, width, 3), np.uint8)
    if frames:
        picks = [frames[i] for i in sorted({0, len(frames) // 2, len(frames) - 1})]
        thumb_w = width // len(picks)
        thumbs = [cv2.resize(f, (thumb_w, int(f.shape[0] * thumb_w / f.shape[1])))[:, :, ::-1] for f in picks]
        thumb_h = min(t.shape[0] for t in thumbs)
        strip = np.zeros((thumb_h, width, 3), np.uint8)
        for i, t in enumerate(thumbs):
            strip[:, i * thumb_w : (i + 1) * thumb_w] = t[:thumb_h]
        _label(strip, "input frames: first, middle, last", origin=(10, 20), scale=0.5)

    header = np.full((34 + 26 * len(warnings), width, 3), 16, np.uint8)
    _label(header, title, origin=(10, 24), scale=0.65)
    for i, text in enumerate(warnings):
        _label(header, text, origin=(10, 52 + 26 * i), colour=WARNING_COLOUR, scale=0.6)
    return np.concatenate([header, views, strip], 0)

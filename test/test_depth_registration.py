"""depth/image + depth/camera_info (roi form) and estimated_camera_info (source resolution):
a depth pixel registers back onto the source image, through the real pre-processing geometry."""

import numpy as np
import pytest
from std_msgs.msg import Header

from h3r_ros.engine.preprocess import resize_and_crop
from h3r_ros.ros import conversions


def _smooth_image(width: int, height: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = [np.sin(xx / 23.0) + np.cos(yy / 17.0), np.sin((xx + yy) / 29.0), np.cos(xx / 31.0 - yy / 13.0)]
    return np.stack([np.round(127.5 + 60.0 * c) for c in channels], axis=-1).astype(np.uint8)


def _bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    img = image.astype(np.float64)
    return ((1 - fx) * (1 - fy) * img[y0, x0] + fx * (1 - fy) * img[y0, x0 + 1]
            + (1 - fx) * fy * img[y0 + 1, x0] + fx * fy * img[y0 + 1, x0 + 1])


def _source_pixels(info, u, v, source_wh):
    """The documented rule: depth pixel -> resized-frame pixel (roi offset) -> source pixel."""
    sx, sy = source_wh[0] / info.width, source_wh[1] / info.height
    return (u + info.roi.x_offset + 0.5) * sx - 0.5, (v + info.roi.y_offset + 0.5) * sy - 0.5


@pytest.mark.parametrize("source_wh, size", [((640, 480), 160), ((300, 200), 160), ((333, 500), 224)])
def test_depth_pixels_land_on_the_source_pixels_they_were_resampled_from(source_wh, size):
    source = _smooth_image(*source_wh)
    cropped, geometry = resize_and_crop(source, size)
    K = np.array([[150.0, 0.0, cropped.shape[1] / 2], [0.0, 150.0, cropped.shape[0] / 2], [0.0, 0.0, 1.0]])
    info = conversions.depth_camera_info_msg(K, geometry.crop_box, geometry.resized_size, Header(frame_id="cam"))
    assert (info.width, info.height) == geometry.resized_size
    assert (info.roi.width, info.roi.height) == (cropped.shape[1], cropped.shape[0])

    # Content: each model-input (= depth) pixel is the source image resampled at the mapped pixel.
    v, u = np.mgrid[2:cropped.shape[0] - 2, 2:cropped.shape[1] - 2]
    xs, ys = _source_pixels(info, u, v, source_wh)
    registered = np.abs(_bilinear(source, xs, ys) - cropped[v, u]).max(axis=-1)
    shifted = np.abs(_bilinear(source, xs + 1.0, ys + 1.0) - cropped[v, u]).max(axis=-1)
    assert np.median(registered) <= 1.5 and np.median(shifted) > 2 * np.median(registered)

    # Geometry: back-projecting a depth pixel with depth/camera_info (roi honoured, as
    # image_geometry does) and projecting with the source-resolution intrinsics gives the same pixel.
    k_full = np.reshape(info.k, (3, 3))
    k_roi = k_full - [[0, 0, info.roi.x_offset], [0, 0, info.roi.y_offset], [0, 0, 0]]
    np.testing.assert_allclose(k_roi, K)
    depth = 1.0 + 3.0 * np.random.default_rng(0).random(u.shape)
    rays = np.linalg.inv(k_roi) @ np.stack([u.ravel(), v.ravel(), np.ones(u.size)])
    k_src = conversions.intrinsics_in_source(k_full, geometry.resized_size, source_wh)
    image = k_src @ (rays * depth.ravel())
    np.testing.assert_allclose(image[:2] / image[2], np.stack([xs.ravel(), ys.ravel()]), atol=1e-9)
    source_info = conversions.camera_info_msg(k_src, source_wh[::-1], Header(frame_id="cam"))
    assert (source_info.width, source_info.height) == source_wh

"""Rectification from camera_info (no ROS graph): synthetic images distorted with a known model
come back undistorted; maps are built once per calibration; bad calibrations fail clearly."""

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CameraInfo

from h3r_ros.ros import rectification
from h3r_ros.ros.rectification import RectificationError, Rectifier

WIDTH, HEIGHT = 320, 240
K = [260.0, 0.0, 162.0, 0.0, 255.0, 118.0, 0.0, 0.0, 1.0]
SPACING, SIGMA = 20, 1.5  # px between blob centres and their width, in the rectified image
MODELS = {
    "plumb_bob": [-0.32, 0.12, 0.001, -0.002, -0.02],
    "rational_polynomial": [-0.1, 0.05, 0.0005, 0.001, 0.0, 0.2, 0.05, 0.01],
    "equidistant": [0.08, -0.03, 0.01, -0.002],
}


def info_for(model: str, d, p=None, **fields) -> CameraInfo:
    """A calibrated camera_info; P is K (image_proc's usual monocular P) unless given."""
    info = CameraInfo(width=WIDTH, height=HEIGHT, distortion_model=model, d=list(d), k=K,
                      r=[1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0], p=p or [K[0], 0, K[2], 0, 0, K[4], K[5], 0, 0, 0, 1, 0])
    for name, value in fields.items():
        setattr(info, name, value)
    return info


def blob_centres() -> np.ndarray:
    """Blob centres (x, y) on a grid, in rectified pixels, kept 2 spacings from the border."""
    xs = np.arange(2 * SPACING, WIDTH - 2 * SPACING + 1, SPACING, dtype=float)
    ys = np.arange(2 * SPACING, HEIGHT - 2 * SPACING + 1, SPACING, dtype=float)
    return np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)


def render(centres: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Gaussian blobs at ``centres``, sampled at each pixel's rectified ``positions`` (H, W, 2)."""
    image = np.zeros(positions.shape[:2])
    for cx, cy in centres:
        image += np.exp(-((positions[..., 0] - cx) ** 2 + (positions[..., 1] - cy) ** 2) / (2 * SIGMA**2))
    grey = np.clip(255 * image, 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def distorted_image(info: CameraInfo, centres: np.ndarray) -> np.ndarray:
    """What the camera records: each raw pixel shows the scene at its undistorted position,
    found with OpenCV's point undistortion (iterative, tight tolerance) into P's pixels."""
    raw = np.stack(np.meshgrid(np.arange(WIDTH, dtype=float), np.arange(HEIGHT, dtype=float)), axis=-1)
    points = raw.reshape(-1, 1, 2)
    k, d = np.reshape(info.k, (3, 3)), np.asarray(info.d)
    p = np.reshape(info.p, (3, 4))[:, :3]
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-10)
    if info.distortion_model == "equidistant":
        undistorted = cv2.fisheye.undistortPoints(points, k, d, R=np.eye(3), P=p, criteria=criteria)
    else:
        undistorted = cv2.undistortPoints(points, k, d, R=np.eye(3), P=p, criteria=criteria)
    return render(centres, undistorted.reshape(HEIGHT, WIDTH, 2))


def measured_centres(image: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Intensity-weighted centroid in a window around each expected centre."""
    grey = image[..., 0].astype(float)
    found = []
    for cx, cy in centres:
        x0, y0 = int(round(cx)) - 6, int(round(cy)) - 6
        window = grey[y0: y0 + 13, x0: x0 + 13]
        yy, xx = np.mgrid[y0: y0 + 13, x0: x0 + 13]
        found.append([(window * xx).sum() / window.sum(), (window * yy).sum() / window.sum()])
    return np.array(found)


@pytest.mark.parametrize("model, p", [
    ("plumb_bob", None),
    ("rational_polynomial", None),
    ("equidistant", None),
    ("plumb_bob", [210.0, 0, 158.0, 0, 0, 205.0, 121.0, 0, 0, 0, 1, 0]),  # P zooms out: its own intrinsics
], ids=["plumb_bob", "rational_polynomial", "equidistant", "plumb_bob_with_own_P"])
def test_a_distorted_image_comes_back_undistorted(model, p):
    info = info_for(model, MODELS[model], p)
    new_k = np.reshape(info.p, (3, 4))[:, :3]
    centres = blob_centres()
    raw = distorted_image(info, centres)
    rectifier = Rectifier()
    rectified, camera_matrix = rectifier.rectify(raw, info)
    assert rectified.shape == raw.shape and rectified.dtype == np.uint8
    np.testing.assert_array_equal(camera_matrix, new_k)
    assert rectifier.status == f"rectifying ({model}, {len(info.d)} coefficients)" and not rectifier.warning
    error = np.linalg.norm(measured_centres(rectified, centres) - centres, axis=1)
    assert error.max() < 1.0, error.max()
    # The distortion is strong enough for the test to mean something: unrectified, some blobs are
    # more than 3 px off (or out of their window: nan).
    with np.errstate(invalid="ignore"):
        raw_error = np.linalg.norm(measured_centres(raw, centres) - centres, axis=1)
    assert not (raw_error <= 3.0).all()


def test_maps_are_built_once_per_calibration(monkeypatch):
    builds = []
    original = rectification.build_maps
    monkeypatch.setattr(rectification, "build_maps", lambda c: builds.append(c) or original(c))
    rectifier = Rectifier()
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    first, second = info_for("plumb_bob", MODELS["plumb_bob"]), info_for("plumb_bob", [0.1, 0, 0, 0, 0])
    for info in (first, first, first, second, second, first):
        rectifier.rectify(image, info)
    assert len(builds) == 3  # first, second, first again: only the latest maps are kept
    assert rectifier.build_seconds > 0


@pytest.mark.parametrize("info, enabled, status, warned", [
    (None, True, "waiting for camera_info", False),
    (info_for("plumb_bob", [0.0] * 5), True, "not needed (no distortion)", False),
    (info_for("", []), True, "not needed (no distortion)", False),
    (info_for("plumb_bob", MODELS["plumb_bob"]), False, "off (rectify false)", False),
    (info_for("kannala_brandt", [0.1, 0, 0, 0]), True, "distortion model 'kannala_brandt' is unknown", True),
    (info_for("plumb_bob", MODELS["plumb_bob"], binning_x=2), True, "binning 2 x 0 is not supported", True),
    (info_for("plumb_bob", MODELS["plumb_bob"], width=640), True, "camera_info is for 640 x 240 images", True),
], ids=["no_info", "zero_d", "no_model", "off", "unknown_model", "binning", "other_size"])
def test_frames_that_are_not_rectified_are_used_as_they_are(info, enabled, status, warned):
    image = np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    rectifier = Rectifier()
    out, camera_matrix = rectifier.rectify(image, info, enabled)
    assert out is image
    assert rectifier.status.startswith(status), rectifier.status
    assert bool(rectifier.warning) == warned
    sized = info is not None and info.width == WIDTH
    assert (camera_matrix is not None) == sized
    if sized:
        np.testing.assert_array_equal(camera_matrix, np.reshape(K, (3, 3)))


@pytest.mark.parametrize("info, reason", [
    (info_for("plumb_bob", [1e6, 1e6, 0, 0, 1e6]), "degenerate calibration"),
    (info_for("plumb_bob", MODELS["plumb_bob"], k=[1e-9, 0, 160, 0, 1e-9, 120, 0, 0, 1], p=[0.0] * 12),
     "degenerate calibration"),
    (info_for("equidistant", [0.1, 0, 0, 0, 0]), "equidistant model has 4 coefficients"),
    (info_for("plumb_bob", [0.1, 0.0, 0.0]), "OpenCV could not build the maps"),
], ids=["huge_d", "tiny_focal", "fisheye_with_5_coefficients", "3_coefficients"])
def test_a_calibration_that_cannot_rectify_fails_every_frame_with_one_build(monkeypatch, info, reason):
    builds = []
    original = rectification.build_maps
    monkeypatch.setattr(rectification, "build_maps", lambda c: builds.append(c) or original(c))
    rectifier = Rectifier()
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    for _ in range(2):
        with pytest.raises(RectificationError, match=reason):
            rectifier.rectify(image, info)
    assert len(builds) == 1
    assert rectifier.status.startswith("failed: ") and reason in rectifier.status

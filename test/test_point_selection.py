"""Cloud points chosen on the device equal the documented rule (threshold, stride, finite,
humans excluded, even subsampling to a cap), whatever the count against the capacity."""

import numpy as np
import pytest
import torch
from ros_helpers import reference_selection

from h3r_ros.engine.point_selection import PointSelection, select_on_device, selected_on_host

H, W = 30, 41


def _frame(seed: int, kept_fraction: float):
    rng = np.random.default_rng(seed)
    points = rng.normal(size=(H, W, 3)).astype(np.float32)
    points[rng.random((H, W)) < 0.05] = np.nan
    points[0, 3, 1] = np.inf
    conf = np.where(rng.random((H, W)) < kept_fraction, 3.0, 1.5).astype(np.float32)
    mask = rng.random((H, W)).astype(np.float32)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    return points, conf, mask, rgb


def _select(selection, points, conf, mask, rgb):
    device = select_on_device(selection, torch.from_numpy(points), torch.from_numpy(conf), torch.from_numpy(mask))
    host = {f"p/{k}": v.numpy() for k, v in device.items()}
    chosen = selected_on_host(host, "p/")
    return chosen.points, chosen.colors(rgb), chosen.pixels


@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("max_points", [None, 1, 2, 7, 100, 10_000])
@pytest.mark.parametrize("kept_fraction", [0.0, 0.5, 1.0])
def test_matches_the_documented_rule(stride, max_points, kept_fraction):
    points, conf, mask, rgb = _frame(stride * 7 + (max_points or 0), kept_fraction)
    for exclude in (False, True):
        selection = PointSelection("c", conf_threshold=2.0, stride=stride, max_points=max_points,
                                   exclude_humans=exclude, mask_threshold=0.7)
        pts, colors, pixels = _select(selection, points, conf, mask, rgb)
        want_pts, want_colors = reference_selection(points, conf, rgb, 2.0, stride, max_points,
                                                    exclude=mask > 0.7 if exclude else None)
        np.testing.assert_array_equal(pts, want_pts)
        np.testing.assert_array_equal(colors, want_colors)
        np.testing.assert_array_equal(points.reshape(-1, 3)[pixels], want_pts)


def test_capacity_is_fixed_so_the_step_needs_no_synchronisation():
    points, conf, mask, _ = _frame(0, 0.5)
    selection = PointSelection("c", conf_threshold=2.0, stride=2, max_points=50)
    out = select_on_device(selection, torch.from_numpy(points), torch.from_numpy(conf), None)
    assert out["points"].shape == (50, 3) and out["pixels"].shape == (50,)
    assert out["pixels"].dtype == out["points"].dtype == out["count"].dtype == torch.float32


def test_invalid_selections_are_refused():
    with pytest.raises(ValueError, match="stride"):
        PointSelection("c", conf_threshold=1.0, stride=0)
    with pytest.raises(ValueError, match="max_points"):
        PointSelection("c", conf_threshold=1.0, max_points=0)
    points, conf, _, _ = _frame(0, 0.5)
    with pytest.raises(ValueError, match="mask head"):
        select_on_device(PointSelection("c", 1.0, exclude_humans=True), torch.from_numpy(points),
                         torch.from_numpy(conf), None)

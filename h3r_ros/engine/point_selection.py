"""Choosing a frame's cloud points on the device, so only the chosen ones travel to the host.

A selection keeps every ``stride``-th pixel (in both directions) with confidence above a
threshold, finite coordinates and, optionally, no human on it, then evenly subsamples the
kept pixels to at most ``max_points`` (``numpy.linspace`` positions over the kept ones, in
row-major order). Its size is data dependent; to avoid a host synchronisation inside the
step, the device returns a fixed-capacity block plus the count, and the host slices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class PointSelection:
    name: str  # key in FrameResult.selections
    conf_threshold: float
    stride: int = 1
    max_points: int | None = None  # None: every kept pixel
    exclude_humans: bool = False  # drop pixels whose human probability exceeds mask_threshold
    mask_threshold: float = 0.1  # the Human3R demo's msk_threshold for "human pixel"

    def __post_init__(self):
        if self.stride < 1:
            raise ValueError(f"selection {self.name!r}: stride must be >= 1, got {self.stride}")
        if self.max_points is not None and self.max_points < 1:
            raise ValueError(f"selection {self.name!r}: max_points must be >= 1 or None, got {self.max_points}")


@dataclass
class SelectedPoints:
    """The chosen pixels of one selection, on the host."""

    points: np.ndarray  # (N, 3) float32, world frame
    pixels: np.ndarray  # (N,) int64 row-major index into the model-input image

    def colors(self, rgb: np.ndarray) -> np.ndarray:
        """(N, 3) uint8 colours of the chosen pixels from the (H, W, 3) model-input image."""
        return rgb.reshape(-1, 3)[self.pixels]


def select_on_device(
    selection: PointSelection, points: torch.Tensor, conf: torch.Tensor, human_mask: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """Device tensors for one selection: 'points' (C, 3), 'pixels' (C,) int32 stored in float32
    bits (the frame's host transfer is one float32 buffer), 'count' (1,) float32; the first
    ``count`` rows are the selection."""
    h, w = conf.shape
    s = selection.stride
    pts = points[::s, ::s].reshape(-1, 3)
    keep = (conf[::s, ::s].reshape(-1) > selection.conf_threshold) & torch.isfinite(pts).all(dim=1)
    if selection.exclude_humans:
        if human_mask is None:
            raise ValueError(f"selection {selection.name!r} excludes humans but the model has no mask head")
        keep &= ~(human_mask[::s, ::s].reshape(-1) > selection.mask_threshold)
    rows = torch.arange(0, h, s, device=conf.device)
    cols = torch.arange(0, w, s, device=conf.device)
    pixels = (rows[:, None] * w + cols[None, :]).reshape(-1)
    # Kept pixels first, each group in row-major order (a stable sort of the "dropped" flag).
    order = torch.sort((~keep).to(torch.uint8), stable=True).indices
    count = keep.sum()
    capacity = pts.shape[0] if selection.max_points is None else min(selection.max_points, pts.shape[0])
    positions = torch.arange(capacity, device=conf.device)
    if capacity > 1:
        # numpy.linspace(0, count - 1, capacity) truncated, computed in float64 as numpy does.
        spread = (positions.double() * ((count - 1).double() / (capacity - 1))).long()
        spread[-1] = count - 1  # numpy sets the end point exactly
        positions = torch.where(count > capacity, spread, positions)
    chosen = order[positions]
    return {
        "points": pts[chosen],
        "pixels": pixels[chosen].to(torch.int32).view(torch.float32),
        "count": torch.clamp(count, max=capacity).reshape(1).float(),
    }


def selected_on_host(host: dict[str, np.ndarray], prefix: str) -> SelectedPoints:
    """Undo ``select_on_device``'s packing, given the host copies under ``prefix + name``."""
    n = int(host[prefix + "count"][0])
    return SelectedPoints(
        points=host[prefix + "points"][:n],
        pixels=host[prefix + "pixels"][:n].view(np.int32).astype(np.int64),
    )

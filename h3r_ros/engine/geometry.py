"""Camera geometry of the demo's post-processing (spec §3.12, §4.4, §5.1)."""

from __future__ import annotations

import torch


def pose_encoding_to_c2w(pose: torch.Tensor) -> torch.Tensor:
    """[..., 7] (t, quaternion real-first) -> [..., 4, 4] camera-to-world (OpenCV axes)."""
    t, q = pose[..., :3], pose[..., 3:7]
    r, i, j, k = q.unbind(-1)
    # s = 2/|q|^2 keeps the matrix a rotation even for a slightly unnormalised quaternion.
    s = 2.0 / (q * q).sum(-1)
    rot = torch.stack(
        (
            1 - s * (j * j + k * k), s * (i * j - k * r), s * (i * k + j * r),
            s * (i * j + k * r), 1 - s * (i * i + k * k), s * (j * k - i * r),
            s * (i * k - j * r), s * (j * k + i * r), 1 - s * (i * i + j * j),
        ),
        dim=-1,
    ).reshape(q.shape[:-1] + (3, 3))
    out = torch.zeros(pose.shape[:-1] + (4, 4), dtype=pose.dtype, device=pose.device)
    out[..., :3, :3] = rot
    out[..., :3, 3] = t
    out[..., 3, 3] = 1
    return out


class PoseChain:
    """Chains camera poses across automatic resets so the world stays continuous.

    With predicted poses P_k and reset flags r_k: B_0 = I,
    B_k = B_{k-1} @ (P_{k-1} if r_{k-1} else I), chained pose = B_k @ P_k. Each segment
    after a reset starts in the camera of the reset frame; segments are not rescaled.
    """

    def __init__(self) -> None:
        self._base: torch.Tensor | None = None

    def clear(self) -> None:
        self._base = None

    @property
    def base(self) -> torch.Tensor | None:
        """B_k for the next frame: the current segment's world in the first segment's
        (None while that is the identity)."""
        return self._base

    def apply(self, c2w: torch.Tensor, reset: bool) -> torch.Tensor:
        """Chained pose of one frame; ``reset`` is that frame's own reset flag."""
        chained = c2w if self._base is None else self._base @ c2w
        if reset:
            self._base = chained
        return chained


def principal_point(height: int, width: int) -> tuple[int, int]:
    """(c_x, c_y) as the demo uses it: integer image centre."""
    return width // 2, height // 2


def estimate_focal(pts3d: torch.Tensor, pp: tuple[int, int], iters: int = 10) -> torch.Tensor:
    """Focal length from a camera-frame pointmap [H, W, 3] (Weiszfeld, reweighted L1).

    Pixel offsets use integer indices without +0.5, as the reference does.
    """
    height, width = pts3d.shape[:2]
    ys, xs = torch.meshgrid(
        torch.arange(height, device=pts3d.device, dtype=pts3d.dtype),
        torch.arange(width, device=pts3d.device, dtype=pts3d.dtype),
        indexing="ij",
    )
    pixels = torch.stack((xs - pp[0], ys - pp[1]), dim=-1).reshape(-1, 2)
    pts = pts3d.reshape(-1, 3)
    xy_over_z = (pts[:, :2] / pts[:, 2:3]).nan_to_num(posinf=0.0, neginf=0.0)
    dot_xy_px = (xy_over_z * pixels).sum(-1)
    dot_xy_xy = xy_over_z.square().sum(-1)
    focal = dot_xy_px.mean() / dot_xy_xy.mean()
    for _ in range(iters):
        dist = (pixels - focal * xy_over_z).norm(dim=-1)
        w = dist.clip(min=1e-8).reciprocal()
        focal = (w * dot_xy_px).mean() / (w * dot_xy_xy).mean()
    return focal.clip(min=0.0)


def intrinsics(focal: torch.Tensor, pp: tuple[int, int]) -> torch.Tensor:
    """3x3 pinhole K with square pixels."""
    k = torch.zeros(3, 3, dtype=focal.dtype, device=focal.device)
    k[0, 0] = focal
    k[1, 1] = focal
    k[0, 2] = pp[0]
    k[1, 2] = pp[1]
    k[2, 2] = 1
    return k


def transform_points(transform: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Apply a 4x4 rigid transform to points [..., 3]."""
    return points @ transform[:3, :3].T + transform[:3, 3]

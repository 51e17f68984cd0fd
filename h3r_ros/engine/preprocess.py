"""Frame pre-processing exactly as the official Human3R/CUT3R demo does it (spec §2).

The CUT3R input goes through PIL (its antialiased LANCZOS/BICUBIC kernels are part of the
reference numerics); the human-branch input is derived from the normalised CUT3R tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


@dataclass(frozen=True)
class CropGeometry:
    """Where the model input lies in the original frame."""

    resized_size: tuple[int, int]  # (W', H') after the long-side resize
    crop_box: tuple[int, int, int, int]  # (left, top, right, bottom) in resized pixels
    scale: float  # resized / original frame size

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) of the model input."""
        left, top, right, bottom = self.crop_box
        return bottom - top, right - left


def crop_geometry(width: int, height: int, size: int) -> CropGeometry:
    """Where ``resize_and_crop`` resizes and crops a ``width`` x ``height`` frame.

    Raises ValueError when the frame cannot give a model input (too thin for ``size``), so a
    caller can refuse such a frame before decoding it.
    """
    if width <= 0 or height <= 0 or size <= 0 or size % 16:
        raise ValueError(f"frame {width}x{height} at input size {size}: sizes must be positive, size a multiple of 16")
    long_side = max(width, height)
    new_w, new_h = (int(round(x * size / long_side)) for x in (width, height))
    cx, cy = new_w // 2, new_h // 2
    halfw, halfh = ((2 * cx) // 16) * 8, ((2 * cy) // 16) * 8
    if new_w == new_h:
        # The reference crops squares to 4:3. Its 3*halfw/4 is a multiple of 8 only when
        # size is a multiple of 64; otherwise round down so the height stays a multiple of 16.
        halfh = (3 * halfw // 4) // 8 * 8
    if halfw == 0 or halfh == 0:
        raise ValueError(
            f"frame {width}x{height} is too thin for a {size}-px model input (its short side would "
            "be under 16 px after resizing)"
        )
    box = (cx - halfw, cy - halfh, cx + halfw, cy + halfh)
    return CropGeometry(resized_size=(new_w, new_h), crop_box=box, scale=size / long_side)


def resize_and_crop(rgb: np.ndarray, size: int) -> tuple[np.ndarray, CropGeometry]:
    """RGB uint8 (H1, W1, 3) -> centre-cropped uint8 (H, W, 3) with H, W multiples of 16.

    Long side resized to ``size`` (Python ``round``, LANCZOS when shrinking, BICUBIC
    otherwise), then a centre crop to multiples of 16; a square image is cropped to 4:3.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 array of shape (H, W, 3), got {rgb.dtype} {rgb.shape}")
    geometry = crop_geometry(rgb.shape[1], rgb.shape[0], size)
    image = Image.fromarray(np.ascontiguousarray(rgb))
    resample = Image.LANCZOS if max(image.size) > size else Image.BICUBIC
    image = image.resize(geometry.resized_size, resample)
    cropped = np.array(image.crop(geometry.crop_box))  # writable, so torch.from_numpy accepts it
    return cropped, geometry


def to_model_input(cropped: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 [1, 3, H, W] in [-1, 1] on ``device``.

    The uint8 image travels to the device (4x less than float); the arithmetic is the
    reference's ToTensor + Normalize(0.5, 0.5) in the same order.
    """
    x = torch.from_numpy(np.ascontiguousarray(cropped)).to(device, non_blocking=True)
    x = x.permute(2, 0, 1).unsqueeze(0).to(torch.float32)
    return (x / 255.0 - 0.5) / 0.5


def pad_image(img: torch.Tensor, target: int) -> torch.Tensor:
    """CUT3R input [B, 3, H, W] in [-1, 1] -> human-branch input [B, 3, target, target].

    Bilinear resize (align_corners=False, no antialias) so the long side fits, then a
    centred pad with -1 (black in [-1, 1]); the top/left pad takes the floor.
    """
    height, width = img.shape[-2:]
    scale = min(target / height, target / width)
    new_h, new_w = int(height * scale), int(width * scale)
    resized = F.interpolate(img, size=(new_h, new_w), mode="bilinear", align_corners=False)
    top, left = (target - new_h) // 2, (target - new_w) // 2
    pad = (left, target - new_w - left, top, target - new_h - top)
    return F.pad(resized, pad, value=-1.0)


def unpad_image(x: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """A map in the padded square frame [B, C, R, R] -> [B, C, H, W] on the CUT3R input.

    Nearest resize to max(H, W), then the centre crop that undoes ``pad_image``.
    """
    height, width = out_hw
    side = max(height, width)
    x = F.interpolate(x, size=(side, side), mode="nearest")
    top, left = (side - height) // 2, (side - width) // 2
    return x[..., top : top + height, left : left + width]


def unpad_uv(uv: torch.Tensor, target: int, out_hw: tuple[int, int]) -> torch.Tensor:
    """Pixel positions (x, y) in the padded square frame -> CUT3R input pixels, clamped."""
    height, width = out_hw
    side = max(height, width)
    u = uv[..., 0] * side / target - (side - width) // 2
    v = uv[..., 1] * side / target - (side - height) // 2
    return torch.stack([u.clamp(0, width - 1), v.clamp(0, height - 1)], dim=-1)

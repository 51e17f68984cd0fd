"""2D rotary position embedding (CroCo RoPE2D).

A head vector of size D is split into a y-half and an x-half; inside each half of size D/2
element j is paired with element j + D/4 ("rotate-half") and rotated by the angle p * theta_j,
theta_j = base^(-j / (D/4)), p being the token's row (y-half) or column (x-half).
Angles are computed analytically, so negative positions (the pose token sits at (-1, -1))
work.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RopeTable:
    """Per-token rotation factors, each [N, 2 (y/x half), D/4]."""

    cos: torch.Tensor
    sin: torch.Tensor

    def select(self, index) -> "RopeTable":
        return RopeTable(self.cos[index], self.sin[index])

    @staticmethod
    def cat(tables) -> "RopeTable":
        return RopeTable(torch.cat([t.cos for t in tables]), torch.cat([t.sin for t in tables]))


def rope_table(
    positions: torch.Tensor, head_dim: int, base: float, dtype: torch.dtype = torch.float32
) -> RopeTable:
    """Rotation factors for integer (y, x) positions [N, 2] and a head size ``head_dim``.

    Angles are computed in float32 and rounded to ``dtype`` before cos/sin: float16 tables
    reproduce CroCo's PyTorch RoPE applied to float16 tokens.
    """
    quarter = head_dim // 4
    exponent = torch.arange(quarter, device=positions.device, dtype=torch.float32) / quarter
    inv_freq = 1.0 / (base**exponent)
    angles = (positions.to(torch.float32)[:, :, None] * inv_freq).to(dtype)  # [N, 2, Q]
    return RopeTable(angles.cos(), angles.sin())


def apply_rope(x: torch.Tensor, table: RopeTable, fp16_roundtrip: bool = False) -> torch.Tensor:
    """Rotate ``x`` [B, heads, N, D] by ``table`` (N rows); returns x's dtype.

    The rotation is computed in the table's dtype. ``fp16_roundtrip`` reproduces the CroCo
    encoder, whose attention rounds q/k to float16 before and after RoPE; it only applies to
    float32 inputs.
    """
    dtype = x.dtype
    roundtrip = fp16_roundtrip and dtype == torch.float32
    if roundtrip:
        x = x.to(torch.float16)
    x = x.to(table.cos.dtype).unflatten(-1, (2, 2, -1))  # [..., half, (u|v), Q]
    u, v = x[..., 0, :], x[..., 1, :]
    cos, sin = table.cos, table.sin
    out = torch.stack((u * cos - v * sin, v * cos + u * sin), dim=-2).flatten(-3)
    if roundtrip:
        out = out.to(torch.float16)
    return out.to(dtype)

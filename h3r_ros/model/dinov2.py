"""DINOv2 ViT/14 (hub layout, no register tokens, unchunked blocks): the Multi-HMR encoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import Attention, Mlp, PatchEmbed, layer_norm
from .config import DINOV2_PATCH_SIZE, DINOV2_PRETRAIN_GRID


class LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), 1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class DinoBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.norm1 = layer_norm(dim)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = layer_norm(dim)
        self.mlp = Mlp(dim, 4 * dim)
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DinoVisionTransformer(nn.Module):
    def __init__(self, dim: int, depth: int, num_heads: int):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + DINOV2_PRETRAIN_GRID**2, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))  # pre-training only
        self.patch_embed = PatchEmbed(3, dim, DINOV2_PATCH_SIZE)
        self.blocks = nn.ModuleList([DinoBlock(dim, num_heads) for _ in range(depth)])
        self.norm = layer_norm(dim)

    def position_embedding(self, grid: int) -> torch.Tensor:
        """pos_embed for a grid x grid token input, float32 [1, 1 + grid^2, C].

        Bicubic resize of the 37x37 table given as scale_factor (grid + 0.1) / 37, exactly
        like DINOv2 (the 0.1 offset changes the sampling positions, so size=grid would not
        reproduce the reference). Depends only on the weights: callers cache it.
        """
        table = self.pos_embed.float()
        if grid == DINOV2_PRETRAIN_GRID:
            return table
        dim = table.shape[-1]
        scale = (grid + 0.1) / DINOV2_PRETRAIN_GRID
        patch = table[:, 1:].reshape(1, DINOV2_PRETRAIN_GRID, DINOV2_PRETRAIN_GRID, dim).permute(0, 3, 1, 2)
        patch = F.interpolate(patch, scale_factor=(scale, scale), mode="bicubic", align_corners=False)
        patch = patch.permute(0, 2, 3, 1).reshape(1, grid * grid, dim)
        return torch.cat((table[:, :1], patch), dim=1)

    def forward(self, x: torch.Tensor, pos_embed: torch.Tensor) -> torch.Tensor:
        """Normalised patch tokens [B, grid^2, C] (class token dropped) of a normalised image."""
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + pos_embed.to(x.dtype)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)[:, 1:]


class Dinov2Backbone(nn.Module):
    """Wrapper matching the checkpoint prefix ``backbone.encoder.``."""

    def __init__(self, dim: int, depth: int, num_heads: int):
        super().__init__()
        self.encoder = DinoVisionTransformer(dim, depth, num_heads)

    def forward(self, x: torch.Tensor, pos_embed: torch.Tensor) -> torch.Tensor:
        return self.encoder(x, pos_embed)

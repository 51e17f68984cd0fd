"""Transformer building blocks shared by the CroCo encoder, the CUT3R decoders, the pose
memory, the DINOv2 backbone and the heads. Attribute names follow the checkpoint."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .rope import RopeTable, apply_rope


def layer_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6)  # every LayerNorm in Human3R uses eps 1e-6


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection; returns row-major tokens [B, h*w, C]."""

    def __init__(self, in_chans: int, dim: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, out_dim: Optional[int] = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out_dim or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head self-attention with an optional RoPE on q and k.

    ``fp16_rope`` reproduces the CroCo encoder's float16 round trip of q/k around RoPE.
    """

    def __init__(self, dim: int, num_heads: int, fp16_rope: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.fp16_rope = fp16_rope
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: Optional[RopeTable] = None) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q = apply_rope(q, rope, self.fp16_rope)
            k = apply_rope(k, rope, self.fp16_rope)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class CrossAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.projq = nn.Linear(dim, dim)
        self.projk = nn.Linear(dim, dim)
        self.projv = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        rope_x: Optional[RopeTable] = None,
        rope_y: Optional[RopeTable] = None,
        mean_logit: bool = False,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Attend from x [B, Nq, C] to y [B, Nk, C].

        With ``mean_logit`` also returns the scaled pre-softmax logits averaged over keys and
        heads, [B, Nq] (TTT3R's state learning rate). Mean over keys of q.k equals q.mean(k),
        so the full logit matrix is never materialised.
        """
        B, Nq, C = x.shape
        Nk = y.shape[1]
        heads, hd = self.num_heads, C // self.num_heads
        q = self.projq(x).view(B, Nq, heads, hd).transpose(1, 2)
        k = self.projk(y).view(B, Nk, heads, hd).transpose(1, 2)
        v = self.projv(y).view(B, Nk, heads, hd).transpose(1, 2)
        if rope_x is not None:
            q = apply_rope(q, rope_x)
        if rope_y is not None:
            k = apply_rope(k, rope_y)
        out = F.scaled_dot_product_attention(q, k, v)
        out = self.proj(out.transpose(1, 2).reshape(B, Nq, C))
        logit = None
        if mean_logit:
            k_mean = k.float().mean(dim=2, keepdim=True)  # [B, heads, 1, hd]
            logit = (q.float() @ k_mean.transpose(-1, -2)).squeeze(-1).mean(dim=1) * hd**-0.5
        return out, logit


class Block(nn.Module):
    """Pre-norm ViT block (CroCo encoder)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, fp16_rope: bool = False):
        super().__init__()
        self.norm1 = layer_norm(dim)
        self.attn = Attention(dim, num_heads, fp16_rope=fp16_rope)
        self.norm2 = layer_norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, rope: Optional[RopeTable] = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope)
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    """Self-attention, cross-attention to a (normalised) memory y, MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = layer_norm(dim)
        self.attn = Attention(dim, num_heads)
        self.cross_attn = CrossAttention(dim, num_heads)
        self.norm2 = layer_norm(dim)
        self.norm3 = layer_norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_y = layer_norm(dim)

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        rope_x: Optional[RopeTable] = None,
        rope_y: Optional[RopeTable] = None,
        mean_logit: bool = False,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        x = x + self.attn(self.norm1(x), rope_x)
        out, logit = self.cross_attn(self.norm2(x), self.norm_y(y), rope_x, rope_y, mean_logit)
        x = x + out
        return x + self.mlp(self.norm3(x)), logit


class ModLN(nn.Module):
    """adaLN: LN(x) * (1 + scale) + shift with [shift; scale] = Linear(SiLU(cond))."""

    def __init__(self, dim: int, cond_dim: int):
        super().__init__()
        self.norm = layer_norm(dim)
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift, scale = self.mlp(cond).unsqueeze(1).chunk(2, dim=-1)
        return self.norm(x) * (1 + scale) + shift


class ModulatedBlock(nn.Module):
    """ViT block whose LayerNorms are modulated by a condition vector (final_transform)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = ModLN(dim, dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = ModLN(dim, dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, cond: torch.Tensor, rope: RopeTable) -> torch.Tensor:
        x = x + self.attn(self.norm1(x, cond), rope)
        return x + self.mlp(self.norm2(x, cond))

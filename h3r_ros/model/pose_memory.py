"""CUT3R's LocalMemory: a small token memory that predicts the camera-pose query of a view."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import DecoderBlock


class LocalMemory(nn.Module):
    """Memory tokens of width 2*D, each [key part (D) ; value part (D)]; no RoPE."""

    def __init__(self, size: int, key_dim: int, value_dim: int, num_heads: int, depth: int = 2):
        super().__init__()
        self.proj_q = nn.Linear(key_dim, value_dim)
        self.masked_token = nn.Parameter(torch.zeros(1, 1, value_dim))
        self.mem = nn.Parameter(torch.zeros(1, size, 2 * value_dim))
        self.write_blocks = nn.ModuleList([DecoderBlock(2 * value_dim, num_heads) for _ in range(depth)])
        self.read_blocks = nn.ModuleList([DecoderBlock(2 * value_dim, num_heads) for _ in range(depth)])

    def inquire(self, query: torch.Tensor, mem: torch.Tensor) -> torch.Tensor:
        """Read-out token [B, 1, 2D] for the global image feature ``query`` [B, 1, key_dim].

        Its value part (last D channels) is the pose query.
        """
        q = self.proj_q(query)
        x = torch.cat((q, self.masked_token.expand(q.shape[0], -1, -1)), dim=-1)
        for blk in self.read_blocks:
            x, _ = blk(x, mem)
        return x

    def update(self, mem: torch.Tensor, query: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """Write [proj_q(query) ; value] (one token) into ``mem``; returns the new memory."""
        token = torch.cat((self.proj_q(query), value), dim=-1)
        for blk in self.write_blocks:
            mem, _ = blk(mem, token)
        return mem

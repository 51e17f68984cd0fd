"""CroCo/CUT3R pieces that are not modules: token positions and the dual (state/image) decoder."""

from __future__ import annotations

from typing import Dict, Iterable, Optional, Sequence, Tuple

import torch
from torch import nn

from .rope import RopeTable


def grid_positions(h: int, w: int, device) -> torch.Tensor:
    """(row, col) of the h*w patch tokens in row-major order, int64 [h*w, 2]."""
    rows = torch.arange(h, device=device).repeat_interleave(w)
    cols = torch.arange(w, device=device).repeat(h)
    return torch.stack((rows, cols), dim=-1)


def state_positions(size: int, pe: str, width: int, device) -> torch.Tensor:
    """Positions of the state tokens: '2d' a grid of the given width, '1d' the diagonal (i, i)."""
    i = torch.arange(size, device=device)
    if pe == "1d":
        return torch.stack((i, i), dim=-1)
    return torch.stack((i // width, i % width), dim=-1)


def dual_decode(
    state_blocks: Sequence[nn.Module],
    image_blocks: Sequence[nn.Module],
    state: torch.Tensor,
    image: torch.Tensor,
    ropes: Dict[str, RopeTable],
    hooks: Iterable[int],
    ttt3r: bool,
) -> Tuple[torch.Tensor, torch.Tensor, Dict[int, torch.Tensor], Optional[torch.Tensor]]:
    """Run the state and image decoders in lock-step; layer l of both reads layer l-1 outputs.

    ropes: 'state_s' / 'image_s' (state-decoder head size) and 'state_i' / 'image_i'
    (image-decoder head size). Returns the raw last state and image streams, the image
    stream after each layer in ``hooks`` (1-based), and with ``ttt3r`` the state cross-attention
    logits averaged over layers, heads and keys [B, S].
    """
    hooks = set(hooks)
    kept: Dict[int, torch.Tensor] = {}
    logit_sum = None
    for layer, (blk_s, blk_i) in enumerate(zip(state_blocks, image_blocks), start=1):
        new_state, logit = blk_s(state, image, ropes["state_s"], ropes["image_s"], mean_logit=ttt3r)
        image, _ = blk_i(image, state, ropes["image_i"], ropes["state_i"])
        state = new_state
        if layer in hooks:
            kept[layer] = image
        if ttt3r:
            logit_sum = logit if logit_sum is None else logit_sum + logit
    mean_logit = logit_sum / len(state_blocks) if ttt3r else None
    return state, image, kept, mean_logit

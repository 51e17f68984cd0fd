"""Helpers shared by the benchmark scripts: released architectures with random weights,
forced detections, resource figures and the machine's own matmul rate."""

from __future__ import annotations

import resource
import time

import torch

from h3r_ros.model import Human3R


def random_model(cfg, dtype: torch.dtype, device: str) -> Human3R:
    """Allocate directly in ``dtype`` on ``device`` (no float32 copy) and fill with small
    random values: a released architecture without its checkpoint."""
    with torch.device("meta"):
        model = Human3R(cfg)
    model = model.to(dtype).to_empty(device=device).eval()
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and name.endswith("weight"):  # LayerNorm scales
                p.fill_(1.0)
            elif p.dim() == 1:
                p.zero_()
            else:
                p.normal_(0.0, 0.02, generator=gen)
        for b in model.buffers():
            b.zero_()
    return model


def force_detections(model: Human3R, n: int) -> None:
    """Make the detector fire on n separated cells in the middle rows of the token grid, so
    the per-person work is representative whatever the random weights."""
    r = model.cfg.bb_token_res
    cells = [(r // 2) * r + (c + 1) * r // (n + 1) for c in range(n)]

    def hook(_module, _inputs, logits):
        forced = torch.full_like(logits, -10.0)
        forced[:, cells] = 10.0
        return forced

    model.downstream_head.mlp_classif.register_forward_hook(hook)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB


def matmul_rate(dtype: torch.dtype, device: str = "cpu", n: int = 4096, repeats: int = 3) -> float:
    """Best FLOP/s of an n x n x n matmul in ``dtype``: what this machine does at best."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = float("inf")
    for _ in range(repeats + 1):  # the first call warms up
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.mm(a, b)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best


def tiny_config():
    """A tiny Human3R (the reference fixtures' architecture: 128-d CroCo, 2 encoder and 4
    decoder blocks, 96 state tokens, DINOv2 ViT-S/14 at 280 px) for runs that need no speed
    of the real model, at a 160-px model input (``TINY_SIZE``)."""
    from h3r_ros.model import Human3RConfig

    return Human3RConfig.from_kwargs(dict(state_size=96, enc_embed_dim=128, enc_depth=2, enc_num_heads=4,
                                          dec_embed_dim=128, dec_depth=4, dec_num_heads=4, backbone="dinov2_vits14",
                                          mhmr_img_res=280))


TINY_SIZE = 160


def camera_frames(cameras: int, width: int):
    """One random 16:9 RGB uint8 frame per camera, ``width`` px wide (the model input's long side)."""
    import numpy as np

    gen = np.random.default_rng(0)
    return [gen.integers(0, 256, (width * 9 // 16, width, 3), dtype=np.uint8) for _ in range(cameras)]

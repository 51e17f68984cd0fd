"""Human3R output heads (checkpoint prefix ``downstream_head.``) and output activations."""

from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import Mlp, ModulatedBlock
from .config import Human3RConfig
from .dpt import DPTAdapter

SCORE_EPS = 1e-6


class MlpHead(nn.Module):
    """Linear -> GELU -> Linear stored at ``mlp.layers.{0,2}`` (Multi-HMR's Mlp_flex layout)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        layers = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
        self.mlp = nn.ModuleDict({"layers": layers})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp["layers"](x)


def regression_mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


class PoseHead(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.mlp = Mlp(dim, 4 * dim, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class Human3RHead(nn.Module):
    def __init__(self, cfg: Human3RConfig):
        super().__init__()
        enc, dec, bb = cfg.enc_embed_dim, cfg.dec_embed_dim, cfg.backbone_dim
        # SMPL-X mean parameters; the checkpoint overwrites them. init_cam and init_betas_kid
        # are stored but unused by this head.
        self.register_buffer("init_body_pose", torch.eye(3)[:, :2].reshape(1, 6).repeat(1, cfg.num_rotations))
        self.register_buffer("init_betas", torch.zeros(1, cfg.num_betas))
        self.register_buffer("init_betas_kid", torch.zeros(1, cfg.num_betas + 1))
        self.register_buffer("init_cam", torch.zeros(1, 3))
        self.register_buffer("init_expression", torch.zeros(1, cfg.num_expression))

        dpt = dict(layer_dims=cfg.dpt_layer_dims, features=cfg.dpt_feature_dim, last_dim=cfg.dpt_last_dim)
        token_dims = (enc, dec, dec, dec)
        self.dpt_self = DPTAdapter(token_dims, 4, **dpt)
        self.final_transform = nn.ModuleList([ModulatedBlock(dec, cfg.dec_num_heads) for _ in range(2)])
        self.dpt_cross = DPTAdapter(token_dims, 4, **dpt)
        if cfg.rgb_head:
            self.dpt_rgb = DPTAdapter(token_dims, 3, **dpt)
        self.pose_head = PoseHead(dec)
        self.mlp_classif = regression_mlp(bb, bb, 1)
        self.mlp_offset = regression_mlp(bb, bb, 2)
        if cfg.msk_head:
            self.mlp_msk = MlpHead(bb, bb, cfg.bb_patch_size**2)
        self.mlp_fuse = MlpHead(enc + bb, 4 * (enc + bb), dec)
        self.deccam = MlpHead(dec, 4 * dec, 3)
        self.decpose = MlpHead(dec + bb, 4 * (dec + bb), 6 * cfg.num_rotations)
        self.decshape = MlpHead(dec + bb, 4 * (dec + bb), cfg.num_betas)
        self.decexpression = MlpHead(dec + bb, 4 * (dec + bb), cfg.num_expression)
        self.num_rotations = cfg.num_rotations

    def smpl(self, human_tokens: torch.Tensor, backbone_tokens: torch.Tensor) -> Dict[str, torch.Tensor]:
        """SMPL-X parameters of n humans from decoder tokens [1, n, D] and DINOv2 tokens [1, n, C]."""
        z = torch.cat((human_tokens, backbone_tokens), dim=-1)
        n = z.shape[1]
        pose6d = (self.decpose(z) + self.init_body_pose).float()
        return {
            "smpl_rotmat": rot6d_to_rotmat(pose6d.reshape(-1, 6)).reshape(1, n, self.num_rotations, 3, 3),
            "smpl_shape": (self.decshape(z) + self.init_betas).float(),
            "smpl_expression": (self.decexpression(z) + self.init_expression).float(),
            # deccam reads only the decoder token; its output is a translation (no init_cam)
            "smpl_transl": exp_points(self.deccam(human_tokens).float()),
        }


def squeezed_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """Sigmoid squeezed into [eps, 1 - eps] (detection and mask scores)."""
    return torch.sigmoid(x) * (1 - 2 * SCORE_EPS) + SCORE_EPS


def exp_points(xyz: torch.Tensor) -> torch.Tensor:
    """'exp' depth mode: keep the direction, map the norm d to expm1(d)."""
    d = xyz.norm(dim=-1, keepdim=True)
    return xyz / d.clip(min=1e-8) * torch.expm1(d)


def points_and_conf(out: torch.Tensor, conf_mode: Tuple[str, float, float]) -> Tuple[torch.Tensor, torch.Tensor]:
    """DPT output [B, 4, H, W] -> points [B, H, W, 3], confidence [B, H, W] (float32)."""
    fmap = out.float().permute(0, 2, 3, 1)
    _, vmin, vmax = conf_mode
    return exp_points(fmap[..., 0:3]), vmin + fmap[..., 3].exp().clip(max=vmax - vmin)


def rgb_output(out: torch.Tensor) -> torch.Tensor:
    """DPT rgb output [B, 3, H, W] -> [B, H, W, 3] in [-1, 1]."""
    return (squeezed_sigmoid(out.float().permute(0, 2, 3, 1)) - 0.5) * 2


def camera_pose(raw: torch.Tensor) -> torch.Tensor:
    """Pose head output [B, 7] -> (translation, unit quaternion real-first with w >= 0)."""
    trans, quat = raw[..., 0:3], raw[..., 3:7]
    d = trans.norm(dim=-1, keepdim=True)
    trans = trans * (torch.expm1(d) / d.clip(min=1e-8))
    quat = F.normalize(quat, p=2, dim=-1)
    quat = torch.where(quat[..., 0:1] < 0, -quat, quat)
    return torch.cat((trans, quat), dim=-1)


def rot6d_to_rotmat(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """6D [M, 6] read as a row-major 3x2 matrix; Gram-Schmidt on its columns -> [M, 3, 3]."""
    m = x.reshape(-1, 3, 2)
    a, b = m[..., 0], m[..., 1]
    a = a / a.norm(dim=-1, keepdim=True).clamp_min(eps)
    b = b - (a * b).sum(dim=-1, keepdim=True) * a
    b = b / b.norm(dim=-1, keepdim=True).clamp_min(eps)
    return torch.stack((a, b, torch.cross(a, b, dim=-1)), dim=-1)

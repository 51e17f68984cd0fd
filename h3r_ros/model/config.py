"""Configuration of the Human3R network (only the values that change the graph or numerics)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Tuple

INF = math.inf

# DINOv2 hub models: name -> (embed dim, depth, heads). ViT-g uses a SwiGLU FFN and is not
# a Human3R backbone, so it is deliberately absent.
DINOV2_ARCHS = {
    "dinov2_vits14": (384, 12, 6),
    "dinov2_vitb14": (768, 12, 12),
    "dinov2_vitl14": (1024, 24, 16),
}
DINOV2_PATCH_SIZE = 14
DINOV2_PRETRAIN_GRID = 37  # pos_embed trained at 518 px -> 37x37 patches

# Released checkpoints differ only in the human branch (backbone, input resolution).
VARIANTS = {
    "672S": ("dinov2_vits14", 672),
    "672B": ("dinov2_vitb14", 672),
    "672L": ("dinov2_vitl14", 672),
    "896L": ("dinov2_vitl14", 896),
}

# Sane ranges of the sizes a checkpoint's model string sets (inclusive): the largest released
# model (896L) is well inside them, and a hostile string cannot make the loader build an
# arbitrarily large model.
SIZE_BOUNDS = {
    "patch_size": (1, 64),
    "enc_embed_dim": (4, 4096),
    "enc_depth": (1, 64),
    "enc_num_heads": (1, 64),
    "dec_embed_dim": (4, 4096),
    "dec_depth": (4, 64),
    "dec_num_heads": (1, 64),
    "state_size": (1, 4096),
    "state_dec_num_heads": (1, 64),
    "local_mem_size": (1, 4096),
    "local_mem_depth": (1, 16),
    "ray_enc_depth": (0, 64),
    "mhmr_img_res": (14, 1792),
    "mlp_ratio": (0.25, 16.0),
    "rope_base": (1.0, 1e6),
}

# Constructor kwargs of ARCroco3DStereoConfig that never influence the inference graph.
_IGNORED_KWARGS = frozenset(
    {"freeze", "img_size", "patch_embed_cls", "landscape_only", "use_prompt", "is_shallow", "prompt_size"}
)


@dataclass(frozen=True)
class Human3RConfig:
    """Architecture and fixed inference constants; defaults are the released 896L model.

    Build from a checkpoint's constructor string with ``from_kwargs`` or pick a released
    architecture with ``variant``.
    """

    # CroCo encoder / CUT3R decoders
    patch_size: int = 16
    enc_embed_dim: int = 1024
    enc_depth: int = 24
    enc_num_heads: int = 16
    dec_embed_dim: int = 768
    dec_depth: int = 12
    dec_num_heads: int = 12
    mlp_ratio: float = 4.0
    rope_base: float = 100.0
    # Precision of the CroCo encoder's RoPE, whose q/k are rounded to float16 around it (the
    # round trip is only applied to a float32 model). "float32": rotation computed in float32,
    # as the CUDA kernel (curope) of the official GPU code does. "float16": angles, cos/sin
    # and rotation in float16, as the official PyTorch RoPE fallback does; this is what the
    # CPU reference fixtures recorded.
    encoder_rope_math: str = "float32"
    ray_enc_depth: int = 2  # ray-map encoder: stored in checkpoints, unused at inference
    # recurrent state and pose memory
    state_size: int = 768
    state_pe: str = "2d"
    state_dec_num_heads: int = 16
    local_mem_size: int = 256
    local_mem_depth: int = 2
    # heads
    rgb_head: bool = True
    msk_head: bool = True
    depth_mode: Tuple[str, float, float] = ("exp", -INF, INF)
    conf_mode: Tuple[str, float, float] = ("exp", 1.0, INF)
    pose_mode: Tuple[str, float, float] = ("exp", -INF, INF)
    dpt_feature_dim: int = 256
    dpt_last_dim: int = 128
    dpt_layer_dims: Tuple[int, int, int, int] = (96, 192, 384, 768)
    # Multi-HMR human branch
    backbone: str = "dinov2_vitl14"
    mhmr_img_res: int = 896
    det_threshold: float = 0.3
    nms_kernel: int = 3
    num_rotations: int = 53
    num_betas: int = 10
    num_expression: int = 10
    # identity tracking (consumed by the engine)
    match_threshold: float = 0.2
    sinkhorn_iters: int = 20
    sinkhorn_alpha: float = -10.0

    def __post_init__(self):
        for name, (low, high) in SIZE_BOUNDS.items():
            value = getattr(self, name)
            if not low <= value <= high:
                raise ValueError(f"{name}={value} is outside the supported range [{low}, {high}]")
        if self.backbone not in DINOV2_ARCHS:
            raise ValueError(f"unsupported backbone {self.backbone!r}; expected one of {sorted(DINOV2_ARCHS)}")
        if self.mhmr_img_res % DINOV2_PATCH_SIZE:
            raise ValueError(f"mhmr_img_res={self.mhmr_img_res} is not a multiple of {DINOV2_PATCH_SIZE}")
        if self.encoder_rope_math not in ("float32", "float16"):
            raise ValueError(f"encoder_rope_math must be 'float32' or 'float16', got {self.encoder_rope_math!r}")
        if self.state_pe not in ("1d", "2d"):
            raise ValueError(f"unsupported state_pe {self.state_pe!r}; expected '1d' or '2d'")
        for name, dim, heads in (
            ("enc", self.enc_embed_dim, self.enc_num_heads),
            ("dec", self.dec_embed_dim, self.dec_num_heads),
            ("state_dec", self.dec_embed_dim, self.state_dec_num_heads),
        ):
            # RoPE2D rotates pairs inside a y-half and an x-half of every head.
            if dim % heads or (dim // heads) % 4:
                raise ValueError(f"{name}: head dim {dim}/{heads} must be an integer multiple of 4")
        if self.dec_depth < 4:
            raise ValueError("dec_depth must be >= 4 (DPT hooks at depth/2, 3*depth/4, depth)")
        for name, mode in (("depth_mode", self.depth_mode), ("pose_mode", self.pose_mode)):
            if tuple(mode) != ("exp", -INF, INF):
                raise ValueError(f"unsupported {name} {mode!r}; only ('exp', -inf, inf) is implemented")
        if self.conf_mode[0] != "exp":
            raise ValueError(f"unsupported conf_mode {self.conf_mode!r}; only 'exp' is implemented")

    # derived sizes
    @property
    def backbone_dim(self) -> int:
        return DINOV2_ARCHS[self.backbone][0]

    @property
    def backbone_depth(self) -> int:
        return DINOV2_ARCHS[self.backbone][1]

    @property
    def backbone_heads(self) -> int:
        return DINOV2_ARCHS[self.backbone][2]

    @property
    def bb_patch_size(self) -> int:
        return DINOV2_PATCH_SIZE

    @property
    def bb_token_res(self) -> int:
        return self.mhmr_img_res // DINOV2_PATCH_SIZE

    @property
    def state_grid_width(self) -> int:
        width = int(self.state_size**0.5)
        return width + 1 if width % 2 else width

    @classmethod
    def variant(cls, name: str) -> "Human3RConfig":
        """One of the released checkpoints: '672S', '672B', '672L', '896L'."""
        if name not in VARIANTS:
            raise ValueError(f"unknown Human3R variant {name!r}; expected one of {sorted(VARIANTS)}")
        backbone, res = VARIANTS[name]
        return cls(backbone=backbone, mhmr_img_res=res)

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> "Human3RConfig":
        """Build from the keyword arguments of a checkpoint's ``ARCroco3DStereoConfig(...)``.

        Graph-irrelevant keys (freeze, img_size, ...) are ignored; keys that would select a
        model this implementation does not provide raise ``ValueError``.
        """
        kw = dict(kwargs)
        out: dict = {}

        def take(key, convert):
            if key in kw:
                value = kw.pop(key)
                if value is None:
                    raise ValueError(f"{key}=None is not supported")
                out[key] = convert(value)

        head_type = kw.pop("head_type", "dpt")
        if head_type != "dpt":
            raise ValueError(f"unsupported head_type {head_type!r}; Human3R needs 'dpt'")
        output_mode = kw.pop("output_mode", "pts3d+pose+smpl")
        if output_mode != "pts3d+pose+smpl":
            raise ValueError(
                f"unsupported output_mode {output_mode!r}; only 'pts3d+pose+smpl' (the Human3R head) is implemented"
            )
        if not kw.pop("pose_head", True):
            raise ValueError("pose_head=False is not supported: the Human3R head requires the camera-pose token")
        for flag in ("depth_head", "pose_conf_head"):
            if kw.pop(flag, False):
                raise ValueError(f"{flag}=True is not supported")
        if not kw.pop("norm_im2_in_dec", True):
            raise ValueError("norm_im2_in_dec=False is not supported")
        pos_embed = kw.pop("pos_embed", "RoPE100")
        if not (isinstance(pos_embed, str) and pos_embed.startswith("RoPE")):
            raise ValueError(f"unsupported pos_embed {pos_embed!r}; only 'RoPE<base>' is implemented")
        out["rope_base"] = float(pos_embed[len("RoPE"):])

        for key in ("enc_embed_dim", "enc_depth", "enc_num_heads", "dec_embed_dim", "dec_depth",
                    "dec_num_heads", "patch_size", "state_size", "state_dec_num_heads",
                    "local_mem_size", "ray_enc_depth", "mhmr_img_res"):
            take(key, int)
        take("mlp_ratio", float)
        take("state_pe", str)
        take("backbone", str)
        take("rgb_head", bool)
        take("msk_head", bool)
        for key in ("depth_mode", "conf_mode", "pose_mode"):
            take(key, lambda v: (str(v[0]), float(v[1]), float(v[2])))

        for key in _IGNORED_KWARGS:
            kw.pop(key, None)
        if kw:
            warnings.warn(f"Human3RConfig.from_kwargs: ignoring unknown keyword arguments {sorted(kw)}")
        return cls(**out)

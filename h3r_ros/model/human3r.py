"""Human3R (CUT3R + Multi-HMR) as a per-frame step function over an explicit recurrent state.

The module tree and parameter names equal the official checkpoint's ``model`` state dict.
The model does not blend the state, track identities or run SMPL-X: the engine does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, FrozenSet, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import Block, DecoderBlock, PatchEmbed, layer_norm
from .config import Human3RConfig
from .croco import dual_decode, grid_positions, state_positions
from .dinov2 import Dinov2Backbone
from .heads import Human3RHead, camera_pose, points_and_conf, rgb_output, squeezed_sigmoid
from .pose_memory import LocalMemory
from .rope import RopeTable, rope_table

EXTRA_OUTPUTS = frozenset({"pts3d_in_other_view", "conf", "rgb"})
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# Intermediate tensors a step returns only with debug=True (to compare with the reference).
_DEBUG_ONLY = ("classif_logit", "offset", "fused_smpl_token", "new_state_feat", "dec_img_final",
               "pose_retriever_read", "ttt3r_state_gate_sigmoid")


@dataclass(frozen=True)
class _GridConstants:
    """Input-resolution dependent constants (h x w patch grid, one device)."""

    rope_enc: RopeTable  # patches, encoder head size
    rope_image_i: RopeTable  # [pose token; patches], image-decoder head size
    rope_image_s: RopeTable  # [pose token; patches], state-decoder head size


@dataclass(frozen=True)
class ViewInputs:
    """One view of a batched step: its sequence's carried state and its options (see
    ``Human3R.step`` for each field)."""

    state: torch.Tensor
    mem: torch.Tensor
    first: bool
    ttt3r: bool = False
    extra_outputs: FrozenSet[str] = frozenset()
    max_humans: Optional[int] = None
    det_threshold: Optional[float] = None


@dataclass(frozen=True)
class _Detections:
    logits: torch.Tensor  # [1, T, 1] raw detector output
    scores: torch.Tensor  # [1, r, r, 1] after NMS
    tokens: torch.Tensor  # [n, C] DINOv2 tokens of the detected cells
    cell_scores: torch.Tensor  # [n] post-NMS score of each detection
    offset: torch.Tensor  # [n, 2]
    loc: torch.Tensor  # [n, 2] head pixel (x, y) in the padded human-branch image


class Human3R(nn.Module):
    def __init__(self, cfg: Human3RConfig):
        super().__init__()
        self.cfg = cfg
        enc, dec, bb = cfg.enc_embed_dim, cfg.dec_embed_dim, cfg.backbone_dim
        self.pose_token = nn.Parameter(torch.zeros(1, 1, dec))
        # training-time mask tokens: stored in the checkpoint, unused at inference
        self.masked_img_token = nn.Parameter(torch.zeros(1, enc))
        self.masked_ray_map_token = nn.Parameter(torch.zeros(1, enc))
        self.masked_smpl_token = nn.Parameter(torch.zeros(1, enc))
        self.mhmr_masked_smpl_token = nn.Parameter(torch.zeros(1, bb))
        self.mhmr_masked_img_token = nn.Parameter(torch.zeros(1, bb))

        self.patch_embed = PatchEmbed(3, enc, cfg.patch_size)
        self.patch_embed_ray_map = PatchEmbed(6, enc, cfg.patch_size)  # ray-map input: unused
        self.enc_blocks = nn.ModuleList(
            [Block(enc, cfg.enc_num_heads, cfg.mlp_ratio, fp16_rope=True) for _ in range(cfg.enc_depth)]
        )
        self.enc_norm = layer_norm(enc)
        self.decoder_embed = nn.Linear(enc, dec)
        self.dec_blocks = nn.ModuleList(
            [DecoderBlock(dec, cfg.dec_num_heads, cfg.mlp_ratio) for _ in range(cfg.dec_depth)]
        )
        self.dec_norm = layer_norm(dec)
        self.enc_blocks_ray_map = nn.ModuleList(
            [Block(enc, cfg.enc_num_heads, cfg.mlp_ratio) for _ in range(cfg.ray_enc_depth)]
        )
        self.enc_norm_ray_map = layer_norm(enc)
        self.pose_retriever = LocalMemory(cfg.local_mem_size, enc, dec, cfg.dec_num_heads, cfg.local_mem_depth)
        self.register_tokens = nn.Embedding(cfg.state_size, enc)
        self.backbone = Dinov2Backbone(bb, cfg.backbone_depth, cfg.backbone_heads)
        self.decoder_embed_state = nn.Linear(enc, dec)
        self.dec_blocks_state = nn.ModuleList(
            [DecoderBlock(dec, cfg.state_dec_num_heads, cfg.mlp_ratio) for _ in range(cfg.dec_depth)]
        )
        self.dec_norm_state = layer_norm(dec)
        self.downstream_head = Human3RHead(cfg)
        self._constants: Dict[tuple, object] = {}
        self._compiled = False

    @property
    def device(self) -> torch.device:
        return self.pose_token.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pose_token.dtype

    # ------------------------------------------------------------------ recurrent state

    @torch.inference_mode()
    def initial_state(self, device=None, dtype=None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(state [1, S, D], pose memory [1, M, 2D]) at the start of a sequence / after a reset."""
        state = self.decoder_embed_state(self.register_tokens.weight)[None]
        mem = self.pose_retriever.mem.clone()
        return state.to(device=device, dtype=dtype), mem.to(device=device, dtype=dtype)

    # ------------------------------------------------------------------ cached constants

    def _grid_constants(self, h: int, w: int) -> _GridConstants:
        key = ("grid", h, w, self.device)
        if key not in self._constants:
            cfg, dev = self.cfg, self.device
            pos = grid_positions(h, w, dev)
            with_pose = torch.cat((torch.full((1, 2), -1, device=dev, dtype=pos.dtype), pos))
            dec_hd, state_hd = cfg.dec_embed_dim // cfg.dec_num_heads, cfg.dec_embed_dim // cfg.state_dec_num_heads
            self._constants[key] = _GridConstants(
                rope_enc=rope_table(
                    pos, cfg.enc_embed_dim // cfg.enc_num_heads, cfg.rope_base, getattr(torch, cfg.encoder_rope_math)
                ),
                rope_image_i=rope_table(with_pose, dec_hd, cfg.rope_base),
                rope_image_s=rope_table(with_pose, state_hd, cfg.rope_base),
            )
        return self._constants[key]

    def _state_ropes(self) -> Tuple[RopeTable, RopeTable]:
        """RoPE of the state tokens at the (state-decoder, image-decoder) head sizes."""
        key = ("state", self.device)
        if key not in self._constants:
            cfg = self.cfg
            pos = state_positions(cfg.state_size, cfg.state_pe, cfg.state_grid_width, self.device)
            self._constants[key] = (
                rope_table(pos, cfg.dec_embed_dim // cfg.state_dec_num_heads, cfg.rope_base),
                rope_table(pos, cfg.dec_embed_dim // cfg.dec_num_heads, cfg.rope_base),
            )
        return self._constants[key]

    def _backbone_pos_embed(self) -> torch.Tensor:
        # Depends on the weights: keyed by the tensor's storage and version counter so that a
        # load_state_dict or .to() invalidates it.
        p = self.backbone.encoder.pos_embed
        key = ("pos_embed", p.device, p.dtype, p.data_ptr(), p._version, self.cfg.bb_token_res)
        if key not in self._constants:
            for stale in [k for k in self._constants if k[0] == "pos_embed"]:
                del self._constants[stale]
            self._constants[key] = self.backbone.encoder.position_embedding(self.cfg.bb_token_res).to(p.dtype)
        return self._constants[key]

    def _imagenet_stats(self) -> Tuple[torch.Tensor, torch.Tensor]:
        key = ("imagenet", self.device)
        if key not in self._constants:
            mean = torch.tensor(_IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
            std = torch.tensor(_IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
            self._constants[key] = (mean, std)
        return self._constants[key]

    # ------------------------------------------------------------------ stages

    def _encode(self, img: torch.Tensor, grid: _GridConstants) -> torch.Tensor:
        x = self.patch_embed(img)
        for blk in self.enc_blocks:
            x = blk(x, grid.rope_enc)
        return self.enc_norm(x)

    def _backbone_input(self, img_mhmr: torch.Tensor) -> torch.Tensor:
        mean, std = self._imagenet_stats()
        return ((img_mhmr.float() * 0.5 + 0.5 - mean) / std).to(self.dtype)  # [-1,1] -> ImageNet

    def _backbone_tokens(self, x: torch.Tensor, pos_embed: torch.Tensor) -> torch.Tensor:
        return self.backbone(x, pos_embed)

    def _detect(self, tokens: torch.Tensor, max_humans: Optional[int], threshold: float) -> _Detections:
        cfg, head = self.cfg, self.downstream_head
        r = cfg.bb_token_res
        logits = head.mlp_classif(tokens)
        scores = squeezed_sigmoid(logits.float()).view(1, 1, r, r)
        peak = F.max_pool2d(scores, cfg.nms_kernel, stride=1, padding=cfg.nms_kernel // 2)
        scores = scores * (peak == scores)  # NMS: keep exact local maxima
        # The one host-device sync of a step: the number of detections, raster order.
        cells = torch.nonzero(scores[0, 0] >= threshold)
        if max_humans is not None and cells.shape[0] > max_humans:
            # Keep the best-scoring detections, still in raster order (the tracker's order).
            best = scores[0, 0, cells[:, 0], cells[:, 1]].topk(max_humans).indices.sort().values
            cells = cells[best]
        rows, cols = cells[:, 0], cells[:, 1]
        det_tokens = tokens[0, rows * r + cols]
        offset = head.mlp_offset(det_tokens)
        loc = (torch.stack((cols, rows), dim=-1) + 0.5 + offset.float()) * cfg.bb_patch_size
        return _Detections(logits, scores.permute(0, 2, 3, 1), det_tokens, scores[0, 0, rows, cols], offset, loc)

    def _segment(self, tokens: torch.Tensor) -> torch.Tensor:
        r, p = self.cfg.bb_token_res, self.cfg.bb_patch_size
        msk = squeezed_sigmoid(self.downstream_head.mlp_msk(tokens).float())  # [B, T, p*p]
        msk = F.pixel_shuffle(msk.transpose(1, 2).unflatten(2, (r, r)), p)
        return msk.permute(0, 2, 3, 1)

    def _human_tokens(
        self, feat: torch.Tensor, det: _Detections, H: int, W: int
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Fused human tokens [1, n, D] and their CroCo token indices [n]."""
        cfg = self.cfg
        # head location in the padded square -> CUT3R image pixel (clamped) -> patch cell
        side = max(H, W)
        uv = det.loc * (side / cfg.mhmr_img_res)
        u = (uv[:, 0] - (side - W) // 2).clamp(0, W - 1)
        v = (uv[:, 1] - (side - H) // 2).clamp(0, H - 1)
        col = torch.div(u, cfg.patch_size, rounding_mode="floor").long()
        row = torch.div(v, cfg.patch_size, rounding_mode="floor").long()
        index = row * (W // cfg.patch_size) + col
        fused = self.downstream_head.mlp_fuse(torch.cat((det.tokens, feat[0, index]), dim=-1))
        return fused[None], index

    def _pose_query(self, feat_mean: torch.Tensor, mem: torch.Tensor, first: bool) -> Optional[torch.Tensor]:
        """Memory read-out [1, 1, 2D] (None on a first view, which uses ``pose_token``)."""
        return None if first else self.pose_retriever.inquire(feat_mean, mem)

    def _decode(
        self,
        state: torch.Tensor,
        feat: torch.Tensor,
        pose_query: torch.Tensor,
        humans: torch.Tensor,
        human_index: torch.Tensor,
        grid: _GridConstants,
        ttt3r: bool,
    ):
        rope_state_s, rope_state_i = self._state_ropes()
        rows = 1 + human_index  # human tokens sit at their CroCo cell; row 0 is the pose token
        ropes = {
            "state_s": rope_state_s,
            "state_i": rope_state_i,
            "image_s": RopeTable.cat([grid.rope_image_s, grid.rope_image_s.select(rows)]),
            "image_i": RopeTable.cat([grid.rope_image_i, grid.rope_image_i.select(rows)]),
        }
        image = torch.cat((pose_query, self.decoder_embed(feat), humans), dim=1)
        depth = self.cfg.dec_depth
        hooks = (depth * 2 // 4, depth * 3 // 4)
        state, image, kept, mean_logit = dual_decode(
            self.dec_blocks_state, self.dec_blocks, state.to(self.dtype), image, ropes, hooks, ttt3r
        )
        return self.dec_norm_state(state), self.dec_norm(image), [kept[i] for i in hooks], mean_logit

    def _dense_heads(
        self,
        tokens: List[torch.Tensor],
        pose_token: torch.Tensor,
        grid: _GridConstants,
        h: int,
        w: int,
        extra_outputs: FrozenSet[str],
    ) -> Dict[str, torch.Tensor]:
        """tokens: the encoder output and the decoder's two hooks and output, image tokens only
        (so the shapes do not follow the number of people); pose_token: [B, C]."""
        head, cfg = self.downstream_head, self.cfg
        out = {}
        out["pts3d_in_self_view"], out["conf_self"] = points_and_conf(head.dpt_self(tokens, h, w), cfg.conf_mode)
        if "rgb" in extra_outputs:
            out["rgb"] = rgb_output(head.dpt_rgb(tokens, h, w))
        if extra_outputs & {"pts3d_in_other_view", "conf"}:
            # world-frame points: last hook re-modulated by the refined pose token
            cross = tokens[3]
            rope = grid.rope_image_i.select(slice(1, None))
            for blk in head.final_transform:
                cross = blk(cross, pose_token, rope)
            pts, conf = points_and_conf(head.dpt_cross(tokens[:3] + [cross], h, w), cfg.conf_mode)
            out["pts3d_in_other_view"], out["conf"] = pts, conf
        return out

    def _update_memory(self, mem: torch.Tensor, feat_mean: torch.Tensor, pose_token: torch.Tensor) -> torch.Tensor:
        return self.pose_retriever.update(mem.to(self.dtype), feat_mean, pose_token)

    def compile_fixed_shape_stages(self, **options) -> None:
        """``torch.compile`` the stages whose shapes only depend on the input size: the CroCo
        encoder, the DINOv2 backbone and the dense heads (most of a step's work). The decoder
        is left eager: its token count follows the number of detected people. Each stage is
        compiled on its first call and again for a new input size or batch size (``step_views``);
        state-dict names are kept. Several engines may share one model: a second call is a no-op."""
        if self._compiled:
            return
        self._compiled = True
        for name in ("_encode", "_backbone_tokens", "_dense_heads"):
            setattr(self, name, torch.compile(getattr(self, name), dynamic=False, **options))

    # ------------------------------------------------------------------ step

    @torch.inference_mode()
    def step(
        self,
        img: torch.Tensor,
        img_mhmr: torch.Tensor,
        state: torch.Tensor,
        mem: torch.Tensor,
        *,
        first: bool,
        ttt3r: bool = False,
        extra_outputs: FrozenSet[str] = frozenset(),
        max_humans: Optional[int] = None,
        det_threshold: Optional[float] = None,
        debug: bool = False,
    ) -> Dict[str, torch.Tensor]:
        """Process one view.

        img: [1, 3, H, W] in [-1, 1] (H, W multiples of the patch size); img_mhmr: [1, 3, R, R]
        padded human-branch input in [-1, 1]; state/mem: the carried recurrent state.
        first: view 0 or the view after a reset (pose query from ``pose_token``).
        max_humans: keep at most this many detections, the highest scores (None: all, as the
        official code); bounds the per-view cost when many cells pass the threshold.
        det_threshold: detection score threshold (None: the config's, 0.3 as released).
        Returns the outputs described in the package contract; ``state_new``/``mem_new`` are
        not blended (the caller applies the update rule and resets).
        """
        if img.shape[0] != 1:
            raise ValueError(f"batch size must be 1, got {img.shape[0]}")
        view = ViewInputs(state, mem, first, ttt3r, frozenset(extra_outputs), max_humans, det_threshold)
        return self.step_views(img, img_mhmr, [view], debug=debug)[0]

    @torch.inference_mode()
    def step_views(
        self, img: torch.Tensor, img_mhmr: torch.Tensor, views: Sequence[ViewInputs], *, debug: bool = False
    ) -> List[Dict[str, torch.Tensor]]:
        """Process B views of one input size, each in its own recurrent sequence (``views[i]``
        carries sequence i's state and options); returns what ``step`` returns, per view.

        The stages whose shapes follow only the input size run as one batch: the CroCo encoder,
        DINOv2 and its mask head, the dense heads (per group of views asking for the same extra
        outputs) and the pose head. Detection, the decoder (its token count follows the number
        of people), the SMPL-X heads and the pose memory run per view.
        """
        cfg = self.cfg
        B, _, H, W = img.shape
        if B == 0 or B != len(views) or img_mhmr.shape[0] != B:
            raise ValueError(f"{len(views)} views for images of batch {B} and {img_mhmr.shape[0]}")
        for view in views:
            unknown = view.extra_outputs - EXTRA_OUTPUTS
            if unknown:
                raise ValueError(f"unknown extra outputs {sorted(unknown)}; known: {sorted(EXTRA_OUTPUTS)}")
            if "rgb" in view.extra_outputs and not cfg.rgb_head:
                raise ValueError("'rgb' requested but this model has no rgb head")
        if H % cfg.patch_size or W % cfg.patch_size:
            raise ValueError(f"image size {H}x{W} is not a multiple of {cfg.patch_size}")
        if tuple(img_mhmr.shape[-2:]) != (cfg.mhmr_img_res, cfg.mhmr_img_res):
            raise ValueError(f"img_mhmr must be {cfg.mhmr_img_res}x{cfg.mhmr_img_res}, got {tuple(img_mhmr.shape)}")
        h, w = H // cfg.patch_size, W // cfg.patch_size
        grid = self._grid_constants(h, w)

        feat = self._encode(img.to(self.dtype), grid)
        # Cached constants are looked up outside the compiled stages: a graph would guard on
        # (and recompile for) the cache's contents.
        bb_tokens = self._backbone_tokens(self._backbone_input(img_mhmr), self._backbone_pos_embed())
        outs, pose_tokens, decoded = [], [], []
        for i, view in enumerate(views):
            out, pose_token, tokens = self._decode_view(feat[i : i + 1], bb_tokens[i : i + 1], view, grid, H, W)
            outs.append(out)
            pose_tokens.append(pose_token)
            decoded.append(tokens)
        pose_token = torch.cat(pose_tokens)  # [B, C]
        # Image-token copies: their shapes and strides do not follow the number of people, so a
        # compiled _dense_heads is not specialised (recompiled) per count.
        image_tokens = [feat] + [torch.cat(level) for level in zip(*decoded)]
        for extra in dict.fromkeys(view.extra_outputs for view in views):
            index = [i for i, view in enumerate(views) if view.extra_outputs == extra]
            pick = (lambda t: t) if len(index) == B else (lambda t: t[index])  # noqa: E731
            dense = self._dense_heads([pick(t) for t in image_tokens], pick(pose_token), grid, h, w, extra)
            for row, i in enumerate(index):
                outs[i].update({key: value[row : row + 1] for key, value in dense.items()})
        pose_raw = self.downstream_head.pose_head(pose_token)
        pose = camera_pose(pose_raw.float())
        msk = self._segment(bb_tokens) if cfg.msk_head else None
        for i, out in enumerate(outs):
            out["camera_pose"] = pose[i : i + 1]
            if msk is not None:
                out["msk"] = msk[i : i + 1]
            if debug:
                out.update(enc_feat=feat[i : i + 1], mhmr_feat=bb_tokens[i : i + 1], pose_head_raw=pose_raw[i : i + 1])
            else:
                for key in _DEBUG_ONLY:
                    out.pop(key, None)
        return outs

    def _decode_view(
        self, feat: torch.Tensor, bb_tokens: torch.Tensor, view: ViewInputs, grid: _GridConstants, H: int, W: int
    ) -> Tuple[Dict[str, torch.Tensor], torch.Tensor, List[torch.Tensor]]:
        """The per-view part of a step (one view: feat [1, N, C], bb_tokens [1, T, C]): its
        outputs, its refined pose token [1, C] and its decoder image tokens for the dense heads
        (layers 6, 9 and 12 at the released depth, pose and human tokens dropped)."""
        cfg = self.cfg
        threshold = cfg.det_threshold if view.det_threshold is None else view.det_threshold
        det = self._detect(bb_tokens, view.max_humans, threshold)
        humans, human_index = self._human_tokens(feat, det, H, W)

        feat_mean = feat.mean(dim=1, keepdim=True)
        read = self._pose_query(feat_mean, view.mem.to(self.dtype), view.first)
        pose_query = self.pose_token if view.first else read[..., -cfg.dec_embed_dim :]
        state_new, dec_final, hooks, mean_logit = self._decode(
            view.state, feat, pose_query, humans, human_index, grid, view.ttt3r
        )
        pose_token = dec_final[:, 0:1]
        human_tokens = dec_final[:, 1 + feat.shape[1] :]
        out = {
            "smpl_scores": det.scores,
            "smpl_det_scores": det.cell_scores[None],
            "smpl_loc": det.loc[None],
            **self.downstream_head.smpl(human_tokens, det.tokens[None]),
            "human_tokens": human_tokens.float(),
            "state_new": state_new,
            "mem_new": self._update_memory(view.mem, feat_mean, pose_token),
            # debug outputs (dropped by step_views unless asked for)
            "classif_logit": det.logits,
            "offset": det.offset,
            "fused_smpl_token": humans,
            "new_state_feat": state_new,
            "dec_img_final": dec_final,
        }
        if not view.first:
            out["pose_retriever_read"] = read
        if view.ttt3r:
            out["ttt3r_gate"] = out["ttt3r_state_gate_sigmoid"] = torch.sigmoid(mean_logit.float())
        n_img = feat.shape[1]
        return out, pose_token[:, 0], [t[:, 1 : 1 + n_img] for t in (*hooks, dec_final)]

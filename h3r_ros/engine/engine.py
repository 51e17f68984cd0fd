"""Streaming Human3R: one RGB frame in, cameras, points and people out (spec §2, §4, §5).

The engine owns everything the official ``forward_recurrent_lighter`` loop carries between
views: the recurrent state and pose memory (with their initial values for resets), the
"previous view reset" flag, the view counter and the id tracker. It reproduces the demo's
automatic reset scheme online: on a reset frame the model runs with the old state, the state
is reset, and an overlap copy of the same frame starts the new segment; poses are chained
across segments so the world stays continuous.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import roma
import torch

from ..model.human3r import EXTRA_OUTPUTS, ViewInputs
from .body_model import BodyModel, human3r_to_smplx_pose
from .point_selection import PointSelection, select_on_device, selected_on_host
from .geometry import PoseChain, estimate_focal, intrinsics, pose_encoding_to_c2w, principal_point, transform_points
from .preprocess import CropGeometry, pad_image, resize_and_crop, to_model_input, unpad_image, unpad_uv
from .result import FrameResult, Person
from .tracking import Tracker

# Model outputs the engine reports (the rest, e.g. the new state, stays on the device).
_REPORTED_OUTPUTS = frozenset(
    {"camera_pose", "pts3d_in_self_view", "conf_self", "msk", "smpl_det_scores", "smpl_loc", "smpl_rotmat",
     "smpl_shape", "smpl_expression", "smpl_transl"}
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class EngineConfig:
    size: int = 512  # long side of the model input (the demo's --size)
    ttt3r: bool = True  # TTT3R per-token state update rate (demo --use_ttt3r)
    reset_interval: int = 100  # automatic state reset every N frames; 0 disables
    device: str = "cpu"
    dtype: str = "float32"  # model weights/activations: float32 (reference) or bfloat16
    with_points: bool = True  # per-pixel points (camera + world) and confidence
    with_human_mask: bool = False  # per-pixel human probability on the model input
    with_vertices: bool = False  # SMPL-X meshes (the skeleton is always computed)
    # At most this many people per frame, the best-scoring ones (None: every detection, as
    # the official code). Bounds the per-frame cost in crowds or with untrained weights.
    max_humans: int | None = None
    # Detection score threshold and tracking match threshold; None keeps the model config's
    # (0.3 and 0.2 in the released models).
    det_threshold: float | None = None
    match_threshold: float | None = None
    # Cloud points chosen on the device (FrameResult.selections), so that only they travel
    # to the host; independent of with_points.
    point_selections: tuple[PointSelection, ...] = ()
    # Model outputs the demo does not use, returned in FrameResult.extras:
    # 'pts3d_in_other_view' (directly regressed world points, engine world frame),
    # 'conf' (their confidence), 'rgb' (reconstructed input colours in [-1, 1]).
    extra_outputs: frozenset[str] = frozenset()
    # Rigid 4x4 applied on top of the model's world (OpenCV axes, first camera of the
    # session); e.g. the optical -> ROS axis change so every world output is ROS-aligned.
    world_from_model: tuple[tuple[float, ...], ...] = tuple(tuple(row) for row in np.eye(4))
    # Put the world's origin exactly at the first camera of each world (start or manual
    # reset): the model's pose of that frame is close to, not exactly, the identity, and it
    # is composed away. False keeps the model's own world, as the official code reports it.
    origin_at_first_camera: bool = False
    # Synchronise the device at stage boundaries so FrameResult.timings are per stage; without
    # it, queued GPU work is charged to whichever stage waits for it first.
    sync_timings: bool = False
    # TF32 matmuls and convolutions on CUDA, as the official code runs (set process-wide when
    # the engine is built); False for strict float32.
    tf32: bool = True
    # torch.compile the model's fixed-shape stages (Human3R.compile_fixed_shape_stages) when
    # the engine is built; they compile on the first frame of each new input size, or ahead
    # of it with Human3REngine.warm_up.
    compile: bool = False

    def __post_init__(self):
        if self.size <= 0 or self.size % 16:
            raise ValueError(f"size must be a positive multiple of 16, got {self.size}")
        if self.reset_interval < 0:
            raise ValueError(f"reset_interval must be >= 0, got {self.reset_interval}")
        if self.max_humans is not None and self.max_humans < 0:
            raise ValueError(f"max_humans must be >= 0 or None, got {self.max_humans}")
        for name in ("det_threshold", "match_threshold"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1] or None, got {value}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        unknown = set(self.extra_outputs) - EXTRA_OUTPUTS
        if unknown:
            raise ValueError(f"unknown extra outputs {sorted(unknown)}; choose from {sorted(EXTRA_OUTPUTS)}")
        object.__setattr__(self, "extra_outputs", frozenset(self.extra_outputs))
        object.__setattr__(self, "point_selections", tuple(self.point_selections))
        names = [selection.name for selection in self.point_selections]
        if len(set(names)) != len(names):
            raise ValueError(f"point selection names must be unique, got {names}")
        w = np.asarray(self.world_from_model, dtype=np.float64)
        rot = w[:3, :3] if w.shape == (4, 4) else None
        if (
            rot is None
            or not np.allclose(w[3], [0, 0, 0, 1])
            or not np.allclose(rot @ rot.T, np.eye(3), atol=1e-6)
            or np.linalg.det(rot) < 0
        ):
            raise ValueError("world_from_model must be a rigid 4x4 transform (rotation + translation)")
        object.__setattr__(self, "world_from_model", tuple(tuple(float(x) for x in row) for row in w))


@dataclass
class _View:
    """What the model returned for one view and whether the state was reset after it."""

    out: dict[str, torch.Tensor]
    reset: bool


@dataclass
class _Frame:
    """A frame between its pre-processing and its model call."""

    timer: _Timer
    cropped: np.ndarray
    crop: CropGeometry
    img: torch.Tensor  # [1, 3, H, W] model input
    img_mhmr: torch.Tensor  # [1, 3, R, R] human-branch input
    new_world: bool
    auto_reset: bool  # the frame ends a segment: an overlap copy of it starts the next


class _Timer:
    def __init__(self, device: torch.device, sync: bool):
        self._sync = sync and device.type == "cuda"
        self._device = device
        self.start = self._last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        if self._sync:
            torch.cuda.synchronize(self._device)
        now = time.perf_counter()
        self.laps[name] = self.laps.get(name, 0.0) + now - self._last
        self._last = now

    def idle(self) -> None:
        """Time until now (spent on other cameras' frames) counts in no stage, only in total."""
        self._last = time.perf_counter()

    def finish(self) -> dict[str, float]:
        self.laps["total"] = self._last - self.start
        return self.laps


class Human3REngine:
    """Runs a ``Human3R`` model frame by frame; see ``EngineConfig`` for what is computed."""

    def __init__(
        self, model: torch.nn.Module, config: EngineConfig = EngineConfig(), body_model: BodyModel | None = None
    ):
        self.device = torch.empty(0, device=config.device).device  # "cuda" -> "cuda:0"
        self.dtype = DTYPES[config.dtype]
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = config.tf32
            torch.backends.cudnn.allow_tf32 = config.tf32
        cfg = model.cfg
        self._has_mask_head = getattr(cfg, "msk_head", True)
        self._model_match_threshold = cfg.match_threshold
        self._tracker = Tracker(cfg.match_threshold, cfg.sinkhorn_iters, cfg.sinkhorn_alpha)
        self.config = config
        # Convolution weights in channels_last: the DPT heads' token maps already come in that
        # layout, and oneDNN's and cuDNN's NHWC kernels are faster (one DPT head on this CPU:
        # -20 % in fp32, -55 % in bf16); the same numbers up to summation order.
        self.model = model.to(device=self.device, dtype=self.dtype).to(memory_format=torch.channels_last).eval()
        if config.compile:
            self.model.compile_fixed_shape_stages()
        self.body_model = body_model
        if body_model is not None and body_model.device != self.device:
            raise ValueError(f"body model is on {body_model.device}, the engine on {self.device}")
        self._mhmr_res = cfg.mhmr_img_res
        with torch.inference_mode():
            state, self._mem_init = self.model.initial_state(device=self.device, dtype=self.dtype)
        self._state_init = state.float()
        self._chain = PoseChain()
        self._frame_index = 0
        self.reset()

    @property
    def config(self) -> EngineConfig:
        """Output flags, thresholds, TTT3R, the reset interval and the world frame may change
        between steps (assign a new config); device, dtype and compile are fixed when the engine is built."""
        return self._config

    @config.setter
    def config(self, config: EngineConfig) -> None:
        if (torch.empty(0, device=config.device).device != self.device or DTYPES[config.dtype] != self.dtype
                or config.compile != getattr(self, "_config", config).compile):
            raise ValueError("device, dtype and compile cannot change after the engine is built")
        if (config.with_human_mask or any(s.exclude_humans for s in config.point_selections)) and not self._has_mask_head:
            raise ValueError("with_human_mask and human exclusion need a model with the mask head (msk_head=True)")
        self._config = config
        self._world_from_model = torch.tensor(config.world_from_model, dtype=torch.float32, device=self.device)
        self._tracker.match_threshold = (
            self._model_match_threshold if config.match_threshold is None else config.match_threshold
        )

    def reset(self) -> None:
        """Start a new world: fresh state and memory, pose chain and tracks; the next
        ``FrameResult`` has ``reset=True``."""
        self._state, self._mem = self._state_init, self._mem_init
        self._prev_reset = False
        self._views_in_world = 0  # "first view" test of the model (overlap views count)
        self._frames_in_world = 0  # automatic reset schedule (overlap views do not count)
        self._chain.clear()
        self._origin: torch.Tensor | None = None  # inverse of the world's first camera pose
        self._tracker.reset()

    def sibling(self) -> Human3REngine:
        """Another world over this engine's model and body model (another camera): its own
        state, pose memory, pose chain, resets and tracker, no second copy of the weights."""
        return Human3REngine(self.model, replace(self.config, compile=False), self.body_model)

    def state_is_finite(self) -> bool:
        """Whether the recurrent state carries no NaN or Inf (once it does, every later frame would)."""
        return bool(torch.isfinite(self._state).all() and torch.isfinite(self._mem).all())

    def warm_up(self, width: int, height: int, frames: int = 2) -> float:
        """Run ``frames`` grey frames of this size, then start a fresh world, as if nothing
        had run: compiles the compiled stages for this size and creates the kernels'
        workspaces before the first real frame. Returns the seconds it took."""
        start = time.perf_counter()
        grey = np.full((height, width, 3), 128, np.uint8)
        config = self.config
        self.config = replace(config, max_humans=0)  # no detections: no track id is used up
        try:
            for _ in range(frames):
                self.step(grey)
        finally:
            self.config = config
        self.reset()
        self._frame_index = 0
        return time.perf_counter() - start

    @property
    def tracks(self) -> int:
        """Tracks the identity matcher remembers (bounded)."""
        return len(self._tracker)

    def forget_tracks(self, ids) -> None:
        """Ended tracks: their ids are not matched again (a returning person gets a new id)."""
        self._tracker.forget(ids)

    @torch.inference_mode()
    def step(self, rgb: np.ndarray, stamp: object = None) -> FrameResult:
        """Process one RGB uint8 frame (H, W, 3) of any size; ``stamp`` is passed through."""
        frame = self._prepare(rgb)
        view = self._run_view(frame.img, frame.img_mhmr, frame.auto_reset, self.config.extra_outputs)
        frame.timer.lap("model")
        return self._complete(frame, view, stamp)

    def _prepare(self, rgb: np.ndarray) -> _Frame:
        cfg = self.config
        timer = _Timer(self.device, cfg.sync_timings)
        cropped, crop = resize_and_crop(rgb, cfg.size)
        img = to_model_input(cropped, self.device)
        img_mhmr = pad_image(img, self._mhmr_res).to(self.dtype)
        img = img.to(self.dtype)
        timer.lap("preprocess")
        new_world = self._frames_in_world == 0
        auto_reset = cfg.reset_interval > 0 and (self._frames_in_world + 1) % cfg.reset_interval == 0
        return _Frame(timer, cropped, crop, img, img_mhmr, new_world, auto_reset)

    def _complete(self, frame: _Frame, view: _View, stamp: object) -> FrameResult:
        """The rest of a step after the frame's own model call: the overlap view, if any, then
        post-processing, the host copy, tracking and the result."""
        cfg, timer = self.config, frame.timer
        timer.idle()
        # The overlap copy starts the new segment; only its tracker update is kept.
        overlap = self._run_view(frame.img, frame.img_mhmr, False, frozenset()) if frame.auto_reset else None
        timer.lap("model")

        tensors = self._postprocess(view, frame.crop.input_size)
        tensors["tokens"] = view.out["human_tokens"][0].float()
        if overlap is not None:
            tensors["overlap_tokens"] = overlap.out["human_tokens"][0].float()
        timer.lap("postprocess")

        host = _to_host(tensors)
        timer.lap("transfer")

        # Copies: the track bank outlives the frame and must not pin the whole host buffer.
        ids = self._tracker.update(torch.tensor(host["tokens"])).tolist()
        if overlap is not None:
            self._tracker.update(torch.tensor(host["overlap_tokens"]))
        timer.lap("tracking")

        crop = frame.crop
        result = FrameResult(
            index=self._frame_index,
            stamp=stamp,
            reset=frame.new_world,
            cam_to_world=host["cam_to_world"].astype(np.float64),
            K=host["K"].astype(np.float64),
            input_size=crop.input_size,
            crop_box=crop.crop_box,
            scale=crop.scale,
            resized_size=crop.resized_size,
            rgb=frame.cropped,
            points_cam=host.get("points_cam"),
            points_world=host.get("points_world"),
            conf=host.get("conf"),
            human_mask=host.get("human_mask"),
            people=self._people(host, ids),
            extras={name: host["extra/" + name] for name in cfg.extra_outputs},
            selections={s.name: selected_on_host(host, f"select/{s.name}/") for s in cfg.point_selections},
        )
        self._frame_index += 1
        self._frames_in_world += 1
        result.timings = timer.finish()
        return result

    def _view_inputs(self, extra_outputs: frozenset[str]) -> ViewInputs:
        """The carried state and this engine's options for its next model call."""
        cfg = self.config
        first = self._views_in_world == 0 or self._prev_reset
        return ViewInputs(self._state, self._mem, first, cfg.ttt3r, extra_outputs, cfg.max_humans, cfg.det_threshold)

    def _run_view(self, img, img_mhmr, reset: bool, extra_outputs: frozenset[str]) -> _View:
        """One model call and the recurrent update of spec §4.2."""
        inputs = self._view_inputs(extra_outputs)
        out = self.model.step(
            img,
            img_mhmr,
            inputs.state,
            inputs.mem,
            first=inputs.first,
            ttt3r=inputs.ttt3r,
            extra_outputs=extra_outputs,
            max_humans=inputs.max_humans,
            det_threshold=inputs.det_threshold,
        )
        return self._advance(out, inputs.first, reset)

    def _advance(self, out: dict[str, torch.Tensor], first: bool, reset: bool) -> _View:
        """Carry the outputs of a view computed from ``_view_inputs`` into the state (spec §4.2)."""
        # The state is carried in float32 whatever the model dtype, so the per-token blend
        # does not accumulate bf16 rounding over a long sequence.
        if self.config.ttt3r and not first:
            rate = out["ttt3r_gate"].float()[..., None]  # per state token, broadcast over channels
            self._state = rate * out["state_new"].float() + (1 - rate) * self._state
        else:
            self._state = out["state_new"].float()
        self._mem = out["mem_new"]
        if reset:
            self._state, self._mem = self._state_init, self._mem_init
        self._prev_reset = reset
        self._views_in_world += 1
        return _View(out, reset)

    def _postprocess(self, view: _View, input_hw: tuple[int, int]) -> dict[str, torch.Tensor]:
        """Everything reported for the frame, still on the device (float32)."""
        cfg = self.config
        out = {k: v.float() for k, v in view.out.items() if k in _REPORTED_OUTPUTS | cfg.extra_outputs}
        # Place the camera (this advances the pose chain when the view reset the state).
        c2w = pose_encoding_to_c2w(out["camera_pose"][0])
        if cfg.origin_at_first_camera and self._origin is None:
            self._origin = _rigid_inverse(c2w if self._chain.base is None else self._chain.base @ c2w)
        model_to_world = self._world_from_model if self._origin is None else self._world_from_model @ self._origin
        segment_to_world = model_to_world
        if self._chain.base is not None:
            segment_to_world = segment_to_world @ self._chain.base
        world_from_cam = model_to_world @ self._chain.apply(c2w, view.reset)
        pts_cam = out["pts3d_in_self_view"][0]
        pp = principal_point(*input_hw)
        t = {"cam_to_world": world_from_cam, "K": intrinsics(estimate_focal(pts_cam, pp), pp)}

        if cfg.with_points or cfg.point_selections:
            pts_world = transform_points(world_from_cam, pts_cam)
        human_mask = None
        if cfg.with_human_mask or any(s.exclude_humans for s in cfg.point_selections):
            human_mask = unpad_image(out["msk"].permute(0, 3, 1, 2), input_hw)[0, 0]
        if cfg.with_points:
            t["points_cam"] = pts_cam
            t["points_world"] = pts_world
            t["conf"] = out["conf_self"][0]
        if cfg.with_human_mask:
            t["human_mask"] = human_mask
        for selection in cfg.point_selections:
            chosen = select_on_device(selection, pts_world, out["conf_self"][0], human_mask)
            t.update({f"select/{selection.name}/{key}": value for key, value in chosen.items()})
        for name in cfg.extra_outputs:
            t["extra/" + name] = out[name][0]
            if name == "pts3d_in_other_view":
                # Regressed in the segment's world frame, which the pose chain places in ours.
                t["extra/" + name] = transform_points(segment_to_world, out[name][0])

        n = out["smpl_transl"].shape[1]
        if n == 0:
            return t
        t["score"] = out["smpl_det_scores"][0]
        t["rotmat"] = out["smpl_rotmat"][0]
        t["betas"] = out["smpl_shape"][0]
        t["expression"] = out["smpl_expression"][0]
        t["head_cam"] = out["smpl_transl"][0]
        t["head_pixel"] = unpad_uv(out["smpl_loc"][0], self._mhmr_res, input_hw)
        t["head_world"] = transform_points(world_from_cam, t["head_cam"])
        if self.body_model is None:
            # Without a body model the pose parameters still hold; only what needs the
            # model's shape (joints, pelvis, mesh, SMPL-X transl) is missing.
            pose = human3r_to_smplx_pose(t["rotmat"])
            pose[:, 0] = world_from_cam[:3, :3] @ pose[:, 0]
            t["full_pose_world"] = roma.rotmat_to_rotvec(pose)
        else:
            cam = self.body_model(t["rotmat"], t["betas"], t["expression"], t["head_cam"], cfg.with_vertices)
            world = cam.transformed(world_from_cam)
            t["joints_cam"] = cam.joints
            t["joints_world"] = world.joints
            t["full_pose_world"] = world.full_pose_rotvec
            t["pelvis_rotation_world"] = world.full_pose[:, 0]
            t["transl_world"] = world.transl
            if cfg.with_vertices:
                t["vertices_cam"] = cam.vertices
                t["vertices_world"] = world.vertices
        return t

    @staticmethod
    def _people(host: dict[str, np.ndarray], ids: list[int]) -> list[Person]:
        optional = ("joints_cam", "joints_world", "transl_world", "pelvis_rotation_world",
                    "vertices_cam", "vertices_world")  # absent without a body model / vertices
        return [
            Person(
                track_id=track_id,
                score=float(host["score"][k]),
                rotmat=host["rotmat"][k],
                betas=host["betas"][k],
                expression=host["expression"][k],
                head_cam=host["head_cam"][k],
                head_pixel=host["head_pixel"][k],
                head_world=host["head_world"][k],
                full_pose_world=host["full_pose_world"][k],
                **{name: host[name][k] if name in host else None for name in optional},
            )
            for k, track_id in enumerate(ids)
        ]


def _to_host(tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """One device -> host copy for all of a frame's outputs (packed as one float32 buffer);
    from CUDA a non-blocking copy into pinned memory, then the step's one synchronisation."""
    packed = torch.cat([t.reshape(-1).float() for t in tensors.values()])
    if packed.device.type == "cuda":
        # The caching host allocator recycles the pinned block once its numpy views are gone.
        pinned = torch.empty(packed.shape, dtype=packed.dtype, pin_memory=True)
        pinned.copy_(packed, non_blocking=True)
        torch.cuda.current_stream(packed.device).synchronize()
        buffer = pinned.numpy()
    else:
        buffer = packed.numpy()
    host, offset = {}, 0
    for name, tensor in tensors.items():
        host[name] = buffer[offset : offset + tensor.numel()].reshape(tensor.shape)
        offset += tensor.numel()
    return host


def _rigid_inverse(transform: torch.Tensor) -> torch.Tensor:
    inverse = torch.eye(4, dtype=transform.dtype, device=transform.device)
    rot_t = transform[:3, :3].T
    inverse[:3, :3] = rot_t
    inverse[:3, 3] = -rot_t @ transform[:3, 3]
    return inverse

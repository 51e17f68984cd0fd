"""What one engine step returns: plain numpy arrays on the host."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import roma
import torch

from .point_selection import SelectedPoints


@dataclass
class Person:
    """One detected person. ``*_world`` arrays are in the engine's world frame."""

    track_id: int
    score: float
    # Model outputs, in the camera frame (OpenCV axes).
    rotmat: np.ndarray  # (53, 3, 3): root, 21 body, 15 left hand, 15 right hand, jaw
    betas: np.ndarray  # (10,)
    expression: np.ndarray  # (10,)
    head_cam: np.ndarray  # (3,) head joint position in the camera frame
    head_pixel: np.ndarray  # (2,) detected head location (x, y) in model-input pixels
    head_world: np.ndarray  # (3,) head joint position in the world frame
    # Vanilla SMPL-X pose whose stock forward gives the world-frame mesh (with transl_world).
    full_pose_world: np.ndarray  # (55, 3) axis-angle, joint 0 relative to the world frame
    # SMPL-X skeleton (first 55 of the body model's joints) and what needs the body model's
    # shape. This block is None when the engine runs without a body model.
    joints_cam: np.ndarray | None  # (55, 3)
    joints_world: np.ndarray | None  # (55, 3)
    transl_world: np.ndarray | None  # (3,) SMPL-X ``transl`` argument
    # Pelvis rotation in the world frame (SMPL-X body axes: x left, y up, z forward).
    pelvis_rotation_world: np.ndarray | None  # (3, 3)
    vertices_cam: np.ndarray | None = None  # (10475, 3), only when requested
    vertices_world: np.ndarray | None = None  # (10475, 3), only when requested

    @property
    def position_world(self) -> np.ndarray:
        """Where the person is: the pelvis joint, or the head for a person without a body."""
        return self.head_world if self.joints_world is None else self.joints_world[0]

    def transformed(self, transform: np.ndarray) -> Person:
        """The same person with every ``*_world`` field in another frame: ``transform`` (4x4,
        rigid) maps the world to it. A stock SMPL-X forward of the new full pose and transl
        gives the mesh in that frame."""
        transform = np.asarray(transform, dtype=np.float64)
        rot, trans = transform[:3, :3], transform[:3, 3]

        def moved(points):
            return None if points is None else np.asarray(points, dtype=np.float64) @ rot.T + trans

        full_pose = np.array(self.full_pose_world, dtype=np.float64)
        root = roma.rotvec_to_rotmat(torch.from_numpy(full_pose[0]))
        full_pose[0] = roma.rotmat_to_rotvec(torch.from_numpy(rot) @ root).numpy()
        joints = moved(self.joints_world)
        transl = None
        if self.transl_world is not None:
            # The forward rotates about the rest pelvis J0 and adds transl, so the posed pelvis
            # is J0 + transl: J0 = joints[0] - transl stays, and transl moves with the pelvis.
            transl = joints[0] - np.asarray(self.joints_world[0], dtype=np.float64) + self.transl_world
        return replace(
            self,
            head_world=moved(self.head_world),
            full_pose_world=full_pose,
            joints_world=joints,
            transl_world=transl,
            pelvis_rotation_world=None if self.pelvis_rotation_world is None else rot @ self.pelvis_rotation_world,
            vertices_world=moved(self.vertices_world),
        )


@dataclass
class FrameResult:
    """Everything the engine computed for one input frame."""

    index: int  # running frame counter (overlap views are not counted)
    stamp: object  # the caller's timestamp, passed through untouched
    reset: bool  # first frame of a new world (manual reset); auto-resets are chained
    cam_to_world: np.ndarray  # (4, 4) float64, OpenCV camera axes to world frame
    K: np.ndarray  # (3, 3) intrinsics estimate at model-input resolution
    input_size: tuple[int, int]  # (H, W) of the model input
    crop_box: tuple[int, int, int, int]  # (left, top, right, bottom) in resized-frame pixels
    scale: float  # resized / original frame size
    rgb: np.ndarray  # (H, W, 3) uint8 model input image, for colouring points
    points_cam: np.ndarray | None  # (H, W, 3) float32, camera frame
    points_world: np.ndarray | None  # (H, W, 3) float32, world frame
    conf: np.ndarray | None  # (H, W) float32, >= 1
    human_mask: np.ndarray | None  # (H, W) float32 probability, when requested
    people: list[Person] = field(default_factory=list)
    resized_size: tuple[int, int] | None = None  # (W', H') of the frame after the long-side resize
    timings: dict[str, float] = field(default_factory=dict)  # stage name -> seconds
    # Optional model outputs named in EngineConfig.extra_outputs: 'pts3d_in_other_view'
    # (H, W, 3) world frame, 'conf' (H, W), 'rgb' (H, W, 3) in [-1, 1].
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    # Cloud points chosen on the device, by EngineConfig.point_selections name.
    selections: dict[str, SelectedPoints] = field(default_factory=dict)

    def nonfinite(self) -> str:
        """The first output that holds a NaN or Inf (e.g. a bf16 overflow): 'camera pose',
        'points' or 'people'; '' when every output is finite."""
        if not (np.isfinite(self.cam_to_world).all() and np.isfinite(self.K).all()):
            return "camera pose"
        dense = [self.points_cam, self.points_world, *(s.points for s in self.selections.values())]
        if not all(np.isfinite(a).all() for a in dense if a is not None):
            return "points"
        for person in self.people:
            arrays = (person.head_world, person.full_pose_world, person.betas, person.expression, person.joints_world,
                      person.transl_world, person.pelvis_rotation_world, person.vertices_world)
            if not all(np.isfinite(a).all() for a in arrays if a is not None):
                return "people"
        return ""

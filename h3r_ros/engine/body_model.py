"""SMPL-X forward for Human3R's predictions (spec §3.15), on top of the ``smplx`` package.

Human3R predicts 53 joint rotations (root, 21 body, 15 left hand, 15 right hand, jaw), shape
and expression coefficients, and the camera-frame position t of the head joint (15). The
demo poses the body with the root rotation R_g about the head: V_cam = R_g (V - J15) + t,
with V, J the zero-root-rotation mesh and joints. Everything here is also expressed as
vanilla SMPL-X parameters (55-joint full pose + ``transl``) so a stock SMPL-X forward, which
rotates about the rest pelvis J0 (V = R (V0 - J0) + J0 + transl), reproduces the same mesh.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import roma
import smplx
import torch
from smplx.lbs import batch_rigid_transform, blend_shapes, lbs

SMPLX_FILE = "SMPLX_NEUTRAL.npz"
HEAD_JOINT = 15
NUM_JOINTS = 55  # SMPL-X skeleton: root, 21 body, jaw, 2 eyes, 2 x 15 hand joints


def resolve_smplx_file(path: str | Path) -> Path:
    """Find ``SMPLX_NEUTRAL.npz`` given the file, its folder, or a models folder above it."""
    path = Path(path).expanduser()
    candidates = [path] if path.is_file() else [path / SMPLX_FILE, path / "smplx" / SMPLX_FILE]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"SMPL-X neutral model not found: looked for {', '.join(str(c) for c in candidates)}. "
        "Download SMPL-X v1.1 (https://smpl-x.is.tue.mpg.de, registration required) and point "
        f"the body model path at {SMPLX_FILE} or the folder that contains it."
    )


def human3r_to_smplx_pose(rotmat: torch.Tensor) -> torch.Tensor:
    """(n, 53, 3, 3) Human3R joint order -> (n, 55, 3, 3) SMPL-X order (eyes identity)."""
    eye = torch.eye(3, dtype=rotmat.dtype, device=rotmat.device).expand(rotmat.shape[0], 1, 3, 3)
    # SMPL-X: root, body 1-21, jaw, left eye, right eye, left hand 15, right hand 15.
    return torch.cat([rotmat[:, :22], rotmat[:, 52:53], eye, eye, rotmat[:, 22:52]], dim=1)


@dataclass
class BodyOutput:
    """One frame's people in one coordinate frame (camera, or a world frame)."""

    joints: torch.Tensor  # (n, 55, 3)
    full_pose: torch.Tensor  # (n, 55, 3, 3) SMPL-X order; joint 0 relative to this frame
    transl: torch.Tensor  # (n, 3) vanilla SMPL-X ``transl`` reproducing ``joints``/``vertices``
    rest_pelvis: torch.Tensor  # (n, 3) J0 of the shaped body at rest (frame independent)
    vertices: torch.Tensor | None = None  # (n, 10475, 3) when asked for

    @property
    def full_pose_rotvec(self) -> torch.Tensor:
        """(n, 55, 3) axis-angle."""
        return roma.rotmat_to_rotvec(self.full_pose)

    def transformed(self, transform: torch.Tensor) -> BodyOutput:
        """The same bodies in another frame; ``transform`` (4x4, rigid) maps this frame to it."""
        rot, trans = transform[:3, :3], transform[:3, 3]
        full_pose = self.full_pose.clone()
        full_pose[:, 0] = rot @ self.full_pose[:, 0]
        # Stock forward: X = R (X0 - J0) + J0 + transl, so transl' = rot (J0 + transl) + trans - J0.
        pelvis = self.rest_pelvis + self.transl
        return replace(
            self,
            joints=self.joints @ rot.T + trans,
            full_pose=full_pose,
            transl=pelvis @ rot.T + trans - self.rest_pelvis,
            vertices=None if self.vertices is None else self.vertices @ rot.T + trans,
        )


class BodyModel:
    """SMPL-X neutral (10 betas, 10 expression coefficients, full hand pose, flat hand mean)."""

    def __init__(self, path: str | Path, device: torch.device | str = "cpu"):
        file = resolve_smplx_file(path)
        model = smplx.create(
            str(file), model_type="smplx", gender="neutral", use_pca=False, flat_hand_mean=True, num_betas=10
        ).to(device)
        self.device = model.v_template.device  # normalised: "cuda" -> "cuda:0"
        self.faces = model.faces_tensor
        self.num_vertices = model.v_template.shape[0]
        self._v_template = model.v_template
        self._shapedirs = torch.cat([model.shapedirs, model.expr_dirs], dim=-1)  # betas, then expression
        self._posedirs = model.posedirs
        self._j_regressor = model.J_regressor
        self._parents = model.parents
        self._lbs_weights = model.lbs_weights
        # Joints are linear in the shape coefficients: regress them once so a skeleton-only
        # forward never touches the 10k vertices.
        self._j_template = self._j_regressor @ self._v_template
        self._j_shapedirs = torch.einsum("jv,vcd->jcd", self._j_regressor, self._shapedirs)

    def __call__(
        self,
        rotmat: torch.Tensor,
        betas: torch.Tensor,
        expression: torch.Tensor,
        head_transl: torch.Tensor,
        with_vertices: bool = False,
    ) -> BodyOutput:
        """Camera-frame bodies from Human3R outputs: rotmat (n, 53, 3, 3), betas (n, 10),
        expression (n, 10), head_transl (n, 3); computed in float32 on this model's device."""
        to = dict(device=self.device, dtype=torch.float32)
        full_pose = human3r_to_smplx_pose(rotmat.to(**to))
        shape = torch.cat([betas.to(**to), expression.to(**to)], dim=-1)
        head_transl = head_transl.to(**to)
        n = full_pose.shape[0]

        vertices = None
        rest_joints = self._j_template + blend_shapes(shape, self._j_shapedirs)
        if n == 0:  # smplx's kinematic chain cannot reshape an empty batch
            joints = rest_joints
            if with_vertices:
                vertices = torch.zeros(0, self.num_vertices, 3, **to)
        elif with_vertices:
            vertices, joints = lbs(
                shape, full_pose, self._v_template, self._shapedirs, self._posedirs,
                self._j_regressor, self._parents, self._lbs_weights, pose2rot=False,
            )
        else:
            joints, _ = batch_rigid_transform(full_pose, rest_joints, self._parents, dtype=torch.float32)

        # The root rotation already acts about J0; moving the posed head joint onto the
        # predicted head position gives the demo's R_g (V - J15) + t.
        transl = head_transl - joints[:, HEAD_JOINT]
        return BodyOutput(
            joints=joints + transl[:, None],
            full_pose=full_pose,
            transl=transl,
            rest_pelvis=rest_joints[:, 0],
            vertices=None if vertices is None else vertices + transl[:, None],
        )

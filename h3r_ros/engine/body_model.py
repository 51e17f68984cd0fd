"""SMPL-X forward for Human3R's predictions (spec §3.15), on top of the ``smplx`` package.

Human3R predicts 53 joint rotations (root, 21 body, 15 left hand, 15 right hand, jaw), shape
and expression coefficients, and the camera-frame position t of the head joint (15). The
demo poses the body with the root rotation R_g about the head: V_cam = R_g (V - J15) + t,
with V, J the zero-root-rotation mesh and joints. Everything here is also expressed as
vanilla SMPL-X parameters (55-joint full pose + ``transl``) so a stock SMPL-X forward, which
rotates about the rest pelvis J0 (V = R (V0 - J0) + J0 + transl), reproduces the same mesh.

The model file is untrusted: smplx itself reads it with ``np.load(allow_pickle=True)``, so a
crafted ``.npz`` could run code. Here it is read without pickle (object arrays are never
loaded), under the archive policy shared with checkpoints, with every member's size checked
from its header first and every value finite; only the plain numeric arrays smplx needs are
re-written to a private temporary file, and smplx reads that one.
"""

from __future__ import annotations

import math
import tempfile
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import roma
import smplx
import torch
from smplx.lbs import batch_rigid_transform, blend_shapes, lbs

from h3r_ros.model.archive_policy import ArchiveError, check_npy_member, npz_members

SMPLX_FILE = "SMPLX_NEUTRAL.npz"
HEAD_JOINT = 15
NUM_JOINTS = 55  # SMPL-X skeleton: root, 21 body, jaw, 2 eyes, 2 x 15 hand joints
# What smplx.SMPLX reads from the file (the dynamic landmarks only with use_face_contour).
SMPLX_ARRAYS = (
    "v_template", "f", "shapedirs", "posedirs", "J_regressor", "kintree_table", "weights",
    "hands_componentsl", "hands_componentsr", "hands_meanl", "hands_meanr",
    "lmk_faces_idx", "lmk_bary_coords", "dynamic_lmk_faces_idx", "dynamic_lmk_bary_coords",
)
_REQUIRED = SMPLX_ARRAYS[:-2]
MAX_SMPLX_BYTES = 1 << 30  # all arrays together; SMPL-X v1.1 holds about 0.2 GB
_MAX_DIMS = 4


class SmplxFileError(ValueError):
    """The SMPL-X file is unreadable or not what smplx expects; the text names it."""


def _member_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo, file: Path) -> tuple[tuple, np.dtype, int]:
    """(shape, dtype, header bytes) of one .npy member, from its header only."""
    with archive.open(info) as stream:
        try:
            version = np.lib.format.read_magic(stream)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
        except ValueError as exc:
            raise SmplxFileError(f"{file}: member {info.filename!r} is not a .npy array: {exc}") from None
        return tuple(shape), dtype, stream.tell()


def read_smplx_arrays(file: str | Path) -> dict[str, np.ndarray]:
    """The arrays smplx needs from an SMPL-X ``.npz``, read without pickle: the archive must
    pass :mod:`h3r_ros.model.archive_policy`, members holding Python objects are refused when
    needed and never loaded otherwise, sizes are checked from the headers before anything is
    read, and every floating value must be finite. Raises SmplxFileError naming the file."""
    file = Path(file)
    try:
        with zipfile.ZipFile(file) as archive:
            members = npz_members(archive, MAX_SMPLX_BYTES)
            missing = [key for key in _REQUIRED if key not in members]
            if missing:
                raise SmplxFileError(f"{file}: not an SMPL-X model, missing arrays {missing}")
            needed = {key: members[key] for key in SMPLX_ARRAYS if key in members}
            total = 0
            for key, info in needed.items():
                shape, dtype, header_bytes = _member_header(archive, info, file)
                if dtype.hasobject or dtype.kind not in "biuf":
                    raise SmplxFileError(f"{file}: array {key!r} has dtype {dtype}, not a plain number type")
                if len(shape) > _MAX_DIMS:
                    raise SmplxFileError(f"{file}: array {key!r} has {len(shape)} dimensions")
                array_bytes = math.prod(shape) * dtype.itemsize
                total += array_bytes
                if total > MAX_SMPLX_BYTES:
                    raise SmplxFileError(f"{file}: arrays larger than {MAX_SMPLX_BYTES} bytes")
                check_npy_member(info, header_bytes, array_bytes)
            arrays = {}
            for key, info in needed.items():  # the very members checked above
                with archive.open(info) as stream:
                    arrays[key] = np.lib.format.read_array(stream, allow_pickle=False)
                if arrays[key].dtype.kind == "f" and not np.isfinite(arrays[key]).all():
                    kind = "NaN" if np.isnan(arrays[key]).any() else "Inf"
                    raise SmplxFileError(f"{file}: array {key!r} holds {kind}; every value must be finite")
            return arrays
    except SmplxFileError:
        raise
    except ArchiveError as exc:
        raise SmplxFileError(f"{file}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - corrupt zip, bad header, truncated data, ...
        raise SmplxFileError(f"{file}: unreadable SMPL-X model: {type(exc).__name__}: {exc}") from None


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
        arrays = read_smplx_arrays(file)
        with tempfile.TemporaryDirectory(prefix="h3r_smplx_") as directory:
            # Only plain arrays, written by us: smplx's allow_pickle=True finds no pickle here.
            safe = Path(directory) / SMPLX_FILE
            np.savez(safe, **arrays)
            try:
                model = smplx.create(
                    str(safe), model_type="smplx", gender="neutral", use_pca=False, flat_hand_mean=True,
                    num_betas=10,
                )
            except Exception as exc:  # noqa: BLE001 - shapes smplx cannot use
                raise SmplxFileError(f"{file}: smplx cannot build the model: {type(exc).__name__}: {exc}") from None
        model = model.to(device)
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

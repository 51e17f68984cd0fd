"""A synthetic SMPL-X neutral model file: the demo's stand-in when no licensed SMPL-X model is
installed, and the tests' body model (so they need no licensed download).

It holds every array ``smplx`` (0.1.28) reads from ``SMPLX_NEUTRAL.npz``, with the real
shapes and the real kinematic tree; the values are random but well formed (convex joint
regressor and skinning weights, valid faces and barycentric coordinates). Only the shape
directions the model uses (10 betas, 10 expression) and a subset of pose correctives are
non-zero, which keeps the compressed file small.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

NUM_VERTICES = 10475
NUM_FACES = 20908
NUM_JOINTS = 55
# Parent of each SMPL-X joint (kintree_table row 0; the root's parent is -1).
SMPLX_PARENTS = (
    -1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 15, 15, 15,
    20, 25, 26, 20, 28, 29, 20, 31, 32, 20, 34, 35, 20, 37, 38,
    21, 40, 41, 21, 43, 44, 21, 46, 47, 21, 49, 50, 21, 52, 53,
)
SHAPE_SPACE_DIM = 300  # expression directions start here in ``shapedirs``


def _skinning_weights(rng: np.random.Generator, owner: np.ndarray, nonzero: int = 4) -> np.ndarray:
    """Row-stochastic (V, J) weights with ``nonzero`` influences, the largest at ``owner``."""
    idx = rng.integers(0, NUM_JOINTS, (owner.size, nonzero))
    idx[:, 0] = owner
    w = rng.random(idx.shape).astype(np.float32)
    w[:, 0] += nonzero
    out = np.zeros((owner.size, NUM_JOINTS), np.float32)
    np.add.at(out, (np.arange(owner.size)[:, None], idx), w)  # repeated joints accumulate
    return out / out.sum(-1, keepdims=True)


def synthetic_smplx_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    parents = np.array(SMPLX_PARENTS, np.int32)

    # A loose skeleton: each joint a random offset from its parent, vertices scattered
    # around their owning joint.
    joints = np.zeros((NUM_JOINTS, 3), np.float32)
    for j in range(1, NUM_JOINTS):
        joints[j] = joints[parents[j]] + rng.normal(0.0, 0.08, 3)
    owner = rng.integers(0, NUM_JOINTS, NUM_VERTICES)
    v_template = (joints[owner] + rng.normal(0.0, 0.03, (NUM_VERTICES, 3))).astype(np.float32)

    # The regressor averages vertices owned by each joint, so J ~ the skeleton above.
    j_regressor = np.zeros((NUM_JOINTS, NUM_VERTICES), np.float32)
    for j in range(NUM_JOINTS):
        members = np.flatnonzero(owner == j)
        if members.size == 0:
            members = rng.choice(NUM_VERTICES, 8, replace=False)
        members = members[:8]
        j_regressor[j, members] = 1.0 / members.size

    shapedirs = np.zeros((NUM_VERTICES, 3, 400), np.float32)
    shapedirs[:, :, :10] = rng.normal(0.0, 0.01, (NUM_VERTICES, 3, 10))
    shapedirs[:, :, SHAPE_SPACE_DIM : SHAPE_SPACE_DIM + 10] = rng.normal(0.0, 0.005, (NUM_VERTICES, 3, 10))
    posedirs = np.zeros((NUM_VERTICES, 3, (NUM_JOINTS - 1) * 9), np.float32)
    posedirs[::25] = rng.normal(0.0, 0.005, posedirs[::25].shape)

    faces = rng.integers(0, NUM_VERTICES, (NUM_FACES, 3)).astype(np.int32)
    bary = rng.random((51, 3)).astype(np.float32)
    dyn_bary = rng.random((79, 17, 3)).astype(np.float32)
    return {
        "v_template": v_template,
        "f": faces,
        "shapedirs": shapedirs,
        "posedirs": posedirs,
        "J_regressor": j_regressor,
        "weights": _skinning_weights(rng, owner),
        "kintree_table": np.stack([parents, np.arange(NUM_JOINTS, dtype=np.int32)]),
        "hands_componentsl": rng.normal(0.0, 0.1, (45, 45)).astype(np.float32),
        "hands_componentsr": rng.normal(0.0, 0.1, (45, 45)).astype(np.float32),
        "hands_meanl": rng.normal(0.0, 0.1, 45).astype(np.float32),
        "hands_meanr": rng.normal(0.0, 0.1, 45).astype(np.float32),
        "lmk_faces_idx": rng.integers(0, NUM_FACES, 51).astype(np.int32),
        "lmk_bary_coords": bary / bary.sum(-1, keepdims=True),
        "dynamic_lmk_faces_idx": rng.integers(0, NUM_FACES, (79, 17)).astype(np.int32),
        "dynamic_lmk_bary_coords": dyn_bary / dyn_bary.sum(-1, keepdims=True),
    }


def write_synthetic_smplx(directory: Path, seed: int = 0) -> Path:
    """Write ``<directory>/smplx/SMPLX_NEUTRAL.npz`` (the layout smplx.create expects)."""
    path = Path(directory) / "smplx" / "SMPLX_NEUTRAL.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **synthetic_smplx_arrays(seed))
    return path

"""SMPL-X forward of Human3R predictions (spec §3.15) and its vanilla-parameter export."""

import pytest
import roma
import smplx
import torch

from fixtures import REFERENCE_FIXTURES, fixture_path, load_fixture
from h3r_ros.engine.body_model import BodyModel, resolve_smplx_file
from h3r_ros.demo.synthetic_smplx import write_synthetic_smplx

ATOL = RTOL = 1e-4


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_synthetic_smplx(root)
    return root


def _random_prediction(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    rotmat = roma.rotvec_to_rotmat(0.6 * torch.randn(n, 53, 3, generator=g))
    betas = torch.randn(n, 10, generator=g)
    expression = torch.randn(n, 10, generator=g)
    head = torch.randn(n, 3, generator=g) + torch.tensor([0.0, 0.0, 4.0])
    return rotmat, betas, expression, head


def _random_rigid(seed=1):
    g = torch.Generator().manual_seed(seed)
    t = torch.eye(4)
    t[:3, :3] = roma.rotvec_to_rotmat(torch.randn(3, generator=g))
    t[:3, 3] = torch.randn(3, generator=g)
    return t


def _stock_forward(model_dir, full_pose_rotvec, betas, expression, transl):
    n = full_pose_rotvec.shape[0]
    stock = smplx.create(
        str(model_dir), "smplx", gender="neutral", use_pca=False, flat_hand_mean=True, num_betas=10, batch_size=n
    )
    p = full_pose_rotvec
    return stock(
        global_orient=p[:, 0], body_pose=p[:, 1:22].flatten(1), jaw_pose=p[:, 22], leye_pose=p[:, 23],
        reye_pose=p[:, 24], left_hand_pose=p[:, 25:40].flatten(1), right_hand_pose=p[:, 40:55].flatten(1),
        betas=betas, expression=expression, transl=transl,
    )


def test_resolves_user_layouts(synthetic_dir, tmp_path):
    npz = synthetic_dir / "smplx" / "SMPLX_NEUTRAL.npz"
    assert resolve_smplx_file(npz) == npz
    assert resolve_smplx_file(synthetic_dir / "smplx") == npz
    assert resolve_smplx_file(synthetic_dir) == npz
    with pytest.raises(FileNotFoundError, match="SMPLX_NEUTRAL.npz"):
        resolve_smplx_file(tmp_path)
    with pytest.raises(FileNotFoundError):
        BodyModel(tmp_path / "missing")


def test_world_params_drive_a_stock_forward(synthetic_dir):
    body = BodyModel(synthetic_dir)
    rotmat, betas, expression, head = _random_prediction(3)
    cam = body(rotmat, betas, expression, head, with_vertices=True)
    world_from_cam = _random_rigid()
    world = cam.transformed(world_from_cam)

    for frame in (cam, world):
        stock = _stock_forward(synthetic_dir, frame.full_pose_rotvec, betas, expression, frame.transl)
        torch.testing.assert_close(stock.vertices, frame.vertices, rtol=0, atol=1e-5)
        torch.testing.assert_close(stock.joints[:, :55], frame.joints, rtol=0, atol=1e-5)

    # The demo's definition: zero-root mesh rotated by R_g about the head joint, moved to t.
    zero_root = torch.cat([torch.zeros(3, 1, 3), roma.rotmat_to_rotvec(cam.full_pose[:, 1:])], dim=1)
    rest = _stock_forward(synthetic_dir, zero_root, betas, expression, None)
    demo = (rest.vertices - rest.joints[:, 15:16]) @ rotmat[:, 0].transpose(1, 2) + head[:, None]
    torch.testing.assert_close(cam.vertices, demo, rtol=0, atol=1e-5)
    torch.testing.assert_close(cam.joints[:, 15], head, rtol=0, atol=1e-5)
    # Joint 0 of the world pose is the body orientation in the world.
    torch.testing.assert_close(world.full_pose[:, 0], world_from_cam[:3, :3] @ rotmat[:, 0])


def test_vertices_only_when_asked(synthetic_dir):
    body = BodyModel(synthetic_dir)
    prediction = _random_prediction(2)
    skeleton = body(*prediction)
    full = body(*prediction, with_vertices=True)
    assert skeleton.vertices is None and full.vertices.shape == (2, 10475, 3)
    assert skeleton.transformed(_random_rigid()).vertices is None
    torch.testing.assert_close(skeleton.joints, full.joints, rtol=0, atol=1e-5)
    torch.testing.assert_close(skeleton.transl, full.transl, rtol=0, atol=1e-5)


def test_no_people(synthetic_dir):
    body = BodyModel(synthetic_dir)
    out = body(torch.zeros(0, 53, 3, 3), torch.zeros(0, 10), torch.zeros(0, 10), torch.zeros(0, 3), with_vertices=True)
    world = out.transformed(_random_rigid())
    assert world.joints.shape == (0, 55, 3) and world.vertices.shape == (0, 10475, 3)
    assert world.full_pose_rotvec.shape == (0, 55, 3) and world.transl.shape == (0, 3)


@pytest.mark.parametrize("name", REFERENCE_FIXTURES)
def test_matches_reference(name):
    fx = load_fixture(name)
    body = BodyModel(fixture_path("smplx"))
    post = fx["post"]
    for frame, view_index in enumerate(post["kept_view_indices"]):
        out, ref = fx["outputs"][view_index], post["frames"][frame]
        prediction = (out["smpl_rotmat"][0], out["smpl_shape"][0], out["smpl_expression"][0], out["smpl_transl"][0])
        cam = body(*prediction, with_vertices=True)
        world = cam.transformed(post["cam2world"][frame])
        close = dict(rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(cam.vertices, ref["smpl_v3d_cam"], **close)
        torch.testing.assert_close(cam.joints, ref["smpl_j3d_cam"][:, :55], **close)
        torch.testing.assert_close(world.vertices, ref["smpl_v3d_world"], **close)
        torch.testing.assert_close(world.joints, ref["smpl_j3d_world"][:, :55], **close)
        torch.testing.assert_close(cam.full_pose_rotvec, ref["smplx_fullpose_rotvec_55"], **close)
        torch.testing.assert_close(cam.transl, ref["smplx_transl_pelvis_solved"], **close)
        torch.testing.assert_close(body(*prediction).joints, cam.joints, **close)

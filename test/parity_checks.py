"""Comparisons with the official-code reference recordings, shared by the parity tests."""

import dataclasses

import roma
import smplx
import torch

from fixtures import fixture_path
from h3r_ros.engine.body_model import resolve_smplx_file
from h3r_ros.model import EXTRA_OUTPUTS, Human3R, Human3RConfig
from h3r_ros.model.model_string import parse_model_string

# A re-implementation computes in another order than the reference: fp32 values agree to
# this; discrete results (detections, track ids, kept views) must be equal.
CLOSE = dict(rtol=1e-4, atol=1e-4)


def build_model(fx) -> Human3R:
    """The model a recording was made with, its weights loaded."""
    cfg = Human3RConfig.from_kwargs(parse_model_string(fx["model_str_yaml_form"]))
    # The fixtures were recorded on CPU, where the reference's encoder RoPE runs on float16
    # tokens (the CUDA kernel it uses on GPUs computes in float32).
    cfg = dataclasses.replace(cfg, encoder_rope_math="float16")
    for key in ("state_size", "dec_embed_dim", "mhmr_img_res", "match_threshold", "sinkhorn_iters", "sinkhorn_alpha"):
        assert getattr(cfg, key) == fx["config"][key]
    model = Human3R(cfg)
    model.load_state_dict({k: v.contiguous() for k, v in fx["state_dict"].items()}, strict=True)
    return model.eval()


def assert_frames_match(fx, results, extras=EXTRA_OUTPUTS):
    """The engine's FrameResults of a fixture's frames against the recorded post-processing:
    floating values within CLOSE, counts, track ids and kept views exact; ``extras``: the
    extra outputs the engine was asked for."""
    post = fx["post"]
    kept = post["kept_view_indices"]
    assert [r.index for r in results] == list(range(len(kept)))
    assert [r.reset for r in results] == [True] + [False] * (len(kept) - 1)
    for k, (result, view_index) in enumerate(zip(results, kept)):
        ref_out, ref = fx["outputs"][view_index], post["frames"][k]
        f32 = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
        assert result.stamp == k
        assert result.input_size == tuple(fx["views"][view_index]["true_shape"][0].tolist())
        assert list(result.crop_box) == fx["preprocess"]["crop_box_ltrb"][k].tolist()
        assert torch.equal(torch.from_numpy(result.rgb), fx["preprocess"]["cropped_uint8"][k])
        torch.testing.assert_close(f32(result.cam_to_world), post["cam2world"][k], **CLOSE)
        torch.testing.assert_close(f32(result.K), post["K"][k], **CLOSE)
        torch.testing.assert_close(f32(result.points_cam), ref_out["pts3d_in_self_view"][0], **CLOSE)
        torch.testing.assert_close(f32(result.points_world), post["pts3d_world"][k], **CLOSE)
        torch.testing.assert_close(f32(result.conf), ref_out["conf_self"][0], **CLOSE)
        torch.testing.assert_close(f32(result.human_mask), ref["msk_unpadded"][0], **CLOSE)
        assert set(result.extras) == set(extras)
        for name in extras & {"rgb", "conf"}:
            torch.testing.assert_close(f32(result.extras[name]), ref_out[name][0], **CLOSE)
        if "pts3d_in_other_view" in extras:
            # The regressed world points live in the segment's world, which the chain places.
            segment = post["cam2world"][k] @ torch.linalg.inv(post["cam2world_raw"][k])
            other = ref_out["pts3d_in_other_view"][0] @ segment[:3, :3].T + segment[:3, 3]
            torch.testing.assert_close(f32(result.extras["pts3d_in_other_view"]), other, **CLOSE)

        # People: ids and counts exact, everything else to tolerance.
        assert len(result.people) == ref["n_humans"]
        assert [p.track_id for p in result.people] == ref_out["smpl_id"][0].tolist()
        if not result.people:
            continue
        stack = lambda attr: torch.stack([f32(getattr(p, attr)) for p in result.people])  # noqa: E731
        scores = ref_out["smpl_scores"].flatten()
        torch.testing.assert_close(stack("score"), scores[scores >= fx["config"]["det_threshold"]], **CLOSE)
        torch.testing.assert_close(stack("rotmat"), ref_out["smpl_rotmat"][0], **CLOSE)
        torch.testing.assert_close(stack("betas"), ref_out["smpl_shape"][0], **CLOSE)
        torch.testing.assert_close(stack("expression"), ref_out["smpl_expression"][0], **CLOSE)
        torch.testing.assert_close(stack("head_cam"), ref["smpl_transl"], **CLOSE)
        height, width = result.input_size
        side, res = max(height, width), fx["config"]["mhmr_img_res"]
        loc = ref_out["smpl_loc"][0] * side / res - torch.tensor([(side - width) // 2, (side - height) // 2])
        expected_pixel = torch.stack([loc[:, 0].clamp(0, width - 1), loc[:, 1].clamp(0, height - 1)], -1)
        torch.testing.assert_close(stack("head_pixel"), expected_pixel, **CLOSE)
        torch.testing.assert_close(stack("vertices_cam"), ref["smpl_v3d_cam"], **CLOSE)
        torch.testing.assert_close(stack("joints_cam"), ref["smpl_j3d_cam"][:, :55], **CLOSE)
        torch.testing.assert_close(stack("vertices_world"), ref["smpl_v3d_world"], **CLOSE)
        torch.testing.assert_close(stack("joints_world"), ref["smpl_j3d_world"][:, :55], **CLOSE)

        # Vanilla parameters: the reference's are camera-frame, ours world-frame.
        c2w = post["cam2world"][k]
        full_pose = ref["smplx_fullpose_rotvec_55"].clone()
        full_pose[:, 0] = roma.rotmat_to_rotvec(c2w[:3, :3] @ roma.rotvec_to_rotmat(full_pose[:, 0]))
        torch.testing.assert_close(
            roma.rotvec_to_rotmat(stack("full_pose_world")), roma.rotvec_to_rotmat(full_pose), **CLOSE
        )
        torch.testing.assert_close(stack("pelvis_rotation_world"), roma.rotvec_to_rotmat(full_pose[:, 0]), **CLOSE)
        pelvis_cam = ref["smpl_transl_pelvis"][:, 0]
        rest_pelvis = pelvis_cam - ref["smplx_transl_pelvis_solved"]
        transl = pelvis_cam @ c2w[:3, :3].T + c2w[:3, 3] - rest_pelvis
        torch.testing.assert_close(stack("transl_world"), transl, **CLOSE)
        # ... and a stock SMPL-X forward with them lands on the reference world mesh.
        stock = smplx.create(
            str(resolve_smplx_file(fixture_path("smplx"))), "smplx", gender="neutral", use_pca=False,
            flat_hand_mean=True, num_betas=10, batch_size=len(result.people),
        )
        p = stack("full_pose_world")
        mesh = stock(
            global_orient=p[:, 0], body_pose=p[:, 1:22].flatten(1), jaw_pose=p[:, 22], leye_pose=p[:, 23],
            reye_pose=p[:, 24], left_hand_pose=p[:, 25:40].flatten(1), right_hand_pose=p[:, 40:55].flatten(1),
            betas=stack("betas"), expression=stack("expression"), transl=stack("transl_world"),
        ).vertices
        torch.testing.assert_close(mesh, ref["smpl_v3d_world"], **CLOSE)

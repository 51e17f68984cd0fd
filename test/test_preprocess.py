"""Pre-processing against the official demo's numbers (spec §2) and the reference fixtures."""

import numpy as np
import pytest
import torch

from fixtures import REFERENCE_FIXTURES, load_fixture
from h3r_ros.engine.preprocess import pad_image, resize_and_crop, to_model_input, unpad_image, unpad_uv


@pytest.mark.parametrize(
    "width, height, expected_hw",
    [
        (1920, 1080, (288, 512)),
        (1280, 720, (288, 512)),
        (640, 480, (384, 512)),
        (1080, 1920, (512, 288)),  # portrait stays portrait
        (720, 480, (336, 512)),  # 512x341 -> crop rows 2..337
        (1000, 1000, (384, 512)),  # square -> 4:3
        (320, 180, (288, 512)),  # upscaled with BICUBIC
    ],
)
def test_documented_sizes(width, height, expected_hw):
    rgb = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    cropped, geometry = resize_and_crop(rgb, 512)
    assert cropped.shape == expected_hw + (3,)
    assert geometry.input_size == expected_hw
    assert geometry.scale == pytest.approx(512 / max(width, height))
    img = to_model_input(cropped)
    assert img.shape == (1, 3) + expected_hw and img.dtype == torch.float32
    assert img.min() >= -1 and img.max() <= 1


def test_720x480_crop_box():
    _, geometry = resize_and_crop(np.zeros((480, 720, 3), np.uint8), 512)
    assert geometry.resized_size == (512, 341)
    assert geometry.crop_box == (0, 2, 512, 338)


def test_rejects_non_rgb():
    with pytest.raises(ValueError):
        resize_and_crop(np.zeros((10, 10), np.uint8), 512)
    with pytest.raises(ValueError):
        resize_and_crop(np.zeros((10, 10, 3), np.float32), 512)


def test_pad_image_geometry():
    img = torch.zeros(1, 3, 288, 512)
    padded = pad_image(img, 896)
    assert padded.shape == (1, 3, 896, 896)
    # 512x288 -> 896x504, 196 rows of -1 above and below.
    assert (padded[..., :196, :] == -1).all() and (padded[..., -196:, :] == -1).all()
    assert (padded[..., 196:-196, :] == 0).all()


def test_unpad_uv_maps_back_and_clamps():
    uv = torch.tensor([[448.0, 448.0], [0.0, 0.0], [895.0, 895.0]])
    out = unpad_uv(uv, 896, (288, 512))
    # S = 512: u = x * 512/896, v = y * 512/896 - 112.
    torch.testing.assert_close(out[0], torch.tensor([256.0, 144.0]))
    torch.testing.assert_close(out[1], torch.tensor([0.0, 0.0]))
    torch.testing.assert_close(out[2], torch.tensor([511.0, 287.0]))


@pytest.mark.parametrize("name", REFERENCE_FIXTURES)
def test_matches_reference(name):
    fx = load_fixture(name)
    pre = fx["preprocess"]
    kept = fx["post"]["kept_view_indices"]
    for frame, view_index in enumerate(kept):
        cropped, geometry = resize_and_crop(pre["raw_frames_uint8"][frame].numpy(), pre["size"])
        assert geometry.resized_size == tuple(pre["resized_uint8"][frame].shape[1::-1])
        assert list(geometry.crop_box) == pre["crop_box_ltrb"][frame].tolist()
        assert torch.equal(torch.from_numpy(cropped), pre["cropped_uint8"][frame])

        view = fx["views"][view_index]
        img = to_model_input(cropped)
        assert list(geometry.input_size) == view["true_shape"][0].tolist()
        torch.testing.assert_close(img, view["img"], rtol=0, atol=1e-6)
        torch.testing.assert_close(pad_image(img, pre["mhmr_img_res"]), view["img_mhmr"], rtol=0, atol=1e-6)

        out = fx["outputs"][view_index]
        post = fx["post"]["frames"][frame]
        hw = geometry.input_size
        msk = unpad_image(out["msk"].permute(0, 3, 1, 2), hw)
        assert torch.equal(msk[0], post["msk_unpadded"])
        scores = unpad_image(out["smpl_scores"].permute(0, 3, 1, 2), hw)
        assert torch.equal(scores[0, 0], post["smpl_scores_unpadded"])

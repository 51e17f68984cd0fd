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


# Every allowed input size (the node's input_size range, step 16) and frame shapes from 1 px
# thin to square, landscape and portrait: a frame either crops to a model input (non-empty,
# multiples of 16, inside the resized frame) or crop_geometry rejects it up front, which is
# what the node checks before accepting a message.
_SHAPES = [(w, h) for w in (1, 2, 15, 16, 17, 31, 100, 160, 161, 320, 333, 640, 1000, 1920, 4000)
           for h in (1, 2, 16, 33, 100, 160, 180, 480, 1000, 1080, 3000)]


def test_every_allowed_size_gives_a_valid_crop_or_an_upfront_rejection():
    from h3r_ros.engine.preprocess import crop_geometry
    from h3r_ros.ros.parameters import SPECS

    spec = SPECS["input_size"]
    sizes = range(int(spec.min_value), int(spec.max_value) + 1, spec.step)
    accepted = rejected = 0
    for size in sizes:
        for width, height in _SHAPES:
            try:
                geometry = crop_geometry(width, height, size)
            except ValueError as exc:
                assert "too thin" in str(exc)
                assert min(width, height) * size / max(width, height) < 16 + 0.5
                rejected += 1
                continue
            left, top, right, bottom = geometry.crop_box
            h, w = geometry.input_size
            assert h > 0 and w > 0 and h % 16 == 0 and w % 16 == 0, (size, width, height)
            assert 0 <= left and 0 <= top
            assert right <= geometry.resized_size[0] and bottom <= geometry.resized_size[1]
            assert max(w, h) <= size
            if width == height:
                assert h < w  # squares keep the reference's 4:3 crop
            accepted += 1
    assert accepted and rejected


@pytest.mark.parametrize("size", [64, 80, 160, 176, 208])
@pytest.mark.parametrize("width, height", [(320, 180), (180, 320), (200, 200), (16, 16), (1000, 31)])
def test_accepted_frames_run_through_resize_and_crop(size, width, height):
    from h3r_ros.engine.preprocess import crop_geometry

    rgb = np.random.default_rng(size).integers(0, 256, (height, width, 3), dtype=np.uint8)
    try:
        expected = crop_geometry(width, height, size)
    except ValueError:
        with pytest.raises(ValueError, match="too thin"):
            resize_and_crop(rgb, size)
        return
    cropped, geometry = resize_and_crop(rgb, size)
    assert geometry == expected and cropped.shape == expected.input_size + (3,)


def test_square_frames_at_sizes_that_are_not_multiples_of_64():
    """The reference's 3*halfw/4 is not a multiple of 8 there; the crop still is."""
    for size in (160, 480, 672, 688):
        cropped, geometry = resize_and_crop(np.zeros((500, 500, 3), np.uint8), size)
        h, w = geometry.input_size
        assert w == size and h % 16 == 0 and h == (3 * size // 8) // 8 * 16
    _, geometry = resize_and_crop(np.zeros((1000, 1000, 3), np.uint8), 512)
    assert geometry.input_size == (384, 512)  # multiples of 64: exactly the reference

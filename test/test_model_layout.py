"""Module layout of the PyTorch Human3R: checkpoint key names/shapes/order, variants, config.

The released 896L layout is checked against the state-dict manifest recorded from the
official code (built on the meta device, so no memory is allocated); the tiny reference
model's state dict must load strictly.
"""

import json
import math

import pytest
import torch
from fixtures import fixture_path, load_fixture

from h3r_ros.model import Human3R, Human3RConfig
from h3r_ros.model.model_string import parse_model_string


# parameters whose shapes depend on the DINOv2 backbone
HUMAN_BRANCH = ("backbone.", "mhmr_masked_") + tuple(
    f"downstream_head.{m}."
    for m in ("mlp_classif", "mlp_offset", "mlp_msk", "mlp_fuse", "decpose", "decshape", "decexpression")
)


@pytest.fixture(scope="module")
def manifest():
    return json.loads(fixture_path("human3r_state_dict_manifest.json").read_text())


@pytest.fixture(scope="module")
def released_model(manifest):
    cfg = Human3RConfig.from_kwargs(parse_model_string(manifest["model_str_yaml"]))
    with torch.device("meta"):
        return Human3R(cfg)


def test_released_string_is_the_896l_variant(manifest):
    assert Human3RConfig.from_kwargs(parse_model_string(manifest["model_str_yaml"])) == Human3RConfig.variant("896L")


def test_released_state_dict_matches_manifest(manifest, released_model):
    sd = released_model.state_dict()
    expected = [entry["key"] for entry in manifest["keys"]]
    assert len(sd) == manifest["n_state_dict_keys"] == 1631
    assert list(sd) == expected, "key set or order differs from the official state_dict()"
    for entry in manifest["keys"]:
        assert tuple(sd[entry["key"]].shape) == tuple(entry["shape"]), entry["key"]
        assert sd[entry["key"]].dtype == torch.float32
    assert sum(t.numel() for t in sd.values()) == manifest["state_dict_numel_counting_aliases_twice"]


def test_released_parameters_and_buffers(manifest, released_model):
    n_unique = sum(p.numel() for p in released_model.parameters()) + sum(
        b.numel() for b in released_model.buffers()
    )
    assert n_unique == manifest["total_parameters"] + manifest["persistent_buffer_numel"]
    buffers = dict(released_model.named_buffers())
    assert set(buffers) == {b["key"] for b in manifest["persistent_buffers"]}
    assert not manifest["non_persistent_buffers"]
    kinds = {e["key"]: e["kind"] for e in manifest["keys"]}
    assert {k for k, kind in kinds.items() if kind == "buffer"} == set(buffers)


def test_dpt_layer_rn_aliases_are_the_same_modules(manifest, released_model):
    for alias, target in manifest["aliased_keys"].items():
        alias_module = released_model.get_submodule(alias.rsplit(".", 1)[0])
        target_module = released_model.get_submodule(target.rsplit(".", 1)[0])
        assert alias_module is target_module, alias


@pytest.mark.parametrize(
    "name, dim, depth, heads, grid",
    [("672S", 384, 12, 6, 48), ("672B", 768, 12, 12, 48), ("672L", 1024, 24, 16, 48), ("896L", 1024, 24, 16, 64)],
)
def test_variants_build_with_their_backbone(name, dim, depth, heads, grid, released_model):
    cfg = Human3RConfig.variant(name)
    assert (cfg.backbone_dim, cfg.backbone_depth, cfg.backbone_heads, cfg.bb_token_res) == (dim, depth, heads, grid)
    with torch.device("meta"):
        model = Human3R(cfg)
    sd = model.state_dict()
    enc = cfg.enc_embed_dim
    assert sd["backbone.encoder.pos_embed"].shape == (1, 1 + 37 * 37, dim)
    assert sd[f"backbone.encoder.blocks.{depth - 1}.attn.qkv.weight"].shape == (3 * dim, dim)
    assert f"backbone.encoder.blocks.{depth}.norm1.weight" not in sd
    assert sd["backbone.encoder.blocks.0.mlp.fc1.weight"].shape == (4 * dim, dim)
    assert sd["mhmr_masked_img_token"].shape == (1, dim)
    assert sd["downstream_head.mlp_classif.0.weight"].shape == (dim, dim)
    assert sd["downstream_head.mlp_msk.mlp.layers.2.weight"].shape == (14 * 14, dim)
    assert sd["downstream_head.mlp_fuse.mlp.layers.0.weight"].shape == (4 * (enc + dim), enc + dim)
    assert sd["downstream_head.decpose.mlp.layers.0.weight"].shape == (4 * (768 + dim), 768 + dim)
    assert model.backbone.encoder.position_embedding(grid).shape == (1, 1 + grid * grid, dim)
    # everything outside the human branch is shared by all variants
    for key, value in released_model.state_dict().items():
        if not key.startswith(HUMAN_BRANCH):
            assert sd[key].shape == value.shape, key


def test_tiny_reference_model_loads_strictly():
    fx = load_fixture("h3r_tiny_base")
    cfg = Human3RConfig.from_kwargs(parse_model_string(fx["model_str_yaml_form"]))
    ref = fx["config"]
    assert (cfg.state_size, cfg.enc_embed_dim, cfg.enc_depth, cfg.dec_embed_dim, cfg.dec_depth) == (
        ref["state_size"], ref["enc_embed_dim"], ref["enc_depth"], ref["dec_embed_dim"], ref["dec_depth"]
    )
    assert (cfg.backbone_dim, cfg.backbone_depth, cfg.backbone_heads, cfg.bb_token_res) == (
        ref["backbone_dim"], ref["backbone_depth"], ref["backbone_heads"], ref["bb_token_res"]
    )
    assert (cfg.state_dec_num_heads, cfg.local_mem_size, cfg.det_threshold, cfg.nms_kernel) == (
        ref["state_dec_num_heads"], ref["local_mem_size"], ref["det_threshold"], ref["nms_kernel"]
    )
    assert (cfg.match_threshold, cfg.sinkhorn_iters, cfg.sinkhorn_alpha) == (
        ref["match_threshold"], ref["sinkhorn_iters"], ref["sinkhorn_alpha"]
    )
    assert cfg.state_grid_width == 10  # floor(sqrt(96)) = 9, made even
    model = Human3R(cfg)
    sd = fx["state_dict"]
    model.load_state_dict(sd, strict=True)
    assert list(model.state_dict()) == list(sd)


def test_from_kwargs_ignores_training_only_arguments():
    cfg = Human3RConfig.from_kwargs(
        {"freeze": "encoder", "img_size": (512, 512), "patch_embed_cls": "ManyAR_PatchEmbed",
         "landscape_only": True, "backbone": "dinov2_vits14", "mhmr_img_res": 672,
         "depth_mode": ("exp", -math.inf, math.inf), "pos_embed": "RoPE100"}
    )
    assert cfg == Human3RConfig.variant("672S")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"head_type": "linear"}, "head_type"),
        ({"output_mode": "pts3d+pose"}, "output_mode"),
        ({"output_mode": "naive"}, "output_mode"),
        ({"pose_head": False}, "pose_head"),
        ({"backbone": "dinov2_vitg14"}, "backbone"),
        ({"pos_embed": "cosine"}, "pos_embed"),
        ({"depth_mode": ("square", -math.inf, math.inf)}, "depth_mode"),
        ({"state_pe": "none"}, "state_pe"),
        ({"mhmr_img_res": None}, "mhmr_img_res"),
        ({"mhmr_img_res": 900}, "mhmr_img_res"),
    ],
)
def test_from_kwargs_rejects_unsupported_models(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Human3RConfig.from_kwargs(kwargs)


def test_unknown_variant_is_rejected():
    with pytest.raises(ValueError, match="variant"):
        Human3RConfig.variant("518XL")

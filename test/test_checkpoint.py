"""Safe, strict checkpoint loading: model-string parser, restricted unpickler, key checks,
the safetensors converter.

Checkpoints are built in the tests from the tiny reference model's state dict, in the
training code's format (``{'model': sd, 'args': OmegaConf config, 'epoch': n}``).
"""

import collections
import copy
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from fixtures import fixture_path, load_fixture

from h3r_ros.model import checkpoint, convert
from h3r_ros.model import converted as converted_format
from h3r_ros.model.checkpoint import (
    CheckpointError,
    UnsafePickleError,
    load_human3r,
    load_state_dict_strict,
    read_checkpoint,
)
from h3r_ros.model.config import Human3RConfig
from h3r_ros.model.human3r import Human3R
from h3r_ros.model.model_string import parse_model_string

REPO_ROOT = Path(__file__).resolve().parent.parent

# Spec section 1.2: the released human3r.pth (896L) constructor string.
RELEASED_896L = (
    "ARCroco3DStereo(ARCroco3DStereoConfig(freeze='encoder_and_decoder_and_head', state_size=768, "
    "state_pe='2d', pos_embed='RoPE100', rgb_head=True, pose_head=True, msk_head=True, "
    "patch_embed_cls='ManyAR_PatchEmbed', img_size=(512, 512), head_type='dpt', "
    "output_mode='pts3d+pose+smpl', depth_mode=('exp', -inf, inf), conf_mode=('exp', 1, inf), "
    "pose_mode=('exp', -inf, inf), enc_embed_dim=1024, enc_depth=24, enc_num_heads=16, "
    "dec_embed_dim=768, dec_depth=12, dec_num_heads=12, landscape_only=False, "
    "backbone='dinov2_vitl14', mhmr_img_res=896))"
)
DPT_ALIAS = "downstream_head.dpt_self.scratch.layer_rn.0.weight"
DPT_CANONICAL = "downstream_head.dpt_self.scratch.layer1_rn.weight"


@pytest.fixture(scope="module")
def tiny():
    fx = load_fixture("h3r_tiny_base")
    return fx["state_dict"], fx["model_str_yaml_form"]


@pytest.fixture(scope="module")
def meta_model(tiny):
    """The tiny model without storage: enough for key/shape checks, which run before loading."""
    with torch.device("meta"):
        return Human3R(Human3RConfig.from_kwargs(parse_model_string(tiny[1])))


def save_training_checkpoint(path, state_dict, model_string, **extra):
    """A checkpoint as the training code writes it (OmegaConf config under 'args')."""
    from omegaconf import OmegaConf

    args = OmegaConf.create(
        {"model": model_string, "lr": 1e-4, "train_criterion": "ConfLoss(Regr3D(L21))", "resolution": [[512, 288]]}
    )
    torch.save({"model": collections.OrderedDict(state_dict), "args": args, "epoch": 1, **extra}, path)
    return path


@pytest.fixture(scope="module")
def genuine_pth(tiny, tmp_path_factory):
    return save_training_checkpoint(tmp_path_factory.mktemp("genuine") / "human3r.pth", *tiny)


def assert_same_weights(model, state_dict):
    loaded = model.state_dict()
    assert loaded.keys() == state_dict.keys()
    for key, value in state_dict.items():
        assert torch.equal(loaded[key], value.to(loaded[key].dtype)), key


# --- model string --------------------------------------------------------------------------


def test_parse_released_896l_string():
    kwargs = parse_model_string(RELEASED_896L)
    assert kwargs["state_size"] == 768 and kwargs["enc_depth"] == 24 and kwargs["mhmr_img_res"] == 896
    assert kwargs["img_size"] == (512, 512)
    assert kwargs["depth_mode"] == ("exp", -math.inf, math.inf)
    assert kwargs["conf_mode"] == ("exp", 1, math.inf)
    assert kwargs["patch_embed_cls"] == "PatchEmbedDust3R"  # the reference's rewrite
    assert kwargs["landscape_only"] is False
    assert Human3RConfig.from_kwargs(kwargs) == Human3RConfig.variant("896L")


def test_parse_fixture_string_matches_reference_config():
    fx = load_fixture("h3r_tiny_base")
    kwargs = parse_model_string(fx["model_str_yaml_form"])
    # The reference's rewritten (instantiated) form describes the same model.
    assert kwargs == parse_model_string(fx["model_str_instantiated"])
    shared = ("state_size", "state_pe", "enc_embed_dim", "enc_depth", "dec_embed_dim", "dec_depth", "backbone")
    for key in shared + ("mhmr_img_res",):
        assert kwargs[key] == fx["config"][key], key


@pytest.mark.parametrize("landscape", ["", ", landscape_only=True", ", landscape_only=False"])
def test_landscape_only_is_forced_false(landscape):
    kwargs = parse_model_string(f"ARCroco3DStereo(ARCroco3DStereoConfig(state_size=4{landscape}))")
    assert kwargs == {"state_size": 4, "landscape_only": False}


@pytest.mark.parametrize(
    "text, offending",
    [
        ("__import__('os').system('x')", "__import__('os').system('x')"),
        ("ARCroco3DStereo(ARCroco3DStereoConfig(a=os.system))", "os.system"),
        ("ARCroco3DStereo(ARCroco3DStereoConfig(a=__import__('os').system('x')))", "__import__('os').system"),
        ("ARCroco3DStereo(ARCroco3DStereoConfig(a=(1, open('f'))))", "open('f')"),
        ("ARCroco3DStereo(ARCroco3DStereoConfig(a=nan))", "nan"),
        ("ARCroco3DStereo(ARCroco3DStereoConfig(a=2**64))", "2**64"),
        ("ARCroco3DStereo(ARCroco3DStereoConfig(a=-'x'))", "-'x'"),
        ("ARCroco3DStereo(ARCroco3DStereoConfig(a={'k': 1}))", "{'k': 1}"),
        ("ARCroco3DStereo(ARCroco3DStereoConfig(a=[x for x in y]))", "[x for x in y]"),
        ("ARCroco3DStereo(ARCroco3DStereoConfig(a=lambda: 1))", "lambda: 1"),
        ("ARCroco3DStereo(ARCroco3DStereoConfig(**cfg))", "**cfg"),
        ("ARCroco3DStereo(ARCroco3DStereoConfig(a=1, a=2))", "'a' given twice"),
        ("ARCroco3DStereo(ARCroco3DStereoConfig(1))", "'1'"),
        ("ARCroco3DStereo(Evil(a=1))", "Evil(a=1)"),
        ("ARCroco3DStereo(ARCroco3DStereoConfig(a=1), b=2)", "b=2"),
        ("ARCroco3DStereo(ARCroco3DStereoConfig(a=1)); import os", "invalid syntax"),
    ],
)
def test_parser_rejects_non_literals(text, offending):
    with pytest.raises(ValueError) as info:
        parse_model_string(text)
    assert offending in str(info.value)


# --- reading .pth files --------------------------------------------------------------------


def test_genuine_checkpoint_loads_strictly_without_omegaconf(genuine_pth, tiny):
    """The OmegaConf-carrying file loads in a process where omegaconf cannot be imported."""
    script = textwrap.dedent(
        """
        import sys
        sys.modules["omegaconf"] = None  # any import of omegaconf now raises ImportError
        sys.modules["hydra"] = None
        import torch
        from h3r_ros.model.checkpoint import load_human3r
        model, cfg = load_human3r(sys.argv[1])
        reference = torch.load(sys.argv[2], weights_only=True)["state_dict"]
        loaded = model.state_dict()
        assert loaded.keys() == reference.keys()
        assert all(torch.equal(loaded[k], v) for k, v in reference.items())
        assert cfg.enc_embed_dim == 128 and cfg.backbone == "dinov2_vits14"
        assert sys.modules["omegaconf"] is None and sys.modules["hydra"] is None
        print("loaded", len(loaded))
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    fixture = fixture_path("h3r_tiny_base.pt")
    result = subprocess.run(
        [sys.executable, "-c", script, str(genuine_pth), str(fixture)],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert f"loaded {len(tiny[0])}" in result.stdout


def test_model_string_found_in_omegaconf_state(genuine_pth, tiny):
    state_dict, model_string = read_checkpoint(genuine_pth)
    assert model_string == tiny[1]
    assert state_dict.keys() == tiny[0].keys()


def test_unknown_classes_are_recorded_not_run(tmp_path, tiny):
    """Instances of non-allow-listed classes (argparse.Namespace here) become inert records."""
    import argparse

    path = tmp_path / "namespace.pth"
    torch.save({"model": tiny[0], "args": argparse.Namespace(model=tiny[1], seed=0)}, path)
    assert read_checkpoint(path)[1] == tiny[1]


def test_module_prefixed_checkpoint_loads(tmp_path, tiny):
    prefixed = {"module." + key: value for key, value in tiny[0].items()}
    model, _ = load_human3r(save_training_checkpoint(tmp_path / "ddp.pth", prefixed, tiny[1]))
    assert_same_weights(model, tiny[0])


def test_non_float32_checkpoint_is_cast(tmp_path, tiny):
    half = {key: value.to(torch.bfloat16) for key, value in tiny[0].items()}
    path = save_training_checkpoint(tmp_path / "bf16.pth", half, tiny[1])
    model, _ = load_human3r(path, dtype=torch.float32)
    assert all(p.dtype == torch.float32 for p in model.state_dict().values())
    assert_same_weights(model, half)


def test_truncated_checkpoint_fails_clearly(tmp_path, genuine_pth):
    path = tmp_path / "truncated.pth"
    data = genuine_pth.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated") as info:
        load_human3r(path)
    assert str(path) in str(info.value)


def test_missing_checkpoint_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        load_human3r(tmp_path / "nothere.pth")


class _Exploit:
    """Pickles as a call of ``function(*args)``, the classic pickle code-execution payload."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


@pytest.mark.parametrize("payload", ["os.system", "eval", "subprocess"])
def test_malicious_pickle_is_refused(tmp_path, tiny, payload):
    marker = tmp_path / "pwned"
    exploit = {
        "os.system": _Exploit(os.system, f"touch {marker}"),
        "eval": _Exploit(eval, f"open({str(marker)!r}, 'w')"),
        "subprocess": _Exploit(subprocess.call, ["touch", str(marker)]),
    }[payload]
    path = tmp_path / "evil.pth"
    torch.save({"model": tiny[0], "args": {"model": tiny[1], "hook": exploit}}, path)
    with pytest.raises(UnsafePickleError, match="refusing to unpickle") as info:
        load_human3r(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


# --- strict key checks ---------------------------------------------------------------------


def _mutated(state_dict, case):
    sd = dict(state_dict)
    if case == "missing":
        del sd["downstream_head.mlp_classif.2.weight"]
        return sd, "missing keys (1): downstream_head.mlp_classif.2.weight"
    if case == "unexpected":
        sd["downstream_head.extra.weight"] = torch.zeros(3)
        return sd, "unexpected keys (1): downstream_head.extra.weight"
    sd["pose_token"] = torch.zeros(1, 1, 64)
    return sd, "shape mismatches (1): pose_token: checkpoint [1, 1, 64] vs model [1, 1, 128]"


@pytest.mark.parametrize("case", ["missing", "unexpected", "misshaped"])
def test_key_mismatch_names_the_key(meta_model, tiny, case):
    sd, expected = _mutated(tiny[0], case)
    with pytest.raises(CheckpointError) as info:
        load_state_dict_strict(meta_model, sd, source="file.pth")
    assert expected in str(info.value)
    assert str(info.value).startswith("file.pth:")


def test_key_mismatch_from_file_names_file_and_key(tmp_path, tiny):
    sd, expected = _mutated(tiny[0], "missing")
    path = save_training_checkpoint(tmp_path / "incomplete.pth", sd, tiny[1])
    with pytest.raises(CheckpointError) as info:
        load_human3r(path)
    assert str(path) in str(info.value) and expected in str(info.value)


def test_many_mismatches_are_summarised(meta_model, tiny):
    sd = {key: value for key, value in tiny[0].items() if not key.startswith("backbone.")}
    sd.update({f"junk.{i}": torch.zeros(1) for i in range(20)})
    with pytest.raises(CheckpointError) as info:
        load_state_dict_strict(meta_model, sd)
    message = str(info.value)
    n_backbone = sum(key.startswith("backbone.") for key in tiny[0])
    assert f"missing keys ({n_backbone}): backbone." in message
    assert "unexpected keys (20): junk.0" in message and "... and 12 more" in message


def test_partial_module_prefix_is_not_stripped(meta_model, tiny):
    sd = dict(tiny[0])
    sd["module.pose_token"] = sd.pop("pose_token")
    with pytest.raises(CheckpointError) as info:
        load_state_dict_strict(meta_model, sd)
    assert "missing keys (1): pose_token" in str(info.value)
    assert "unexpected keys (1): module.pose_token" in str(info.value)


def test_no_model_string_needs_a_variant(tmp_path, tiny):
    path = tmp_path / "bare.pth"
    torch.save(tiny[0], path)
    assert read_checkpoint(path)[1] is None
    with pytest.raises(CheckpointError, match="variant="):
        load_human3r(path)


# --- converter -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def converted(genuine_pth):
    """Run the CLI with its default output prefix: the pair lands next to the .pth."""
    assert convert.main([str(genuine_pth)]) == 0
    return genuine_pth.with_suffix(".safetensors"), genuine_pth.with_suffix(".json")


def test_converter_writes_deduplicated_safetensors(converted, tiny):
    import safetensors

    tensors_path, header_path = converted
    header = json.loads(header_path.read_text())
    assert header["format_version"] == checkpoint.FORMAT_VERSION
    assert header["model_string"] == tiny[1]
    assert parse_model_string(header["model_string"])["mhmr_img_res"] == 280
    # DPT aliases (4 per adapter, 3 adapters) are stored once and re-aliased on load.
    assert header["aliases"][DPT_ALIAS] == DPT_CANONICAL and len(header["aliases"]) == 12
    assert header["finite"] is True  # checked when the .pth was read
    with safetensors.safe_open(tensors_path, "pt") as f:
        assert set(f.keys()) == set(tiny[0]) - set(header["aliases"])


def test_pair_from_an_older_converter_is_checked_once(converted, tmp_path, tiny, monkeypatch):
    """A header without the finite record still loads: checked when first read, then recorded."""
    tensors_path = Path(shutil.copy(converted[0], tmp_path))
    header = json.loads(converted[1].read_text())
    del header["finite"]
    header_path = tmp_path / converted[1].name
    header_path.write_text(json.dumps(header))
    checked = []
    monkeypatch.setattr(converted_format, "check_finite", lambda tensors, source: checked.append(source))
    for _ in range(2):
        model, _ = load_human3r(tensors_path)
    assert checked == [tensors_path]
    assert json.loads(header_path.read_text())["finite"] is True
    assert_same_weights(model, tiny[0])


def test_converted_safetensors_round_trip(converted, tiny):
    model, cfg = load_human3r(converted[0])
    assert_same_weights(model, tiny[0])
    assert cfg == Human3RConfig.from_kwargs(parse_model_string(tiny[1]))


def forbid_reading_pth(monkeypatch):
    def no_pickle(path):
        raise AssertionError(f"read the .pth {path}")

    monkeypatch.setattr(checkpoint, "read_checkpoint", no_pickle)


def test_converted_pair_is_preferred(converted, genuine_pth, tiny, monkeypatch):
    forbid_reading_pth(monkeypatch)
    model, _ = load_human3r(genuine_pth)
    assert_same_weights(model, tiny[0])


def test_stale_converted_pair_is_ignored(converted, genuine_pth, tmp_path, monkeypatch):
    """A pair converted from a different file (size recorded in the header) is not used."""
    for source in converted:
        (tmp_path / source.name).symlink_to(source)
    header = json.loads(converted[1].read_text())
    header["source"]["size"] += 1
    (tmp_path / converted[1].name).unlink()
    (tmp_path / converted[1].name).write_text(json.dumps(header))
    (tmp_path / genuine_pth.name).symlink_to(genuine_pth)

    class ReadPth(Exception):
        pass

    def read_pth(path):
        raise ReadPth(path)

    monkeypatch.setattr(checkpoint, "read_checkpoint", read_pth)
    with pytest.raises(CheckpointError, match="ReadPth"):  # every failure is a CheckpointError
        load_human3r(tmp_path / genuine_pth.name)


# --- a converted pair stands in only for its own source ---------------------------------


@pytest.fixture
def hashed(monkeypatch):
    """Every file hashed from now on (sources and tensor files), in order."""
    paths = []
    sha256_file = converted_format._sha256_file

    def counting(path):
        paths.append(Path(path))
        return sha256_file(path)

    monkeypatch.setattr(converted_format, "_sha256_file", counting)
    return paths


def test_pair_of_other_content_of_the_same_size_is_converted_again(tmp_path, tiny, monkeypatch):
    # The same name (torch.save names the archive's records after it), storages and views:
    # the same file size.
    first, second = (tmp_path / name / "human3r.pth" for name in ("first", "second"))
    weights = copy.deepcopy(tiny[0])
    weights["pose_token"].add_(1)
    for path, state_dict in ((first, tiny[0]), (second, weights)):
        path.parent.mkdir()
        save_training_checkpoint(path, state_dict, tiny[1])
    assert first.stat().st_size == second.stat().st_size
    pth = tmp_path / "human3r.pth"
    shutil.copyfile(first, pth)
    checkpoint.convert_checkpoint(pth)
    assert_same_weights(load_human3r(pth)[0], tiny[0])

    converted_mtime = pth.stat().st_mtime_ns
    shutil.copyfile(second, pth)
    os.utime(pth, ns=(converted_mtime, converted_mtime))  # as cp -p leaves it: only the content differs
    assert_same_weights(load_human3r(pth)[0], weights)
    header = json.loads(pth.with_suffix(".json").read_text())
    assert header["source"]["sha256"] == hashlib.sha256(second.read_bytes()).hexdigest()
    forbid_reading_pth(monkeypatch)
    assert_same_weights(load_human3r(pth)[0], weights)  # from the pair written again


def test_unchanged_source_is_not_hashed_again(tmp_path, tiny, hashed, monkeypatch):
    pth = save_training_checkpoint(tmp_path / "human3r.pth", *tiny)
    checkpoint.convert_checkpoint(pth)
    assert hashed.count(pth.resolve()) == 1
    converted_format._cached_sha256.cache_clear()  # as in a new process: only the header remembers
    forbid_reading_pth(monkeypatch)
    for _ in range(2):
        assert_same_weights(load_human3r(pth)[0], tiny[0])
    assert hashed.count(pth.resolve()) == 1


def test_unchanged_pair_is_not_hashed_again(tmp_path, tiny, hashed):
    pth = save_training_checkpoint(tmp_path / "human3r.pth", *tiny)
    tensors_path, header_path = checkpoint.convert_checkpoint(pth)
    tensors_path = tensors_path.resolve()
    assert hashed.count(tensors_path.with_name(tensors_path.name + ".tmp")) == 1  # at conversion
    converted_format._cached_sha256.cache_clear()  # as in a new process: only the header remembers
    for _ in range(2):  # two configures
        assert_same_weights(load_human3r(pth)[0], tiny[0])
    assert hashed.count(tensors_path) == 0
    # A touched tensor file is hashed once, and its new stamp recorded.
    os.utime(tensors_path, ns=(tensors_path.stat().st_atime_ns, tensors_path.stat().st_mtime_ns + 10**9))
    converted_format._cached_sha256.cache_clear()
    for _ in range(2):
        assert_same_weights(load_human3r(pth)[0], tiny[0])
    assert hashed.count(tensors_path) == 1
    assert json.loads(header_path.read_text())["tensors"]["mtime_ns"] == tensors_path.stat().st_mtime_ns


def test_source_hash_is_remembered_in_process(tmp_path, tiny, hashed, monkeypatch):
    pth = save_training_checkpoint(tmp_path / "human3r.pth", *tiny)
    checkpoint.convert_checkpoint(pth)
    os.utime(pth, ns=(pth.stat().st_atime_ns, pth.stat().st_mtime_ns + 10**9))
    monkeypatch.setattr(converted_format, "_rewrite_header", lambda *args: None)  # a read-only folder
    for _ in range(2):
        load_human3r(pth)
    assert hashed.count(pth.resolve()) == 2


def test_touched_source_reuses_its_pair_after_one_hash(tmp_path, tiny, hashed, monkeypatch):
    pth = save_training_checkpoint(tmp_path / "human3r.pth", *tiny)
    tensors_path, header_path = checkpoint.convert_checkpoint(pth)
    tensors = tensors_path.read_bytes()
    os.utime(pth, ns=(pth.stat().st_atime_ns, pth.stat().st_mtime_ns + 10**9))
    forbid_reading_pth(monkeypatch)
    assert_same_weights(load_human3r(pth)[0], tiny[0])
    assert hashed.count(pth.resolve()) == 2
    assert json.loads(header_path.read_text())["source"]["mtime_ns"] == pth.stat().st_mtime_ns
    converted_format._cached_sha256.cache_clear()
    assert_same_weights(load_human3r(pth)[0], tiny[0])
    assert hashed.count(pth.resolve()) == 2 and tensors_path.read_bytes() == tensors


def test_converter_cli_reports_errors(tmp_path, capsys):
    assert convert.main([str(tmp_path / "missing.pth")]) == 1
    assert "missing.pth" in capsys.readouterr().err

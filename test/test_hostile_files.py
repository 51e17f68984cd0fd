"""Hostile files: crafted checkpoints, converted pairs and SMPL-X models.

Every case must fail with the loader's own error type naming the file, before anything large
is allocated, and no payload may run: the payloads write a marker file, which must not appear.
The crafted ``.pth`` files are written by hand (a zip with a data.pkl pickled here), so they
can declare what ``torch.save`` never would.
"""

import codecs
import json
import os
import struct
import subprocess
import zipfile

import numpy as np
import pytest
import torch
from crafted_files import (
    Call,
    Storage,
    craft_pth,
    nested_shared_list,
    tensor,
    training,
    write_header,
    write_safetensors,
)
from ros_helpers import tiny_model_string

from h3r_ros.demo.synthetic_smplx import synthetic_smplx_arrays
from h3r_ros.engine.body_model import SMPLX_ARRAYS, BodyModel, SmplxFileError, read_smplx_arrays
from h3r_ros.model import checkpoint
from h3r_ros.model.checkpoint import CheckpointError, load_human3r, read_checkpoint

def assert_refused(path, match, marker=None, error=CheckpointError, load=load_human3r):
    with pytest.raises(error, match=match) as info:
        load(path)
    assert str(path) in str(info.value)
    if marker is not None:
        assert not marker.exists(), "the payload ran"
    return info.value


# --- .pth: code execution ---------------------------------------------------------------------


@pytest.mark.parametrize("payload", ["os.system", "posix.system", "builtins.exec", "builtins.__import__",
                                     "subprocess.Popen", "torch.load", "nested in a tensor"])
def test_pickle_payloads_in_pth_do_not_run(tmp_path, payload):
    marker = tmp_path / "pwned"
    touch = f"open({str(marker)!r}, 'w').close()"
    exploit = {
        "os.system": Call(os.system, f"touch {marker}"),
        "posix.system": Call(getattr(os, "system"), f"touch {marker}"),
        "builtins.exec": Call(exec, touch),
        "builtins.__import__": Call(__import__, "os"),
        "subprocess.Popen": Call(subprocess.Popen, ["touch", str(marker)]),
        "torch.load": Call(torch.load, str(marker)),
        "nested in a tensor": tensor(Call(exec, touch), 0, (1,), (1,)),
    }[payload]
    path = craft_pth(tmp_path / "evil.pth", training({}, hook=exploit))
    assert_refused(path, "refusing to unpickle|tensor over", marker)


# --- .pth: amplification and bombs ----------------------------------------------------------------


@pytest.mark.parametrize("case, match", [
    ("str over shared lists", r"str\(\) of a list"),
    ("repeated list copies", "amplification"),
    ("repeated encode", "amplification"),
    ("repr through int", r"int\(\) of a list"),
])
def test_constructor_amplification_is_refused(tmp_path, case, match):
    big = list(range(20000))
    text = "y" * 200_000
    obj = {
        "str over shared lists": Call(str, nested_shared_list(60)),
        "repeated list copies": [Call(list, big) for _ in range(200)],
        "repeated encode": [Call(codecs.encode, text, "latin1") for _ in range(20)],
        "repr through int": Call(int, nested_shared_list(60)),
    }[case]
    path = craft_pth(tmp_path / "amplify.pth", training({}, junk=obj))
    assert path.stat().st_size < 300_000  # small input ...
    assert_refused(path, match)  # ... refused before it grows


@pytest.mark.parametrize("case, match", [
    ("zero strides", "zero or negative strides"),
    ("negative stride", "zero or negative strides"),
    ("view beyond storage", "reaches element"),
    ("storage beyond record", "declares"),
    ("missing record", "has no record"),
    ("overlapping views", "amplification"),
    ("negative offset", "offset"),
])
def test_strided_bombs_are_refused_before_allocating(tmp_path, case, match):
    small = Storage("0", 16)
    view = {
        "zero strides": tensor(small, 0, (50_000, 50_000), (0, 0)),  # 9.3 GiB from 64 bytes
        "negative stride": tensor(small, 15, (16,), (-1,)),
        "view beyond storage": tensor(small, 0, (17,), (1,)),
        "storage beyond record": tensor(Storage("0", 2**31), 0, (2**31,), (1,)),
        "missing record": tensor(Storage("9", 4), 0, (4,), (1,)),
        "overlapping views": tensor(Storage("0", 2**17), 0, (2**16, 2**16), (1, 1)),  # 16 GiB from 0.5 MiB
        "negative offset": tensor(small, -4, (4,), (1,)),
    }[case]
    record = {"storage beyond record": 64, "overlapping views": 2**19}.get(case, 64)
    path = craft_pth(tmp_path / "bomb.pth", training({"pose_token": view}), {"0": bytes(record)})
    assert_refused(path, match, load=read_checkpoint)


@pytest.mark.parametrize("change, match", [
    (("enc_depth=2", "enc_depth=10000000"), "enc_depth=10000000 is outside"),
    (("dec_embed_dim=128", "dec_embed_dim=1048576"), "dec_embed_dim=1048576 is outside"),
    (("mhmr_img_res=280", "mhmr_img_res=280000"), "mhmr_img_res=280000 is outside"),
])
def test_model_strings_outside_sane_bounds_are_refused(tmp_path, change, match):
    path = craft_pth(tmp_path / "huge_model.pth", training({}, tiny_model_string().replace(*change)))
    assert_refused(path, match)


def test_overlong_model_string_is_refused(tmp_path):
    padded = tiny_model_string().replace("state_size=96", "state_size=96, note='" + "z" * 20_000 + "'")
    assert_refused(craft_pth(tmp_path / "long.pth", training({}, padded)), "at most 8192")


@pytest.mark.parametrize("case, match", [
    ("top-level list", "expected a dict"),
    ("non-tensor entries", "not tensors"),
    ("tensor over a string", "tensor over a str"),
    ("malformed persistent id", "persistent id"),
    ("deep nesting", "expected a dict"),
    ("model string not a literal", "bad model string"),
    ("model string of odd types", "bad model string"),
    ("empty archive", "0 data.pkl"),
    ("garbage", "not a readable torch.save archive"),
])
def test_odd_files_give_one_error_type(tmp_path, case, match):
    path = tmp_path / "odd.pth"
    if case == "garbage":
        path.write_bytes(b"PK\x03\x04" + os.urandom(200))
    elif case == "empty archive":
        zipfile.ZipFile(path, "w").close()
    elif case == "deep nesting":
        depth = 200_000  # built by opcodes without recursion; nothing may recurse over it later
        craft_pth(path, None, raw_pickle=b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b".")
    elif case == "malformed persistent id":
        craft_pth(path, None, raw_pickle=b"\x80\x02(X\x07\x00\x00\x00storageK\x05tQ.")
    else:
        obj = {
            "top-level list": [1, 2, 3],
            "non-tensor entries": training({"pose_token": 5}),
            "tensor over a string": training({"pose_token": tensor("abc", 0, (1,), (1,))}),
            "model string not a literal": training({}, "ARCroco3DStereo(ARCroco3DStereoConfig(enc_depth=x))"),
            "model string of odd types": training(
                {}, "ARCroco3DStereo(ARCroco3DStereoConfig(depth_mode=5, enc_depth=1e400))"),
        }[case]
        craft_pth(path, obj)
    error = assert_refused(path, match)
    assert isinstance(error, CheckpointError)


def test_missing_file_is_a_checkpoint_error_too(tmp_path):
    with pytest.raises(CheckpointError, match="nothere.pth") as info:
        load_human3r(tmp_path / "nothere.pth")
    assert isinstance(info.value, FileNotFoundError)  # and still a FileNotFoundError


# --- converted pairs ---------------------------------------------------------------------


def test_sidecar_of_another_tensor_file_is_refused(tmp_path):
    # Same layout, other weights: exactly what a header-only check would let through.
    tensors = write_safetensors(tmp_path / "human3r.safetensors", {"pose_token": torch.zeros(1, 1, 128)})
    other = write_safetensors(tmp_path / "other.safetensors", {"pose_token": torch.ones(1, 1, 128)})
    header = write_header(tmp_path / "human3r.json", other)  # converted together with the other file
    error = assert_refused(tensors, "does not belong to")
    assert str(header) in str(error)


def test_sidecar_refuses_a_modified_tensor_file(tmp_path):
    tensors = write_safetensors(tmp_path / "human3r.safetensors", {"a": torch.zeros(4), "b": torch.ones(4)})
    write_header(tmp_path / "human3r.json", tensors)
    raw = bytearray(tensors.read_bytes())
    raw[-1] ^= 0x40  # one weight changed, size and tensor table unchanged
    tensors.write_bytes(bytes(raw))
    assert_refused(tensors, "does not belong to")


def test_alias_replacing_a_stored_tensor_is_refused(tmp_path):
    tensors = write_safetensors(tmp_path / "human3r.safetensors", {"a": torch.zeros(4), "b": torch.ones(4)})
    write_header(tmp_path / "human3r.json", tensors, aliases={"a": "b"})
    assert_refused(tensors, "would replace a stored tensor")


@pytest.mark.parametrize("case, match", [
    ("header longer than the file", "safetensors header of"),
    ("offsets beyond the file", "cannot read safetensors file"),
    ("header not json", "cannot read safetensors file"),
    ("too short", "too short"),
])
def test_bad_safetensors_headers_are_refused(tmp_path, case, match):
    path = tmp_path / "human3r.safetensors"
    table = {"pose_token": {"dtype": "F32", "shape": [10**9], "data_offsets": [0, 4 * 10**9]}}
    data = {
        "header longer than the file": struct.pack("<Q", 10**12) + b"{}",
        "offsets beyond the file": (lambda h: struct.pack("<Q", len(h)) + h + bytes(64))(json.dumps(table).encode()),
        "header not json": struct.pack("<Q", 8) + b"\xff" * 8 + bytes(16),
        "too short": b"\x01\x02",
    }[case]
    path.write_bytes(data)
    if case in ("offsets beyond the file", "header not json"):
        write_header(tmp_path / "human3r.json", path)
    else:
        (tmp_path / "human3r.json").write_text(json.dumps({
            "format": checkpoint.FORMAT_NAME, "format_version": checkpoint.FORMAT_VERSION, "tensors": {}}))
    assert_refused(path, match)


def test_header_bombs_are_refused(tmp_path):
    tensors = write_safetensors(tmp_path / "human3r.safetensors", {"a": torch.zeros(4)})
    (tmp_path / "human3r.json").write_text("[" * 100_000 + "]" * 100_000)  # deep JSON
    assert_refused(tensors, "cannot read converted-checkpoint header|larger than")


# --- SMPL-X .npz ---------------------------------------------------------------------------


@pytest.mark.parametrize("member", ["v_template", "joint2num"])
def test_pickle_payload_in_smplx_npz_does_not_run(tmp_path, member):
    marker = tmp_path / "pwned"
    arrays = synthetic_smplx_arrays(0)
    payload = np.empty((), dtype=object)
    payload[()] = Call(os.system, f"touch {marker}")
    arrays[member] = payload  # a needed array (refused) or an extra one (never loaded)
    folder = tmp_path / "models"
    folder.mkdir()
    path = folder / "SMPLX_NEUTRAL.npz"
    np.savez(path, **arrays)
    if member == "v_template":
        assert_refused(folder, "dtype object", marker, error=SmplxFileError, load=BodyModel)
        assert str(path) in str(pytest.raises(SmplxFileError, read_smplx_arrays, path).value)
    else:
        body = BodyModel(folder)  # SMPL-X v1.1 itself stores such extra entries
        assert body.num_vertices == arrays["v_template"].shape[0]
    assert not marker.exists(), "the payload ran"


def _npy_member(shape, dtype="<f8", data=b""):
    header = f"{{'descr': '{dtype}', 'fortran_order': False, 'shape': {tuple(shape)}, }}".encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data


@pytest.mark.parametrize("case, match", [
    ("declared size bomb", "larger than"),
    ("missing arrays", "missing arrays"),
    ("not a zip", "unreadable SMPL-X model"),
    ("string array", "not a plain number type"),
    ("truncated member", "holds .* declares"),
    ("too many dimensions", "dimensions"),
])
def test_bad_smplx_files_are_refused(tmp_path, case, match):
    path = tmp_path / "SMPLX_NEUTRAL.npz"
    arrays = synthetic_smplx_arrays(0)
    if case == "not a zip":
        path.write_bytes(b"not an npz")
    elif case == "missing arrays":
        np.savez(path, v_template=arrays["v_template"])
    elif case == "string array":
        np.savez(path, **(arrays | {"f": np.array(["a", "b"])}))
    elif case == "too many dimensions":
        np.savez(path, **(arrays | {"weights": np.zeros((1,) * 6)}))
    else:
        np.savez(path, **{k: v for k, v in arrays.items() if k != "shapedirs"})
        shape = (10**6, 10**6, 400) if case == "declared size bomb" else (10, 3, 20)
        with zipfile.ZipFile(path, "a") as archive:
            archive.writestr("shapedirs.npy", _npy_member(shape, data=bytes(64)))
    assert_refused(path, match, error=SmplxFileError, load=read_smplx_arrays)
    assert_refused(path, match, error=SmplxFileError, load=BodyModel)


def test_unpickled_body_model_matches_smplx_on_the_same_file(tmp_path):
    """Reading without pickle changes nothing: the same arrays as smplx's own loader."""
    arrays = synthetic_smplx_arrays(0)
    path = tmp_path / "SMPLX_NEUTRAL.npz"
    np.savez(path, **arrays)
    loaded = read_smplx_arrays(path)
    assert loaded.keys() == {k for k in arrays if k in SMPLX_ARRAYS}
    for key, value in loaded.items():
        np.testing.assert_array_equal(value, arrays[key])

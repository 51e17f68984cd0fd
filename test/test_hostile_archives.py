"""Hostile files, each loaded in a child process with an address-space limit: the archive
policy (members listed once, each bounded before it is read), what the first pass checked
being what loads, bounded work, ``.npz`` member aliasing, and non-finite numbers.

Every case builds its file here, asserts the refusal (error type, file named, reason) and
that the load stayed small and quick, so a bomb fails the test instead of the machine.
"""

import collections
import math
import re
import warnings
import zipfile

import numpy as np
import pytest
import torch
from crafted_files import (
    Storage,
    craft_pth,
    int_opcodes,
    nested_shared_list,
    nested_shared_tuple_opcodes,
    opcodes,
    tensor,
    training,
    training_pickle,
    write_header,
    write_safetensors,
)
from limited_child import run_limited
from ros_helpers import tiny_model_string

from h3r_ros.demo.synthetic_smplx import synthetic_smplx_arrays
from h3r_ros.engine.body_model import SmplxFileError, read_smplx_arrays
from h3r_ros.model.checkpoint import CheckpointError, UnsafePickleError, load_human3r, read_checkpoint
from h3r_ros.model.safe_unpickle import restricted_pickle
from h3r_ros.model.tensor_checks import check_loaded_tensors

MAX_PEAK = 128 << 20  # bytes a refused load may add to the process at its peak
MAX_SECONDS = 5.0
BOMB = 512 << 20  # bytes a bomb member expands to


def assert_refused(load, path, error, match, max_peak=MAX_PEAK):
    outcome = run_limited(load, path)
    assert error.__name__ in outcome.errors, outcome
    assert str(path) in outcome.message and re.search(match, outcome.message), outcome.message
    assert 0 <= outcome.peak_bytes < max_peak, outcome
    assert outcome.seconds < MAX_SECONDS, outcome


def write_deflated_zeros(archive: zipfile.ZipFile, name: str, size: int, head: bytes = b"") -> None:
    """A member of ``head`` then ``size`` zero bytes, deflated to about a thousandth of that."""
    with archive.open(name, "w", force_zip64=True) as stream:
        stream.write(head)
        chunk = bytes(16 << 20)
        for start in range(0, size, len(chunk)):
            stream.write(chunk[: size - start])


# --- the archive policy: every member bounded before it is read --------------------------------


@pytest.mark.parametrize("record", ["version", "byteorder", ".data/serialization_id", ".storage_alignment"])
def test_deflated_small_record_is_refused_before_reading(tmp_path, record):
    """torch.load reads these records whole: deflated, a 0.5 MB file expands one to 512 MiB."""
    small = {name: text for name, text in {"byteorder": "little", "version": "3\n"}.items() if name != record}
    path = craft_pth(tmp_path / "bomb.pth", training({}), small_records=small)
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        write_deflated_zeros(archive, f"archive/{record}", BOMB)
    assert path.stat().st_size < 4 << 20
    assert_refused(read_checkpoint, path, CheckpointError, f"archive/{re.escape(record)}.*compressed")


def test_oversized_small_record_is_refused(tmp_path):
    path = craft_pth(tmp_path / "long_version.pth", training({}), small_records={"version": "3" * 4096})
    assert_refused(read_checkpoint, path, CheckpointError, r"archive/version.* 4096 bytes \(at most")


def test_unknown_member_is_refused(tmp_path):
    path = craft_pth(tmp_path / "extra.pth", training({}), small_records={"version": "3\n", "extra/notes": "x"})
    assert_refused(read_checkpoint, path, CheckpointError, "archive/extra/notes.*not a torch.save record")


# --- the archive policy: every member listed once ------------------------------------------------


@pytest.mark.parametrize("case, first, second", [
    ("duplicate name", "archive/data/0", "archive/data/0"),
    ("name cut at a NUL byte", "archive/data/0", "archive/data/0@x"),
    ("names differing in case", "archive/DATA/0", "archive/data/0"),
])
def test_members_a_reader_could_confuse_are_refused(tmp_path, case, first, second):
    """The first pass reads the 1 MiB record the pickle declares, while torch may read the
    16-byte one: it takes the first of two equal names and matches names ignoring case, where
    Python's zipfile keeps the last and cuts a name at a NUL byte."""
    view = tensor(Storage("0", 2**18), 0, (2**18,), (1,))
    path = craft_pth(tmp_path / "twice.pth", training({"pose_token": view}))
    with zipfile.ZipFile(path, "a") as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate it writes
        archive.writestr(first, bytes(16))
        archive.writestr(second, bytes(2**20))
    if case == "name cut at a NUL byte":
        path.write_bytes(path.read_bytes().replace(b"archive/data/0@x", b"archive/data/0\x00x"))
    assert_refused(read_checkpoint, path, CheckpointError, "listed twice|NUL byte|read for one another")


def test_storage_record_larger_than_declared_is_refused(tmp_path):
    view = tensor(Storage("0", 4), 0, (4,), (1,))
    path = craft_pth(tmp_path / "padded.pth", training({"pose_token": view}), {"0": bytes(2**20)})
    assert_refused(read_checkpoint, path, CheckpointError, "archive/data/0.*declares 16 bytes")


# --- what the first pass checked is what loads ------------------------------------------------------

_PID = opcodes(("storage", torch.FloatStorage, "0", "cpu", 16))


def _rebuild(storage_code: bytes, offset, size, stride) -> bytes:
    args = opcodes(offset) + opcodes(size) + opcodes(stride) + opcodes(False) + opcodes(collections.OrderedDict())
    return b"ctorch._utils\n_rebuild_tensor_v2\n(" + storage_code + args + b"tR"


def test_build_cannot_rewrite_the_scanned_storage_record(tmp_path):
    """BUILD on the storage grows what the first pass believes it holds (16 -> 2**30 floats)."""
    storage = _PID + b"Q" + opcodes({"numel": 2**30}) + b"b"
    code = training_pickle({"pose_token": _rebuild(storage, 0, (2**30,), (1,))})
    path = craft_pth(tmp_path / "grown.pth", raw_pickle=code, records={"0": bytes(64)})
    assert_refused(read_checkpoint, path, CheckpointError, "refusing to unpickle")


def test_build_cannot_repoint_a_loaded_tensor(tmp_path):
    """Tensor.__setstate__ with a 4-entry state calls set_(*state): a dict whose keys are
    (storage, offset, size, stride) re-points the checked tensor at 2**32 zero-stride floats."""
    storage = _PID + b"Qq\xfa"
    state = b"}(h\xfaN" + opcodes(0) + b"N" + opcodes((2**16, 2**16)) + b"N" + opcodes((0, 0)) + b"Nu"
    code = training_pickle({"pose_token": _rebuild(storage, 0, (16,), (1,)) + state + b"b"})
    path = craft_pth(tmp_path / "repointed.pth", raw_pickle=code, records={"0": bytes(64)})
    assert_refused(read_checkpoint, path, CheckpointError, "refusing to unpickle")


def test_build_on_a_tensor_is_refused_in_the_real_load(tmp_path):
    """The first pass aside, torch.load itself refuses Tensor.__setstate__."""
    tensor_code = _rebuild(_PID + b"Q", 0, (16,), (1,)) + opcodes({"requires_grad": True}) + b"b"
    path = craft_pth(tmp_path / "built.pth", raw_pickle=training_pickle({"pose_token": tensor_code}),
                     records={"0": bytes(64)})
    with pytest.raises(UnsafePickleError, match=r"BUILD \(__setstate__\) on a Tensor"):
        torch.load(path, pickle_module=restricted_pickle, weights_only=False, mmap=True)


@pytest.mark.parametrize("size, stride, match", [
    ((2**16, 2**16), (0, 0), "zero or negative strides"),
    ((2**15, 2**15), (1, 1), "amplification"),
])
def test_loaded_tensors_are_checked_again(size, stride, match):
    """Views of 16 and 4 GiB over a 256 KiB storage, as a re-pointed tensor would be."""
    view = torch.zeros(2**16).as_strided(size, stride)
    with pytest.raises(CheckpointError, match=f"crafted.pth: .*{match}"):
        check_loaded_tensors({"pose_token": view}, "crafted.pth")


# --- bounded work --------------------------------------------------------------------------------

_MANY = 1_100_000  # elements: past the budget, a few MB of pickle


@pytest.mark.parametrize("opcode", ["SETITEMS", "APPENDS", "TUPLE", "EMPTY_DICT"])
def test_containers_built_by_any_opcode_count_against_the_budget(tmp_path, opcode):
    junk = {
        "SETITEMS": lambda: b"}(" + b"".join(int_opcodes(i) + b"N" for i in range(_MANY)) + b"u",
        "APPENDS": lambda: b"](" + b"N" * _MANY + b"e",
        "TUPLE": lambda: b"(" + b"N" * _MANY + b"t",
        "EMPTY_DICT": lambda: b"(" + b"}" * _MANY + b"l",
    }[opcode]()
    path = craft_pth(tmp_path / "filled.pth", raw_pickle=training_pickle(junk=junk))
    assert path.stat().st_size < 8 << 20
    assert_refused(read_checkpoint, path, CheckpointError, "more than .* elements")


@pytest.mark.parametrize("container", ["dict key", "set element"])
def test_keys_are_hashed_only_when_bounded(tmp_path, container):
    """Hashing a tuple of 2**60 leaves (60 shared levels) would never end."""
    nested = nested_shared_tuple_opcodes(60)
    junk = b"}" + nested + b"Ns" if container == "dict key" else b"\x8f(" + nested + b"\x90"
    path = craft_pth(tmp_path / "keys.pth", raw_pickle=training_pickle(junk=junk))
    assert_refused(read_checkpoint, path, CheckpointError, "refusing to unpickle: .*key")


@pytest.mark.parametrize("record", [
    lambda nested: (nested,),
    lambda nested: ("storage", nested, "0", "cpu", 1),
])
def test_messages_show_a_bounded_prefix(tmp_path, record):
    """str() of a list of 2**60 shared leaves, cut to 80 characters afterwards, never ends."""
    code = b"\x80\x02" + opcodes(record(nested_shared_list(60))) + b"Q."
    path = craft_pth(tmp_path / "message.pth", raw_pickle=code)
    assert_refused(read_checkpoint, path, CheckpointError, r"persistent id|storage .* of unknown type")


def test_model_string_search_examines_each_string_once(tmp_path):
    """20,000 references to one 16 MiB string that starts with blanks: stripping it for each
    reference took minutes; the file is harmless otherwise and must load in seconds."""
    blanks = " " * (16 << 20)
    junk = b"(" + opcodes(blanks) + b"q\xfa" + b"h\xfa" * 19_999 + b"l"
    path = craft_pth(tmp_path / "references.pth", raw_pickle=training_pickle(junk=junk))
    outcome = run_limited(read_checkpoint, path)
    assert outcome.errors == (), outcome
    assert outcome.seconds < MAX_SECONDS and 0 <= outcome.peak_bytes < 256 << 20, outcome


# --- .npz ------------------------------------------------------------------------------------------


def test_npz_member_aliasing_is_refused(tmp_path):
    """numpy loads a member named ``shapedirs`` before ``shapedirs.npy``: the small array is
    checked, while the other declares (and deflated, holds) 480 MiB."""
    path = tmp_path / "SMPLX_NEUTRAL.npz"
    np.savez(path, **synthetic_smplx_arrays(0))
    shape = (10475, 3, 2000)
    header = f"{{'descr': '<f8', 'fortran_order': False, 'shape': {shape}, }}".encode()
    header = b"\x93NUMPY\x01\x00" + len(header + b"\n").to_bytes(2, "little") + header + b"\n"
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        write_deflated_zeros(archive, "shapedirs", 8 * math.prod(shape), head=header)
    assert_refused(read_smplx_arrays, path, SmplxFileError, "'shapedirs.*read for one another")


# --- finite numbers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_weight_in_pth_is_refused(tmp_path, bad):
    path = tmp_path / "nan.pth"
    torch.save({"model": {"pose_token": torch.tensor([[[1.0, bad]]])}, "args": {"model": tiny_model_string()}}, path)
    assert_refused(read_checkpoint, path, CheckpointError, "'pose_token'.*(NaN|Inf)")


def test_non_finite_weight_in_converted_pair_is_refused(tmp_path):
    tensors = write_safetensors(tmp_path / "human3r.safetensors", {"pose_token": torch.tensor([[[0.0, math.inf]]])})
    write_header(tmp_path / "human3r.json", tensors)  # as a converter that checked nothing wrote it
    assert_refused(load_human3r, tensors, CheckpointError, "'pose_token'.*(NaN|Inf)")


def test_non_finite_smplx_array_is_refused(tmp_path):
    arrays = synthetic_smplx_arrays(0)
    arrays["v_template"][7, 1] = np.nan
    path = tmp_path / "SMPLX_NEUTRAL.npz"
    np.savez(path, **arrays)
    assert_refused(read_smplx_arrays, path, SmplxFileError, "'v_template'.*(NaN|Inf)")

"""Building hostile files by hand: ``torch.save``-like archives whose pickle declares what
``torch.save`` never would, and pickles assembled opcode by opcode."""

from __future__ import annotations

import collections
import io
import json
import pickle
import struct
import zipfile

import safetensors.torch
import torch
from ros_helpers import tiny_model_string

from h3r_ros.model import checkpoint

REBUILD = torch._utils._rebuild_tensor_v2


class Call:
    """Pickles as ``function(*args)``: what a malicious ``__reduce__`` does."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


class Storage:
    """Pickles as a torch storage record: ``numel`` float32 elements in record ``key``."""

    def __init__(self, key: str, numel: int):
        self.key, self.numel = key, numel


def tensor(storage, offset, size, stride):
    return Call(REBUILD, storage, offset, size, stride, False, collections.OrderedDict())


def pickled(obj) -> bytes:
    """``obj`` pickled the way torch.save does (protocol 2, storages as persistent ids)."""
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=2)
    pickler.persistent_id = lambda o: (
        ("storage", torch.FloatStorage, o.key, "cpu", o.numel) if isinstance(o, Storage) else None)
    pickler.dump(obj)
    return buffer.getvalue()


def opcodes(obj) -> bytes:
    """The opcodes that push ``obj`` (no protocol header, no STOP), to splice into a pickle."""
    return pickled(obj)[2:-1]


SMALL_RECORDS = {"byteorder": "little", "version": "3\n"}


def craft_pth(path, obj=None, records=None, raw_pickle: bytes | None = None, small_records=SMALL_RECORDS):
    """A torch.save-like archive whose data.pkl is ``obj`` pickled (or ``raw_pickle``), with
    ``small_records`` (name -> text) and storage ``records`` (key -> bytes)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", pickled(obj) if raw_pickle is None else raw_pickle)
        for name, text in small_records.items():
            archive.writestr(f"archive/{name}", text)
        for key, data in (records or {}).items():
            archive.writestr(f"archive/data/{key}", data)
    return path


def training(state_dict, model_string=None, **args):
    return {"model": state_dict, "args": {"model": model_string or tiny_model_string(), **args}}


def nested_shared_list(depth: int):
    level = ["x" * 8]
    for _ in range(depth):
        level = [level, level]  # pickled once per level (memo), rendered 2**depth times
    return level


def nested_shared_tuple_opcodes(depth: int) -> bytes:
    """Opcodes pushing ``t[depth]``, where ``t[0] = ('x',)`` and ``t[i+1] = (t[i], t[i])``:
    a few bytes per level, 2**depth leaves for whatever walks or hashes it."""
    code = b"X\x01\x00\x00\x00x\x85q\x000"  # BINUNICODE 'x', TUPLE1, BINPUT 0, POP
    for level in range(depth):  # BINGET, BINGET, TUPLE2, BINPUT, POP
        code += (b"h" + bytes([level])) * 2 + b"\x86q" + bytes([level + 1]) + b"0"
    return code + b"h" + bytes([depth])


def training_pickle(state_dict: dict[str, bytes] | None = None, junk: bytes | None = None) -> bytes:
    """A training checkpoint with the tiny model string, whose state dict maps each name to
    the object that ``state_dict``'s opcodes push, and whose top-level dict holds the object
    ``junk`` pushes under the key ``junk``."""
    code = b"\x80\x02}(" + opcodes("model") + b"}"
    for name, value in (state_dict or {}).items():
        code += opcodes(name) + value + b"s"
    code += opcodes("args") + opcodes({"model": tiny_model_string()})
    if junk is not None:
        code += opcodes("junk") + junk
    return code + b"u."


def write_safetensors(path, tensors):
    safetensors.torch.save_file(tensors, path, metadata={"format": checkpoint.FORMAT_NAME})
    return path


def write_header(path, tensors_path, **changes):
    header = {
        "format": checkpoint.FORMAT_NAME, "format_version": checkpoint.FORMAT_VERSION,
        "model_string": tiny_model_string(), "variant": None, "aliases": {},
        "source": {"name": "human3r.pth", "size": 1},
        "tensors": checkpoint._tensor_file_binding(tensors_path),
    } | changes
    path.write_text(json.dumps(header))
    return path


def int_opcodes(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)

"""Safe, strict loading of Human3R checkpoints.

A released ``human3r.pth`` is a ``torch.save`` pickle holding the state dict under ``model``
and the training configuration (an OmegaConf ``DictConfig``) under ``args``; the config's
``model`` field is the constructor string parsed by :mod:`.model_string`. Plain
``torch.load(weights_only=True)`` refuses the OmegaConf objects, and ``weights_only=False``
would execute whatever the pickle names. So ``.pth`` files are read with a restricted
unpickler: tensor-rebuild helpers and inert builtin containers are allowed, every other
global becomes an inert stub that records its pickled state, and calling a stub (what a
malicious ``__reduce__`` does) is refused. Nothing is imported on the file's behalf.

Before torch sees the file, a first pass over its pickle (no tensor data read) checks what
it declares, so a small file cannot make the loader allocate much: every storage must fit in
its record, every tensor view must lie inside its storage with positive strides, the views
together may address at most ``_MAX_REPEATED_BYTES`` more than the storages hold
(overlapping views repeat data: compact test checkpoints use them, released ones do not),
and the allow-listed callables have a budget of elements they may build (pickled calls over
shared objects grow exponentially).

``convert_checkpoint`` rewrites a ``.pth`` as ``<prefix>.safetensors`` (memory-mapped, no
pickle at all) plus ``<prefix>.json`` (model string, format version, and the size and
SHA-256 of the tensor file it belongs to); ``load_human3r`` prefers that pair when it
sits next to the ``.pth``.

Every failure of the public loading functions is a ``CheckpointError`` naming the file.
"""

from __future__ import annotations

import _compat_pickle
import collections
import functools
import hashlib
import json
import logging
import math
import os
import pickle
import shutil
import types
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from h3r_ros.model.config import Human3RConfig
from h3r_ros.model.human3r import Human3R
from h3r_ros.model.model_string import MODEL_CLASS, parse_model_string

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "UnsafePickleError",
    "check_state_dict",
    "convert_checkpoint",
    "converted_paths",
    "find_model_string",
    "load_human3r",
    "load_state_dict_strict",
    "read_checkpoint",
    "strip_module_prefix",
]

log = logging.getLogger(__name__)

FORMAT_NAME = "h3r_ros.human3r"
FORMAT_VERSION = 2  # 2: the header records the tensor file it belongs to
_MODULE_PREFIX = "module."
_LISTED = 8  # entries shown per category in a key-mismatch report
_MAX_PICKLE_BYTES = 64 * 2**20  # data.pkl of a real checkpoint is well under 1 MB
_MAX_BUILT_ELEMENTS = 1_000_000  # elements the allow-listed callables may build in one file
_MAX_REPEATED_BYTES = 2**30  # bytes overlapping views may address beyond their storages
_MAX_TENSOR_DIMS = 8
_MAX_TENSORS = 100_000
_MAX_HEADER_BYTES = 1 * 2**20  # converted-checkpoint .json
_MAX_SAFETENSORS_HEADER = 16 * 2**20  # tensor table of a safetensors file
_MAX_MODEL_STRING = 8192  # characters
_HASH_CHUNK = 16 * 2**20


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read, or does not match the model it describes."""


class UnsafePickleError(CheckpointError):
    """A checkpoint's pickle tries to call something outside the allow-list."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file does not exist."""


def _one_error(function):
    """Public loaders raise CheckpointError only, its text naming the file (first argument)."""

    @functools.wraps(function)
    def wrapper(path, *args, **kwargs):
        try:
            return function(path, *args, **kwargs)
        except CheckpointError as exc:
            if str(path) in str(exc):
                raise
            raise type(exc)(f"{path}: {exc}") from exc
        except FileNotFoundError as exc:
            raise CheckpointNotFoundError(f"{path}: checkpoint not found ({exc})") from exc
        except Exception as exc:  # noqa: BLE001 - a hostile file can provoke anything
            raise CheckpointError(f"{path}: cannot load: {type(exc).__name__}: {exc}") from exc

    return wrapper


# ---------------------------------------------------------------------------------------------
# Restricted unpickling


def _latin1_bytes(text: str, encoding: str) -> bytes:
    # Pickle protocol 2 (torch.save's default) stores bytes as _codecs.encode(text, 'latin1');
    # only that codec is honoured so no codec module is looked up on the file's behalf.
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise UnsafePickleError(f"refusing to unpickle: _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


_ATOMS = (str, bytes, int, float, bool, complex, type(None))


def _size_of(value: Any) -> int:
    """Elements a shallow copy of ``value`` builds (what a container constructor costs)."""
    if isinstance(value, _ATOMS):
        return len(value) if isinstance(value, (str, bytes)) else 1
    try:
        return len(value)
    except TypeError:
        raise UnsafePickleError(
            f"refusing to unpickle: constructor argument of type {type(value).__name__} has no length"
        ) from None


class _Budget:
    """Elements the allow-listed callables have built so far in one file: a pickle can call
    ``list(x)`` or ``_codecs.encode(s)`` over one shared object many times, so each call is
    charged the size of what it builds."""

    def __init__(self) -> None:
        self.used = 0

    def charge(self, n: int) -> None:
        self.used += n
        if self.used > _MAX_BUILT_ELEMENTS:
            raise UnsafePickleError(
                f"refusing to unpickle: the pickle builds more than {_MAX_BUILT_ELEMENTS} elements "
                "through constructor calls (amplification)"
            )


def _container(kind, budget: _Budget):
    def build(*args, **kwargs):
        budget.charge(sum(_size_of(a) for a in args) + len(kwargs))
        return kind(*args, **kwargs)

    return build


def _scalar(kind, budget: _Budget):
    """str/int/float/complex/bool of atoms only: str() of a container would render it
    (exponential for nested shared lists), int() of a huge text is quadratic."""

    def build(*args):
        for arg in args:
            if not isinstance(arg, _ATOMS):
                raise UnsafePickleError(
                    f"refusing to unpickle: {kind.__name__}() of a {type(arg).__name__}"
                )
        budget.charge(sum(_size_of(a) for a in args))
        return kind(*args)

    return build


def _allowed_globals(budget: _Budget, rebuild_tensor, rebuild_parameter) -> dict[tuple[str, str], Any]:
    """Globals that may be called while unpickling: rebuilding tensors, and building plain
    data within ``budget``."""
    containers = {("builtins", k.__name__): k for k in (dict, list, tuple, set, frozenset)}
    containers |= {("collections", "OrderedDict"): collections.OrderedDict, ("torch", "Size"): torch.Size}
    scalars = {("builtins", k.__name__): k for k in (str, int, float, bool, complex)}

    def encode(text, encoding="latin1"):
        budget.charge(_size_of(text))
        return _latin1_bytes(text, encoding)

    def defaultdict(factory=None, *args):
        # OmegaConf's resolver cache; only an allow-listed constructor may be its factory.
        if factory is not None and factory not in builders:
            raise UnsafePickleError(f"refusing to unpickle: defaultdict with factory {factory!r}")
        budget.charge(sum(_size_of(a) for a in args))
        return collections.defaultdict(factory, *args)

    plain = {key: _container(kind, budget) for key, kind in containers.items()}
    plain |= {key: _scalar(kind, budget) for key, kind in scalars.items()}
    builders = set(plain.values())
    return {
        ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
        ("collections", "defaultdict"): defaultdict,
        ("_codecs", "encode"): encode,
        ("builtins", "slice"): _scalar(slice, budget),
        **plain,
    }

# Top-level packages of the training configuration. Their classes become stubs that may
# also be "called" (e.g. enum members pickle as Class(value)): the call is only recorded.
_CONFIG_PACKAGES = frozenset({"omegaconf", "hydra", "typing"})


class _StubMeta(type):
    """Metaclass of the stand-ins: calling one records (config classes) or refuses."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls.config_class:
            return cls.__new__(cls, *args, **kwargs)
        raise UnsafePickleError(
            f"refusing to unpickle: the checkpoint calls {cls.global_name}, which is not allow-listed"
        )

    def __repr__(cls) -> str:
        return f"<stub {cls.global_name}>"


class PickledObject(metaclass=_StubMeta):
    """Inert record of an object whose class the loader neither imports nor runs.

    ``args``/``kwargs`` are the constructor arguments, ``state`` what BUILD passed
    (``__setstate__``), ``items``/``elements`` what SETITEMS/APPENDS added.
    """

    global_name = "?"
    config_class = False

    def __new__(cls, *args: Any, **kwargs: Any) -> PickledObject:
        obj = object.__new__(cls)
        obj.args, obj.kwargs, obj.state, obj.items, obj.elements = args, kwargs, None, {}, []
        return obj

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.elements.append(value)

    def extend(self, values: Any) -> None:
        self.elements.extend(values)

    def __repr__(self) -> str:
        return f"<pickled {self.global_name}>"


def _rebuild_parameter(data, requires_grad, backward_hooks):
    if backward_hooks:
        raise UnsafePickleError("refusing to unpickle: a parameter with backward hooks")
    return torch._utils._rebuild_parameter(data, requires_grad, collections.OrderedDict())


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stubs: dict[tuple[str, str], type] = {}
        self._allowed = _allowed_globals(_Budget(), torch._utils._rebuild_tensor_v2, _rebuild_parameter)

    def find_class(self, module: str, name: str) -> Any:
        # Python-2 era names (protocol <= 2 writes __builtin__, ...), as pickle itself maps them.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        allowed = self._allowed.get((module, name))
        if allowed is not None:
            return allowed
        key = (module, name)
        if key not in self._stubs:
            self._stubs[key] = _StubMeta(
                name,
                (PickledObject,),
                {
                    "global_name": f"{module}.{name}",
                    "config_class": module.partition(".")[0] in _CONFIG_PACKAGES,
                },
            )
        return self._stubs[key]


# torch.load(pickle_module=...) only needs Unpickler (and __name__, for its dill check).
_restricted_pickle = types.ModuleType("h3r_restricted_pickle")
_restricted_pickle.Unpickler = _RestrictedUnpickler


class _Storage:
    """What the first pass knows of a storage: its size in elements of its dtype."""

    def __init__(self, key: str, numel: int, itemsize: int) -> None:
        self.key, self.numel, self.itemsize = key, numel, itemsize


class _ScanUnpickler(_RestrictedUnpickler):
    """First pass: the same restricted unpickling, with storages replaced by their declared
    sizes (checked against the archive's records) and tensor rebuilds by bounds checks."""

    def __init__(self, file, records: dict[str, zipfile.ZipInfo]) -> None:
        super().__init__(file)
        self._records = records
        self._storages: dict[str, _Storage] = {}
        self.view_bytes = 0
        self._tensors = 0
        self._allowed = _allowed_globals(_Budget(), self._rebuild_tensor, lambda data, *_: data)

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name.endswith("Storage"):
            try:
                return torch.serialization.StorageType(name)
            except KeyError:
                pass
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointError(f"unexpected persistent id {str(pid)[:80]!r}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(key, str) or type(numel) is not int or numel < 0:
            raise CheckpointError(f"malformed storage record {str(pid)[:80]!r}")
        if storage_type is torch.UntypedStorage:
            itemsize = 1
        elif isinstance(storage_type, torch.serialization.StorageType):
            itemsize = torch._utils._element_size(storage_type.dtype)
        else:
            raise CheckpointError(f"storage {key!r} of unknown type {storage_type!r}")
        if key in self._storages:
            return self._storages[key]
        record = self._records.get(key)
        if record is None:
            raise CheckpointError(f"storage {key!r} has no record in the archive")
        if record.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(f"storage {key!r} is compressed (torch.save stores them uncompressed)")
        if numel * itemsize > record.file_size:
            raise CheckpointError(
                f"storage {key!r} declares {numel * itemsize} bytes but its record holds {record.file_size}"
            )
        self._storages[key] = storage = _Storage(key, numel, itemsize)
        return storage

    def _rebuild_tensor(self, storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
        if not isinstance(storage, _Storage):
            raise CheckpointError(f"tensor over a {type(storage).__name__}, not a storage")
        ints = (offset, *size, *stride) if isinstance(size, tuple) and isinstance(stride, tuple) else None
        if ints is None or not all(type(v) is int for v in ints) or len(size) != len(stride):
            raise CheckpointError(f"malformed tensor view over storage {storage.key!r}")
        if len(size) > _MAX_TENSOR_DIMS or offset < 0 or min(size, default=1) < 0:
            raise CheckpointError(f"tensor view over storage {storage.key!r} has shape {size}, offset {offset}")
        self._tensors += 1
        if self._tensors > _MAX_TENSORS:
            raise CheckpointError(f"more than {_MAX_TENSORS} tensors")
        numel = math.prod(size)
        if numel:
            if any(st < 1 for n, st in zip(size, stride) if n > 1):
                raise CheckpointError(
                    f"tensor view with shape {size} and strides {stride} over storage {storage.key!r}: "
                    "zero or negative strides are refused (they repeat data)"
                )
            extent = offset + sum((n - 1) * st for n, st in zip(size, stride)) + 1
            if extent > storage.numel:
                raise CheckpointError(
                    f"tensor view with shape {size}, strides {stride}, offset {offset} reaches element "
                    f"{extent} of storage {storage.key!r}, which holds {storage.numel}"
                )
        self.view_bytes += numel * storage.itemsize
        return storage

    def storage_bytes(self) -> int:
        return sum(s.numel * s.itemsize for s in self._storages.values())


def _scan_archive(path: Path, archive: zipfile.ZipFile, pickle_name: str) -> None:
    """The first pass (see the module docstring); raises CheckpointError."""
    prefix = pickle_name[: -len("data.pkl")]
    records = {
        info.filename[len(prefix) + len("data/"):]: info
        for info in archive.infolist()
        if info.filename.startswith(prefix + "data/")
    }
    info = archive.getinfo(pickle_name)
    if info.file_size > _MAX_PICKLE_BYTES:
        raise CheckpointError(f"{path}: data.pkl is {info.file_size} bytes (at most {_MAX_PICKLE_BYTES})")
    with archive.open(info) as stream:
        scanner = _ScanUnpickler(stream, records)
        try:
            scanner.load()
        except CheckpointError as exc:
            raise type(exc)(f"{path}: {exc}") from None
    if scanner.view_bytes > scanner.storage_bytes() + _MAX_REPEATED_BYTES:
        raise CheckpointError(
            f"{path}: its tensors address {scanner.view_bytes} bytes but its storages hold only "
            f"{scanner.storage_bytes()} (overlapping views repeating more than {_MAX_REPEATED_BYTES} bytes: "
            "amplification)"
        )


@_one_error
def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str | None]:
    """Read a ``torch.save`` checkpoint safely: ``(state_dict, model_string or None)``.

    Tensors are memory-mapped from the file. Accepts the training format (``{'model': sd,
    'args': cfg, ...}``) and bare state dicts.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"{path}: checkpoint not found")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if any(name.endswith("/constants.pkl") for name in names):
                # torch.load would hand TorchScript archives to torch.jit.load, which runs code.
                raise CheckpointError(f"{path}: is a TorchScript archive, not a checkpoint")
            pickles = [name for name in names if name.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise CheckpointError(
                    f"{path}: zip archive with {len(pickles)} data.pkl, not a torch.save checkpoint"
                )
            _scan_archive(path, archive, pickles[0])
    except (zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(
            f"{path}: not a readable torch.save archive ({exc}); the file is truncated, "
            "corrupt, or not a PyTorch checkpoint"
        ) from None

    try:
        obj = torch.load(
            path, map_location="cpu", pickle_module=_restricted_pickle, weights_only=False, mmap=True
        )
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{path}: {exc}") from None
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint: {type(exc).__name__}: {exc}") from exc

    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        rest = {key: value for key, value in obj.items() if key != "model"}
        state_dict, model_string = dict(obj["model"]), find_model_string(rest)
    elif isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state_dict, model_string = dict(obj), None
    else:
        raise CheckpointError(
            f"{path}: expected a dict with a 'model' state dict (or a bare state dict), "
            f"got {type(obj).__name__}"
        )
    bad = [key for key, value in state_dict.items() if not isinstance(value, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: state dict entries that are not tensors: {bad[:_LISTED]}")
    if model_string is not None and len(model_string) > _MAX_MODEL_STRING:
        raise CheckpointError(f"{path}: model string of {len(model_string)} characters (at most {_MAX_MODEL_STRING})")
    return state_dict, model_string


def find_model_string(obj: Any) -> str | None:
    """Find the ``ARCroco3DStereo(...)`` constructor string in unpickled config state.

    In a real checkpoint it sits at ``args._content['model']._val`` (an OmegaConf value
    node); rather than hard-coding that layout, every string reachable through containers
    and stub records is considered. A string found under a key named ``model`` wins.
    """
    found: dict[str, bool] = {}  # string -> seen under key 'model'
    seen: set[int] = set()
    stack: list[tuple[Any, str | None]] = [(obj, None)]
    while stack:
        node, label = stack.pop()
        if isinstance(node, str):
            if node.lstrip().startswith(MODEL_CLASS + "("):
                found[node] = found.get(node, False) or label == "model"
            continue
        if id(node) in seen:  # OmegaConf nodes point back at their parents
            continue
        seen.add(id(node))
        if isinstance(node, PickledObject):
            children = (node.args, node.kwargs, node.state, node.items, node.elements)
            stack.extend((child, label) for child in children)
        elif isinstance(node, Mapping):
            for key, value in node.items():
                # OmegaConf internals (_content, _val, ...) keep the user-level key as label.
                child_label = key if isinstance(key, str) and not key.startswith("_") else label
                stack.append((value, child_label))
        elif isinstance(node, (list, tuple, set, frozenset)):
            stack.extend((child, label) for child in node)

    preferred = [text for text, under_model in found.items() if under_model] or list(found)
    if len(preferred) > 1:
        raise CheckpointError(f"checkpoint holds {len(preferred)} different model strings: {preferred}")
    return preferred[0] if preferred else None


# ---------------------------------------------------------------------------------------------
# Strict state-dict loading


def strip_module_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a DistributedDataParallel ``module.`` prefix, only when every key carries it."""
    if state_dict and all(key.startswith(_MODULE_PREFIX) for key in state_dict):
        return {key[len(_MODULE_PREFIX):]: value for key, value in state_dict.items()}
    return dict(state_dict)


def check_state_dict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: Any = "state dict"
) -> None:
    """Raise one CheckpointError listing missing/unexpected keys and shape mismatches.

    Dtypes are not compared: load_state_dict casts into the model's parameters.
    """
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    mismatched = [
        f"{key}: checkpoint {list(state_dict[key].shape)} vs model {list(tensor.shape)}"
        for key, tensor in expected.items()
        if key in state_dict and state_dict[key].shape != tensor.shape
    ]
    if not (missing or unexpected or mismatched):
        return
    lines = [
        f"{source}: checkpoint does not match the model "
        f"({len(state_dict)} keys in the file, {len(expected)} in the model)"
    ]
    categories = (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched))
    for title, entries in categories:
        if entries:
            more = f" ... and {len(entries) - _LISTED} more" if len(entries) > _LISTED else ""
            lines.append(f"  {title} ({len(entries)}): " + ", ".join(entries[:_LISTED]) + more)
    if any(key.startswith(_MODULE_PREFIX) for key in unexpected):
        lines.append(
            f"  note: some but not all keys start with {_MODULE_PREFIX!r}; "
            "the prefix is only stripped when every key has it"
        )
    raise CheckpointError("\n".join(lines))


def load_state_dict_strict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: Any = "state dict", assign: bool = False
) -> None:
    """Strip a whole-file ``module.`` prefix, check keys and shapes, then load strictly
    (``assign``: take the given tensors instead of copying into the model's, e.g. for a
    model built on the meta device)."""
    state_dict = strip_module_prefix(state_dict)
    check_state_dict(model, state_dict, source)
    model.load_state_dict(state_dict, strict=True, assign=assign)


# ---------------------------------------------------------------------------------------------
# Converted (safetensors) checkpoints


def converted_paths(prefix: str | os.PathLike) -> tuple[Path, Path]:
    """``(<prefix>.safetensors, <prefix>.json)``."""
    prefix = Path(prefix)
    return prefix.with_name(prefix.name + ".safetensors"), prefix.with_name(prefix.name + ".json")


@_one_error
def convert_checkpoint(
    pth_path: str | os.PathLike,
    out_prefix: str | os.PathLike | None = None,
    variant: str | None = None,
    source_sha256: str | None = None,
) -> tuple[Path, Path]:
    """Rewrite a ``.pth`` as ``<out_prefix>.safetensors`` + ``<out_prefix>.json``.

    ``out_prefix`` defaults to the ``.pth`` path without its suffix, which is where
    ``load_human3r`` looks. The state dict is checked against the model it describes
    before anything is written. ``source_sha256`` (of the ``.pth``, when the caller
    verified it) is recorded in the header. Returns the two paths written.
    """
    pth_path = Path(pth_path)
    state_dict, model_string = read_checkpoint(pth_path)
    state_dict = strip_module_prefix(state_dict)
    cfg = _resolve_config(model_string, variant, pth_path)
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        check_state_dict(Human3R(cfg), state_dict, pth_path)

    tensors, aliases = _unshare(state_dict)
    if out_prefix is None:
        out_prefix = pth_path.with_suffix("")
    tensors_path, header_path = converted_paths(out_prefix)
    # Write to temporary names and rename: a half-written pair must never be picked up.
    tmp_tensors = tensors_path.with_name(tensors_path.name + ".tmp")
    tmp_header = header_path.with_name(header_path.name + ".tmp")
    try:
        tensors_path.parent.mkdir(parents=True, exist_ok=True)
        safetensors.torch.save_file(tensors, tmp_tensors, metadata={"format": FORMAT_NAME})
        shutil.copymode(pth_path, tmp_tensors)  # readable by whoever could read the .pth
        header = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "model_string": model_string,
            "variant": None if model_string else variant,
            "aliases": aliases,
            "source": {"name": pth_path.name, "size": pth_path.stat().st_size, "sha256": source_sha256},
            "tensors": _tensor_file_binding(tmp_tensors),
        }
        tmp_header.write_text(json.dumps(header, indent=1) + "\n")
        os.replace(tmp_tensors, tensors_path)
        os.replace(tmp_header, header_path)  # last: the header's presence marks a complete pair
    except Exception as exc:
        tmp_tensors.unlink(missing_ok=True)
        tmp_header.unlink(missing_ok=True)
        raise CheckpointError(f"cannot write {tensors_path} / {header_path}: {exc}") from exc
    return tensors_path, header_path


def _unshare(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors safetensors accepts (contiguous, no shared storage) plus an alias map.

    Keys that are the very same view of one storage (the DPT ``layer_rn.i`` /
    ``layer{i+1}_rn`` pairs) are stored once and recorded as ``alias -> stored key``;
    other storage sharing (views of one buffer) is resolved by copying.
    """
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    views: dict[tuple, str] = {}
    storages: set[int] = set()
    for key, tensor in state_dict.items():
        storage = tensor.untyped_storage().data_ptr()
        view = (storage, tensor.storage_offset(), tensor.shape, tensor.stride(), tensor.dtype)
        if view in views:
            aliases[key] = views[view]
            continue
        views[view] = key
        if not tensor.is_contiguous():
            tensor = tensor.contiguous()
        elif storage in storages:
            tensor = tensor.clone()
        storages.add(tensor.untyped_storage().data_ptr())
        tensors[key] = tensor
    return tensors, aliases


def _tensor_file_binding(tensors_path: Path) -> dict:
    """What ties a header to its tensor file: the file's size and SHA-256 (checked before its
    safetensors header is parsed, so a header from another conversion is never trusted)."""
    size = tensors_path.stat().st_size
    if size < 8:
        raise CheckpointError(f"{tensors_path}: too short for a safetensors file ({size} bytes)")
    digest = hashlib.sha256()
    with open(tensors_path, "rb") as stream:
        length = int.from_bytes(stream.read(8), "little")
        if length > _MAX_SAFETENSORS_HEADER or 8 + length > size:
            raise CheckpointError(
                f"{tensors_path}: safetensors header of {length} bytes in a {size}-byte file "
                f"(at most {_MAX_SAFETENSORS_HEADER})"
            )
        stream.seek(0)
        while chunk := stream.read(_HASH_CHUNK):
            digest.update(chunk)
    return {"size": size, "sha256": digest.hexdigest()}


def _read_converted(tensors_path: Path, header_path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    try:
        if header_path.stat().st_size > _MAX_HEADER_BYTES:
            raise CheckpointError(f"{header_path}: larger than {_MAX_HEADER_BYTES} bytes")
        header = json.loads(header_path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{header_path}: cannot read converted-checkpoint header: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{header_path}: not an h3r_ros converted-checkpoint header")
    if header.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{header_path}: format version {header.get('format_version')!r} is not supported "
            f"(expected {FORMAT_VERSION}); re-run python -m h3r_ros.model.convert"
        )
    if not tensors_path.is_file():
        raise CheckpointNotFoundError(f"{tensors_path}: tensor file of {header_path} not found")
    if header.get("tensors") != _tensor_file_binding(tensors_path):
        raise CheckpointError(
            f"{header_path} does not belong to {tensors_path} (the tensor file's size or SHA-256 "
            "differs from the one recorded at conversion); re-run python -m h3r_ros.model.convert"
        )
    model_string, aliases = header.get("model_string"), header.get("aliases", {})
    if model_string is not None and not (isinstance(model_string, str) and len(model_string) <= _MAX_MODEL_STRING):
        raise CheckpointError(f"{header_path}: model_string is not a string of at most {_MAX_MODEL_STRING} characters")
    if not (isinstance(aliases, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items())):
        raise CheckpointError(f"{header_path}: aliases must map names to names")
    try:
        state_dict = safetensors.torch.load_file(tensors_path)
    except Exception as exc:
        raise CheckpointError(f"{tensors_path}: cannot read safetensors file: {exc}") from exc
    for alias, key in aliases.items():
        if alias in state_dict:
            raise CheckpointError(f"{header_path}: alias {alias!r} would replace a stored tensor")
        if key not in state_dict or key in aliases:
            raise CheckpointError(f"{header_path}: alias {alias!r} refers to missing key {key!r}")
    for alias, key in aliases.items():
        state_dict[alias] = state_dict[key]
    return state_dict, header


# ---------------------------------------------------------------------------------------------
# Entry point


@_one_error
def load_human3r(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    variant: str | None = None,
) -> tuple[Human3R, Human3RConfig]:
    """Build Human3R from a checkpoint and load its weights strictly: ``(model, cfg)``.

    ``path`` is a ``.pth`` or a converted ``.safetensors``. For a ``.pth`` with a converted
    pair next to it (``<stem>.safetensors`` + ``<stem>.json``, from the same file size), the
    pair is used instead. The config comes from the checkpoint's model string; ``variant``
    (a name known to ``Human3RConfig.variant``) is used only when the file has none.
    The model is returned in eval mode on ``device`` with floating tensors in ``dtype``.
    """
    path = Path(path)
    tensors_path, header_path = converted_paths(path.with_suffix(""))
    if path.suffix == ".safetensors" or _converted_pair_matches(path, tensors_path, header_path):
        source = tensors_path
        state_dict, header = _read_converted(tensors_path, header_path)
        model_string = header.get("model_string")
        variant = variant or header.get("variant")
    else:
        source = path
        state_dict, model_string = read_checkpoint(path)

    cfg = _resolve_config(model_string, variant, source)
    # Every tensor comes from the file (the model has no non-persistent buffers), so build it
    # without allocating or initialising anything and take the file's (memory-mapped)
    # tensors as they are: no random init of ~1 B parameters, no second copy in memory.
    with torch.device("meta"):
        model = Human3R(cfg)
    load_state_dict_strict(model, state_dict, source, assign=True)
    model.to(device=device, dtype=dtype)
    model.eval()
    return model, cfg


def _converted_pair_matches(pth_path: Path, tensors_path: Path, header_path: Path) -> bool:
    """Whether a converted pair exists and was made from this ``.pth`` (when that exists)."""
    if not (tensors_path.is_file() and header_path.is_file()):
        return False
    if not pth_path.is_file():
        return True
    try:
        recorded = json.loads(header_path.read_text())["source"]["size"]
    except (OSError, ValueError, KeyError, TypeError):
        recorded = None
    if recorded != pth_path.stat().st_size:
        log.warning(
            "%s was not converted from %s (different file size); loading the .pth instead. "
            "Re-run python -m h3r_ros.model.convert to refresh it.", header_path, pth_path,
        )
        return False
    return True


def _resolve_config(model_string: str | None, variant: str | None, source: Any) -> Human3RConfig:
    if model_string is not None:
        if variant is not None:
            log.warning("%s: ignoring variant=%r: the file's model string defines the model", source, variant)
        if not isinstance(model_string, str) or len(model_string) > _MAX_MODEL_STRING:
            raise CheckpointError(f"{source}: model string is not a string of at most {_MAX_MODEL_STRING} characters")
        try:
            return Human3RConfig.from_kwargs(parse_model_string(model_string))
        except (ValueError, TypeError, OverflowError, IndexError, RecursionError, MemoryError) as exc:
            raise CheckpointError(f"{source}: bad model string: {type(exc).__name__}: {exc}") from None
    if variant is not None:
        try:
            return Human3RConfig.variant(variant)
        except ValueError as exc:
            raise CheckpointError(f"{source}: {exc}") from None
    raise CheckpointError(
        f"{source}: no ARCroco3DStereo(...) model string found in the checkpoint; "
        "pass variant=... (e.g. '896L') to choose the configuration"
    )

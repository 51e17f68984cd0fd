"""Restricted unpickling of ``torch.save`` checkpoints, and the first pass that bounds what
their pickle declares before torch reads it.

A released ``human3r.pth`` holds the training configuration as OmegaConf objects, which
``torch.load(weights_only=True)`` refuses, while ``weights_only=False`` would execute
whatever the pickle names. The restricted unpickler allows tensor-rebuild helpers and inert
builtin containers; every other global becomes an inert stub that records its pickled state,
and calling a stub (what a malicious ``__reduce__`` does) is refused. Nothing is imported on
the file's behalf.

The first pass (:func:`scan_archive`) unpickles the same way without reading tensor data, so
a small file cannot make the loader allocate much: every storage must fit in its record,
every tensor view must lie inside its storage with positive strides, the views together may
address at most ``_MAX_REPEATED_BYTES`` more than the storages hold (overlapping views repeat
data: compact test checkpoints use them, released ones do not), and the allow-listed
callables have a budget of elements they may build (pickled calls over shared objects grow
exponentially).
"""

from __future__ import annotations

import _compat_pickle
import collections
import math
import pickle
import types
import zipfile
from pathlib import Path
from typing import Any

import torch

from h3r_ros.model.checkpoint_errors import CheckpointError, UnsafePickleError

__all__ = ["PickledObject", "restricted_pickle", "scan_archive"]

_MAX_PICKLE_BYTES = 64 * 2**20  # data.pkl of a real checkpoint is well under 1 MB
_MAX_BUILT_ELEMENTS = 1_000_000  # elements the allow-listed callables may build in one file
_MAX_REPEATED_BYTES = 2**30  # bytes overlapping views may address beyond their storages
_MAX_TENSOR_DIMS = 8
_MAX_TENSORS = 100_000


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
restricted_pickle = types.ModuleType("h3r_restricted_pickle")
restricted_pickle.Unpickler = _RestrictedUnpickler


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


def scan_archive(path: Path, archive: zipfile.ZipFile, pickle_name: str) -> None:
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

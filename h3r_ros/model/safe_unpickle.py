"""Restricted unpickling of ``torch.save`` checkpoints, and the first pass that bounds what
their pickle declares before torch reads it.

A released ``human3r.pth`` holds the training configuration as OmegaConf objects, which
``torch.load(weights_only=True)`` refuses, while ``weights_only=False`` would execute
whatever the pickle names. The restricted unpickler allows tensor-rebuild helpers and inert
builtin containers; every other global becomes an inert stub that records its pickled state,
and calling a stub (what a malicious ``__reduce__`` does) is refused. Nothing is imported on
the file's behalf.

It is the pure-Python unpickler with each opcode guarded, so that its work is bounded and
nothing it built can be changed afterwards: every opcode and every element a constructor
call copies is charged to a budget (a few bytes of pickle must not become a large container,
nor a shared object many copies); dict keys and set elements are hashed only when small
(a tuple's hash is not cached, and one of shared tuples costs 2**depth); items are added only
to containers, and BUILD (``__setstate__``) applies only to config stubs and to the state
dict's ``_metadata``: on a tensor it would re-point it (``Tensor.set_``) after every check.

The first pass (:func:`scan_archive`) unpickles the same way without reading tensor data, so
a small file cannot make the loader allocate much: every storage must be exactly its record
(members checked by :mod:`.archive_policy`), every tensor view must lie inside its storage
with positive strides, and the views together may repeat at most
:data:`.tensor_checks.MAX_REPEATED_BYTES`.
"""

from __future__ import annotations

import _compat_pickle
import collections
import math
import pickle
import types
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from h3r_ros.model.archive_policy import TorchArchive
from h3r_ros.model.checkpoint_errors import CheckpointError, UnsafePickleError, preview, type_name
from h3r_ros.model.tensor_checks import MAX_REPEATED_BYTES, view_extent

__all__ = ["PickledObject", "restricted_pickle", "scan_archive"]

# Opcodes run plus elements copied by constructor calls, in one file; a real checkpoint's
# data.pkl (1631 tensors and the training config) runs well under 100,000 opcodes.
_MAX_BUILT_ELEMENTS = 1_000_000
_MAX_KEY_PARTS = 64  # atoms and tuples in one dict key or set element
_MAX_KEY_INT_BITS = 1024  # an int's hash is computed anew each time
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
            f"refusing to unpickle: constructor argument of type {type_name(value)} has no length"
        ) from None


def _check_key(key: Any) -> None:
    """Refuse a dict key or set element whose hash is unbounded work: only atoms, objects
    hashed by identity, and tuples of at most ``_MAX_KEY_PARTS`` parts in all."""
    todo, parts = [key], 0
    while todo:
        part = todo.pop()
        parts += 1
        if type(part) in (tuple, torch.Size):
            parts += len(part)
            if parts <= _MAX_KEY_PARTS:
                todo.extend(part)
        elif type(part) is int and part.bit_length() > _MAX_KEY_INT_BITS:
            parts = math.inf
        elif not (isinstance(part, _ATOMS) or type(part).__hash__ is object.__hash__):
            raise UnsafePickleError(
                f"refusing to unpickle: a dict key or set element of type {type_name(part)}"
            )
        if parts > _MAX_KEY_PARTS:
            raise UnsafePickleError(
                f"refusing to unpickle: a dict key or set element larger than {_MAX_KEY_PARTS} parts"
            )


def _check_keys_of(kind, args) -> None:
    """The keys a dict or set constructor would hash (mappings were checked when built)."""
    for arg in args:
        if isinstance(arg, Mapping):
            continue
        for item in arg:
            _check_key(item if kind in (set, frozenset) else item[0])


class _Budget:
    """Opcodes run and elements copied so far in one file: a pickle can call ``list(x)`` or
    ``_codecs.encode(s)`` over one shared object many times, so each call is charged the size
    of what it builds."""

    def __init__(self) -> None:
        self.used = 0

    def charge(self, n: int) -> None:
        self.used += n
        if self.used > _MAX_BUILT_ELEMENTS:
            raise UnsafePickleError(
                f"refusing to unpickle: the pickle builds more than {_MAX_BUILT_ELEMENTS} elements "
                "(amplification)"
            )


_HASHING = (dict, set, frozenset, collections.OrderedDict)


def _container(kind, budget: _Budget):
    def build(*args, **kwargs):
        budget.charge(sum(_size_of(a) for a in args) + len(kwargs))
        if kind in _HASHING:
            _check_keys_of(kind, args)
        return kind(*args, **kwargs)

    return build


def _scalar(kind, budget: _Budget):
    """str/int/float/complex/bool of atoms only: str() of a container would render it
    (exponential for nested shared lists), int() of a huge text is quadratic."""

    def build(*args):
        for arg in args:
            if not isinstance(arg, _ATOMS):
                raise UnsafePickleError(
                    f"refusing to unpickle: {kind.__name__}() of a {type_name(arg)}"
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
        if factory is not None and not any(factory is builder for builder in builders):
            raise UnsafePickleError(f"refusing to unpickle: defaultdict with factory {preview(factory)}")
        budget.charge(sum(_size_of(a) for a in args))
        _check_keys_of(dict, args)
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


def _guard(handler, check=None):
    """``handler`` charged one element of the budget, after ``check`` passed."""

    def guarded(unpickler: _RestrictedUnpickler) -> None:
        unpickler.budget.charge(1)
        if check is not None:
            check(unpickler)
        handler(unpickler)

    return guarded


def _refuse_target(target: Any, kinds: tuple[type, ...], opcode: str) -> None:
    if not isinstance(target, kinds):
        raise UnsafePickleError(f"refusing to unpickle: {opcode} on a {type_name(target)}")


def _marked_target(unpickler) -> Any:
    """The object under the MARK (what SETITEMS, APPENDS and ADDITEMS fill)."""
    return unpickler.metastack[-1][-1] if unpickler.metastack and unpickler.metastack[-1] else None


def _check_setitem(unpickler) -> None:
    _refuse_target(unpickler.stack[-3], (dict, PickledObject), "SETITEM")
    _check_key(unpickler.stack[-2])


def _check_setitems(unpickler) -> None:
    _refuse_target(_marked_target(unpickler), (dict, PickledObject), "SETITEMS")
    for key in unpickler.stack[::2]:
        _check_key(key)


def _check_dict(unpickler) -> None:
    for key in unpickler.stack[::2]:
        _check_key(key)


def _check_append(unpickler) -> None:
    _refuse_target(unpickler.stack[-2], (list, PickledObject), "APPEND")


def _check_appends(unpickler) -> None:
    _refuse_target(_marked_target(unpickler), (list, PickledObject), "APPENDS")


def _check_set_elements(unpickler) -> None:
    for element in unpickler.stack:
        _check_key(element)


def _check_additems(unpickler) -> None:
    _refuse_target(_marked_target(unpickler), (set,), "ADDITEMS")
    _check_set_elements(unpickler)


def _check_build(unpickler) -> None:
    """BUILD sets state on config stubs (which record it) and the state dict's ``_metadata``
    only: on a tensor, ``__setstate__`` re-points it after every check."""
    target, state = unpickler.stack[-2], unpickler.stack[-1]
    if isinstance(target, PickledObject):
        return
    if type(target) is collections.OrderedDict and type(state) is dict and all(k == "_metadata" for k in state):
        return
    raise UnsafePickleError(f"refusing to unpickle: BUILD (__setstate__) on a {type_name(target)}")


_CHECKS = {
    pickle.SETITEM: _check_setitem,
    pickle.SETITEMS: _check_setitems,
    pickle.DICT: _check_dict,
    pickle.APPEND: _check_append,
    pickle.APPENDS: _check_appends,
    pickle.ADDITEMS: _check_additems,
    pickle.FROZENSET: _check_set_elements,
    pickle.BUILD: _check_build,
}


class _RestrictedUnpickler(pickle._Unpickler):
    dispatch = {
        code: _guard(handler, _CHECKS.get(bytes([code]))) for code, handler in pickle._Unpickler.dispatch.items()
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stubs: dict[tuple[str, str], type] = {}
        self.budget = _Budget()
        self._allowed = _allowed_globals(self.budget, torch._utils._rebuild_tensor_v2, _rebuild_parameter)

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


@dataclass(frozen=True)
class _Storage:
    """What the first pass knows of a storage (immutable: the pickle must not change it)."""

    key: str
    numel: int
    itemsize: int


class _ScanUnpickler(_RestrictedUnpickler):
    """First pass: the same restricted unpickling, with storages replaced by their declared
    sizes (checked against the archive's records) and tensor rebuilds by bounds checks."""

    def __init__(self, file, records: dict[str, zipfile.ZipInfo]) -> None:
        super().__init__(file)
        self._records = records
        self.storages: dict[str, _Storage] = {}
        self.view_bytes = 0
        self._tensors = 0
        self._allowed = _allowed_globals(self.budget, self._rebuild_tensor, lambda data, *_: data)

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name.endswith("Storage"):
            try:
                return torch.serialization.StorageType(name)
            except KeyError:
                pass
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> _Storage:
        if not (type(pid) is tuple and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointError(f"unexpected persistent id {preview(pid)}")
        _, storage_type, key, _location, numel = pid
        if type(key) is not str or type(numel) is not int or numel < 0:
            raise CheckpointError(f"malformed storage record {preview(pid)}")
        if storage_type is torch.UntypedStorage:
            itemsize = 1
        elif isinstance(storage_type, torch.serialization.StorageType):
            itemsize = torch._utils._element_size(storage_type.dtype)
        else:
            raise CheckpointError(f"storage {preview(key)} of unknown type {preview(storage_type)}")
        storage = _Storage(key, numel, itemsize)
        if key in self.storages:
            # torch.load re-reads a key whose storage is empty: each declaration must agree.
            if self.storages[key] != storage:
                raise CheckpointError(f"storage {preview(key)} is declared twice with different sizes")
            return storage
        record = self._records.get(key)
        if record is None:
            raise CheckpointError(f"storage {preview(key)} has no record in the archive")
        if numel * itemsize != record.file_size:
            raise CheckpointError(
                f"storage record {preview(record.orig_filename)} holds {record.file_size} bytes, "
                f"but data.pkl declares {numel * itemsize} bytes"
            )
        self.storages[key] = storage
        return storage

    def _rebuild_tensor(self, storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
        if not isinstance(storage, _Storage):
            raise CheckpointError(f"tensor over a {type_name(storage)}, not a storage")
        ints = (offset, *size, *stride) if type(size) is tuple and type(stride) is tuple else None
        if ints is None or not all(type(v) is int for v in ints) or len(size) != len(stride):
            raise CheckpointError(f"malformed tensor view over storage {preview(storage.key)}")
        if len(size) > _MAX_TENSOR_DIMS or offset < 0 or min(size, default=1) < 0:
            raise CheckpointError(
                f"tensor view over storage {preview(storage.key)} has shape {preview(size)}, offset {offset}"
            )
        self._tensors += 1
        if self._tensors > _MAX_TENSORS:
            raise CheckpointError(f"more than {_MAX_TENSORS} tensors")
        try:
            extent = view_extent(size, stride, offset)
        except ValueError as exc:
            raise CheckpointError(f"tensor view over storage {preview(storage.key)}: {exc}") from None
        if extent > storage.numel:
            raise CheckpointError(
                f"tensor view with shape {size}, strides {stride}, offset {offset} reaches element "
                f"{extent} of storage {preview(storage.key)}, which holds {storage.numel}"
            )
        self.view_bytes += math.prod(size) * storage.itemsize
        return storage


def scan_archive(path: Path, archive: zipfile.ZipFile, members: TorchArchive) -> None:
    """The first pass (see the module docstring); raises CheckpointError."""
    with archive.open(members.pickle) as stream:
        scanner = _ScanUnpickler(stream, members.storages)
        try:
            scanner.load()
        except CheckpointError as exc:
            raise type(exc)(f"{path}: {exc}") from None
    unused = members.storages.keys() - scanner.storages.keys()
    if unused:
        raise CheckpointError(f"{path}: storage records that data.pkl does not use: {preview(sorted(unused))}")
    held = sum(s.numel * s.itemsize for s in scanner.storages.values())
    if scanner.view_bytes > held + MAX_REPEATED_BYTES:
        raise CheckpointError(
            f"{path}: its tensors address {scanner.view_bytes} bytes but its storages hold only "
            f"{held} (overlapping views repeating more than {MAX_REPEATED_BYTES} bytes: amplification)"
        )

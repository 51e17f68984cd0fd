"""Reading Human3R checkpoints and loading them strictly into the model.

A released ``human3r.pth`` is a ``torch.save`` pickle holding the state dict under ``model``
and the training configuration (an OmegaConf ``DictConfig``) under ``args``; the config's
``model`` field is the constructor string parsed by :mod:`.model_string`. ``.pth`` files are
read through :mod:`.safe_unpickle` (restricted unpickler, after a first pass that bounds what
the pickle declares). ``convert_checkpoint`` rewrites a ``.pth`` in the format of
:mod:`.converted` (``<prefix>.safetensors`` + ``<prefix>.json``, no pickle), and
``load_human3r`` prefers that pair when it sits next to the ``.pth``. The archive must pass
:mod:`.archive_policy`; every loaded tensor is checked again (:mod:`.tensor_checks`: views
within their storages, finite values), and every state dict key by key and shape by shape
against the model before it is loaded.

Every failure of the public loading functions is a ``CheckpointError`` naming the file.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from h3r_ros.model.archive_policy import ArchiveError, torch_archive
from h3r_ros.model.checkpoint_errors import CheckpointError, CheckpointNotFoundError, UnsafePickleError, preview
from h3r_ros.model.config import Human3RConfig
from h3r_ros.model.converted import (
    FORMAT_NAME,
    FORMAT_VERSION,
    converted_paths,
    made_from,
    read_converted,
    write_converted,
)
# Hostile-file tests build sidecars with it, under this name.
from h3r_ros.model.converted import tensor_file_binding as _tensor_file_binding  # noqa: F401
from h3r_ros.model.human3r import Human3R
from h3r_ros.model.model_string import MODEL_CLASS, parse_model_string
from h3r_ros.model.safe_unpickle import PickledObject, restricted_pickle, scan_archive
from h3r_ros.model.tensor_checks import check_finite, check_loaded_tensors

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "CheckpointError",
    "CheckpointNotFoundError",
    "PickledObject",
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

_MODULE_PREFIX = "module."
_LISTED = 8  # entries shown per category in a key-mismatch report
_MAX_KEY_SHOWN = 200  # characters of a key from the file in a message
_MAX_MODEL_STRING = 8192  # characters
_MODEL_STRING_START = re.compile(r"\s*" + re.escape(MODEL_CLASS) + r"\(")


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
# Reading .pth files


@_one_error
def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str | None]:
    """Read a ``torch.save`` checkpoint safely: ``(state_dict, model_string or None)``.

    Tensors are memory-mapped from the file, and checked (views, finite values) before
    they are returned. Accepts the training format (``{'model': sd, 'args': cfg, ...}``) and
    bare state dicts.
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
            scan_archive(path, archive, torch_archive(archive, path.stat().st_size))
    except ArchiveError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except (zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(
            f"{path}: not a readable torch.save archive ({exc}); the file is truncated, "
            "corrupt, or not a PyTorch checkpoint"
        ) from None

    try:
        obj = torch.load(
            path, map_location="cpu", pickle_module=restricted_pickle, weights_only=False, mmap=True
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
    bad = [key for key, value in state_dict.items() if not (type(key) is str and isinstance(value, torch.Tensor))]
    if bad:
        raise CheckpointError(f"{path}: state dict entries that are not tensors under names: {preview(bad[:_LISTED])}")
    if model_string is not None and len(model_string) > _MAX_MODEL_STRING:
        raise CheckpointError(f"{path}: model string of {len(model_string)} characters (at most {_MAX_MODEL_STRING})")
    check_loaded_tensors(state_dict, path)
    check_finite(state_dict, path)
    return state_dict, model_string


def find_model_string(obj: Any) -> str | None:
    """Find the ``ARCroco3DStereo(...)`` constructor string in unpickled config state.

    In a real checkpoint it sits at ``args._content['model']._val`` (an OmegaConf value
    node); rather than hard-coding that layout, every string reachable through containers
    and stub records is considered. A string found under a key named ``model`` wins.
    """
    found: dict[str, bool] = {}  # string -> seen under key 'model'
    # Every object is examined once, strings too: a file may refer to one 16 MiB string
    # 20,000 times.
    seen: set[int] = set()
    stack: list[tuple[Any, str | None]] = [(obj, None)]
    while stack:
        node, label = stack.pop()
        if id(node) in seen:  # OmegaConf nodes point back at their parents
            if label == "model" and isinstance(node, str) and node in found:
                found[node] = True
            continue
        seen.add(id(node))
        if isinstance(node, str):
            if _MODEL_STRING_START.match(node):
                found[node] = found.get(node, False) or label == "model"
        elif isinstance(node, PickledObject):
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
        raise CheckpointError(f"checkpoint holds {len(preferred)} different model strings: {preview(preferred)}")
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
    unexpected = [_shown(key) for key in state_dict if key not in expected]
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


def _shown(key: str) -> str:
    """A key from the file, cut to a length a message can show."""
    return key if len(key) <= _MAX_KEY_SHOWN else key[:_MAX_KEY_SHOWN] + "..."


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
# Conversion


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
    before anything is written. The header records the ``.pth``'s SHA-256:
    ``source_sha256`` when the caller verified it, otherwise computed here. Returns the two
    paths written.
    """
    pth_path = Path(pth_path)
    state_dict, model_string = read_checkpoint(pth_path)
    state_dict = strip_module_prefix(state_dict)
    cfg = _resolve_config(model_string, variant, pth_path)
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        check_state_dict(Human3R(cfg), state_dict, pth_path)
    if out_prefix is None:
        out_prefix = pth_path.with_suffix("")
    return write_converted(Path(out_prefix), state_dict, model_string, variant, pth_path, source_sha256)


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
    pair next to it (``<stem>.safetensors`` + ``<stem>.json``), the pair is used instead when
    its header records this file's SHA-256 (or when the ``.pth`` is gone); a pair made from
    other content is written again from the ``.pth``. The config comes from the checkpoint's
    model string; ``variant`` (a name known to ``Human3RConfig.variant``) is used only when
    the file has none. The model is returned in eval mode on ``device`` with floating
    tensors in ``dtype``.
    """
    path = Path(path)
    prefix = path.with_suffix("")
    tensors_path, header_path = converted_paths(prefix)
    paired = path.suffix == ".safetensors" or (tensors_path.is_file() and header_path.is_file())
    stale = paired and path.suffix != ".safetensors" and path.is_file() and not made_from(header_path, path)
    if paired and not stale:
        source = tensors_path
        state_dict, header = read_converted(tensors_path, header_path)
        model_string = header.get("model_string")
        variant = variant or header.get("variant")
    else:
        if stale:
            log.warning("%s was converted from other content than %s; converting again", header_path, path)
        source = path
        state_dict, model_string = read_checkpoint(path)

    cfg = _resolve_config(model_string, variant, source)
    # Every tensor comes from the file (the model has no non-persistent buffers), so build it
    # without allocating or initialising anything and take the file's (memory-mapped)
    # tensors as they are: no random init of ~1 B parameters, no second copy in memory.
    with torch.device("meta"):
        model = Human3R(cfg)
    load_state_dict_strict(model, state_dict, source, assign=True)
    if stale:
        try:
            write_converted(prefix, strip_module_prefix(state_dict), model_string, variant, path, None)
        except CheckpointError as exc:
            log.warning("%s; loaded %s itself", exc, path)
    model.to(device=device, dtype=dtype)
    model.eval()
    return model, cfg


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

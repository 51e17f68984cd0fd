"""The converted checkpoint format: writing and reading a ``<prefix>.safetensors`` +
``<prefix>.json`` pair.

The ``.safetensors`` file holds the tensors (memory-mapped on load, no pickle at all); the
``.json`` sidecar holds the model string, the format version, aliases for tensors stored
once, the source ``.pth`` it was converted from, and the size and SHA-256 of the tensor file
it belongs to. Whether a pair may stand in for a given ``.pth`` is also decided here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import safetensors.torch
import torch

from h3r_ros.model.checkpoint_errors import CheckpointError, CheckpointNotFoundError

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "converted_paths",
    "pair_matches",
    "read_converted",
    "tensor_file_binding",
    "write_converted",
]

log = logging.getLogger(__name__)

FORMAT_NAME = "h3r_ros.human3r"
FORMAT_VERSION = 2  # 2: the header records the tensor file it belongs to
_MAX_HEADER_BYTES = 1 * 2**20  # converted-checkpoint .json
_MAX_SAFETENSORS_HEADER = 16 * 2**20  # tensor table of a safetensors file
_HASH_CHUNK = 16 * 2**20


def converted_paths(prefix: str | os.PathLike) -> tuple[Path, Path]:
    """``(<prefix>.safetensors, <prefix>.json)``."""
    prefix = Path(prefix)
    return prefix.with_name(prefix.name + ".safetensors"), prefix.with_name(prefix.name + ".json")


def write_converted(
    prefix: Path,
    state_dict: Mapping[str, torch.Tensor],
    model_string: str | None,
    variant: str | None,
    source: Path,
    source_sha256: str | None,
) -> tuple[Path, Path]:
    """Write ``state_dict`` (already checked against its model) as the pair at ``prefix``,
    converted from ``source``; returns the two paths written."""
    tensors, aliases = _unshare(state_dict)
    tensors_path, header_path = converted_paths(prefix)
    # Write to temporary names and rename: a half-written pair must never be picked up.
    tmp_tensors = tensors_path.with_name(tensors_path.name + ".tmp")
    tmp_header = header_path.with_name(header_path.name + ".tmp")
    try:
        tensors_path.parent.mkdir(parents=True, exist_ok=True)
        safetensors.torch.save_file(tensors, tmp_tensors, metadata={"format": FORMAT_NAME})
        shutil.copymode(source, tmp_tensors)  # readable by whoever could read the .pth
        header = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "model_string": model_string,
            "variant": None if model_string else variant,
            "aliases": aliases,
            "source": {"name": source.name, "size": source.stat().st_size, "sha256": source_sha256},
            "tensors": tensor_file_binding(tmp_tensors),
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


def tensor_file_binding(tensors_path: Path) -> dict:
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


def read_converted(tensors_path: Path, header_path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The pair's state dict (aliases restored) and its header, after checking that the
    header is ours and belongs to this tensor file."""
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
    if header.get("tensors") != tensor_file_binding(tensors_path):
        raise CheckpointError(
            f"{header_path} does not belong to {tensors_path} (the tensor file's size or SHA-256 "
            "differs from the one recorded at conversion); re-run python -m h3r_ros.model.convert"
        )
    aliases = header.get("aliases", {})
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


def pair_matches(pth_path: Path, tensors_path: Path, header_path: Path) -> bool:
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

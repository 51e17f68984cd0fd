"""The converted checkpoint format: writing and reading a ``<prefix>.safetensors`` +
``<prefix>.json`` pair.

The ``.safetensors`` file holds the tensors (memory-mapped on load, no pickle at all); the
``.json`` sidecar holds the model string, the format version, aliases for tensors stored
once, the size and SHA-256 of the tensor file it belongs to, the SHA-256 of the source
``.pth`` it was converted from (each with the stamp it was hashed at: size, mtime and ctime,
so that an unchanged file is not hashed again on every configure), and ``finite``: that every floating tensor was checked for
NaN and Inf (a pair from an older converter lacks it, and is checked when first read).
Whether a pair may stand in for a given ``.pth`` (it was made from that file's content) is
also decided here.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import safetensors.torch
import torch

from h3r_ros.model.checkpoint_errors import CheckpointError, CheckpointNotFoundError
from h3r_ros.model.tensor_checks import check_finite

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "converted_paths",
    "made_from",
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
_HASHES_CACHED = 8  # source files whose SHA-256 one process remembers


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
    """Write ``state_dict`` (already checked against its model, and finite) as the pair at
    ``prefix``, converted from ``source`` (whose SHA-256 is computed unless the caller
    verified it); returns the two paths written."""
    tensors, aliases = _unshare(state_dict)
    tensors_path, header_path = converted_paths(prefix)
    # Write to temporary names and rename: a half-written pair must never be picked up.
    tmp_tensors = tensors_path.with_name(tensors_path.name + ".tmp")
    tmp_header = header_path.with_name(header_path.name + ".tmp")
    try:
        recorded_source = _source_record(source, source_sha256)
        tensors_path.parent.mkdir(parents=True, exist_ok=True)
        safetensors.torch.save_file(tensors, tmp_tensors, metadata={"format": FORMAT_NAME})
        shutil.copymode(source, tmp_tensors)  # readable by whoever could read the .pth
        binding = tensor_file_binding(tmp_tensors)
        os.replace(tmp_tensors, tensors_path)
        # The stamp after the rename (which sets ctime): the next read of an unchanged pair needs no hash.
        binding.update(_stamp(tensors_path.stat()))
        header = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "model_string": model_string,
            "variant": None if model_string else variant,
            "aliases": aliases,
            "source": recorded_source,
            "tensors": binding,
            "finite": True,
        }
        tmp_header.write_text(_header_text(header))
        os.replace(tmp_header, header_path)  # last: the header's presence marks a complete pair
    except Exception as exc:
        tmp_tensors.unlink(missing_ok=True)
        tmp_header.unlink(missing_ok=True)
        raise CheckpointError(f"cannot write {tensors_path} / {header_path}: {exc}") from exc
    return tensors_path, header_path


def _header_text(header: dict) -> str:
    return json.dumps(header, indent=1) + "\n"


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
    size = _checked_size(tensors_path)
    return {"size": size, "sha256": _sha256_file(tensors_path)}


def _belongs(tensors_path: Path, header: dict, header_path: Path) -> bool:
    """Whether ``header`` was written for this tensor file: its recorded size and SHA-256, the
    hash spared while the file keeps the stamp recorded with it (the new stamp is recorded
    after a hash that matches, as for the source)."""
    recorded = header.get("tensors")
    if not isinstance(recorded, dict) or recorded.get("size") != _checked_size(tensors_path):
        return False
    stat = tensors_path.stat()
    stamp = _stamp(stat)
    if all(recorded.get(key) == value for key, value in stamp.items()):
        return True
    if _cached_sha256(str(tensors_path.resolve()), **stamp) != recorded.get("sha256"):
        return False
    recorded.update(stamp)
    _rewrite_header(header_path, header)
    return True


def _checked_size(tensors_path: Path) -> int:
    """The tensor file's size, once its safetensors header length fits in it."""
    size = tensors_path.stat().st_size
    if size < 8:
        raise CheckpointError(f"{tensors_path}: too short for a safetensors file ({size} bytes)")
    with open(tensors_path, "rb") as stream:
        length = int.from_bytes(stream.read(8), "little")
    if length > _MAX_SAFETENSORS_HEADER or 8 + length > size:
        raise CheckpointError(
            f"{tensors_path}: safetensors header of {length} bytes in a {size}-byte file "
            f"(at most {_MAX_SAFETENSORS_HEADER})"
        )
    return size


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _stamp(stat: os.stat_result) -> dict[str, int]:
    """What shows that a file is unchanged since it was hashed. ctime as well as mtime:
    copying or unpacking (cp -p, tar, rsync) carries a file's mtime over, but the kernel
    sets ctime on every change, and no tool can set it back."""
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns}


@functools.lru_cache(maxsize=_HASHES_CACHED)
def _cached_sha256(resolved: str, size: int, mtime_ns: int, ctime_ns: int) -> str:
    """SHA-256 of a file, hashed once per (path, stamp) in this process: a released
    checkpoint is 3.4 GB, and every configure asks whether its converted pair still fits."""
    return _sha256_file(Path(resolved))


def _source_sha256(path: Path, stat: os.stat_result) -> str:
    return _cached_sha256(str(path.resolve()), **_stamp(stat))


def _source_record(source: Path, sha256: str | None) -> dict:
    """The header's ``source``: its SHA-256, which a pair is matched by, and the stamp it was
    hashed at, which spares the hash while the file stays as it was."""
    stat = source.stat()  # before hashing: a change while converting shows as a new stamp
    return {"name": source.name, **_stamp(stat), "sha256": sha256 or _source_sha256(source, stat)}


def _read_header(header_path: Path) -> dict:
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
    return header


def read_converted(tensors_path: Path, header_path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The pair's state dict (aliases restored) and its header, after checking that the
    header is ours and belongs to this tensor file."""
    header = _read_header(header_path)
    if not tensors_path.is_file():
        raise CheckpointNotFoundError(f"{tensors_path}: tensor file of {header_path} not found")
    if not _belongs(tensors_path, header, header_path):
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
    if header.get("finite") is not True:
        check_finite(state_dict, tensors_path)
        header["finite"] = True
        _rewrite_header(header_path, header)
    for alias, key in aliases.items():
        if alias in state_dict:
            raise CheckpointError(f"{header_path}: alias {alias!r} would replace a stored tensor")
        if key not in state_dict or key in aliases:
            raise CheckpointError(f"{header_path}: alias {alias!r} refers to missing key {key!r}")
    for alias, key in aliases.items():
        state_dict[alias] = state_dict[key]
    return state_dict, header


def made_from(header_path: Path, pth_path: Path) -> bool:
    """Whether the pair's header records ``pth_path``'s SHA-256 as its source. The file is
    hashed only when its stamp differs from the recorded one, and the new stamp is then
    recorded so that later processes need not hash it again."""
    try:
        header = _read_header(header_path)
        source = header["source"]
        sha256 = source["sha256"]
    except (CheckpointError, KeyError, TypeError):
        return False
    stat = pth_path.stat()
    stamp = _stamp(stat)
    if not isinstance(sha256, str) or source.get("size") != stat.st_size:
        return False
    if all(source.get(key) == value for key, value in stamp.items()):
        return True
    if _source_sha256(pth_path, stat) != sha256:
        return False
    source.update(stamp)
    _rewrite_header(header_path, header)
    return True


def _rewrite_header(header_path: Path, header: dict) -> None:
    """Replace the header atomically under a name of its own (processes may race); one that
    cannot be rewritten (a read-only folder) only costs a hash per process."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=header_path.name + ".", suffix=".tmp", dir=header_path.parent)
    except OSError as exc:
        log.debug("cannot rewrite %s: %s", header_path, exc)
        return
    try:
        with os.fdopen(fd, "w") as stream:
            stream.write(_header_text(header))
        shutil.copymode(header_path, tmp)
        os.replace(tmp, header_path)
    except OSError as exc:
        os.unlink(tmp)
        log.debug("cannot rewrite %s: %s", header_path, exc)

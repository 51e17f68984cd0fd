"""The one policy for the zip archives this package reads: ``torch.save`` checkpoints
(``.pth``) and SMPL-X models (``.npz``). It is decided from the central directory, before any
member is read.

* Every member is listed once. A name that repeats, carries a NUL byte (Python's zipfile cuts
  names there, other readers do not), or that a reader could take for another one (torch's
  zip reader matches names ignoring case; numpy loads ``x`` for the key of ``x.npy``) refuses
  the file: otherwise a check could describe other bytes than the ones that load.
* Every member's uncompressed size is bounded by what the member is, and a stored member's
  size is its size in the file. A checkpoint's members are all stored (``torch.save`` never
  compresses): a small record (``version``, ``byteorder``, ...) holds a few bytes, ``data.pkl``
  at most ``MAX_PICKLE_BYTES``, a storage record exactly what the pickle declares (checked by
  the pickle's first pass). An ``.npz`` member is ``<array>.npy``, stored or deflated
  (``numpy.savez_compressed``), and holds exactly its ``.npy`` header and the array that
  header declares.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass

from h3r_ros.model.checkpoint_errors import preview

__all__ = [
    "MAX_PICKLE_BYTES",
    "ArchiveError",
    "TorchArchive",
    "check_npy_member",
    "npz_members",
    "torch_archive",
]

MAX_PICKLE_BYTES = 64 * 2**20  # data.pkl of a real checkpoint is well under 1 MB
# The records torch.save writes besides data.pkl and the storages, with the most bytes each
# may hold (torch.load reads them whole): "little", "3\n", "1", "64", a 40-digit id.
_SMALL_RECORDS = {
    "byteorder": 8,
    "version": 8,
    ".data/version": 8,
    ".format_version": 8,
    ".storage_alignment": 8,
    ".data/serialization_id": 64,
}
_STORAGES = "data/"


class ArchiveError(ValueError):
    """An archive breaks the policy; the text names the member, the caller adds the file."""


def _listed_once(archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    members: dict[str, zipfile.ZipInfo] = {}
    readers_names: dict[str, str] = {}
    for info in archive.infolist():
        name = info.orig_filename
        if "\0" in name:
            raise ArchiveError(f"member name {preview(name)} carries a NUL byte")
        if name in members:
            raise ArchiveError(f"member {preview(name)} is listed twice")
        # What a reader could resolve the name to: torch ignores case, numpy a .npy suffix.
        key = name.lower().removesuffix(".npy")
        if key in readers_names:
            raise ArchiveError(
                f"members {preview(readers_names[key])} and {preview(name)} could be read for one another"
            )
        readers_names[key] = name
        members[name] = info
    return members


def _check_size(info: zipfile.ZipInfo, limit: int, deflate_allowed: bool) -> None:
    name = preview(info.orig_filename)
    if info.compress_type == zipfile.ZIP_STORED:
        if info.compress_size != info.file_size:
            raise ArchiveError(f"member {name} is stored but declares {info.file_size} bytes in {info.compress_size}")
    elif not (deflate_allowed and info.compress_type == zipfile.ZIP_DEFLATED):
        raise ArchiveError(f"member {name} is compressed (method {info.compress_type}), which this file may not be")
    if info.file_size > limit:
        raise ArchiveError(f"member {name} holds {info.file_size} bytes (at most {limit})")


@dataclass(frozen=True)
class TorchArchive:
    """The members of a ``torch.save`` archive that the loader reads."""

    pickle: zipfile.ZipInfo  # <folder>/data.pkl
    storages: dict[str, zipfile.ZipInfo]  # storage key -> <folder>/data/<key>


def torch_archive(archive: zipfile.ZipFile, file_size: int) -> TorchArchive:
    """The checkpoint's members after the policy's checks; a storage record is bounded by the
    file here and by its declared size in the pickle's first pass."""
    members = _listed_once(archive)
    folders = {name.partition("/")[0] for name in members}
    if len(folders) != 1 or (folder := folders.pop()) + "/data.pkl" not in members:
        raise ArchiveError("not a torch.save archive (one folder holding data.pkl and its records)")
    storages = {}
    for name, info in members.items():
        record = name[len(folder) + 1:]
        if record == "data.pkl":
            limit = MAX_PICKLE_BYTES
        elif record in _SMALL_RECORDS:
            limit = _SMALL_RECORDS[record]
        elif record.startswith(_STORAGES) and record[len(_STORAGES):].isdigit():
            limit = file_size
            storages[record[len(_STORAGES):]] = info
        else:
            raise ArchiveError(f"member {preview(name)} is not a torch.save record")
        _check_size(info, limit, deflate_allowed=False)
    return TorchArchive(members[folder + "/data.pkl"], storages)


def npz_members(archive: zipfile.ZipFile, max_bytes: int) -> dict[str, zipfile.ZipInfo]:
    """Array name -> member of an ``.npz``, each member holding at most ``max_bytes``."""
    arrays = {}
    for name, info in _listed_once(archive).items():
        if not name.endswith(".npy"):
            raise ArchiveError(f"member {preview(name)} is not an .npy array")
        _check_size(info, max_bytes, deflate_allowed=True)
        arrays[name.removesuffix(".npy")] = info
    return arrays


def check_npy_member(info: zipfile.ZipInfo, header_bytes: int, array_bytes: int) -> None:
    """An ``.npy`` member holds its header and the declared array, nothing more or less."""
    if info.file_size != header_bytes + array_bytes:
        raise ArchiveError(
            f"member {preview(info.orig_filename)} holds {info.file_size} bytes, but its header "
            f"({header_bytes} bytes) declares an array of {array_bytes}"
        )

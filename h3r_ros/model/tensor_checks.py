"""What every tensor a checkpoint loads must satisfy before the model takes it: each view lies
inside its storage with positive strides, the views together repeat at most
``MAX_REPEATED_BYTES`` of their storages (overlapping views: compact test checkpoints use
them, released ones do not), and every floating value is finite.

The pickle's first pass applies the same view rules to what the pickle declares; the checks
here run again on what was loaded, so nothing that happened between the two can slip through.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from h3r_ros.model.checkpoint_errors import CheckpointError, preview

__all__ = ["MAX_REPEATED_BYTES", "check_finite", "check_loaded_tensors", "view_extent"]

MAX_REPEATED_BYTES = 2**30  # bytes overlapping views may address beyond their storages


def view_extent(size: Sequence[int], stride: Sequence[int], offset: int) -> int:
    """Elements of its storage a view reaches (0 for an empty view); ValueError for zero or
    negative strides, which repeat data."""
    if math.prod(size) == 0:
        return 0
    if any(st < 1 for n, st in zip(size, stride) if n > 1):
        raise ValueError(f"shape {tuple(size)} and strides {tuple(stride)}: zero or negative strides are refused")
    return offset + sum((n - 1) * st for n, st in zip(size, stride)) + 1


def check_loaded_tensors(state_dict: Mapping[str, torch.Tensor], source: Any) -> None:
    """Every view within its storage, and the repetition of overlapping views bounded."""
    storage_bytes: dict[int, int] = {}
    view_bytes = 0
    for name, tensor in state_dict.items():
        storage = tensor.untyped_storage()
        try:
            extent = view_extent(tensor.shape, tensor.stride(), tensor.storage_offset())
        except ValueError as exc:
            raise CheckpointError(f"{source}: tensor {preview(name)}: {exc}") from None
        if extent * tensor.element_size() > storage.nbytes():
            raise CheckpointError(
                f"{source}: tensor {preview(name)} with shape {tuple(tensor.shape)}, strides {tensor.stride()}, "
                f"offset {tensor.storage_offset()} reaches past its storage of {storage.nbytes()} bytes"
            )
        storage_bytes[storage.data_ptr()] = storage.nbytes()
        view_bytes += tensor.numel() * tensor.element_size()
    held = sum(storage_bytes.values())
    if view_bytes > held + MAX_REPEATED_BYTES:
        raise CheckpointError(
            f"{source}: its tensors address {view_bytes} bytes but their storages hold only {held} "
            f"(overlapping views repeating more than {MAX_REPEATED_BYTES} bytes: amplification)"
        )


def check_finite(tensors: Mapping[str, torch.Tensor], source: Any) -> None:
    """Refuse NaN and Inf in any floating tensor, naming it."""
    for name, tensor in tensors.items():
        if (tensor.is_floating_point() or tensor.is_complex()) and not bool(torch.isfinite(tensor).all()):
            kind = "NaN" if bool(torch.isnan(tensor).any()) else "Inf"
            raise CheckpointError(f"{source}: tensor {preview(name)} holds {kind}; every weight must be finite")

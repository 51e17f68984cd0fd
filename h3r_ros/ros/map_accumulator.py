"""A bounded, voxel-downsampled colour point map built from per-frame clouds."""

from __future__ import annotations

import numpy as np

# Voxel indices are packed into one int64 key, 21 bits per axis: +-2^20 voxels per axis
# (+-52 km at 5 cm), far beyond anything one camera reconstructs.
_BITS = 21
_OFFSET = 1 << (_BITS - 1)
_MASK = (1 << _BITS) - 1


def voxel_keys(points: np.ndarray, voxel_size: float) -> np.ndarray:
    cells = np.floor(points / voxel_size).astype(np.int64) + _OFFSET
    cells &= _MASK
    return (cells[:, 0] << (2 * _BITS)) | (cells[:, 1] << _BITS) | cells[:, 2]


def newest_per_voxel(keys: np.ndarray) -> np.ndarray:
    """Sorted indices of the last occurrence of each key (later points win)."""
    _, first_in_reversed = np.unique(keys[::-1], return_index=True)
    return np.sort(keys.size - 1 - first_in_reversed)


class VoxelMap:
    """One point (the newest) per voxel, oldest voxels evicted beyond ``max_points``.

    ``add`` is cheap (per-frame work on that frame only); ``merge`` folds the pending frames
    into the map and is meant to run at the map publishing rate.
    """

    def __init__(self, voxel_size: float, max_points: int) -> None:
        self.voxel_size = float(voxel_size)
        self.max_points = int(max_points)
        self.clear()

    def clear(self) -> None:
        self.points = np.zeros((0, 3), np.float32)
        self.colors = np.zeros((0, 3), np.uint8)
        self._keys = np.zeros(0, np.int64)
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_points = 0
        self._dirty = True  # the emptied map is worth publishing

    @property
    def size(self) -> int:
        """Points held, merged and pending (at most about 2 x max_points)."""
        return self.points.shape[0] + self._pending_points

    def add(self, points: np.ndarray, colors: np.ndarray) -> None:
        """Queue one frame's points ((N, 3) float32) and colours ((N, 3) uint8)."""
        if points.shape[0] == 0:
            return
        keys = voxel_keys(points, self.voxel_size)
        keep = newest_per_voxel(keys)
        self._pending.append((points[keep], colors[keep], keys[keep]))
        self._pending_points += keep.size
        if self._pending_points > self.max_points:  # bound memory between merges
            self._fold()

    def merge(self) -> bool:
        """Fold pending frames into ``points``/``colors`` (oldest first); True if the map
        changed since the previous merge."""
        self._fold()
        changed, self._dirty = self._dirty, False
        return changed

    def _fold(self) -> None:
        if self._pending:
            points, colors, keys = zip(*self._pending)
            self._pending, self._pending_points = [], 0
            keys = np.concatenate((self._keys, *keys))
            keep = newest_per_voxel(keys)[-self.max_points:]
            self.points = np.concatenate((self.points, *points))[keep]
            self.colors = np.concatenate((self.colors, *colors))[keep]
            self._keys = keys[keep]
            self._dirty = True

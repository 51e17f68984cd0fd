"""Track lifecycle and motion for consumers that plan around people: state, age, velocity.

Each track id is followed through the image stamps of the frames it appears in:

- state: NEW on the first frame a track is seen, TRACKED while seen again, LOST while unseen
  for less than ``timeout`` seconds, ENDED exactly once when it has been unseen for
  ``timeout`` seconds (or when the world is reset while it is lost); then it is forgotten.
- velocity: an alpha-beta (constant-velocity) filter on the pelvis position, with the time
  step taken from the stamps. Its first velocity is the difference of the first two
  positions; afterwards, with prediction ``x_p = x + v dt`` and residual ``r = z - x_p``:
  ``x = x_p + ALPHA r`` and ``v = v + (BETA / dt) r``. For constant-velocity motion it is
  exact after the second sighting; with independent position noise of standard deviation
  ``s`` per axis, the steady-state velocity error per axis has standard deviation
  ``velocity_noise_gain(dt) * s`` (Kalata's variance ratio, for a fixed step ``dt``).

Pure numpy and plain floats: the caller supplies times in seconds (image stamps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

NEW, TRACKED, LOST, ENDED = 0, 1, 2, 3
ALPHA = 0.5  # position gain
BETA = 0.2  # velocity gain (stable for 0 < ALPHA < 2, 0 < BETA < 4 - 2 ALPHA)
MIN_DT = 1e-3  # s; two sightings closer than this (same stamp) do not update the velocity


def velocity_noise_gain(dt: float, alpha: float = ALPHA, beta: float = BETA) -> float:
    """Steady-state velocity error std / position noise std of the filter at step ``dt`` (1/s)."""
    return math.sqrt(2.0 * beta**2 / (alpha * (4.0 - 2.0 * alpha - beta))) / dt


@dataclass
class TrackInfo:
    """What a consumer gets about one track for one frame."""

    track_id: int
    state: int
    first_seen: float  # s (stamp of the first sighting)
    last_seen: float  # s (stamp of the latest sighting)
    position: np.ndarray  # (3,) filtered pelvis position at last_seen
    velocity: np.ndarray  # (3,) m/s, zero until the second sighting
    payload: object = None  # the caller's latest observation of the track (e.g. the Person)

    def ages(self, now: float) -> tuple[float, float]:
        """(time since first seen, time since last seen) at ``now``, seconds."""
        return max(0.0, now - self.first_seen), max(0.0, now - self.last_seen)


@dataclass
class _Track:
    info: TrackInfo
    sightings: int = 1


@dataclass
class TrackMotion:
    """Follows track ids over frames; ``update`` once per processed frame."""

    timeout: float = 5.0
    _tracks: dict[int, _Track] = field(default_factory=dict)

    def reset(self) -> list[TrackInfo]:
        """A new world: tracks cannot be carried over, so every known track ends now."""
        ended = [self._end(track) for track in self._tracks.values()]
        self._tracks.clear()
        return ended

    def update(self, now: float, observations) -> tuple[list[TrackInfo], list[TrackInfo]]:
        """``observations``: (track_id, pelvis position (3,), payload) seen in the frame at
        ``now`` (s). Returns (current tracks: seen ones in observation order, then lost ones
        by id; ended tracks, reported this once)."""
        seen = []
        for track_id, position, payload in observations:
            track_id = int(track_id)
            z = np.asarray(position, dtype=np.float64).reshape(3)
            track = self._tracks.get(track_id)
            if track is None:
                info = TrackInfo(track_id, NEW, now, now, z.copy(), np.zeros(3), payload)
                track = self._tracks[track_id] = _Track(info)
            else:
                self._filter(track, now, z)
                track.info.state = TRACKED
                track.info.payload = payload
            seen.append(track.info)
        seen_ids = {info.track_id for info in seen}
        lost, ended = [], []
        for track_id in sorted(self._tracks):
            if track_id in seen_ids:
                continue
            track = self._tracks[track_id]
            if now - track.info.last_seen >= self.timeout:
                ended.append(self._end(track))
            else:
                track.info.state = LOST
                lost.append(track.info)
        for info in ended:
            del self._tracks[info.track_id]
        return seen + lost, ended

    @staticmethod
    def _end(track: _Track) -> TrackInfo:
        track.info.state = ENDED
        return track.info

    @staticmethod
    def _filter(track: _Track, now: float, z: np.ndarray) -> None:
        info = track.info
        dt = now - info.last_seen
        if dt < MIN_DT:  # a repeated stamp: keep the newer position, nothing to differentiate
            info.position = z.copy()
            return
        if track.sightings == 1:
            info.velocity = (z - info.position) / dt
            info.position = z.copy()
        else:
            predicted = info.position + info.velocity * dt
            residual = z - predicted
            info.position = predicted + ALPHA * residual
            info.velocity = info.velocity + (BETA / dt) * residual
        info.last_seen = now
        track.sightings += 1

"""Track lifecycle and motion for consumers that plan around people: state, age, velocity.

Each track id is followed through the image stamps of the frames it appears in:

- state: NEW on the first frame a track is seen, TRACKED while seen again, LOST while unseen
  for less than ``timeout`` seconds, ENDED exactly once when it has been unseen for
  ``timeout`` seconds (or when the world is reset while it is lost); then it is forgotten.
- velocity: an alpha-beta (constant-velocity) filter on the pelvis position, with the time
  step taken from the stamps. The velocity is unknown (NaN) until the second sighting; the
  first is the difference of the first two positions; afterwards, with prediction
  ``x_p = x + v dt`` and residual ``r = z - x_p``: ``x = x_p + ALPHA r`` and
  ``v = v + (BETA / dt) r``. For constant-velocity motion it is exact after the second
  sighting; with independent position noise of standard deviation ``s`` per axis, the
  steady-state velocity error per axis has standard deviation ``velocity_noise_gain(dt) * s``
  (Kalata's variance ratio, for a fixed step ``dt``).
- velocity_std: the standard deviation per axis of that velocity (m/s), from the filter's
  error covariance propagated with its fixed gains, under stated assumptions: position noise
  POSITION_STD and white-noise acceleration ACCELERATION_STD per axis. It is large right after
  the second sighting (about sqrt(2) POSITION_STD / dt) and settles as sightings accumulate:
  threshold it to decide whether a velocity is usable.
- pose jumps: a residual of more than JUMP_SIGMAS predicted standard deviations on an axis, or
  a speed above MAX_SPEED, is not motion but a jump (a re-detection elsewhere, a track
  switch, a misestimate): the filter restarts at the new position, and the velocity is
  unknown again until the next sighting.

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
POSITION_STD = 0.05  # m per axis: assumed error of the model's pelvis from frame to frame
ACCELERATION_STD = 1.0  # m/s^2 per axis: assumed white-noise acceleration of a walking person
JUMP_SIGMAS = 5.0
MAX_SPEED = 10.0  # m/s: faster than people walk or run in a robot's surroundings


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
    velocity: np.ndarray  # (3,) m/s; NaN while unknown (one sighting since the start or a jump)
    velocity_std: float = math.nan  # m/s per axis; NaN while the velocity is unknown
    payload: object = None  # the caller's latest observation of the track (e.g. the Person)

    def ages(self, now: float) -> tuple[float, float]:
        """(time since first seen, time since last seen) at ``now``, seconds."""
        return max(0.0, now - self.first_seen), max(0.0, now - self.last_seen)


@dataclass
class _Track:
    info: TrackInfo
    sightings: int = 1  # since the start or the last jump
    covariance: np.ndarray | None = None  # (2, 2) of (position, velocity) per axis


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
                info = TrackInfo(track_id, NEW, now, now, z.copy(), np.full(3, math.nan), payload=payload)
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
        info.last_seen = now
        if track.sightings == 1:
            velocity = (z - info.position) / dt
            if np.linalg.norm(velocity) > MAX_SPEED:
                _restart(track, z)
                return
            info.velocity = velocity
            info.position = z.copy()
            r = POSITION_STD**2
            track.covariance = r * np.array([[1.0, 1.0 / dt], [1.0 / dt, 2.0 / dt**2]])
        else:
            transition = np.array([[1.0, dt], [0.0, 1.0]])
            q = ACCELERATION_STD**2 * np.array([[dt**4 / 4, dt**3 / 2], [dt**3 / 2, dt**2]])
            predicted_cov = transition @ track.covariance @ transition.T + q
            predicted = info.position + info.velocity * dt
            residual = z - predicted
            gate = JUMP_SIGMAS * math.sqrt(predicted_cov[0, 0] + POSITION_STD**2)
            velocity = info.velocity + (BETA / dt) * residual
            if np.abs(residual).max() > gate or np.linalg.norm(velocity) > MAX_SPEED:
                _restart(track, z)
                return
            info.position = predicted + ALPHA * residual
            info.velocity = velocity
            # Joseph form: exact for the filter's fixed gains, not only for Kalman gains.
            gain = np.array([[ALPHA], [BETA / dt]])
            update = np.eye(2) - gain @ np.array([[1.0, 0.0]])
            track.covariance = update @ predicted_cov @ update.T + POSITION_STD**2 * (gain @ gain.T)
        info.velocity_std = math.sqrt(track.covariance[1, 1])
        track.sightings += 1


def _restart(track: _Track, z: np.ndarray) -> None:
    """A jump: the track's motion starts again at ``z``, velocity unknown."""
    info = track.info
    info.position = z.copy()
    info.velocity = np.full(3, math.nan)
    info.velocity_std = math.nan
    track.covariance = None
    track.sightings = 1

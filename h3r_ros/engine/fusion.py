"""One person, one entry: the people of several cameras joined in the robot's output frame.

Each camera tracks people on its own (its own recurrent world, re-identification and track
ids). With every camera's people placed in one frame of the robot (output_frame, through
tf2), this module joins the cameras' tracks that are the same person under a fused id:

- association: a camera's track keeps its fused id while that camera keeps the track (the
  camera's own re-identification is the strong link). A seen track without one (new, or
  whose fused track ended) is matched by 3D position (``Person.position_world``: the pelvis,
  or the head without a body) to the fused tracks that another camera sees this round, or
  that are lost, at their position predicted by the fused velocity to the camera's stamp
  (a person walking through the blind gap between two views). One-to-one per camera
  (``scipy.optimize.linear_sum_assignment`` on the distances) and gated: a fused track
  farther than ``gate`` metres is another person. A fused track that another of the
  camera's seen tracks holds is no candidate (a camera does not see one person twice);
  taking one that a lost track of the camera holds moves it to the new track. Unmatched
  tracks start new fused ids. Cameras are associated in the order of the round's views.
- ids: fused ids start at 0 and are never reused.
- best view: a fused person's pose, joints, SMPL-X parameters and score are those of one
  source, the one with the highest detection score; ties go to the source nearest its
  camera (a nearer view resolves the body better).
- motion: one TrackMotion per fused person, fed with the best view's position at that view's
  image stamp. All views are in one frame and each position comes with its own stamp, so the
  velocity does not jump when the best view passes from one camera to another, even when
  the cameras' images of a round have different stamps.
- states (TrackMotion's meaning, by rounds): NEW on the first round a camera sees the person,
  TRACKED while one of the round's cameras sees them, LOST otherwise, ENDED once when no
  camera has seen them for ``timeout`` seconds (the newest stamp of the round); then the id
  is forgotten.

Pure numpy and scipy: the caller supplies the views, times in seconds (image stamps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
from scipy.optimize import linear_sum_assignment

from .track_motion import ENDED, NEW, TRACKED, TrackInfo, TrackMotion

GATE = 0.5  # m: two cameras' people farther apart than this are two people


@dataclass(frozen=True)
class CameraView:
    """One camera's processed frame: its tracks as placed in the output frame."""

    camera: str  # the camera's name
    stamp: float  # s, the image stamp
    camera_position: np.ndarray  # (3,) the camera's optical centre in the output frame
    tracks: list  # (camera's track id, NEW/TRACKED/LOST/ENDED, Person in the output frame)


@dataclass(frozen=True)
class FusedTrack:
    """What a consumer gets about one fused person for one round."""

    info: TrackInfo  # track_id: the fused id; state, ages, velocity; payload: the best view's Person
    sources: tuple[tuple[str, int], ...]  # (camera, camera's track id) seeing the person this round


@dataclass(frozen=True)
class _Source:
    camera: str
    track_id: int
    person: object
    distance: float  # m, person to camera
    stamp: float


@dataclass
class _Fused:
    motion: TrackMotion
    info: TrackInfo | None = None  # the latest, once fed


@dataclass
class Fusion:
    """Fuses the cameras' tracks; ``update`` once per processing round."""

    timeout: float = 5.0  # s unseen by every camera before a fused track ends
    gate: float = GATE
    _next_id: int = 0
    _fused: dict[int, _Fused] = field(default_factory=dict)
    _links: dict[str, dict[int, int]] = field(default_factory=dict)  # camera -> its track id -> fused id

    def update(self, views: list[CameraView]) -> tuple[list[FusedTrack], list[FusedTrack]]:
        """The round's camera frames (1..N, in the node's camera order). Returns (current
        fused tracks: seen ones, then lost ones, each by fused id; ended ones, reported this
        once, by fused id), at the newest stamp of the round."""
        now = max(view.stamp for view in views)
        seen: dict[int, list[_Source]] = {}
        for view in views:
            self._associate(view, seen)
        current, lost, ended = [], [], []
        for fused_id in sorted(self._fused):
            fused = self._fused[fused_id]
            fused.motion.timeout = self.timeout
            sources = seen.get(fused_id)
            if sources:
                best = _best(sources)
                (fused.info,), _ = fused.motion.update(
                    best.stamp, [(fused_id, best.person.position_world, best.person)])
                current.append(FusedTrack(replace(fused.info), tuple((s.camera, s.track_id) for s in sources)))
                continue
            alive, gone = fused.motion.update(now, [])
            (lost if alive else ended).append(FusedTrack(replace((alive or gone)[0]), ()))
        for track in ended:
            self._forget(track.info.track_id)
        return current + lost, ended

    def _associate(self, view: CameraView, seen: dict[int, list[_Source]]) -> None:
        """Adds the view's seen tracks to ``seen`` under their fused ids, giving fused ids to
        the tracks that have none."""
        links = self._links.setdefault(view.camera, {})
        for track_id, state, _ in view.tracks:
            if state == ENDED:
                links.pop(int(track_id), None)
        visible = [(int(track_id), person) for track_id, state, person in view.tracks if state in (NEW, TRACKED)]
        held = {links[track_id] for track_id, _ in visible if track_id in links}
        unlinked = [(track_id, person) for track_id, person in visible if track_id not in links]
        candidates = [fused_id for fused_id in self._fused if fused_id not in held]
        matches = self._match(unlinked, candidates, view.stamp, seen)
        for track_id, person in unlinked:
            fused_id = matches.get(track_id)
            if fused_id is None:
                fused_id = self._new_id()
            for other in [t for t, f in links.items() if f == fused_id]:  # a lost track's hold moves here
                del links[other]
            links[track_id] = fused_id
        camera_position = np.asarray(view.camera_position, dtype=np.float64)
        for track_id, person in visible:
            distance = float(np.linalg.norm(np.asarray(person.position_world, dtype=np.float64) - camera_position))
            seen.setdefault(links[track_id], []).append(
                _Source(view.camera, track_id, person, distance, view.stamp))

    def _match(self, unlinked, candidates: list[int], stamp: float, seen) -> dict[int, int]:
        """Camera track id -> fused id, one-to-one, for the pairs within the gate."""
        if not unlinked or not candidates:
            return {}
        positions = np.array([person.position_world for _, person in unlinked], dtype=np.float64)
        expected = np.array([self._expected(fused_id, stamp, seen) for fused_id in candidates])
        distances = np.linalg.norm(positions[:, None, :] - expected[None, :, :], axis=-1)
        # A pair beyond the gate costs more than all pairs within it together: the assignment
        # never gives up a pair within the gate for it, and it is dropped afterwards.
        far = distances > self.gate
        rows, cols = linear_sum_assignment(np.where(far, self.gate * (1 + len(unlinked)), distances))
        return {unlinked[r][0]: candidates[c] for r, c in zip(rows, cols) if not far[r, c]}

    def _expected(self, fused_id: int, stamp: float, seen) -> np.ndarray:
        """Where the fused person is at ``stamp``: from their best view so far this round, or
        from their last fused position, moved by the fused velocity where it is known."""
        info = self._fused[fused_id].info
        velocity = info.velocity if info is not None else np.full(3, math.nan)
        sources = seen.get(fused_id)
        if sources:
            best = _best(sources)
            position, then = np.asarray(best.person.position_world, dtype=np.float64), best.stamp
        else:
            position, then = info.position, info.last_seen
        if np.isfinite(velocity).all():
            position = position + velocity * (stamp - then)
        return position

    def _new_id(self) -> int:
        fused_id = self._next_id
        self._next_id += 1
        self._fused[fused_id] = _Fused(TrackMotion(self.timeout))
        return fused_id

    def _forget(self, fused_id: int) -> None:
        del self._fused[fused_id]
        for links in self._links.values():
            for track_id in [t for t, f in links.items() if f == fused_id]:
                del links[track_id]


def _best(sources: list[_Source]) -> _Source:
    """The best view: highest detection score, then nearest its camera."""
    return min(sources, key=lambda s: (-float(s.person.score), s.distance))

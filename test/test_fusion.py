"""Several cameras' tracks fused into one entry per person, on synthetic people placed in the
output frame: association, gate, best view, ids, states and the fused velocity."""

import numpy as np

from h3r_ros.engine.fusion import GATE, CameraView, Fusion
from h3r_ros.engine.result import Person
from h3r_ros.engine.track_motion import ENDED, LOST, NEW, TRACKED

# Cameras of a robot at the output frame's origin, looking forward and backward.
FRONT, REAR = "front", "rear"
CAMERA_POSITIONS = {FRONT: np.array([0.3, 0.0, 1.2]), REAR: np.array([-0.3, 0.0, 1.2])}
WALK = np.array([-1.4, 0.0, 0.0])  # m/s: past the robot, from its front to its back


def person(pelvis, score=0.8) -> Person:
    """A person whose pelvis (their position in the output frame) is at ``pelvis``."""
    pelvis = np.asarray(pelvis, dtype=np.float64)
    joints = pelvis + np.zeros((55, 3))
    joints[15, 2] += 0.6
    return Person(track_id=0, score=score, rotmat=np.tile(np.eye(3), (53, 1, 1)), betas=np.zeros(10),
                  expression=np.zeros(10), head_cam=np.zeros(3), head_pixel=np.zeros(2), head_world=joints[15].copy(),
                  full_pose_world=np.zeros((55, 3)), joints_cam=joints.copy(), joints_world=joints,
                  transl_world=pelvis.copy(), pelvis_rotation_world=np.eye(3))


def view(camera, stamp, *tracks) -> CameraView:
    """``tracks``: (camera's track id, state, Person)."""
    return CameraView(camera, stamp, CAMERA_POSITIONS[camera], list(tracks))


def test_a_person_seen_by_both_cameras_is_one_entry_from_the_best_view():
    fusion = Fusion()
    front, rear = person([2.0, 0.0, 1.0], score=0.6), person([2.05, 0.03, 1.0], score=0.9)
    tracks, _ = fusion.update([view(FRONT, 1.0, (3, NEW, front)), view(REAR, 1.02, (7, NEW, rear))])
    assert len(tracks) == 1
    assert tracks[0].info.state == NEW
    assert tracks[0].sources == ((FRONT, 3), (REAR, 7))
    assert tracks[0].info.payload is rear  # the higher score
    # Equal scores: the view nearest its camera (the front one, 1.7 m against 2.3 m).
    front, rear = person([2.0, 0.0, 1.0]), person([2.05, 0.03, 1.0])
    tracks, _ = fusion.update([view(FRONT, 1.1, (3, TRACKED, front)), view(REAR, 1.12, (7, TRACKED, rear))])
    assert [(t.info.track_id, t.info.state, t.info.payload) for t in tracks] == [(0, TRACKED, front)]


def test_a_person_leaving_the_front_view_for_the_rear_one_keeps_the_fused_id():
    """Through a blind gap longer than the gate at walking speed: the lost fused track is
    matched where its velocity brings it."""
    fusion = Fusion(timeout=2.0)
    start = np.array([1.5, 0.8, 1.0])
    ids, states = [], []
    for k in range(20):
        t = 0.1 * k
        position = start + t * WALK
        if k < 8:
            views = [view(FRONT, t, (4, NEW if k == 0 else TRACKED, person(position))), view(REAR, t + 0.01)]
        elif k < 13:  # 0.5 s in neither view: 0.7 m walked, beyond the gate
            views = [view(FRONT, t, (4, LOST, person(start + 0.7 * WALK))), view(REAR, t + 0.01)]
        else:
            views = [view(FRONT, t, (4, LOST, person(start + 0.7 * WALK))),
                     view(REAR, t + 0.01, (9, NEW if k == 13 else TRACKED, person(position + 0.01 * WALK)))]
        tracks, ended = fusion.update(views)
        assert len(tracks) == 1 and not ended
        ids.append(tracks[0].info.track_id)
        states.append(tracks[0].info.state)
        assert tracks[0].sources == (((FRONT, 4),) if k < 8 else () if k < 13 else ((REAR, 9),))
    assert set(ids) == {0}
    assert states == [NEW] + [TRACKED] * 7 + [LOST] * 5 + [TRACKED] * 7


def test_two_people_out_of_each_others_gate_stay_two_and_new_tracks_are_assigned_one_to_one():
    assert GATE < 0.6
    fusion = Fusion()
    a, b = np.array([2.0, 0.0, 1.0]), np.array([2.0, 0.6, 1.0])
    # Each camera sees one of them: 0.6 m apart, two people.
    tracks, _ = fusion.update([view(FRONT, 0.0, (1, NEW, person(a))), view(REAR, 0.0, (5, NEW, person(b)))])
    assert [(t.info.track_id, t.sources) for t in tracks] == [(0, ((FRONT, 1),)), (1, ((REAR, 5),))]
    # The front camera now sees both, the rear one both too, its new track of a estimated
    # 0.32 m towards b: nearer b, but b is the rear's track 5 already.
    tracks, _ = fusion.update([
        view(FRONT, 0.1, (1, TRACKED, person(a)), (2, NEW, person(b))),
        view(REAR, 0.1, (5, TRACKED, person(b)), (6, NEW, person(a + [0.0, 0.32, 0.0])))])
    assert [(t.info.track_id, t.sources) for t in tracks] == [(0, ((FRONT, 1), (REAR, 6))),
                                                               (1, ((FRONT, 2), (REAR, 5)))]
    # Both new in one camera: the one-to-one assignment, not each track's nearest.
    fusion = Fusion()
    fusion.update([view(FRONT, 0.0, (1, NEW, person(a)), (2, NEW, person(b)))])
    tracks, _ = fusion.update([
        view(FRONT, 0.1, (1, TRACKED, person(a)), (2, TRACKED, person(b))),
        view(REAR, 0.1, (5, NEW, person(a + [0.0, 0.32, 0.0])), (6, NEW, person(b + [0.0, 0.15, 0.0])))])
    assert [(t.info.track_id, t.sources) for t in tracks] == [(0, ((FRONT, 1), (REAR, 5))),
                                                               (1, ((FRONT, 2), (REAR, 6)))]


def test_a_cameras_own_track_keeps_its_fused_id_where_another_person_stood():
    """One person steps to where another, now hidden, stood: the camera's track id, not the
    position, says who they are."""
    fusion = Fusion()
    a, b = np.array([2.0, 0.0, 1.0]), np.array([2.0, 0.4, 1.0])
    fusion.update([view(FRONT, 0.0, (1, NEW, person(a)), (2, NEW, person(b)))])
    tracks, _ = fusion.update([view(FRONT, 0.1, (1, TRACKED, person(b)), (2, LOST, person(b)))])
    assert [(t.info.track_id, t.info.state, t.sources) for t in tracks] == [(0, TRACKED, ((FRONT, 1),)),
                                                                             (1, LOST, ())]


def test_a_cameras_new_track_takes_over_the_fused_id_its_lost_track_held():
    """The camera's re-identification missed the person: its new track joins their fused id;
    the old track, seen again beside it, is another person (one camera never sees one twice)."""
    fusion = Fusion()
    a = np.array([2.0, 0.0, 1.0])
    fusion.update([view(FRONT, 0.0, (1, NEW, person(a)))])
    tracks, _ = fusion.update([view(FRONT, 0.1, (1, LOST, person(a)), (5, NEW, person(a)))])
    assert [(t.info.track_id, t.sources) for t in tracks] == [(0, ((FRONT, 5),))]
    tracks, _ = fusion.update([view(FRONT, 0.2, (1, TRACKED, person(a + [0.0, 0.3, 0.0])), (5, TRACKED, person(a)))])
    assert [(t.info.track_id, t.sources) for t in tracks] == [(0, ((FRONT, 5),)), (1, ((FRONT, 1),))]


def test_an_ended_fused_id_is_reported_once_and_never_reused():
    fusion = Fusion(timeout=1.0)
    place = np.array([1.5, 0.0, 1.0])
    fusion.update([view(FRONT, 0.0, (1, NEW, person(place)))])
    tracks, ended = fusion.update([view(FRONT, 0.5, (1, LOST, person(place)))])
    assert [(t.info.track_id, t.info.state) for t in tracks] == [(0, LOST)] and not ended
    tracks, ended = fusion.update([view(FRONT, 1.0, (1, ENDED, person(place)))])
    assert not tracks and [(t.info.track_id, t.info.state) for t in ended] == [(0, ENDED)]
    # Someone at the same place, for either camera: a new id.
    tracks, ended = fusion.update([view(REAR, 1.1, (2, NEW, person(place)))])
    assert [(t.info.track_id, t.info.state) for t in tracks] == [(1, NEW)] and not ended


def _walk_past(rounds, seen_by):
    """A person walking past the robot, the rear camera's images 40 ms after the front one's;
    ``seen_by(k)``: the cameras that see them in round k, with their scores. Returns, per
    round, the fused tracks and the camera whose view is the fused person."""
    fusion = Fusion()
    start = np.array([1.4, 0.8, 1.0])
    results = []
    for k in range(rounds):
        views, people = [], {}
        for camera, offset, track_id in ((FRONT, 0.0, 3), (REAR, 0.04, 8)):
            t = 0.1 * k + offset
            score = seen_by(k).get(camera)
            if score is not None:
                people[camera] = person(start + t * WALK, score)
            views.append(view(camera, t, *([(track_id, TRACKED, people[camera])] if camera in people else [])))
        tracks, _ = fusion.update(views)
        best = [camera for camera, p in people.items() if any(t.info.payload is p for t in tracks)]
        results.append((tracks, best))
    return results


def test_a_person_seen_by_two_cameras_at_different_stamps_is_one_with_its_walking_velocity():
    """Both cameras see the person; the best view alternates between them (their image stamps
    differ): one entry, velocity exact from the second round."""
    rounds = _walk_past(10, lambda k: {FRONT: 0.9, REAR: 0.7} if k % 2 else {FRONT: 0.7, REAR: 0.9})
    for k, ((track,), best) in enumerate(rounds):
        assert track.info.track_id == 0 and track.sources == ((FRONT, 3), (REAR, 8))
        assert best == [FRONT if k % 2 else REAR]
        if k:
            np.testing.assert_allclose(track.info.velocity, WALK, atol=1e-9)


def test_the_fused_velocity_has_no_jump_when_the_person_passes_to_the_rear_view():
    """Front view only, both (the rear one gaining), then rear only: one id, the walking
    velocity throughout."""
    both = {8: (0.85, 0.75), 9: (0.8, 0.8), 10: (0.75, 0.85), 11: (0.7, 0.9)}

    def seen_by(k):
        if k in both:
            return dict(zip((FRONT, REAR), both[k]))
        return {FRONT: 0.9} if k < 8 else {REAR: 0.9}

    rounds = _walk_past(20, seen_by)
    assert [track.info.track_id for (track,), _ in rounds] == [0] * 20
    # At 0.8 / 0.8 the front camera is the nearer one (the person is still in front).
    assert [best for _, (best,) in rounds] == [FRONT] * 10 + [REAR] * 10
    for (track,), _ in rounds[1:]:
        np.testing.assert_allclose(track.info.velocity, WALK, atol=1e-9)

"""Track lifecycle (new / tracked / lost / ended) and the pelvis velocity filter, on synthetic tracks."""

import math

import numpy as np
import pytest

from h3r_ros.engine import track_motion
from h3r_ros.engine.track_motion import ENDED, LOST, NEW, TRACKED, TrackMotion, velocity_noise_gain


def _walk(motion, times, positions, track_id=4):
    """The track's velocity after each sighting, (n, 3)."""
    velocities = []
    for t, p in zip(times, positions):
        alive, _ = motion.update(t, [(track_id, p, None)])
        velocities.append(alive[0].velocity.copy())
    return np.array(velocities)


def test_constant_velocity_is_exact_from_the_second_sighting_with_irregular_stamps():
    rng = np.random.default_rng(1)
    times = np.cumsum(rng.uniform(0.03, 0.4, 30))  # a camera dropping frames at random
    velocity = np.array([1.2, -0.4, 0.05])
    start = np.array([3.0, 1.0, 0.9])
    estimates = _walk(TrackMotion(timeout=5.0), times, start + times[:, None] * velocity)
    assert np.isnan(estimates[0]).all()  # unknown from one sighting
    np.testing.assert_allclose(estimates[1:], np.broadcast_to(velocity, estimates[1:].shape), rtol=0, atol=1e-9)


def test_velocity_error_under_position_noise_matches_the_filter_gain():
    """Steady-state velocity error std = velocity_noise_gain(dt) * noise std (Kalata); the
    estimate from 40000 frames is within 5 % of it (its own sampling error is below 2 %)."""
    rng = np.random.default_rng(2)
    dt, sigma, n = 0.1, 0.03, 40000
    times = np.arange(n) * dt
    velocity = np.array([0.8, 0.3, 0.0])
    truth = np.array([2.0, 0.0, 1.0]) + times[:, None] * velocity
    estimates = _walk(TrackMotion(timeout=5.0), times, truth + rng.normal(0.0, sigma, truth.shape))
    errors = estimates[100:] - velocity
    expected = velocity_noise_gain(dt) * sigma
    np.testing.assert_allclose(errors.std(axis=0), expected, rtol=0.05)
    np.testing.assert_allclose(errors.mean(axis=0), 0.0, atol=5 * expected / np.sqrt(len(errors) / 50))


def test_a_walking_person_tracked_at_10_hz_has_velocity_within_the_stated_tolerance():
    """The tolerance a consumer can rely on: 4 std of the filter's velocity error."""
    rng = np.random.default_rng(3)
    dt, sigma = 0.1, 0.02  # 2 cm pelvis jitter
    times = np.arange(60) * dt
    velocity = np.array([1.4, 0.0, 0.0])  # walking pace
    truth = times[:, None] * velocity
    estimates = _walk(TrackMotion(), times, truth + rng.normal(0.0, sigma, truth.shape))
    tolerance = 4 * velocity_noise_gain(dt) * sigma
    # After the start-up transient: the two-point start carries the noise of two positions.
    assert np.abs(estimates[20:] - velocity).max() < tolerance


def test_states_lost_then_ended_once_then_forgotten():
    motion = TrackMotion(timeout=1.0)
    alive, ended = motion.update(0.0, [(1, [0, 0, 0], "a"), (2, [1, 0, 0], "b")])
    assert [(t.track_id, t.state) for t in alive] == [(1, NEW), (2, NEW)] and ended == []
    alive, ended = motion.update(0.5, [(1, [0.5, 0, 0], "a2")])
    assert [(t.track_id, t.state) for t in alive] == [(1, TRACKED), (2, LOST)]
    lost = alive[1]
    assert lost.payload == "b" and lost.ages(0.5) == (0.5, 0.5)
    assert alive[0].ages(0.5) == (0.5, 0.0)
    alive, ended = motion.update(0.9, [(1, [0.9, 0, 0], "a3")])
    assert [t.state for t in alive] == [TRACKED, LOST]
    alive, ended = motion.update(1.0, [(1, [1.0, 0, 0], "a4")])  # 2 unseen for exactly timeout
    assert [(t.track_id, t.state) for t in alive] == [(1, TRACKED)]
    assert [(t.track_id, t.state) for t in ended] == [(2, ENDED)]
    alive, ended = motion.update(1.1, [])
    assert [(t.track_id, t.state) for t in alive] == [(1, LOST)] and ended == []
    _, ended = motion.update(5.0, [])
    assert [t.track_id for t in ended] == [1]
    assert motion.update(6.0, []) == ([], [])


def test_reset_ends_every_track_and_a_returning_id_starts_new():
    motion = TrackMotion(timeout=10.0)
    motion.update(0.0, [(7, [0, 0, 0], None)])
    motion.update(0.1, [(7, [0.1, 0, 0], None)])
    assert [(t.track_id, t.state) for t in motion.reset()] == [(7, ENDED)]
    alive, _ = motion.update(0.2, [(7, [5, 5, 5], None)])
    assert alive[0].state == NEW and alive[0].ages(0.2) == (0.0, 0.0)
    assert np.isnan(alive[0].velocity).all() and math.isnan(alive[0].velocity_std)


def test_a_repeated_stamp_does_not_blow_up_the_velocity():
    motion = TrackMotion()
    motion.update(1.0, [(0, [0, 0, 0], None)])
    alive, _ = motion.update(1.0, [(0, [0.2, 0, 0], None)])
    assert np.isnan(alive[0].velocity).all()  # still one instant seen: unknown, not infinite
    np.testing.assert_array_equal(alive[0].position, [0.2, 0, 0])
    alive, _ = motion.update(1.5, [(0, [0.7, 0, 0], None)])
    np.testing.assert_allclose(alive[0].velocity, [1.0, 0, 0])


@pytest.mark.parametrize("dt", [0.05, 0.2])
def test_velocity_noise_gain_scales_with_the_frame_rate(dt):
    assert velocity_noise_gain(dt) == pytest.approx(velocity_noise_gain(1.0) / dt)


def _stds(motion, times, positions, track_id=4):
    stds = []
    for t, p in zip(times, positions):
        alive, _ = motion.update(t, [(track_id, p, None)])
        stds.append(alive[0].velocity_std)
    return np.array(stds)


def test_velocity_std_starts_at_the_two_point_difference_and_settles_at_kalatas_value(monkeypatch):
    """Without assumed acceleration the propagated covariance must reproduce the closed forms:
    sqrt(2) s / dt after the second sighting, velocity_noise_gain(dt) s in the steady state."""
    monkeypatch.setattr(track_motion, "ACCELERATION_STD", 0.0)
    dt, s = 0.1, track_motion.POSITION_STD
    times = np.arange(400) * dt
    stds = _stds(TrackMotion(), times, np.zeros((400, 3)))
    assert math.isnan(stds[0])
    assert stds[1] == pytest.approx(math.sqrt(2) * s / dt)
    assert stds[-1] == pytest.approx(velocity_noise_gain(dt) * s, rel=1e-6)
    assert stds[1] > 5 * stds[-1] and stds[1:4].min() > stds[-1]  # uncertain at first


def test_velocity_std_matches_the_actual_error_when_the_assumptions_hold(monkeypatch):
    monkeypatch.setattr(track_motion, "ACCELERATION_STD", 0.0)
    rng = np.random.default_rng(4)
    dt, n = 0.1, 40000
    times = np.arange(n) * dt
    truth = times[:, None] * np.array([1.0, 0.0, 0.0])
    noisy = truth + rng.normal(0.0, track_motion.POSITION_STD, truth.shape)
    motion = TrackMotion()
    errors, stds = [], []
    for t, p in zip(times, noisy):
        (info,), _ = motion.update(t, [(1, p, None)])
        errors.append(info.velocity - [1.0, 0.0, 0.0])
        stds.append(info.velocity_std)
    np.testing.assert_allclose(np.array(errors[100:]).std(axis=0), stds[-1], rtol=0.05)


def test_the_default_assumptions_keep_the_std_above_the_white_noise_value():
    dt = 0.1
    stds = _stds(TrackMotion(), np.arange(200) * dt, np.zeros((200, 3)))
    assert stds[-1] > velocity_noise_gain(dt) * track_motion.POSITION_STD  # acceleration adds to it
    assert stds[-1] < 1.0  # yet usable: under 1 m/s at 10 Hz


def test_a_pose_jump_restarts_the_motion_with_velocity_unknown():
    motion = TrackMotion()
    for i in range(10):  # walking at 1 m/s
        (info,), _ = motion.update(0.1 * i, [(3, [0.1 * i, 0.0, 0.0], None)])
    np.testing.assert_allclose(info.velocity, [1.0, 0, 0], atol=1e-9)
    (info,), _ = motion.update(1.0, [(3, [0.5, 3.0, 0.0], None)])  # 3 m sideways in 0.1 s
    assert info.state == TRACKED and np.isnan(info.velocity).all() and math.isnan(info.velocity_std)
    np.testing.assert_array_equal(info.position, [0.5, 3.0, 0.0])
    (info,), _ = motion.update(1.1, [(3, [0.6, 3.0, 0.0], None)])
    np.testing.assert_allclose(info.velocity, [1.0, 0, 0], atol=1e-9)


def test_an_implausible_first_speed_is_not_reported():
    motion = TrackMotion()
    motion.update(0.0, [(5, [0.0, 0.0, 0.0], None)])
    (info,), _ = motion.update(0.1, [(5, [1.6, 0.0, 0.0], None)])  # 16 m/s
    assert np.isnan(info.velocity).all()
    (info,), _ = motion.update(0.2, [(5, [1.7, 0.0, 0.0], None)])
    np.testing.assert_allclose(info.velocity, [1.0, 0, 0], atol=1e-9)

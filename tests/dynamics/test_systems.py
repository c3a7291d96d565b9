"""Simulators: fixed points, the Lorenz absorbing ball, determinism from seeds."""
import math

import numpy as np
import pytest

from rmflow.tasks.dynamics.systems import SYSTEMS, FitzHughNagumo2, Lorenz63, simulate, simulate_many


def test_lorenz_equilibria_are_fixed_points():
    lz = Lorenz63()
    eq = lz.equilibria()
    q = math.sqrt(8.0 / 3.0 * 27.0)           # √(β(ρ − 1)) written out independently
    np.testing.assert_allclose(eq[1], [q, q, 27.0])
    np.testing.assert_allclose(eq[2], [-q, -q, 27.0])
    for point in eq:
        np.testing.assert_allclose(lz.rhs(0.0, point), 0.0, atol=1e-12)
    # a non-equilibrium point is moved
    assert np.abs(lz.rhs(0.0, np.array([1.0, 2.0, 3.0]))).max() > 1


def test_lorenz_vector_field_matches_equations():
    s = np.array([1.5, -2.0, 20.0])
    expected = [10 * (-2.0 - 1.5), 1.5 * (28 - 20.0) + 2.0, 1.5 * -2.0 - 8 / 3 * 20.0]
    np.testing.assert_allclose(Lorenz63().rhs(0.0, s), expected)


def test_fhn_origin_is_fixed_and_field_matches_equations():
    f = FitzHughNagumo2()
    np.testing.assert_allclose(f.rhs(0.0, np.zeros(4)), 0.0)
    x1, x2, y1, y2 = 0.3, -0.1, 0.02, 0.05
    a, k = -0.025794, 0.128
    expected = [x1 * (a - x1) * (x1 - 1) - y1 + k * (x2 - x1), x2 * (a - x2) * (x2 - 1) - y2 + k * (x1 - x2),
                0.0065 * x1 - 0.02 * y1, 0.0135 * x2 - 0.02 * y2]
    np.testing.assert_allclose(f.rhs(0.0, np.array([x1, x2, y1, y2])), expected)


def test_lorenz_stays_in_absorbing_ball_and_is_chaotic():
    lz = SYSTEMS["lorenz"]
    traj = simulate_many(lz, 3, 4, 0.05, 400, 5.0)            # (4, 3, 400)
    x, y, z = traj[:, 0], traj[:, 1], traj[:, 2]
    v = x ** 2 + y ** 2 + (z - 10.0 - 28.0) ** 2
    bound = (8 / 3) ** 2 * 38 ** 2 / (4 * (8 / 3 - 1))        # ≈ 1540.3
    assert lz.absorbing_bound() == pytest.approx(bound)
    assert v.max() <= bound * (1 + 1e-6)
    # on the attractor, not at a fixed point: both wings are visited
    assert (x > 5).any() and (x < -5).any()
    assert 0 < z.min() and z.max() < 55


def test_simulation_matches_single_trajectory_and_is_deterministic():
    lz = SYSTEMS["lorenz"]
    a = simulate_many(lz, 7, 3, 0.05, 50, 1.0)
    b = simulate_many(lz, 7, 3, 0.05, 50, 1.0)
    c = simulate_many(lz, 8, 3, 0.05, 50, 1.0)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1.0
    ics = lz.initial_conditions(np.random.default_rng(7), 3)
    one = simulate(lz, ics[1:2], 0.05, 50, 1.0)[0]            # integrated alone: same up to tolerance
    np.testing.assert_allclose(one[:, :20], a[1][:, :20], atol=1e-4)


def test_fhn_simulation_shape_and_bounds():
    traj = simulate_many(SYSTEMS["fhn"], 0, 2, 2.0, 100, 200.0)
    assert traj.shape == (2, 4, 100)
    assert np.isfinite(traj).all() and np.abs(traj).max() < 2.0


def test_simulate_rejects_bad_arguments():
    with pytest.raises(ValueError, match="dt > 0"):
        simulate(SYSTEMS["lorenz"], np.zeros((1, 3)), 0.0, 10, 0.0)

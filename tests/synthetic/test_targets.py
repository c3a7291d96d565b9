"""The synthetic targets and their any-D metrics, against independent computations: scipy's densities, closed forms,
brute-force counts of samples, POT, and the data's own second draw."""
import json
import math

import numpy as np
import ot
import pytest
import torch
from scipy.stats import multivariate_normal, norm

from rmflow.tasks.anyd_metrics import energy_distance, unit_projections
from rmflow.tasks.synthetic.data import (DATASETS, OFF_MODE_TAIL, SIX, Curves, SpiralArm, make_dataset,
                                         random_basis, spiral_length)
from rmflow.tasks.synthetic.metrics import METRIC_FORMAT, mode_shares, sample_metrics
from rmflow.tasks.synthetic.plots import plot_panels

CURVES = ("moons", "spirals", "pinwheel")
GAUSSIAN_MIXTURES = ("mog1d", "ring8", "six", "subspace16", "subspace64")   # D = 1, 2, 2, 16, 64


def draw(name: str, n: int, seed: int):
    density = make_dataset(name)
    return density, *density.sample_with_modes(n, torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------- interface
@pytest.mark.parametrize("name", DATASETS)
def test_every_target_has_the_interface(name):
    density, x, k = draw(name, 500, 0)
    n, dim = 500, density.dim
    assert x.shape == (n, dim) and x.dtype == torch.float32 and k.dtype == torch.long
    assert torch.equal(x, density.sample(n, torch.Generator().manual_seed(0)))
    assert density.log_prob(x).shape == (n,) and density.log_prob(x).dtype == torch.float64
    assert density.off_mode(x).shape == (n,) and density.off_mode(x).dtype == torch.bool
    assert density.assign(x).dtype == torch.long and density.assign(x).max() < density.modes
    assert density.weights.shape == (density.modes,) and float(density.weights.sum()) == pytest.approx(1.0)
    assert density.project(x).shape == (n, min(dim, 2))


def test_ring8_draws_are_unchanged():
    """The first draws of ring8 at seed 0, as before `sample_with_modes` (the golden tests depend on them)."""
    x = make_dataset("ring8").sample(3, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    k = torch.multinomial(torch.full((8,), 1 / 8), 3, replacement=True, generator=g)
    angles = k * (2 * math.pi / 8)
    expected = 4.0 * torch.stack([angles.cos(), angles.sin()], dim=1) + 0.2 * torch.randn(3, 2, generator=g)
    assert torch.equal(x, expected)


# ------------------------------------------------------------------------------------------- the data floor
@pytest.mark.parametrize("name", DATASETS)
def test_data_floor(name):
    """Two independent draws of the data score near each metric's floor, and the row is a dict of finite floats
    (JSON tables)."""
    density, x, _ = draw(name, 5000, 1)
    y = density.sample(5000, torch.Generator().manual_seed(2))
    m = sample_metrics(x, y, density, num_ot=1000)
    assert set(m) == set(METRIC_FORMAT) and all(isinstance(v, float) and math.isfinite(v) for v in m.values())
    json.dumps(m)
    assert m["tv_half"] < 0.3 and m["sliced_w2"] < 0.2
    assert abs(m["energy"]) < 0.02 and abs(m["mmd"]) < 0.005
    assert m["mode_err"] < 0.02 and m["dropped_modes"] == 0
    assert m["off_mode"] < 0.02


def test_metrics_see_a_dropped_mode_and_a_shift():
    ring, x, k = draw("ring8", 8000, 3)
    y = ring.sample(8000, torch.Generator().manual_seed(4))
    shares = mode_shares(x[k != 0], ring)
    assert len(shares) == 8 and shares[0] == 0.0 and sum(shares) == pytest.approx(1.0)
    m = sample_metrics(x[k != 0], y, ring, num_ot=1000)
    assert m["dropped_modes"] == 1.0 and m["mode_err"] == pytest.approx(1 / 8)
    shifted = sample_metrics(x + torch.tensor([0.5, 0.0]), y, ring, num_ot=1000)
    assert shifted["off_mode"] > 0.1 and shifted["energy"] > 0.05 and shifted["tv_half"] > 0.5


# ------------------------------------------------------------------------------- energy and sliced W2 in any D
def mean_abs_normal(m: float, s: float) -> float:
    """E|Z| for Z ~ N(m, s²): s·√(2/π)·exp(−m²/(2s²)) + m·(1 − 2Φ(−m/s))."""
    return s * math.sqrt(2 / math.pi) * math.exp(-m * m / (2 * s * s)) + m * (1 - 2 * norm.cdf(-m / s))


def test_energy_distance_of_normals_in_1d_closed_form():
    """X ~ N(0, 1), Y ~ N(μ, 1): X − Y ~ N(−μ, 2), X − X' ~ N(0, 2), so E = 2E|N(μ, 2)| − 2E|N(0, 2)|
    (0.5418 for μ = 1); the estimate's std is 0.019 at n = 8000."""
    g = torch.Generator().manual_seed(5)
    x, z, y = (torch.randn(8000, 1, generator=g, dtype=torch.float64) for _ in range(3))
    exact = 2 * mean_abs_normal(1.0, math.sqrt(2)) - 2 * mean_abs_normal(0.0, math.sqrt(2))
    assert energy_distance(x, y + 1.0) == pytest.approx(exact, abs=0.07)
    assert abs(energy_distance(x, z)) < 0.005


def test_sliced_w2_of_a_shift_in_16d():
    """x against x + m: every slice is a shift by θ·m, so SW2² = mean_θ (θ·m)² over the metric's 200 seeded
    directions, ≈ |m|²/D; against an independent draw + m it stays near that, against an independent draw near 0."""
    density, x, _ = draw("subspace16", 4000, 6)
    y = density.sample(4000, torch.Generator().manual_seed(7))
    m = torch.linspace(-1, 1, 16) * 1.5
    drawn = math.sqrt(float((unit_projections(16, 200, seed=0).float() @ m).pow(2).mean()))
    assert sample_metrics(x + m, x, density, num_ot=500)["sliced_w2"] == pytest.approx(drawn, rel=1e-5)
    assert drawn == pytest.approx(float(m.norm()) / 4, rel=0.15)
    assert sample_metrics(y + m, x, density, num_ot=500)["sliced_w2"] == pytest.approx(drawn, rel=0.1)
    assert sample_metrics(y, x, density, num_ot=500)["sliced_w2"] < 0.05


def test_sliced_w2_agrees_with_pot():
    """POT's ot.sliced_wasserstein_distance (p = 2) on the same 200 directions gives the same number."""
    density, x, _ = draw("moons16", 3000, 8)
    y = 1.2 * density.sample(2000, torch.Generator().manual_seed(9))
    ours = sample_metrics(x, y, density, num_ot=200)["sliced_w2"]
    pot = ot.sliced_wasserstein_distance(x.double().numpy(), y.double().numpy(), p=2,
                                         projections=unit_projections(16, 200, seed=0).T.numpy())
    assert ours == pytest.approx(float(pot), rel=1e-9)


# ------------------------------------------------------------------------------------------ densities: curves
@pytest.mark.parametrize("name", CURVES)
def test_curve_density_integrates_to_one(name):
    """A Riemann sum over [-6, 6]² in steps of 0.1 (σ = 0.15: exact to far below the tolerance for a Gaussian)."""
    density = make_dataset(name)
    g = torch.arange(-6, 6.05, 0.1, dtype=torch.float64)
    grid = torch.cartesian_prod(g, g)
    assert float(density.log_prob(grid).exp().sum()) * 0.01 == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("name", CURVES)
def test_curve_density_matches_counts_of_samples(name):
    """The mass of 0.4 × 0.4 boxes by integrating exp(log_prob) (20 × 20 midpoints) against the share of 5·10⁵
    draws that fall in them, within 4 binomial standard deviations; boxes at both ends and inside of arms 0 and 1."""
    density = make_dataset(name)
    x = density.sample(500_000, torch.Generator().manual_seed(10))
    u = torch.tensor([0.0, 0.35, 1.0], dtype=torch.float64)
    centres = torch.cat([density.arms[0](u), density.arms[1](u[1:2])])
    offsets = (torch.arange(20, dtype=torch.float64) + 0.5) / 20 * 0.4 - 0.2
    cell = torch.cartesian_prod(offsets, offsets)
    for c in centres:
        mass = float(density.log_prob(c + cell).exp().mean()) * 0.16
        share = float(((x.double() - c).abs() < 0.2).all(dim=1).double().mean())
        assert abs(share - mass) < 4 * math.sqrt(mass * (1 - mass) / len(x)), (c, share, mass)


@pytest.mark.parametrize("name", CURVES + ("moons16",))
def test_curve_quadrature_error(name):
    """Against 10× finer nodes: the data's own draws within 2e-5 in log p, points about σ beyond an arm's ends
    within 2e-4 (the class docstring's error estimate)."""
    density = make_dataset(name)
    fine = Curves(density.arms, density.std, density.basis, spacing=density.spacing / 10)
    g = torch.Generator().manual_seed(11)
    x = density.sample(500, g)
    assert (density.log_prob(x) - fine.log_prob(x)).abs().max() < 2e-5
    ends = torch.cat([density.embed(arm(torch.tensor([0.0, 1.0], dtype=torch.float64))) for arm in density.arms])
    near = (ends[:, None] + density.std * torch.randn(len(ends), 100, density.dim, generator=g,
                                                      dtype=torch.float64)).reshape(-1, density.dim)
    assert (density.log_prob(near) - fine.log_prob(near)).abs().max() < 2e-4


def test_spiral_arms_are_uniform_in_arc_length_and_pinwheel_arms_in_radius():
    u = torch.linspace(0, 1, 20001, dtype=torch.float64)
    spiral = make_dataset("spirals").arms[0]
    steps = (spiral(u)[1:] - spiral(u)[:-1]).norm(dim=1)
    assert float((steps.max() - steps.min()) / steps.mean()) < 1e-4
    length = spiral_length(torch.tensor([0.5, 4.0], dtype=torch.float64), spiral.rate)
    target = length[0] + u * (length[1] - length[0])
    assert torch.allclose(spiral_length(spiral.radius(u), spiral.rate), target, rtol=0, atol=1e-12)
    assert float(steps.sum()) == pytest.approx(float(length[1] - length[0]), rel=1e-6)
    assert spiral(u)[[0, -1]].norm(dim=1).tolist() == pytest.approx([0.5, 4.0])
    pin = make_dataset("pinwheel").arms[2]
    assert isinstance(pin, SpiralArm) and not pin.by_length
    assert torch.allclose(pin(u).norm(dim=1), 0.6 + 3.0 * u)
    assert torch.allclose(torch.atan2(pin(u)[:, 1], pin(u)[:, 0]) % (2 * math.pi),
                          (4 * math.pi / 5 + 0.35 * (0.6 + 3.0 * u)) % (2 * math.pi))


@pytest.mark.parametrize("name", ("moons", "spirals"))
def test_second_arm_is_the_first_rotated_by_pi(name):
    arms = make_dataset(name).arms
    u = torch.linspace(0, 1, 101, dtype=torch.float64)
    assert torch.allclose(arms[1](u), -arms[0](u), atol=1e-12)


def test_moons16_is_moons_in_a_16d_plane():
    flat, embedded = make_dataset("moons"), make_dataset("moons16")
    assert torch.allclose(embedded.basis.T @ embedded.basis, torch.eye(2, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(embedded.project(embedded.nodes), flat.nodes, atol=1e-12)
    x = embedded.sample(20000, torch.Generator().manual_seed(12)).double()
    out_of_plane = x - x @ embedded.basis @ embedded.basis.T
    assert float(out_of_plane.pow(2).sum(dim=1).mean()) == pytest.approx(14 * 0.15 ** 2, rel=0.02)


# ------------------------------------------------------------------------------------------ densities: mixtures
def test_mixture_log_prob_in_16d_matches_scipy():
    density, x, _ = draw("subspace16", 300, 13)
    x = torch.cat([x, 3 * torch.randn(100, 16, generator=torch.Generator().manual_seed(14))])
    comps = [math.log(w) + multivariate_normal(m.double().numpy(), s ** 2 * np.eye(16)).logpdf(x.double().numpy())
             for m, s, w in zip(density.means, density.stds.tolist(), density.weights.tolist())]
    np.testing.assert_allclose(density.log_prob(x).numpy(), np.logaddexp.reduce(comps, axis=0),
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dim", (16, 64))
def test_subspace_means_are_a_cube_in_a_random_3d_subspace(dim):
    density = make_dataset(f"subspace{dim}")
    basis = random_basis(dim, 3, seed=dim)
    assert torch.allclose(basis.T @ basis, torch.eye(3, dtype=torch.float64), atol=1e-12)
    corners = density.means.double() @ basis
    assert torch.allclose(corners.abs(), torch.full((8, 3), 2.5, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(corners @ basis.T, density.means.double(), atol=1e-5)        # nothing off the subspace
    assert torch.allclose(density.basis, basis[:, :2]) and torch.equal(make_dataset(f"subspace{dim}").means,
                                                                      density.means)
    assert density.weights.tolist() == pytest.approx([w / 20 for w in (1, 1, 2, 2, 3, 3, 4, 4)])
    assert density.stds.tolist() == pytest.approx([0.3] * 8)


def test_six_is_irregular_and_well_separated():
    six = make_dataset("six")
    assert sorted(six.weights.tolist()) == pytest.approx([0.05, 0.10, 0.10, 0.15, 0.25, 0.35])
    assert sorted(six.stds.tolist()) == pytest.approx([0.15, 0.20, 0.25, 0.30, 0.35, 0.40])
    assert six.means.norm(dim=1).max() < 3.5 and len(SIX) == 6
    d = torch.cdist(six.means, six.means)
    larger = torch.maximum(six.stds[:, None], six.stds[None, :])
    off = ~torch.eye(6, dtype=torch.bool)
    assert (d[off] > 4 * larger[off]).all()


# ----------------------------------------------------------------------------------------- modes and off-mode
@pytest.mark.parametrize("name", DATASETS)
def test_assign_recovers_the_modes_and_the_data_shares_are_the_weights(name):
    density, x, k = draw(name, 20_000, 15)
    assert float((density.assign(x) == k).double().mean()) > 0.99
    w = density.weights.double()
    err = torch.tensor(mode_shares(x, density), dtype=torch.float64) - w
    assert (err.abs() < 4 * torch.sqrt(w * (1 - w) / len(x)) + 0.002).all(), err


def test_checkerboard_assigns_the_light_cells_and_the_outside_to_no_mode():
    board = make_dataset("checkerboard")
    x = torch.tensor([[-3.0, -3.0], [-3.0, -1.0], [3.0, 3.0], [4.5, 0.0], [3.0, -3.0]])
    assert board.assign(x).tolist() == [0, -1, 7, -1, -1]


@pytest.mark.parametrize("name", GAUSSIAN_MIXTURES)
def test_off_mode_share_of_gaussian_mixture_data_is_the_tail_in_any_dim(name):
    """‖x − m_k‖²/s_k² ~ χ²_D for a draw of component k: off-mode with probability e^{-4.5} in every D."""
    density, x, _ = draw(name, 200_000, 16)
    assert abs(float(density.off_mode(x).double().mean()) - OFF_MODE_TAIL) < 1e-3


@pytest.mark.parametrize("name", ("ring8", "six", "grid25"))
def test_off_mode_in_2d_is_the_3_sigma_rule(name):
    density = make_dataset(name)
    g = torch.Generator().manual_seed(17)
    x = torch.cat([density.sample(50_000, g), 12 * torch.rand(50_000, 2, generator=g) - 6])
    old = (torch.cdist(x.double(), density.means.double()) > 3 * density.stds.double()).all(dim=1)
    assert torch.equal(density.off_mode(x), old) and 0.01 < float(old.double().mean()) < 0.99


def test_off_mode_in_1d_is_at_2_54_sigma():
    """D = 1: q₁ = χ²₁.isf(e^{-4.5}) = 6.448, |x − m| > 2.539 s (the rule was 3 s)."""
    mog = make_dataset("mog1d")
    x = torch.tensor([[3 + 0.3 * 2.53], [3 + 0.3 * 2.55], [-3 - 0.3 * 2.55], [0.5 * 2.53]])
    assert mog.off_mode(x).tolist() == [False, True, True, False]


# ----------------------------------------------------------------------------------------------------- plots
def test_plots_take_projected_samples(tmp_path):
    density, x, _ = draw("subspace16", 2000, 18)
    plot_panels({"data": density.project(x)}, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="project"):
        plot_panels({"data": x}, tmp_path / "q.png")

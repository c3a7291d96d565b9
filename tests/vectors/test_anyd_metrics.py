"""The any-D metrics against independent computations: closed forms, POT's exact 1-D transport, naive double loops."""
import math

import numpy as np
import ot
import pytest
import torch

from rmflow.tasks.anyd_metrics import (energy_distance, median_bandwidth, memorisation, mmd2, sliced_w2,
                                       unit_projections, vector_metrics, w2_squared_1d)


def test_projections_are_unit_and_seeded():
    th = unit_projections(5, 300, seed=3)
    assert th.shape == (300, 5)
    assert torch.allclose(th.norm(dim=1), torch.ones(300, dtype=torch.float64))
    assert torch.equal(th, unit_projections(5, 300, seed=3)) and not torch.equal(th, unit_projections(5, 300, 4))


@pytest.mark.parametrize("n,m", [(7, 7), (5, 8), (13, 4), (1, 6)])
def test_1d_w2_is_exact_for_unequal_sizes(n, m):
    """Against POT's exact optimal transport on the squared cost, uniform weights 1/n and 1/m."""
    g = torch.Generator().manual_seed(n * 31 + m)
    a, b = torch.randn(n, generator=g, dtype=torch.float64), 2 * torch.randn(m, generator=g, dtype=torch.float64) + 1
    cost = (a[:, None] - b[None, :]).pow(2).numpy()
    exact = ot.emd2(np.full(n, 1 / n), np.full(m, 1 / m), cost)
    assert float(w2_squared_1d(a[None], b[None])[0]) == pytest.approx(exact, rel=1e-9, abs=1e-12)


def test_sliced_w2_in_one_dimension_is_w2():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 1, generator=g), torch.randn(25, 1, generator=g) + 0.7
    cost = ot.dist(x.double().numpy(), y.double().numpy())
    exact = ot.emd2(np.full(40, 1 / 40), np.full(25, 1 / 25), cost)
    assert sliced_w2(x, y, num_projections=3, squared=True) == pytest.approx(exact, rel=1e-9)


def test_sliced_w2_of_shifted_gaussians():
    """N(0, I) against N(m, I): every slice is a shift by θ·m, so SW2² = mean_θ (θ·m)² for the drawn θ, and
    E_θ[(θ·m)²] = |m|²/D for θ uniform on the sphere."""
    d = 6
    g = torch.Generator().manual_seed(1)
    m = torch.tensor([1.5, -1.0, 0.5, 0.0, 2.0, -0.5], dtype=torch.float64)
    z = torch.randn(3000, d, generator=g, dtype=torch.float64)
    y = torch.randn(3000, d, generator=g, dtype=torch.float64) + m
    sq = sliced_w2(z, y, num_projections=1000, seed=5, squared=True)
    theta = unit_projections(d, 1000, seed=5)
    assert sq == pytest.approx(float((theta @ m).pow(2).mean()), abs=0.02)       # the drawn slices (sampling bias)
    assert sq == pytest.approx(float(m @ m) / d, abs=0.08)                        # the sphere's expectation
    assert sliced_w2(z, z + m, num_projections=200, seed=5, squared=True) == pytest.approx(
        float((unit_projections(d, 200, seed=5) @ m).pow(2).mean()), rel=1e-9)     # an exact shift: no bias at all


def naive_energy(x, y):
    x, y = x.double().tolist(), y.double().tolist()
    dist = lambda a, b: math.sqrt(sum((p - q) ** 2 for p, q in zip(a, b)))   # noqa: E731
    n, m = len(x), len(y)
    exy = sum(dist(a, b) for a in x for b in y) / (n * m)
    exx = sum(dist(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    eyy = sum(dist(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    return 2 * exy - exx - eyy


def naive_mmd2(x, y, h):
    x, y = x.double().tolist(), y.double().tolist()
    k = lambda a, b: math.exp(-sum((p - q) ** 2 for p, q in zip(a, b)) / (2 * h * h))   # noqa: E731
    n, m = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    return kxx + kyy - 2 * sum(k(a, b) for a in x for b in y) / (n * m)


def test_energy_and_mmd_match_naive_double_loops(monkeypatch):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(9, 3, generator=g, dtype=torch.float64)
    y = torch.randn(8, 3, generator=g, dtype=torch.float64) * 1.5 + 0.3     # 28 pairs: an even count
    import rmflow.tasks.anyd_metrics as metrics
    monkeypatch.setattr(metrics, "CELLS", 10)     # several chunks, so the diagonal is left out in each
    assert energy_distance(x, y) == pytest.approx(naive_energy(x, y), rel=1e-10)
    yl = y.tolist()
    pairs = [math.dist(yl[i], yl[j]) for i in range(8) for j in range(i + 1, 8)]
    h = float(np.median(pairs))
    assert median_bandwidth(y) == pytest.approx(h, rel=1e-12)
    assert mmd2(x, y) == pytest.approx(naive_mmd2(x, y, h), rel=1e-10)
    assert mmd2(x, y, bandwidth=0.7) == pytest.approx(naive_mmd2(x, y, 0.7), rel=1e-10)


def test_energy_and_mmd_small_for_one_distribution_and_large_for_another():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(1500, 4, generator=g), torch.randn(1500, 4, generator=g)
    assert abs(energy_distance(x, y)) < 0.02 and abs(mmd2(x, y)) < 0.003
    assert energy_distance(x, y + 1) > 0.5 and mmd2(x, y + 1) > 0.05


def test_memorisation_flags_copies_of_training_points():
    g = torch.Generator().manual_seed(4)
    train, held = torch.randn(400, 5, generator=g), torch.randn(200, 5, generator=g)
    fresh = torch.randn(1000, 5, generator=g)
    copies = train[torch.randint(400, (1000,), generator=g)] + 1e-4 * torch.randn(1000, 5, generator=g)
    good, bad = memorisation(fresh, train, held), memorisation(copies, train, held)
    assert 0.0 < good["share"] < 0.15 and 0.8 < good["ratio"] < 1.25
    assert bad["share"] == 1.0 and bad["ratio"] < 1e-3
    half = memorisation(torch.cat([fresh[:500], copies[:500]]), train, held)
    assert 0.45 < half["share"] < 0.6


def test_too_few_rows_give_nan():
    assert math.isnan(energy_distance(torch.randn(1, 2), torch.randn(5, 2)))
    assert math.isnan(mmd2(torch.randn(5, 2), torch.randn(1, 2)))


def test_vector_metrics_keys():
    x, y = torch.randn(50, 3), torch.randn(20, 3)
    assert set(vector_metrics(x, y)) == {"sw2", "energy", "mmd"}
    assert set(vector_metrics(x, y, train=torch.randn(30, 3))) == {"sw2", "energy", "mmd", "memo_share",
                                                                   "memo_ratio"}

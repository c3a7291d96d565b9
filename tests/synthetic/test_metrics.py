import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from rmflow.tasks.synthetic.data import make_dataset
from rmflow.tasks.synthetic.metrics import BANDWIDTHS, histogram_tv, mmd2, mmd_bandwidths, sample_metrics, wasserstein2


def test_tv_of_identical_and_disjoint_samples():
    x = torch.randn(5000, 2)
    assert histogram_tv(x, x) == (0.0, 0.0)
    tv, half = histogram_tv(torch.zeros(100, 2), torch.full((100, 2), 3.0))
    assert tv == pytest.approx(2.0) and half == pytest.approx(1.0)


def test_tv_between_two_uniform_halves():
    """U[0,1] vs U[0.5,1.5] in 1-D: ∫|p - q| = 1 (bins align at 0.5)."""
    g = torch.Generator().manual_seed(0)
    a = torch.rand(400_000, 1, generator=g)
    b = torch.rand(400_000, 1, generator=g) + 0.5
    tv, half = histogram_tv(a, b, bin_width=0.1)
    assert abs(tv - 1.0) < 0.01 and abs(half - 0.5) < 0.005


def test_w2_between_shifted_samples_is_the_shift():
    x = torch.randn(1000, 2, dtype=torch.float64)
    shift = torch.tensor([1.5, -2.0], dtype=torch.float64)
    assert wasserstein2(x, x + shift) == pytest.approx(2.5, abs=1e-6)


def test_w2_between_gaussians_closed_form():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2000, 1, generator=g)
    y = 3 * torch.randn(2000, 1, generator=g) + 1   # W2² = (1)² + (3 - 1)² = 5
    assert abs(wasserstein2(x, y) - math.sqrt(5)) < 0.15


def test_mmd_is_near_zero_for_same_distribution_and_positive_otherwise():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(1500, 2, generator=g), torch.randn(1500, 2, generator=g)
    assert abs(mmd2(x, y)) < 5e-3
    assert mmd2(x, y + 1.0) > 0.1


def test_mmd_bandwidths_grow_with_the_dimension():
    """D ≤ 2 keep the former bandwidths; in D = 64, where typical distances are √32 times those of D = 2, so are the
    bandwidths: the unscaled kernels are ≈ 0 for almost every pair and barely see a change of scale."""
    assert mmd_bandwidths(1) == mmd_bandwidths(2) == BANDWIDTHS
    assert mmd_bandwidths(64) == pytest.approx([math.sqrt(32) * h for h in BANDWIDTHS])
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(1000, 64, generator=g), 1.2 * torch.randn(1000, 64, generator=g)
    assert mmd2(x, y, mmd_bandwidths(64)) > max(0.01, 10 * mmd2(x, y))


def test_mixture_log_density_matches_scipy():
    mog = make_dataset("mog1d")
    x = torch.linspace(-5, 5, 101)[:, None]
    ref = np.log(sum(w * norm.pdf(x.numpy()[:, 0], m, s) for w, m, s in
                     zip([0.3, 0.4, 0.3], [-3, 0, 3], [0.3, 0.5, 0.3])))
    np.testing.assert_allclose(mog.log_prob(x).numpy(), ref, rtol=1e-6)  # parameters are float32


def test_off_mode_share_of_the_data_itself():
    """For a 2-D isotropic Gaussian P(‖z‖ > 3) = exp(-9/2) ≈ 0.0111."""
    ring = make_dataset("ring8")
    x = ring.sample(400_000, torch.Generator().manual_seed(3))
    assert abs(ring.off_mode(x).double().mean().item() - math.exp(-4.5)) < 1e-3


def test_checkerboard_samples_lie_on_dark_cells():
    board = make_dataset("checkerboard")
    x = board.sample(10_000, torch.Generator().manual_seed(4))
    assert board.inside(x).all()
    assert not board.inside(torch.tensor([[-3.0, -1.0]])).any()   # cell (row 1, col 0) is light


def test_sample_metrics_reject_nan():
    ring = make_dataset("ring8")
    x = ring.sample(100)
    bad = x.clone()
    bad[3, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        sample_metrics(bad, x, ring, num_ot=50)

"""Metrics against closed forms and on identical sets."""
import math

import numpy as np
import pytest
from scipy.stats import norm

pytest.importorskip("scoringrules")
from rmflow.tasks.dynamics import metrics as M  # noqa: E402


def gaussian_crps(mu, sigma, y):
    """Analytic CRPS of N(mu, sigma²) at y (Gneiting & Raftery 2007)."""
    z = (y - mu) / sigma
    return sigma * (z * (2 * norm.cdf(z) - 1) + 2 * norm.pdf(z) - 1 / math.sqrt(math.pi))


def quantile_ensemble(mu, sigma, m):
    """m members at the (i − ½)/m quantiles of N(mu, sigma²): an ensemble whose CRPS converges fast."""
    return mu + sigma * norm.ppf((np.arange(m) + 0.5) / m)


def test_crps_of_gaussian_ensemble_matches_analytic_per_step():
    m, h = 1000, 5
    mus, sigmas = np.linspace(-1, 1, h), np.linspace(0.5, 2.0, h)
    truth = np.array([0.3, -0.7, 2.0, 0.0, 1.5])
    f = np.stack([quantile_ensemble(mus[j], sigmas[j], m) for j in range(h)], axis=-1)    # (m, h)
    forecasts = f[None, :, None, :]            # (N=1, M, C=1, H)
    got = M.crps_per_step(forecasts, truth[None, None, :], estimator="nrg")
    want = gaussian_crps(mus, sigmas, truth)
    np.testing.assert_allclose(got, want, atol=2e-3)
    # and the fair estimator agrees for a large ensemble
    np.testing.assert_allclose(M.crps_per_step(forecasts, truth[None, None, :], "fair"), want, atol=2e-3)


def test_crps_averages_over_contexts_and_channels():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(3, 50, 2, 4))
    y = rng.normal(size=(3, 2, 4))
    per = np.array([[[np.mean(np.abs(f[n, :, c, t] - y[n, c, t]))
                      - 0.5 * np.mean(np.abs(f[n, :, c, t][:, None] - f[n, :, c, t][None]))
                      for t in range(4)] for c in range(2)] for n in range(3)])
    np.testing.assert_allclose(M.crps_per_step(f, y, "nrg"), per.mean(axis=(0, 1)), rtol=1e-10)


def test_energy_score_in_one_dimension_is_crps_and_matches_definition():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(4, 30, 1, 1))
    y = rng.normal(size=(4, 1, 1))
    np.testing.assert_allclose(M.energy_score(f, y, "nrg"), M.crps_per_step(f, y, "nrg").mean(), rtol=1e-10)
    f = rng.normal(size=(2, 20, 3, 2))
    y = rng.normal(size=(2, 3, 2))
    fv, yv = f.reshape(2, 20, 6), y.reshape(2, 6)
    es = [np.linalg.norm(fv[n] - yv[n], axis=1).mean()
          - 0.5 * np.linalg.norm(fv[n][:, None] - fv[n][None], axis=-1).mean() for n in range(2)]
    assert M.energy_score(f, y, "nrg") == pytest.approx(np.mean(es), rel=1e-10)


def test_perfect_ensemble_scores_zero():
    rng = np.random.default_rng(2)
    y = rng.normal(size=(5, 3, 8))
    f = np.repeat(y[:, None], 16, axis=1)
    out = M.conditional_metrics(f, y)
    for key in ("crps", "crps_first", "crps_last", "energy", "rel_err_mean", "spread"):
        assert out[key] == pytest.approx(0.0, abs=1e-12), key
    assert out["coverage90"] == 1.0


def test_coverage_and_relative_error():
    rng = np.random.default_rng(3)
    f = rng.normal(size=(400, 2000, 1, 1))
    y = rng.normal(size=(400, 1, 1))
    assert M.coverage(f, y, 0.9) == pytest.approx(0.9, abs=0.04)
    assert M.coverage(f * 0.01, y, 0.9) < 0.1
    y = np.ones((2, 1, 4))
    f = np.full((2, 3, 1, 4), 1.5)                      # mean off by 0.5 everywhere: ‖0.5·1‖/‖1‖ = 0.5
    assert M.relative_error_of_mean(f, y) == pytest.approx(0.5)


def test_marginal_w1_and_window_max():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(300, 2, 16))
    assert M.marginal_w1(x, x) == 0.0
    assert M.marginal_w1(x + 0.7, x) == pytest.approx(0.7)
    assert M.window_max_w1(x, x) == 0.0
    assert M.window_max_w1(x + 0.3, x) == pytest.approx(0.3)
    assert M.tail_exceedance(x, x, 0.99) <= 0.011
    assert M.tail_exceedance(x + 10, x, 0.99) == 1.0
    # flat windows: a second draw sits near q = 0.05, constant windows all fall below, scaled-up ones none
    y = np.random.default_rng(1).standard_normal(x.shape)
    assert abs(M.flat_share(y, x) - 0.05) < 0.03
    assert M.flat_share(0 * x + 3.0, x) == 1.0 and M.flat_share(10 * x, x) == 0.0


def test_autocorrelation_of_ar1_and_acf_distance():
    rng = np.random.default_rng(5)
    phi, n, length = 0.8, 400, 256
    x = np.zeros((n, 1, length))
    x[:, 0, 0] = rng.normal(size=n) / math.sqrt(1 - phi ** 2)   # stationary start
    for t in range(1, length):
        x[:, 0, t] = phi * x[:, 0, t - 1] + rng.normal(size=n)
    acf = M.autocorrelation(x, 5)[0]
    np.testing.assert_allclose(acf, phi ** np.arange(6), atol=0.02)
    white = rng.normal(size=(n, 1, length))
    assert M.acf_distance(x, x) == 0.0
    assert M.acf_distance(x, white, 5) == pytest.approx(np.mean(phi ** np.arange(1, 6)), abs=0.02)


def test_power_spectrum_of_sinusoid_and_distance():
    length = 64
    t = np.arange(length)
    x = np.sin(2 * np.pi * 8 * t / length)[None, None].repeat(3, axis=0)    # 8 cycles per window
    p = M.power_spectrum(x)[0]
    assert np.argmax(p) == 8
    assert p[8] == pytest.approx(length / 4)                              # |rfft|² / L = (L/2)² / L
    assert M.spectrum_distance(x, x) == 0.0
    # only the peak bin carries power, so the mean |Δ log10 P| over the 32 non-zero frequencies is log10(4)/32
    assert M.spectrum_distance(2 * x, x) == pytest.approx(math.log10(4) / 32, rel=1e-6)
    # doubling the amplitude multiplies power by 4 at the peak: log10 4 there
    assert np.log10(M.power_spectrum(2 * x)[0, 8] / p[8]) == pytest.approx(math.log10(4))


def test_unconditional_metrics_identical_sets():
    x = np.random.default_rng(6).normal(size=(50, 3, 32))
    out = M.unconditional_metrics(x, x)
    for key in ("w1_marginal", "acf_dist", "psd_dist", "max_w1"):
        assert out[key] == 0.0, key

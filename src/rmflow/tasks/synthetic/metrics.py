"""Sample-quality metrics for low-dimensional densities.

- TV from histograms on a fixed grid of `bin_width` cells: tv = Σ|p̂ - q̂| ∈ [0, 2] (the convention whose values
  exceed 1, as in the RMFlow paper's table) and tv_half = ½Σ|p̂ - q̂| ∈ [0, 1]. p̂, q̂ are cell frequencies.
- W2: exact optimal transport between the two empirical sets (POT's network simplex), squared-Euclidean cost.
- MMD²: unbiased estimate with a sum of Gaussian kernels at several bandwidths.
- mean log-density of the samples under the true density, and the share of samples off every mode
  (farther than 3 std from every mode centre; outside the dark cells for the checkerboard).
"""
from __future__ import annotations

import math

import numpy as np
import ot
import torch


def histogram_tv(x: torch.Tensor, y: torch.Tensor, bin_width: float = 0.2, bound: float = 8.0
                 ) -> tuple[float, float]:
    """(tv in [0, 2], tv_half in [0, 1]) between samples x (N, D) and y (M, D), D in {1, 2}.

    Cells of side bin_width tile [-bound, bound]^D; samples outside fall in one overflow cell.
    """
    def freq(a: torch.Tensor) -> np.ndarray:
        a = a.detach().double().cpu().numpy()
        nb = int(round(2 * bound / bin_width))
        idx = np.floor((a + bound) / bin_width).astype(np.int64)
        inside = ((idx >= 0) & (idx < nb)).all(axis=1)
        flat = np.ravel_multi_index(tuple(idx[inside].T), (nb,) * a.shape[1])
        counts = np.bincount(flat, minlength=nb ** a.shape[1]).astype(np.float64)
        counts = np.append(counts, (~inside).sum())
        return counts / len(a)

    tv = float(np.abs(freq(x) - freq(y)).sum())
    return tv, tv / 2


def wasserstein2(x: torch.Tensor, y: torch.Tensor) -> float:
    """Exact W2 between the empirical measures of x (N, D) and y (M, D)."""
    a = x.detach().double().cpu().numpy()
    b = y.detach().double().cpu().numpy()
    cost = ot.dist(a, b)  # squared Euclidean
    w = ot.emd2(np.full(len(a), 1 / len(a)), np.full(len(b), 1 / len(b)), cost, numItermax=10_000_000)
    return float(math.sqrt(max(w, 0.0)))


def mmd2(x: torch.Tensor, y: torch.Tensor, bandwidths=(0.1, 0.3, 1.0, 3.0)) -> float:
    """Unbiased MMD² with k(a, b) = Σ_h exp(-‖a - b‖² / (2h²))."""
    x, y = x.detach().double(), y.detach().double()

    def k(a, b):
        d2 = torch.cdist(a, b).pow(2)
        return sum(torch.exp(-d2 / (2 * h * h)) for h in bandwidths)

    n, m = len(x), len(y)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(sxx + syy - 2 * kxy.mean())


def sample_metrics(samples: torch.Tensor, reference: torch.Tensor, density, num_ot: int = 2000,
                   bin_width: float = 0.2) -> dict[str, float]:
    """All metrics of `samples` against held-out `reference` data and the true `density`."""
    if not torch.isfinite(samples).all():
        bad = (~torch.isfinite(samples)).any(dim=1).float().mean().item()
        raise ValueError(f"samples contain NaN/inf ({bad:.1%} of rows)")
    tv, tv_half = histogram_tv(samples, reference, bin_width)
    logp = density.log_prob(samples)
    return {
        "tv": tv,
        "tv_half": tv_half,
        "w2": wasserstein2(samples[:num_ot], reference[:num_ot]),
        "mmd": mmd2(samples[:num_ot], reference[:num_ot]),
        "log_density": float(logp[torch.isfinite(logp)].mean()) if torch.isfinite(logp).any() else -math.inf,
        "off_mode": float(density.off_mode(samples).double().mean()),
    }

"""Sample-quality metrics for the synthetic targets, in any dimension D (keys of `sample_metrics`).

- tv, tv_half: TV from histograms on a fixed grid of `bin_width` cells, of the samples' view density.project(x):
  the samples themselves for D ≤ 2, for D > 2 their projection onto the target's 2-D plane (so the TV of that 2-D
  marginal, blind to the other D − 2 directions). tv = Σ|p̂ − q̂| ∈ [0, 2] (the convention whose values exceed 1, as
  in the RMFlow paper's table) and tv_half = ½Σ|p̂ − q̂| ∈ [0, 1]; p̂, q̂ are cell frequencies.
- w2: exact optimal transport between the first num_ot samples and reference points (POT's network simplex),
  squared-Euclidean cost, in all D dims.
- sliced_w2: sqrt(mean_θ W2²(θ·x, θ·y)) over 200 seeded directions θ uniform on S^{D−1}, each 1-D W2 exact
  (anyd_metrics.sliced_w2), on all samples. D = 1: the exact W2.
- energy: energy distance 2E‖X − Y‖ − E‖X − X'‖ − E‖Y − Y'‖ (within-set means leave out i = i', so ≈ 0, possibly
  slightly < 0, for one distribution), on the first num_ot samples (anyd_metrics.energy_distance).
- mmd: unbiased MMD², a sum of Gaussian kernels at bandwidths (0.1, 0.3, 1, 3)·√(D/2) for D ≥ 2, unscaled for
  D = 1: typical distances grow like √D, and D ≤ 2 keep their former values.
- log_density: mean log p(x) of the samples under the true density (over the samples where it is finite).
- off_mode: the share of samples off every mode (data.py's rule: a χ²_D tail of e^{-4.5}; outside the dark cells
  for the checkerboard).
- mode_err: max_k |share_k − w_k|, with share_k the share of samples that density.assign puts in mode k (an
  off-mode sample counts in the mode it is assigned to; the checkerboard's samples outside the dark cells count in
  none) and w_k the mode's true weight.
- dropped_modes: the number of modes k with share_k < 0.2·w_k.
`mode_shares(samples, density)` gives the shares themselves (a list, so not a column of the tables).
"""
from __future__ import annotations

import math

import numpy as np
import ot
import torch

from ..anyd_metrics import energy_distance, sliced_w2

BANDWIDTHS = (0.1, 0.3, 1.0, 3.0)   # MMD kernel bandwidths in D ≤ 2
NUM_SLICES = 200                     # directions of the sliced W2 (seed 0)
DROP_RATIO = 0.2                     # a mode is dropped below this fraction of its weight
METRIC_FORMAT = {"tv": ("TV ∫\\|p−q\\| ∈[0,2]", ".3f"), "tv_half": ("TV ½∫\\|p−q\\|", ".3f"), "w2": ("W2", ".3f"),
                 "sliced_w2": ("sliced W2", ".3f"), "energy": ("energy dist.", ".4f"), "mmd": ("MMD²", ".4f"),
                 "log_density": ("mean log-density", ".2f"), "off_mode": ("off-mode share", ".4f"),
                 "mode_err": ("max \\|share−w\\|", ".3f"), "dropped_modes": ("dropped modes", ".1f")}


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


def mmd_bandwidths(dim: int) -> tuple[float, ...]:
    """BANDWIDTHS·√(max(D, 2)/2): the kernel bandwidths for data in D dims."""
    return tuple(h * math.sqrt(max(dim, 2) / 2) for h in BANDWIDTHS)


def mmd2(x: torch.Tensor, y: torch.Tensor, bandwidths=BANDWIDTHS) -> float:
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


def mode_shares(samples: torch.Tensor, density) -> list[float]:
    """share_k = #{i: density.assign(x_i) = k} / N for each of the density's K modes: K floats, summing to less
    than 1 where the density assigns samples to no mode (-1, the checkerboard's light cells)."""
    k = density.assign(samples)
    return (torch.bincount(k[k >= 0], minlength=density.modes).double() / len(k)).tolist()


def mode_errors(shares: list[float], weights: torch.Tensor) -> dict[str, float]:
    """{"mode_err": max_k |share_k − w_k|, "dropped_modes": #{k: share_k < DROP_RATIO·w_k}} (0 for no modes)."""
    s, w = torch.tensor(shares, dtype=torch.float64), weights.double()
    return {"mode_err": float((s - w).abs().max()) if len(w) else 0.0,
            "dropped_modes": float((s < DROP_RATIO * w).sum())}


def sample_metrics(samples: torch.Tensor, reference: torch.Tensor, density, num_ot: int = 2000,
                   bin_width: float = 0.2) -> dict[str, float]:
    """The metrics of the module docstring for `samples` (N, D) against held-out `reference` data (M, D) and the
    true `density`: a dict of floats, one per METRIC_FORMAT key."""
    if not torch.isfinite(samples).all():
        bad = (~torch.isfinite(samples)).any(dim=1).float().mean().item()
        raise ValueError(f"samples contain NaN/inf ({bad:.1%} of rows)")
    tv, tv_half = histogram_tv(density.project(samples), density.project(reference), bin_width)
    x, y = samples[:num_ot], reference[:num_ot]
    logp = density.log_prob(samples)
    return {
        "tv": tv,
        "tv_half": tv_half,
        "w2": wasserstein2(x, y),
        "sliced_w2": sliced_w2(samples, reference, NUM_SLICES, seed=0),
        "energy": energy_distance(x, y),
        "mmd": mmd2(x, y, mmd_bandwidths(samples.shape[1])),
        "log_density": float(logp[torch.isfinite(logp)].mean()) if torch.isfinite(logp).any() else -math.inf,
        "off_mode": float(density.off_mode(samples).double().mean()),
        **mode_errors(mode_shares(samples, density), density.weights),
    }

"""Sample-quality metrics in any dimension D: samples x (N, D) against reference data y (M, D), N and M may differ.

All of them compute in float64 and in chunks, so that N, M of some 10⁴ fit in memory.

- Sliced Wasserstein-2 (`sliced_w2`): SW2²(x, y) = E_θ[W2²(θ·x, θ·y)], θ uniform on the unit sphere S^{D−1},
  estimated with L fixed projections drawn from a seeded generator (the same L directions for every call with the
  same seed, so that two models are scored on the same slices). Each 1-D W2² is exact between the two empirical
  measures: W2² = ∫₀¹ (F_x⁻¹(u) − F_y⁻¹(u))² du, where the empirical quantile functions are step functions that
  change only at u = i/N and u = j/M; the integral is a finite sum over the merged breakpoints (no subsampling).
  Reported as SW2 = sqrt(SW2²), in the units of the data. For N(0, I) against N(m, I), θ·x − θ·y is a shift by θ·m
  and E_θ[(θ·m)²] = |m|²/D.
- Energy distance (`energy_distance`): E = 2·E‖X − Y‖ − E‖X − X'‖ − E‖Y − Y'‖, unbiased (the within-set means
  leave out i = j); ≥ 0 in expectation, zero iff the distributions agree, so a finite estimate can be slightly < 0.
- MMD² (`mmd2`): unbiased, Gaussian kernel k(a, b) = exp(−‖a − b‖²/(2h²)) with the median heuristic
  h = median ‖y_i − y_j‖ (i < j) over the reference (its first 2 000 rows) unless h is given.
- Memorisation (`memorisation`): d_s = distance of each sample to its nearest training point, d_h = the same for
  held-out points (never trained on). share = P(d_s ≤ q₀.₀₅(d_h)): about 0.05 for a model that generalises like
  fresh data, 1 for copies of training points; ratio = median(d_s) / median(d_h): about 1 when generalising,
  0 for copies.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

CELLS = 4_000_000   # float64 entries of one chunk of a distance matrix (32 MB)


def _f64(a: torch.Tensor) -> torch.Tensor:
    a = a.detach().to("cpu", torch.float64)
    return a.reshape(len(a), -1)


def _rows_per_chunk(other: int) -> int:
    return max(1, CELLS // max(other, 1))


# ----------------------------------------------------------------------------------------- sliced Wasserstein-2
def unit_projections(dim: int, num: int, seed: int = 0) -> torch.Tensor:
    """num directions uniform on the unit sphere S^{dim−1} (normalised Gaussians) from a seeded generator:
    (num, dim) float64."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(num, dim, generator=g, dtype=torch.float64)
    return z / z.norm(dim=1, keepdim=True).clamp_min(1e-300)


def w2_squared_1d(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact squared W2 between the empirical measures of the rows of a (L, N) and b (L, M): (L,).

    W2² = Σ_k (u_k − u_{k−1})·(a_(⌈u·N⌉) − b_(⌈u·M⌉))² over the merged breakpoints u_k of {i/N} ∪ {j/M}, where
    a_(i) is the i-th smallest value (evaluated at the midpoint of each interval)."""
    a, b = a.to(torch.float64).sort(dim=1).values, b.to(torch.float64).sort(dim=1).values
    n, m = a.shape[1], b.shape[1]
    u = torch.cat([torch.arange(1, n + 1, dtype=torch.float64) / n,
                   torch.arange(1, m + 1, dtype=torch.float64) / m]).unique()   # sorted, ends at 1
    lo = torch.cat([u.new_zeros(1), u[:-1]])
    mid = (lo + u) / 2
    ia = (mid * n).floor().long().clamp(max=n - 1)
    ib = (mid * m).floor().long().clamp(max=m - 1)
    return ((a[:, ia] - b[:, ib]).pow(2) * (u - lo)).sum(dim=1)


def sliced_w2(x: torch.Tensor, y: torch.Tensor, num_projections: int = 128, seed: int = 0,
              squared: bool = False) -> float:
    """Sliced W2 between x (N, D) and y (M, D) over `num_projections` seeded directions: sqrt(mean_θ W2²(θ·x, θ·y)),
    or the mean of the W2² itself with squared=True."""
    x, y = _f64(x), _f64(y)
    theta = unit_projections(x.shape[1], num_projections, seed)
    per = max(1, CELLS // (len(x) + len(y)))       # projections per chunk
    total = sum(float(w2_squared_1d(th @ x.T, th @ y.T).sum()) for th in theta.split(per))   # th: (L', D)
    mean = total / num_projections
    return mean if squared else math.sqrt(max(mean, 0.0))


# ----------------------------------------------------------------------------------- kernel sums over all pairs
def pair_sum(a: torch.Tensor, b: torch.Tensor, f: Callable[[torch.Tensor], torch.Tensor],
             same: bool = False) -> float:
    """Σ_{i,j} f(‖a_i − b_j‖) for a (N, D), b (M, D), chunked over the rows of a; same=True (a is b) leaves out
    the pairs i = j. float64."""
    a, b = _f64(a), _f64(b)
    total, step = 0.0, _rows_per_chunk(len(b))
    for start in range(0, len(a), step):
        v = f(torch.cdist(a[start:start + step], b))
        if same:
            rows = torch.arange(len(v))
            v[rows, rows + start] = 0.0
        total += float(v.sum())
    return total


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased energy distance 2·mean‖x_i − y_j‖ − mean_{i≠i'}‖x_i − x_i'‖ − mean_{j≠j'}‖y_j − y_j'‖ between
    x (N, D) and y (M, D); nan unless N, M ≥ 2."""
    n, m = len(x), len(y)
    if min(n, m) < 2:
        return math.nan
    dist = lambda d: d   # noqa: E731
    exy = pair_sum(x, y, dist) / (n * m)
    exx = pair_sum(x, x, dist, same=True) / (n * (n - 1))
    eyy = pair_sum(y, y, dist, same=True) / (m * (m - 1))
    return 2 * exy - exx - eyy


def median_bandwidth(y: torch.Tensor, max_points: int = 2000) -> float:
    """Median heuristic h = median_{i<j} ‖y_i − y_j‖ over the first max_points rows of y (M, D); 1.0 if that is 0."""
    y = _f64(y)[:max_points]
    d = torch.cdist(y, y)
    iu = torch.triu_indices(len(y), len(y), offset=1)
    h = float(torch.quantile(d[iu[0], iu[1]], 0.5)) if len(y) > 1 else 0.0
    return h if h > 0 else 1.0


def mmd2(x: torch.Tensor, y: torch.Tensor, bandwidth: float | None = None) -> float:
    """Unbiased MMD² between x (N, D) and y (M, D) with k(a, b) = exp(−‖a − b‖²/(2h²)), h = bandwidth or
    median_bandwidth(y):  Σ_{i≠i'} k(x_i, x_i')/(N(N−1)) + Σ_{j≠j'} k(y_j, y_j')/(M(M−1)) − 2 Σ k(x_i, y_j)/(NM);
    nan unless N, M ≥ 2."""
    n, m = len(x), len(y)
    if min(n, m) < 2:
        return math.nan
    h = bandwidth if bandwidth is not None else median_bandwidth(y)
    k = lambda d: d.square_().mul_(-1 / (2 * h * h)).exp_()   # noqa: E731
    return (pair_sum(x, x, k, same=True) / (n * (n - 1)) + pair_sum(y, y, k, same=True) / (m * (m - 1))
            - 2 * pair_sum(x, y, k) / (n * m))


# ------------------------------------------------------------------------------------------------ memorisation
def nearest_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance from each row of a (N, D) to its nearest row of b (M, D): (N,) float64."""
    a, b = _f64(a), _f64(b)
    step = _rows_per_chunk(len(b))
    return torch.cat([torch.cdist(a[s:s + step], b).min(dim=1).values for s in range(0, len(a), step)])


def memorisation(samples: torch.Tensor, train: torch.Tensor, heldout: torch.Tensor, q: float = 0.05
                 ) -> dict[str, float]:
    """{"share", "ratio"} for samples (N, D), the training rows (T, D) and held-out rows (H, D):
    share = mean_i [d_s,i ≤ quantile_q(d_h)], ratio = median(d_s) / median(d_h) (nan if median(d_h) = 0), where
    d_s, d_h are the nearest-training-row distances of the samples and of the held-out rows."""
    d_s, d_h = nearest_distance(samples, train), nearest_distance(heldout, train)
    tau = float(torch.quantile(d_h, q))
    med_h = float(torch.quantile(d_h, 0.5))
    return {"share": float((d_s <= tau).double().mean()),
            "ratio": float(torch.quantile(d_s, 0.5)) / med_h if med_h > 0 else math.nan}


def vector_metrics(samples: torch.Tensor, reference: torch.Tensor, train: torch.Tensor | None = None,
                   num_projections: int = 128, seed: int = 0) -> dict[str, float]:
    """All of the above for samples (N, D) against held-out reference rows (M, D), and memorisation against the
    training rows (T, D) when given. Keys: sw2, energy, mmd, and memo_share, memo_ratio."""
    out = {"sw2": sliced_w2(samples, reference, num_projections, seed),
           "energy": energy_distance(samples, reference),
           "mmd": mmd2(samples, reference)}
    if train is not None:
        memo = memorisation(samples, train, reference)
        out.update(memo_share=memo["share"], memo_ratio=memo["ratio"])
    return out

"""Metrics of the time-series task, in the normalised units the model works in.

Conditional (an ensemble of M forecasts per context; forecasts F (N, M, C, H), truth y (N, C, H)):
- CRPS per step and averaged (scoringrules' ensemble estimator, "fair" by default):
  CRPS(F, y) = E|X − y| − ½ E|X − X'|, per context, channel and step; averaged over contexts and channels.
- energy score of the whole forecast trajectory (C·H variables): ES = E‖X − y‖ − ½ E‖X − X'‖.
- relative error of the ensemble mean: mean over contexts of ‖F̄ − y‖₂ / ‖y‖₂ (norm over channels and steps).
- coverage of the central 90 % interval: share of (context, channel, step) with q05 ≤ y ≤ q95 of the ensemble.

Unconditional (windows X (N, C, L) against held-out windows Y (N', C, L)):
- marginal W1: 1-D Wasserstein-1 distance per channel between all values, averaged over channels.
- ACF distance: mean over channels and lags 1..L/2 of |ρ_X(τ) − ρ_Y(τ)|, with ρ(τ) the lag-τ autocorrelation
  pooled over windows (centred and scaled by each set's own channel mean and variance).
- spectrum distance: mean over channels and frequencies of |log10 P_X(f) − log10 P_Y(f)|, P the average
  periodogram |rfft(x − mean_t x)|²/L of the windows (frequency 0 left out).
- window-max W1: W1 between the distributions of the per-window maximum, averaged over channels (the
  extreme-event statistic); and the share of generated windows whose maximum exceeds the held-out 99 % quantile
  (0.01 when the tail is right).
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.stats import wasserstein_distance


def _np(x) -> np.ndarray:
    return x.detach().cpu().double().numpy() if torch.is_tensor(x) else np.asarray(x, dtype=np.float64)


# ------------------------------------------------------------------------------------------------ conditional
def crps_per_step(forecasts, truth, estimator: str = "fair") -> np.ndarray:
    """forecasts (N, M, C, H), truth (N, C, H) -> CRPS per step (H,), averaged over contexts and channels."""
    import scoringrules as sr
    f, y = _np(forecasts), _np(truth)
    scores = sr.crps_ensemble(y, f, m_axis=1, estimator=estimator, backend="numpy")   # (N, C, H)
    return np.asarray(scores).mean(axis=(0, 1))


def energy_score(forecasts, truth, estimator: str = "fair") -> float:
    """forecasts (N, M, C, H), truth (N, C, H) -> mean energy score over contexts (trajectory as one vector)."""
    import scoringrules as sr
    f, y = _np(forecasts), _np(truth)
    n, m = f.shape[:2]
    es_est = "fair" if estimator == "fair" else "nrg"
    scores = sr.es_ensemble(y.reshape(n, -1), f.reshape(n, m, -1), m_axis=-2, v_axis=-1, estimator=es_est,
                            backend="numpy")
    return float(np.mean(scores))


def relative_error_of_mean(forecasts, truth) -> float:
    f, y = _np(forecasts), _np(truth)
    err = np.linalg.norm((f.mean(axis=1) - y).reshape(len(y), -1), axis=1)
    return float(np.mean(err / np.maximum(np.linalg.norm(y.reshape(len(y), -1), axis=1), 1e-12)))


def coverage(forecasts, truth, level: float = 0.9) -> float:
    f, y = _np(forecasts), _np(truth)
    lo, hi = np.quantile(f, [(1 - level) / 2, (1 + level) / 2], axis=1)
    return float(np.mean((y >= lo) & (y <= hi)))


def conditional_metrics(forecasts, truth, estimator: str = "fair") -> dict[str, float]:
    per_step = crps_per_step(forecasts, truth, estimator)
    return {"crps": float(per_step.mean()), "crps_first": float(per_step[0]), "crps_last": float(per_step[-1]),
            "energy": energy_score(forecasts, truth, estimator), "rel_err_mean": relative_error_of_mean(forecasts, truth),
            "coverage90": coverage(forecasts, truth, 0.9), "spread": float(_np(forecasts).std(axis=1).mean())}


# ---------------------------------------------------------------------------------------------- unconditional
def marginal_w1(x, y) -> float:
    """x (N, C, L), y (N', C, L) -> mean over channels of W1 between all values of the channel."""
    a, b = _np(x), _np(y)
    return float(np.mean([wasserstein_distance(a[:, c].ravel(), b[:, c].ravel()) for c in range(a.shape[1])]))


def autocorrelation(x, max_lag: int) -> np.ndarray:
    """x (N, C, L) -> (C, max_lag + 1): ρ(τ) = mean_{n,t} (x_t − μ)(x_{t+τ} − μ) / var, μ and var per channel."""
    a = _np(x)
    a = a - a.mean(axis=(0, 2), keepdims=True)
    var = (a ** 2).mean(axis=(0, 2))
    var = np.where(var > 0, var, 1.0)
    return np.stack([(a[..., : a.shape[-1] - k] * a[..., k:]).mean(axis=(0, 2)) / var
                     for k in range(max_lag + 1)], axis=1)


def acf_distance(x, y, max_lag: int | None = None) -> float:
    lag = max_lag or _np(x).shape[-1] // 2
    return float(np.abs(autocorrelation(x, lag)[:, 1:] - autocorrelation(y, lag)[:, 1:]).mean())


def power_spectrum(x) -> np.ndarray:
    """x (N, C, L) -> average periodogram (C, L//2 + 1) of the windows, each centred in time."""
    a = _np(x)
    a = a - a.mean(axis=-1, keepdims=True)
    return (np.abs(np.fft.rfft(a, axis=-1)) ** 2 / a.shape[-1]).mean(axis=0)


def spectrum_distance(x, y, floor: float = 1e-12) -> float:
    px, py = power_spectrum(x)[:, 1:], power_spectrum(y)[:, 1:]
    return float(np.abs(np.log10(px + floor) - np.log10(py + floor)).mean())


def window_max_w1(x, y) -> float:
    a, b = _np(x).max(axis=-1), _np(y).max(axis=-1)     # (N, C)
    return float(np.mean([wasserstein_distance(a[:, c], b[:, c]) for c in range(a.shape[1])]))


def tail_exceedance(x, y, q: float = 0.99) -> float:
    """Share of generated windows whose maximum (any channel) exceeds the held-out q-quantile of that channel."""
    a, b = _np(x).max(axis=-1), _np(y).max(axis=-1)
    thr = np.quantile(b, q, axis=0)
    return float(np.mean(a > thr[None]))


def flat_share(x, y, q: float = 0.05) -> float:
    """Share of (generated window, channel) pairs whose range max − min falls below the held-out q-quantile of
    that channel's window ranges: q for samples distributed like the data, more for a model that makes flat
    (quiescent) windows the data rarely have."""
    a, b = _np(x), _np(y)
    ra, rb = a.max(axis=-1) - a.min(axis=-1), b.max(axis=-1) - b.min(axis=-1)    # (N, C)
    return float(np.mean(ra < np.quantile(rb, q, axis=0)[None]))


def unconditional_metrics(x, y) -> dict[str, float]:
    return {"w1_marginal": marginal_w1(x, y), "acf_dist": acf_distance(x, y), "psd_dist": spectrum_distance(x, y),
            "max_w1": window_max_w1(x, y), "tail_q99": tail_exceedance(x, y), "flat_q05": flat_share(x, y)}


CONDITIONAL_FORMAT = {"crps": ".4f", "crps_first": ".4f", "crps_last": ".4f", "energy": ".3f",
                      "rel_err_mean": ".3f", "coverage90": ".3f", "spread": ".3f"}
UNCONDITIONAL_FORMAT = {"w1_marginal": ".4f", "acf_dist": ".4f", "psd_dist": ".3f", "max_w1": ".4f",
                        "tail_q99": ".4f", "flat_q05": ".4f"}
LABELS = {"crps": "CRPS", "crps_first": "CRPS step 1", "crps_last": "CRPS last step", "energy": "energy score",
          "rel_err_mean": "rel. err. of mean", "coverage90": "90 % coverage", "spread": "ens. std",
          "w1_marginal": "marginal W1", "acf_dist": "ACF dist", "psd_dist": "log-PSD dist",
          "max_w1": "window-max W1", "tail_q99": "share > q99 of max",
          "flat_q05": "share < q05 of range"}

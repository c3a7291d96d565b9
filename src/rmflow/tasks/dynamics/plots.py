"""Figures: forecast fans (conditional) or sampled trajectories, attractor projections and the window-maximum
distribution (unconditional). One row per sampler, the data first."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def _np(x):
    return x.detach().cpu().float().numpy() if torch.is_tensor(x) else np.asarray(x)


def plot_forecast_fans(panels: dict, context, truth, ensemble: int, path, channel_names, contexts: int = 3,
                       channel: int = 0) -> None:
    """panels: label -> forecasts (N·M, C, H); context (N, C, k); truth (N, C, H). Median and 5–95 % band."""
    ctx, y = _np(context), _np(truth)
    k, h = ctx.shape[-1], y.shape[-1]
    n = min(contexts, len(y))
    rows = len(panels)
    fig, axes = plt.subplots(rows, n, figsize=(3.2 * n, 2.0 * rows), squeeze=False, sharex=True)
    steps_c, steps_f = np.arange(-k, 0), np.arange(h)
    for row, (label, x) in enumerate(panels.items()):
        f = _np(x).reshape(-1, ensemble, *y.shape[1:])
        for col in range(n):
            ax = axes[row, col]
            q05, q50, q95 = np.quantile(f[col, :, channel], [0.05, 0.5, 0.95], axis=0)
            ax.fill_between(steps_f, q05, q95, color="tab:blue", alpha=0.3, lw=0)
            ax.plot(steps_f, q50, color="tab:blue", lw=1)
            ax.plot(steps_c, ctx[col, channel], color="k", lw=1)
            ax.plot(steps_f, y[col, channel], color="k", lw=1, ls="--")
            if col == 0:
                ax.set_ylabel(label, fontsize=8)
            if row == 0:
                ax.set_title(f"context {col}, channel {channel_names[channel]}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_unconditional(panels: dict, path, projection=(0, 2), channel_names=("x",), lines: int = 4,
                       max_points: int = 200000) -> None:
    """panels: label -> windows (N, C, L), data first. Columns: trajectories of channel 0, the projection
    (channel i against channel j; a delay embedding x_t vs x_{t+1} for one channel), window-max histogram."""
    rows = len(panels)
    fig, axes = plt.subplots(rows, 3, figsize=(9.6, 2.2 * rows), squeeze=False)
    first = _np(next(iter(panels.values())))
    lim = np.quantile(first, [0.001, 0.999], axis=(0, 2))
    i, j = projection
    for row, (label, x) in enumerate(panels.items()):
        a = _np(x)
        ax = axes[row, 0]
        for w in a[:lines, 0]:
            ax.plot(w, lw=0.8)
        ax.set_ylabel(label, fontsize=8)
        ax = axes[row, 1]
        if i == j:
            px, py = a[:, i, :-1].ravel(), a[:, i, 1:].ravel()
            ax.set_xlabel(f"{channel_names[i]}(t)", fontsize=7)
            ax.set_ylabel(f"{channel_names[i]}(t+1)", fontsize=7)
        else:
            px, py = a[:, i].ravel(), a[:, j].ravel()
            ax.set_xlabel(channel_names[i], fontsize=7)
            ax.set_ylabel(channel_names[j], fontsize=7)
        ax.hist2d(px[:max_points], py[:max_points], bins=120, cmap="magma",
                  range=[[lim[0][i] - 0.5, lim[1][i] + 0.5], [lim[0][j] - 0.5, lim[1][j] + 0.5]])
        ax = axes[row, 2]
        ax.hist(a[:, 0].max(axis=-1), bins=50, range=(lim[0][0], lim[1][0] + 1.0), density=True, color="tab:red")
        ax.set_title(f"window max of {channel_names[0]}", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

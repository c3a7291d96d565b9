"""Figures for vectors: one column per panel (the data first, then each sampler), one row per 2-D view.

Views, all in the standardised space the model works in: D = 1, a histogram; D = 2, the two columns; D > 2, the
data's principal components (PC1 vs PC2, and PC3 vs PC4 when D ≥ 4), from the training split.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def principal_axes(x: torch.Tensor, k: int) -> torch.Tensor:
    """The first k principal directions of x (N, D) (unit columns, by decreasing variance): (D, k) float64."""
    x = x.detach().double()
    cov = torch.cov(x.T).reshape(x.shape[1], x.shape[1])
    _, vecs = torch.linalg.eigh(cov)               # ascending eigenvalues
    return vecs.flip(1)[:, :k]


def views(data: torch.Tensor, names: list[str]) -> list[tuple[torch.Tensor, str, str]]:
    """(projection (D, 2), x label, y label) of each 2-D view of data (N, D), D ≥ 2."""
    d = data.shape[1]
    if d == 2:
        return [(torch.eye(2, dtype=torch.float64), names[0], names[1])]
    axes = principal_axes(data, min(d, 4))
    out = [(axes[:, :2], "PC1", "PC2")]
    if d >= 4:
        out.append((axes[:, 2:4], "PC3", "PC4"))
    return out


def plot_vectors(panels: dict[str, torch.Tensor], names: list[str], path, max_points: int = 5000) -> None:
    """panels: title -> rows (N, D) standardised, the data first (it fixes the projections and the axis limits)."""
    first = next(iter(panels.values())).detach().double()
    d = first.shape[1]
    vs = views(first, names) if d >= 2 else [None]
    n = len(panels)
    fig, axes = plt.subplots(len(vs), n, figsize=(2.6 * n, 2.6 * len(vs)), squeeze=False)
    for col, (title, x) in enumerate(panels.items()):
        x = x[:max_points].detach().double().cpu()
        for row, view in enumerate(vs):
            ax = axes[row, col]
            if view is None:
                ax.hist(x[:, 0].numpy(), bins=60, range=_limits(first[:, 0]), density=True, color="tab:blue")
                ax.set_xlabel(names[0], fontsize=7)
                ax.set_yticks([])
            else:
                proj, xl, yl = view
                p, ref = x @ proj, first @ proj
                ax.scatter(p[:, 0].numpy(), p[:, 1].numpy(), s=2, alpha=0.4, linewidths=0, color="tab:blue")
                ax.set_xlim(*_limits(ref[:, 0]))
                ax.set_ylim(*_limits(ref[:, 1]))
                ax.set_xticks([])
                ax.set_yticks([])
                if col == 0:
                    ax.set_xlabel(xl, fontsize=7)
                    ax.set_ylabel(yl, fontsize=7)
            if row == 0:
                ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _limits(v: torch.Tensor) -> tuple[float, float]:
    """The 0.5%–99.5% range of v (N,), widened by 25% on each side."""
    lo, hi = (float(q) for q in torch.quantile(v.double(), torch.tensor([0.005, 0.995], dtype=torch.float64)))
    pad = 0.25 * max(hi - lo, 1e-6)
    return lo - pad, hi + pad

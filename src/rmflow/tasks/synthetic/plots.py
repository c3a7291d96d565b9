"""Figures for low-dimensional densities: one panel per sampler, the data first (as the paper's Figure 1)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
import torch  # noqa: E402


def plot_panels(panels: dict[str, torch.Tensor], path, bound: float = 6.0, bins: int = 120,
                max_points: int = 20000, per_row: int = 5) -> None:
    """panels: title -> samples (N, 1 or 2); project samples of D > 2 first (the density's `project`). 2-D: 2-D
    histograms on a log colour scale (so that the mass between modes shows); 1-D: density histograms. At most
    `per_row` panels a row."""
    wide = [title for title, x in panels.items() if x.shape[1] > 2]
    if wide:
        raise ValueError(f"plot_panels draws 1-D or 2-D samples; project these first: {wide}")
    n = len(panels)
    cols = min(n, per_row)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, (title, x) in zip(axes.flat, panels.items()):
        x = x[:max_points].detach().cpu().numpy()
        draw_panel(ax, x, bound, bins)
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def draw_panel(ax, x, bound: float = 6.0, bins: int = 120) -> None:
    """Samples x (N, 1 or 2; array or tensor) on one axis: a 2-D histogram on a log colour scale, or a 1-D density
    histogram, over [-bound, bound]^D, without ticks."""
    if x.shape[1] == 2:
        ax.hist2d(x[:, 0], x[:, 1], bins=bins, range=[[-bound, bound], [-bound, bound]], cmap="magma",
                  norm=LogNorm(vmin=1))
        ax.set_aspect("equal")
        ax.set_xticks([])
    else:
        ax.hist(x[:, 0], bins=bins, range=(-bound, bound), density=True, color="tab:blue")
    ax.set_yticks([])

"""Figures for low-dimensional densities: one panel per sampler, the data first (as the paper's Figure 1)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def plot_panels(panels: dict[str, torch.Tensor], path, bound: float = 6.0, bins: int = 200,
                max_points: int = 20000) -> None:
    """panels: title -> samples (N, 1 or 2). 2-D: 2-D histograms; 1-D: density histograms."""
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.8), squeeze=False)
    for ax, (title, x) in zip(axes[0], panels.items()):
        x = x[:max_points].detach().cpu().numpy()
        if x.shape[1] == 2:
            ax.hist2d(x[:, 0], x[:, 1], bins=bins, range=[[-bound, bound], [-bound, bound]], cmap="magma")
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
        else:
            ax.hist(x[:, 0], bins=bins, range=(-bound, bound), density=True, color="tab:blue")
            ax.set_yticks([])
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)

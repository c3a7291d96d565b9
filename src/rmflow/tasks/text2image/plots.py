"""Sample grids with their captions."""
from __future__ import annotations

import textwrap

import torch


def _show(img: torch.Tensor):
    """(C, H, W) in [-1, 1] -> array for imshow."""
    x = ((img.clamp(-1, 1) + 1) / 2).permute(1, 2, 0).cpu().numpy()
    return x[..., 0] if x.shape[-1] == 1 else x


def sample_grid(task, panels: dict, reference, path, columns: int = 10, rows_per_panel: int = 2) -> None:
    """panels: label -> data-space samples aligned with reference (sample i answers caption i). Shows, for the
    first `columns` distinct prompts, `rows_per_panel` samples of each panel."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    prompts = reference.cond["prompt"]
    where: dict[int, list[int]] = {}
    for i, p in enumerate(prompts.tolist()):
        where.setdefault(p, []).append(i)
    # prompts with enough samples first (in order of appearance), so that every cell is filled when possible
    order = sorted(where, key=lambda p: (len(where[p]) < rows_per_panel, where[p][0]))
    cols = order[:columns]
    first = where
    nrows = len(panels) * rows_per_panel
    fig, axes = plt.subplots(nrows, len(cols), figsize=(1.3 * len(cols), 1.3 * nrows + 0.8), squeeze=False)
    for pi, (label, x) in enumerate(panels.items()):
        images = task.to_images(x)
        for ci, p in enumerate(cols):
            for k in range(rows_per_panel):
                ax = axes[pi * rows_per_panel + k, ci]
                idx = first[p]
                if k < len(idx):
                    ax.imshow(_show(images[idx[k]]), cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([]), ax.set_yticks([])
                if k == 0 and ci == 0:
                    ax.set_ylabel(label, fontsize=6)
                if pi == 0 and k == 0:
                    ax.set_title("\n".join(textwrap.wrap(task.caption(p), 16)), fontsize=5)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)

"""Sample grids with their captions."""
from __future__ import annotations

import textwrap

import torch


def _show(img: torch.Tensor):
    """(C, H, W) in [-1, 1] -> array for imshow."""
    x = ((img.clamp(-1, 1) + 1) / 2).permute(1, 2, 0).cpu().numpy()
    return x[..., 0] if x.shape[-1] == 1 else x


def grid_prompts(cond: dict, columns: int, rows_per_panel: int) -> tuple[list[int], dict[int, list[int]]]:
    """The prompts a grid shows, and the reference rows of each prompt: prompts with at least `rows_per_panel`
    rows first (in order of appearance), so that every cell is filled when possible; where the reference marks
    held-out combinations (cond["heldout"], (N,) bool), up to half of the `columns` are held-out prompts, so that
    the picture shows what the model never saw next to what it did."""
    where: dict[int, list[int]] = {}
    for i, p in enumerate(cond["prompt"].tolist()):
        where.setdefault(p, []).append(i)
    order = sorted(where, key=lambda p: (len(where[p]) < rows_per_panel, where[p][0]))
    held = cond.get("heldout")
    if held is None:
        return order[:columns], where
    unseen = [p for p in order if bool(held[where[p][0]])]
    seen = [p for p in order if not bool(held[where[p][0]])]
    k = min(len(unseen), columns // 2)
    chosen = set(unseen[:k] + seen[:columns - k])
    return [p for p in order if p in chosen], where


def sample_grid(task, panels: dict, reference, path, columns: int = 10, rows_per_panel: int = 2) -> None:
    """panels: label -> data-space samples aligned with reference (sample i answers caption i). Shows, for
    `columns` distinct prompts (grid_prompts), `rows_per_panel` samples of each panel; held-out prompts are
    titled as such."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cols, rows_of = grid_prompts(reference.cond, columns, rows_per_panel)
    held = reference.cond.get("heldout")
    nrows = len(panels) * rows_per_panel
    fig, axes = plt.subplots(nrows, len(cols), figsize=(1.3 * len(cols), 1.3 * nrows + 0.8), squeeze=False)
    for pi, (label, x) in enumerate(panels.items()):
        images = task.to_images(x)
        for ci, p in enumerate(cols):
            for k in range(rows_per_panel):
                ax = axes[pi * rows_per_panel + k, ci]
                idx = rows_of[p]
                if k < len(idx):
                    ax.imshow(_show(images[idx[k]]), cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([]), ax.set_yticks([])
                if k == 0 and ci == 0:
                    ax.set_ylabel(label, fontsize=6)
                if pi == 0 and k == 0:
                    unseen = held is not None and bool(held[rows_of[p][0]])
                    ax.set_title("\n".join(textwrap.wrap(task.caption(p), 16)) + ("\n[held out]" if unseen else ""),
                                 fontsize=5, color="firebrick" if unseen else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)

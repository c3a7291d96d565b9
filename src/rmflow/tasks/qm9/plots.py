"""A grid of generated molecules: RDKit 2-D depictions of the inferred bond graph, labelled with stability.
Where RDKit cannot draw (its drawing module needs X libraries that headless machines may lack, or the bond graph
is too broken to lay out), the molecule is shown as its atoms projected on their two principal axes, with EDM's
distance-table bonds."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .metrics import bond_orders, build_rdkit, stability

ATOM_COLOURS = ("0.8", "0.1", "tab:blue", "tab:red", "tab:green")   # H, C, N, O, F


def _depiction(positions, types, mask, size=220):
    """An RGB image (H, W, 3) of one molecule's bond graph, or None if RDKit cannot draw it."""
    try:
        from rdkit.Chem import AllChem, Draw
    except ImportError:
        return None
    mol = build_rdkit(positions, types, mask)
    try:
        mol = mol.GetMol()
        mol.UpdatePropertyCache(strict=False)
        AllChem.Compute2DCoords(mol)
        img = Draw.MolToImage(mol, size=(size, size), kekulize=False)
        return np.asarray(img.convert("RGB"))
    except Exception:
        return None


def _projection(ax, positions, types, mask) -> None:
    """Atoms (real ones only) on the plane of their two principal axes, coloured by element, bonds as lines."""
    real = np.asarray(mask, bool)
    p, t = np.asarray(positions, float)[real], np.asarray(types, int)[real]
    if len(p) == 0 or not np.isfinite(p).all():
        return
    centred = p - p.mean(0)
    axes = np.linalg.svd(centred, full_matrices=False)[2][:2] if len(p) > 1 else np.eye(3)[:2]
    xy = centred @ axes.T
    orders = bond_orders(p[None], t[None], np.ones((1, len(p)), bool))[0]
    for i, j in zip(*np.nonzero(np.triu(orders))):
        ax.plot(*xy[[i, j]].T, color="0.5", lw=0.8 * orders[i, j], zorder=1)
    ax.scatter(*xy.T, c=[ATOM_COLOURS[k] for k in np.clip(t, 0, 4)], s=30, edgecolors="k", linewidths=0.4,
               zorder=2)
    ax.set_aspect("equal")


def molecule_grid(panels: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]], path,
                  per_row: int = 6) -> None:
    """panels: label -> (positions (B, N, 3), types (B, N), mask (B, N)); draws the first `per_row` of each."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(panels)
    fig, axes = plt.subplots(rows, per_row, figsize=(2.2 * per_row, 2.5 * rows), squeeze=False)
    for r, (label, (pos, typ, mask)) in enumerate(panels.items()):
        pos, typ, mask = (np.asarray(a.detach().cpu()) for a in (pos, typ, mask))
        atom_ok, mol_ok = stability(pos[:per_row], typ[:per_row], mask[:per_row])
        for c in range(per_row):
            ax = axes[r, c]
            ax.axis("off")
            if c >= len(pos):
                continue
            img = _depiction(pos[c], typ[c], mask[c])
            if img is not None:
                ax.imshow(img)
            else:
                _projection(ax, pos[c], typ[c], mask[c])
            n = int(mask[c].sum())
            verdict = "stable" if mol_ok[c] else f"unstable ({int(atom_ok[c].sum())}/{n} atoms)"
            ax.set_title(verdict, fontsize=8, color="green" if mol_ok[c] else "red")
        axes[r, 0].text(-0.05, 0.5, label, transform=axes[r, 0].transAxes, rotation=90, ha="right",
                        va="center", fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)

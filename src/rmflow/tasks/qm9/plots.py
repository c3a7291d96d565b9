"""A grid of generated molecules: RDKit 2-D depictions of the inferred bond graph, labelled with stability."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .metrics import build_rdkit, stability


def _depiction(positions, types, mask, size=220):
    """An RGB image (H, W, 3) of one molecule's bond graph, or None if RDKit cannot draw it."""
    from rdkit import Chem
    from rdkit.Chem import AllChem, Draw

    mol = build_rdkit(positions, types, mask)
    try:
        mol = mol.GetMol()
        mol.UpdatePropertyCache(strict=False)
        AllChem.Compute2DCoords(mol)
        img = Draw.MolToImage(mol, size=(size, size), kekulize=False)
        return np.asarray(img.convert("RGB"))
    except Exception:
        return None


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
            n = int(mask[c].sum())
            verdict = "stable" if mol_ok[c] else f"unstable ({int(atom_ok[c].sum())}/{n} atoms)"
            ax.set_title(verdict, fontsize=8, color="green" if mol_ok[c] else "red")
        axes[r, 0].text(-0.05, 0.5, label, transform=axes[r, 0].transAxes, rotation=90, ha="right",
                        va="center", fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)

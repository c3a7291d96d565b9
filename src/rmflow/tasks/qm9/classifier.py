"""Conditional evaluation as EDM does it: a property classifier φ_p (an E(3)-invariant EGNN regressor) trained on
the first half of the training split scores generated molecules; MAE between the requested and the predicted
property. Also the two reference rows of EDM's table that need no network:

- "#Atoms":   predict the property by its mean among first-half molecules with the same atom count,
              scored on the second half (EDM prints 3.86, 866, 426, 813, 1.053, 1.971 for α, Δε, HOMO, LUMO, μ, Cv);
- "shuffled": MAE between the second half's properties and a random permutation of them (no information).

Classifier: h_i = embed(one-hot type_i) → L EGNN layers (positions updated, features invariant) →
ŷ = MLP(Σ_i h_i) in normalised units, (p - mean)/MAD; trained with L1 loss as EDM.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ...nets.egnn import EGNNLayer, _remove_mean
from .data import ATOM_TYPES, PROPERTIES, QM9Split, mean_mad

MEV_PROPERTIES = ("homo", "lumo", "gap")   # stored in eV, printed in meV as in EDM's tables


class PropertyClassifier(nn.Module):
    """positions (B, N, 3), one-hot types (B, N, 5), mask (B, N, 1) -> normalised property (B,)."""

    def __init__(self, hidden: int = 128, layers: int = 7, coords_range: float = 15.0):
        super().__init__()
        self.embed = nn.Linear(len(ATOM_TYPES), hidden)
        self.layers = nn.ModuleList(EGNNLayer(hidden, coords_range / layers, 1.0, 1e-8, 1.0, edge_mlp=True)
                                    for _ in range(layers))
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, pos: torch.Tensor, onehot: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        n = pos.shape[1]
        mask = mask.to(pos.dtype)
        eye = torch.eye(n, device=pos.device, dtype=pos.dtype)
        edge_mask = mask[:, :, None, :] * mask[:, None, :, :] * (1 - eye)[None, :, :, None]
        p = _remove_mean(pos * mask, mask)
        d2 = (p[:, :, None] - p[:, None]).pow(2).sum(-1, keepdim=True)
        h = self.embed(onehot * mask) * mask
        for layer in self.layers:
            h, p = layer(h, p, d2, mask, edge_mask)
        return self.head((h * mask).sum(1)).squeeze(-1)


def _inputs(split: QM9Split, rows):
    onehot = torch.nn.functional.one_hot(split.types[rows].clamp(min=0), len(ATOM_TYPES)).float()
    mask = split.mask[rows, :, None].float()
    return split.positions[rows].float(), onehot * mask, mask


def train_classifier(split: QM9Split, prop: str, steps: int, batch_size: int = 128, lr: float = 1e-3,
                     hidden: int = 128, layers: int = 7, seed: int = 0, log=None, device: str = "cpu"
                     ) -> tuple[PropertyClassifier, float, float]:
    """Train φ_p on `split` (EDM: the first half) with L1 loss on (p - mean)/MAD; returns (model, mean, mad).
    The model is returned on `device`; batches are drawn on the CPU (same draws on every device)."""
    j = PROPERTIES.index(prop)
    values = split.props[:, j].float()
    mean, mad = (float(v) for v in mean_mad(values))
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = PropertyClassifier(hidden, layers).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    for step in range(steps):
        rows = torch.randint(len(split), (batch_size,), generator=gen)
        pred = model(*(v.to(device) for v in _inputs(split, rows)))
        loss = (pred - ((values[rows] - mean) / mad).to(device)).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log and (step + 1) % 100 == 0:
            log(f"classifier {prop} step {step + 1}: L1 (normalised) {loss.item():.4f}")
    return model.eval(), mean, mad


@torch.no_grad()
def predict(model: PropertyClassifier, pos, onehot, mask, mean: float, mad: float, batch: int = 512) -> torch.Tensor:
    """Property predictions in physical units: (B,) on the CPU, computed on the model's device."""
    device = next(model.parameters()).device
    out = [model(*(v[i:i + batch].to(device) for v in (pos, onehot, mask))).cpu() for i in range(0, len(pos), batch)]
    return torch.cat(out) * mad + mean


def mae(pred: torch.Tensor, target: torch.Tensor, prop: str) -> float:
    """Mean absolute error in EDM's printed units (meV for HOMO, LUMO, gap)."""
    scale = 1000.0 if prop in MEV_PROPERTIES else 1.0
    return float((pred.double() - target.double()).abs().mean()) * scale


def atoms_baseline_mae(first: QM9Split, second: QM9Split, prop: str) -> float:
    """EDM's "#Atoms" row: predict by the first-half mean of molecules with the same atom count."""
    j = PROPERTIES.index(prop)
    pf, nf = first.props[:, j].numpy(), first.num_atoms.numpy()
    ps, ns = second.props[:, j].numpy(), second.num_atoms.numpy()
    table = {int(n): pf[nf == n].mean() for n in np.unique(nf)}
    fallback = pf.mean()
    pred = np.array([table.get(int(n), fallback) for n in ns])
    return mae(torch.from_numpy(pred), torch.from_numpy(ps), prop)


def shuffled_mae(second: QM9Split, prop: str, seed: int = 0) -> float:
    """MAE against a random permutation of the same properties (a no-information reference)."""
    j = PROPERTIES.index(prop)
    p = second.props[:, j]
    perm = torch.randperm(len(p), generator=torch.Generator().manual_seed(seed))
    return mae(p[perm], p, prop)


# ------------------------------------------------------------------------------------------ files and scoring
def save_classifier(path, model: PropertyClassifier, prop: str, mean: float, mad: float) -> None:
    """`path`.safetensors (weights) + `path`.json (property, normalisation, sizes); no pickle."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path.with_suffix(".safetensors")))
    meta = {"property": prop, "mean": mean, "mad": mad, "hidden": model.embed.out_features,
            "layers": len(model.layers)}
    path.with_suffix(".json").write_text(json.dumps(meta))


def load_classifier(path, device: str | torch.device = "cpu") -> tuple[PropertyClassifier, dict]:
    import json
    from pathlib import Path

    from safetensors.torch import load_file
    path = Path(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    model = PropertyClassifier(meta["hidden"], meta["layers"])
    model.load_state_dict(load_file(str(path.with_suffix(".safetensors"))))
    return model.to(device).eval(), meta


def conditional_mae(model: PropertyClassifier, meta: dict, positions, types, mask, target) -> float:
    """MAE (EDM's units) between the classifier's prediction for generated molecules and the requested
    property `target` (B,) in physical units. positions (B, N, 3), types (B, N) ints, mask (B, N) bool."""
    m = mask.float()[..., None]
    onehot = torch.nn.functional.one_hot(types.long().clamp(0, len(ATOM_TYPES) - 1), len(ATOM_TYPES)).float() * m
    pred = predict(model, positions.float() * m, onehot, m, meta["mean"], meta["mad"])
    return mae(pred, target, meta["property"])


def main(argv=None) -> None:
    """python -m rmflow.tasks.qm9.classifier --property alpha --steps 20000 --out runs/qm9-classifiers/alpha"""
    import argparse

    from .data import load_split
    parser = argparse.ArgumentParser(description="Train EDM's property classifier on the first half of QM9.")
    parser.add_argument("--property", required=True, choices=PROPERTIES)
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=7)
    parser.add_argument("--device", default="cpu", help="e.g. cuda")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    first = load_split("first_half")
    model, mean, mad = train_classifier(first, args.property, args.steps, args.batch_size, args.lr, args.hidden,
                                        args.layers, log=print, device=args.device)
    save_classifier(args.out, model, args.property, mean, mad)
    second = load_split("second_half")
    rows = torch.arange(len(second))
    pred = predict(model, *_inputs(second, rows), mean, mad)
    j = PROPERTIES.index(args.property)
    print(f"{args.property}: MAE on the second half (EDM's 'QM9' lower bound) = "
          f"{mae(pred, second.props[:, j], args.property):.4g}")


if __name__ == "__main__":
    main()

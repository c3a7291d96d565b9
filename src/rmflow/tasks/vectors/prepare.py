"""From a loaded table (N, D) to what the task trains on: rows with NaN/inf refused or dropped, a seeded split into
training and held-out rows, and the per-column standardisation z = (x − mean) / std with (mean, std) computed on
the training split. `DataUnits` carries (mean, std) as buffers of the model, so that every checkpoint holds them.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..tables import fail

MIN_HELDOUT, MIN_TRAIN = 2, 10


@dataclass
class Prepared:
    """train (T, D), heldout (H, D): standardised float32 rows (the held-out rows in a seeded random order);
    mean, std (D,) float64 in data units; names: D column names; dropped: rows removed for NaN/inf."""

    train: torch.Tensor
    heldout: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    names: list[str]
    dropped: int = 0


def finite_rows(values: np.ndarray, policy: str, path: str) -> tuple[np.ndarray, int]:
    """(rows of values (N, D) without NaN/inf, how many were removed); policy 'refuse' raises if there are any."""
    bad = ~np.isfinite(values).all(axis=1)
    n_bad = int(bad.sum())
    if not n_bad:
        return values, 0
    first = int(np.flatnonzero(bad)[0]) + 1
    what = f"{n_bad} of {len(values)} rows contain NaN, inf or a missing value (the first is data row {first})"
    if policy == "refuse":
        raise fail("task.path", f"{path}: {what}; clean the file, or set task.nonfinite=drop to leave them out")
    warnings.warn(f"{path}: {what}; dropped them (task.nonfinite=drop)", stacklevel=3)
    return values[~bad], n_bad


def split_rows(n: int, heldout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training indices, held-out indices) of n rows: a seeded permutation, round(heldout·n) rows held out."""
    n_held = int(round(heldout * n))
    if n_held < MIN_HELDOUT or n - n_held < MIN_TRAIN:
        raise fail("task.path", f"{n} usable rows give {n_held} held-out (task.heldout={heldout}) and "
                   f"{n - n_held} training rows; at least {MIN_HELDOUT} held-out and {MIN_TRAIN} training rows "
                   "are needed (more data, or another task.heldout)")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_held:]), perm[:n_held]


def column_stats(train: np.ndarray, names: list[str], standardize: bool) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) (D,) of the training rows (T, D); std of a constant column is set to 1 (with a warning);
    (0, 1) when standardize is False."""
    d = train.shape[1]
    if not standardize:
        return np.zeros(d), np.ones(d)
    mean, std = train.mean(axis=0), train.std(axis=0)
    flat = std <= 1e-12 * np.maximum(1.0, np.abs(mean))
    if flat.any():
        which = ", ".join(repr(names[j]) for j in np.flatnonzero(flat))
        warnings.warn(f"constant column(s) in the training split: {which}; their std is taken as 1", stacklevel=3)
        std = np.where(flat, 1.0, std)
    return mean, std


def prepare(values: np.ndarray, names: list[str], path: str, nonfinite: str = "refuse", heldout: float = 0.1,
            split_seed: int = 0, standardize: bool = True) -> Prepared:
    """values (N, D) float64 -> Prepared (see the class)."""
    values, dropped = finite_rows(values, nonfinite, path)
    tr, ho = split_rows(len(values), heldout, split_seed)
    mean, std = column_stats(values[tr], names, standardize)
    z = lambda rows: torch.from_numpy((values[rows] - mean) / std).float()   # noqa: E731
    return Prepared(z(tr), z(ho), torch.from_numpy(mean), torch.from_numpy(std), list(names), dropped)


class DataUnits(nn.Module):
    """The standardisation of the data as buffers `mean`, `std` (D,) float64: attached to the RMFlow model
    (`model.units`), they are saved in every checkpoint (model.units.mean, ema.units.mean, ...) and restored by
    load_run. The model works in the standardised space z; data units are x = z·std + mean."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float64).clone())
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float64).clone())

    def to_data(self, z: torch.Tensor) -> torch.Tensor:
        """z (N, D) standardised -> x (N, D) in data units, float64."""
        return z.to(self.mean.device, torch.float64) * self.std + self.mean

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, D) in data units -> z (N, D) standardised, float64."""
        return (x.to(self.mean.device, torch.float64) - self.mean) / self.std

"""Couplings between source samples x0 and data samples, for the L_CMFM path and for L_NLL.

Which x0 is paired with which data point inside L_NLL decides whether the likelihood term helps or collapses
the one-step map (docs/METHOD.md): with independent pairs, E‖y - f(x0)‖² is minimised by f ≡ E[y].
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

PAIRINGS = ("independent", "minibatch_ot", "inverse", "teacher", "self")


def minibatch_ot_permutation(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """Exact optimal assignment for the squared Euclidean cost inside a batch.

    x0, x1: (B, *D). Returns perm: (B,) such that (x0[perm[i]], x1[i]) is the OT pairing: a permutation, so both
    marginals (the empirical batches) are preserved exactly.
    """
    a = x0.detach().flatten(1).double().cpu()
    b = x1.detach().flatten(1).double().cpu()
    cost = torch.cdist(b, a).pow(2).numpy()
    rows, cols = linear_sum_assignment(cost)
    perm = np.empty(len(rows), dtype=np.int64)
    perm[rows] = cols
    return torch.from_numpy(perm).to(x0.device)


def transport_cost(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """Mean squared distance of paired rows: the batch transport cost of a coupling."""
    return (x0 - x1).flatten(1).pow(2).sum(1).mean()


def nearest_distance(x: torch.Tensor, ref: torch.Tensor, exclude_self: bool = False, chunk: int = 2048
                     ) -> torch.Tensor:
    """Euclidean distance from each row of x (N, *D) to its nearest row of ref (M, *D): (N,).

    exclude_self: x is ref itself, and each row's distance to itself is ignored (leave-one-out).
    """
    a, b = x.detach().flatten(1).float(), ref.detach().flatten(1).float()
    out = []
    for start in range(0, len(a), chunk):
        d = torch.cdist(a[start:start + chunk], b)
        if exclude_self:
            rows = torch.arange(len(d), device=d.device)
            d[rows, rows + start] = float("inf")
        out.append(d.min(1).values)
    return torch.cat(out)


def data_support_mask(y: torch.Tensor, ref: torch.Tensor, q: float) -> torch.Tensor:
    """(N,) bool: rows of y (N, *D) whose nearest-neighbour distance to the data sample ref (M, *D) is at most the
    q-quantile of ref's own leave-one-out nearest-neighbour distances — y lies where the data have support, at the
    density level that all but a share 1 - q of the data points reach."""
    tau = torch.quantile(nearest_distance(ref, ref, exclude_self=True), q)
    return nearest_distance(y, ref) <= tau

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

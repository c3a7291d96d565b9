"""Pairings: which source point x0 is paired with which partner in the likelihood term

    L_NLL = ‖y − (x0 + u_θ(x0, 0, 1))‖²,   y = partner + σ_min·ε.

Whether that term helps or collapses the one-step map depends on the pairing alone (docs/METHOD.md): with
independent pairs, E‖y − f(x0)‖² is minimised by f ≡ E[y]. Every pairing has one interface:

    pairs(model, x_data, cond, mask) -> Pairs         the noise-free partners of k rows (k = len(x_data))
    start_likelihood_stage(source)                      the stage boundary (the teacher freezes `source` here)
    observe(pairs, x_hat)                               the one-step outputs of the pairs, after each step
    checkpoint_tensors() / load_checkpoint_tensors()    state a resumed run needs

This module holds the pairings that need no state: "independent" (paper-literal), "minibatch_ot", "inverse" and
"self"; the frozen teacher with its bank, focus and filter is in flow/teacher.py.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from . import samplers

PAIRINGS = ("independent", "minibatch_ot", "inverse", "self", "teacher")


class Pairs(NamedTuple):
    """Likelihood pairs: x0 and its noise-free partner y, (k, *D); their condition and mask rows (or None);
    bank_idx (k,) when the pairs come from a bank that keeps an error per pair, else None."""
    x0: torch.Tensor
    y: torch.Tensor
    cond: object = None
    mask: torch.Tensor | None = None
    bank_idx: torch.Tensor | None = None


class Pairing(nn.Module):
    """The base: a stateless pairing; subclasses implement `pairs`. An nn.Module so that a frozen teacher moves
    with the objective (`.to(device)`)."""

    def pairs(self, model, x_data: torch.Tensor, cond=None, mask=None) -> Pairs:
        raise NotImplementedError

    def start_likelihood_stage(self, source: nn.Module) -> None:
        """Called once, at the step where L_NLL starts, with the weights a teacher would freeze."""

    def observe(self, pairs: Pairs, x_hat: torch.Tensor) -> None:
        """Called after L_NLL is computed with x_hat = x0 + u_θ(x0, 0, 1) (k, *D) of `pairs`."""

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def load_checkpoint_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        pass


class IndependentPairing(Pairing):
    """x0 ~ source, independent of the data row: the paper's literal reading (collapses onto E[x_data])."""

    def pairs(self, model, x_data, cond=None, mask=None) -> Pairs:
        return Pairs(model.draw_source(x_data, cond, mask), x_data, cond, mask)


class MinibatchOTPairing(Pairing):
    """x0 ~ source, re-ordered by exact optimal transport to the data rows."""

    def pairs(self, model, x_data, cond=None, mask=None) -> Pairs:
        x0 = model.draw_source(x_data, cond, mask)
        return Pairs(x0[minibatch_ot_permutation(x0, x_data)], x_data, cond, mask)


class InversePairing(Pairing):
    """x0 = sg(x_data − u_θ(x_data, 1, 0)): the model's own one-step inverse of the data row."""

    def pairs(self, model, x_data, cond=None, mask=None) -> Pairs:
        model.draw_source(x_data, cond, mask)   # drawn and unused: keeps the random stream of the other pairings
        with torch.no_grad():
            x0 = samplers.meanflow(Reverse(model), x_data, 1, cond, mask).x
        return Pairs(x0, x_data, cond, mask)


class SelfPairing(Pairing):
    """x0 ~ source, partner sg(T_k(x0)), T_k the k-step MeanFlow map of the current model."""

    def __init__(self, steps: int):
        super().__init__()
        self.steps = int(steps)

    def pairs(self, model, x_data, cond=None, mask=None) -> Pairs:
        # the partner is a stop-gradient function of x0, so no gradient may reach φ_ω through x0 either
        # (it would only see the student's side and push ‖φ_ω(c)‖ to grow)
        x0 = model.draw_source(x_data, cond, mask).detach()
        with torch.no_grad():
            y = samplers.meanflow(self.transport(model), x0, self.steps, cond, mask).x
        return Pairs(x0, y, cond, mask)

    def transport(self, model) -> nn.Module:
        return model


class Reverse(nn.Module):
    """u(x, 1 - t, 1 - r): the model run backwards in time, so meanflow(Reverse(m), x1, 1) = x1 - u(x1, 1, 0)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, t, r, cond=None, mask=None):
        return -self.model(x, 1 - t, 1 - r, cond, mask)


# ------------------------------------------------------------------------------------------------ geometry
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
    density level that all but a share 1 - q of the data points reach. Repeated rows of ref (a finite table drawn
    with replacement) are counted once: a duplicate's distance 0 says nothing about the scale of the support."""
    ref = torch.unique(ref.flatten(1), dim=0).view(-1, *ref.shape[1:])
    tau = torch.quantile(nearest_distance(ref, ref, exclude_self=True), q)
    return nearest_distance(y, ref) <= tau

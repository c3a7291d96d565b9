"""Exponential moving average of a module's parameters and buffers."""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """shadow ← decay·shadow + (1 - decay)·param after each optimiser step (`decay` per call, or the default).

    Parameters whose names start with one of `exact_prefixes` are copied instead of averaged: a part that starts
    training late (the mixture refiner of stage 2) would otherwise keep e^(-n(1-decay)) of its random start.
    """

    def __init__(self, model: nn.Module, decay: float, exact_prefixes: tuple[str, ...] = ()):
        super().__init__()
        self.decay, self.exact_prefixes = decay, tuple(exact_prefixes)
        self.shadow = copy.deepcopy(model).requires_grad_(False).eval()

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float | None = None) -> None:
        decay = self.decay if decay is None else decay
        for (name, s), p in zip(self.shadow.named_parameters(), model.parameters()):
            if self.exact_prefixes and name.startswith(self.exact_prefixes):
                s.copy_(p.detach())
            else:
                s.lerp_(p.detach(), 1 - decay)
        for s, b in zip(self.shadow.buffers(), model.buffers()):
            s.copy_(b)

    @torch.no_grad()
    def reset(self, model: nn.Module) -> None:
        """shadow ← model: the average starts again (at a change of objective)."""
        self.shadow.load_state_dict(model.state_dict())


def warmup_decay(decay: float, k: int) -> float:
    """The decay of the k-th update after a (re)start: min(decay, (1 + k)/(10 + k)). The weight of the update j
    steps back then falls like ((k - j)/k)^9 until `decay` caps it, so early updates of a new stage fade within the
    stage instead of staying in the average for ~1/(1 - decay) steps."""
    return min(decay, (1 + k) / (10 + k))

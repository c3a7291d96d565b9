"""Exponential moving average of a module's parameters and buffers."""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """shadow ← decay·shadow + (1 - decay)·param after each optimiser step."""

    def __init__(self, model: nn.Module, decay: float):
        super().__init__()
        self.decay = decay
        self.shadow = copy.deepcopy(model).requires_grad_(False).eval()

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for s, p in zip(self.shadow.parameters(), model.parameters()):
            s.lerp_(p.detach(), 1 - self.decay)
        for s, b in zip(self.shadow.buffers(), model.buffers()):
            s.copy_(b)

"""The condition encoder φ_ω of guided encoding for forecasting: context (B, C, k) -> source mean (B, C, H).

    φ_ω(c) = last(c) ⊗ 1_H + W·vec(c) + b        (W, b start at zero)

so an untrained encoder is the persistence forecast (the last observed state repeated over the horizon) and
training adds a learned linear correction. The source is then x0 = φ_ω(c) + σ_c·ε (rmflow.flow.GuidedSource).
"""
from __future__ import annotations

import torch
from torch import nn


class ContextEncoder(nn.Module):
    def __init__(self, channels: int, context_len: int, horizon: int, persistence: bool = True):
        super().__init__()
        self.channels, self.context_len, self.horizon = channels, context_len, horizon
        self.persistence = persistence
        self.linear = nn.Linear(channels * context_len, channels * horizon)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        """context: (B, C, k) -> (B, C, H)."""
        if context.dim() != 3 or context.shape[1:] != (self.channels, self.context_len):
            raise ValueError(f"context must have shape (B, {self.channels}, {self.context_len}), "
                             f"got {tuple(context.shape)}")
        b = context.shape[0]
        out = self.linear(context.reshape(b, -1)).reshape(b, self.channels, self.horizon)
        if self.persistence:
            out = out + context[..., -1:].expand(b, self.channels, self.horizon)
        return out

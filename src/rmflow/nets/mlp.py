"""A residual-free MLP for vector data: u(x, t, r, cond) with x: (B, D) -> (B, D)."""
from __future__ import annotations

import torch
from torch import nn

from .embeddings import TimePairEmbedding


class MLP(nn.Module):
    """[x, emb(t, r - t), cond] -> depth hidden SiLU layers of width `hidden` -> D outputs.

    cond (optional): (B, cond_dim) float features; mask is accepted and ignored (vector data has none).
    """

    def __init__(self, dim: int, hidden: int = 256, depth: int = 3, time_dim: int = 64, cond_dim: int = 0,
                 time_embed: str = "sinusoidal"):
        super().__init__()
        if dim < 1 or hidden < 1 or depth < 1:
            raise ValueError("dim, hidden and depth must be >= 1")
        self.dim, self.cond_dim = dim, cond_dim
        self.time = TimePairEmbedding(time_dim, kind=time_embed)
        layers, width = [], dim + self.time.out_dim + cond_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        layers.append(nn.Linear(width, dim))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor, r: torch.Tensor, cond=None, mask=None) -> torch.Tensor:
        parts = [x, self.time(t, r)]
        if self.cond_dim:
            if cond is None:
                raise ValueError("this network was built with cond_dim > 0 and needs a condition")
            parts.append(cond.reshape(x.shape[0], self.cond_dim))
        return self.body(torch.cat(parts, dim=-1))

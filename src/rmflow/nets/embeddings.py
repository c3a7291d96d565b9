"""Embeddings of the two network times: t and the step length h = r - t (MeanFlow's (t, t - r) inputs)."""
from __future__ import annotations

import math

import torch
from torch import nn


class SinusoidalEmbedding(nn.Module):
    """s: (B,) -> (B, dim) with sin/cos features at geometric frequencies (scale multiplies s first)."""

    def __init__(self, dim: int, scale: float = 1000.0, max_period: float = 10000.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding dim must be even, got {dim}")
        freqs = torch.exp(-math.log(max_period) * torch.arange(dim // 2) / (dim // 2))
        self.register_buffer("freqs", freqs)
        self.scale = scale

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        angles = self.scale * s[:, None] * self.freqs[None]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


class TimePairEmbedding(nn.Module):
    """(t, r) -> (B, out_dim): MLP over [emb(t), emb(r - t)]; differentiable in t (needed by the JVP)."""

    def __init__(self, out_dim: int, freq_dim: int = 64):
        super().__init__()
        self.t_emb = SinusoidalEmbedding(freq_dim)
        self.h_emb = SinusoidalEmbedding(freq_dim)
        self.mlp = nn.Sequential(nn.Linear(2 * freq_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([self.t_emb(t), self.h_emb(r - t)], dim=-1))

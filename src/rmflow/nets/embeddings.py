"""Embeddings of the two network times: t and the step length h = r - t (MeanFlow's (t, t - r) inputs)."""
from __future__ import annotations

import math

import torch
from torch import nn


class SinusoidalEmbedding(nn.Module):
    """s: (B,) -> (B, dim) with sin/cos features at geometric frequencies from `scale` down to
    scale/max_period (radians per unit of s). The JVP differentiates these features in t, so the largest
    frequency bounds ∂u/∂t: modest frequencies keep the MeanFlow target well scaled."""

    def __init__(self, dim: int, scale: float = 30.0, max_period: float = 100.0):
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
    """(t, r) -> (B, out_dim), differentiable in t (needed by the JVP).

    kind "sinusoidal": an MLP over [emb(t), emb(r - t)]; kind "raw": the two numbers [t, r - t] themselves
    (out_dim is then 2), for small vector-data networks where a smooth dependence on time is enough.
    """

    def __init__(self, out_dim: int, freq_dim: int = 64, kind: str = "sinusoidal"):
        super().__init__()
        if kind not in ("sinusoidal", "raw"):
            raise ValueError(f"time embedding must be 'sinusoidal' or 'raw', got {kind!r}")
        self.kind = kind
        self.out_dim = out_dim if kind == "sinusoidal" else 2
        if kind == "sinusoidal":
            self.t_emb = SinusoidalEmbedding(freq_dim)
            self.h_emb = SinusoidalEmbedding(freq_dim)
            self.mlp = nn.Sequential(nn.Linear(2 * freq_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        if self.kind == "raw":
            return torch.stack([t, r - t], dim=-1)
        return self.mlp(torch.cat([self.t_emb(t), self.h_emb(r - t)], dim=-1))

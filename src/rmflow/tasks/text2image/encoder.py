"""φ_ω, the guided-encoding map from a caption embedding into the data (pixel or latent) space.

    φ_ω(c) = reshape( W2 · SiLU(W1 e(c) + b1) + b2 )  : (B, 384) -> (B, *D)

The source is x0 = φ_ω(c) + σ_c·ε0 (rmflow.flow.GuidedSource); the objective adds λ2·‖φ_ω(c)‖². The last layer
starts at zero, so training starts from the plain Gaussian source scaled by σ_c.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class CaptionEncoder(nn.Module):
    def __init__(self, shape: tuple[int, ...], cond_dim: int = 384, hidden: int = 256):
        super().__init__()
        self.shape = tuple(shape)
        self.net = nn.Sequential(nn.Linear(cond_dim, hidden), nn.SiLU(), nn.Linear(hidden, math.prod(self.shape)))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, cond) -> torch.Tensor:
        """cond: (B, cond_dim) or a dict with "text" -> (B, *shape)."""
        text = cond["text"] if isinstance(cond, dict) else cond
        if text is None:
            raise ValueError("φ_ω needs the caption embedding (cond['text'])")
        return self.net(text).reshape(text.shape[0], *self.shape)

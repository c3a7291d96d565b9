"""Source distributions at t = 0.

- GaussianSource:  x0 = ε0 (drawn in the task's space, e.g. zero centre of mass).
- GuidedSource:    x0 = φ_ω(c) + σ_c·ε0, "guided encoding": a learned encoder φ_ω moves the condition c into the
  data space, and the flow only has to transport a small cloud around φ_ω(c). φ_ω is trained jointly with the
  flow, with the penalty λ2·‖φ_ω(c)‖² of the RMFlow objective.
"""
from __future__ import annotations

import torch
from torch import nn

from .space import EuclideanSpace


class GaussianSource(nn.Module):
    """x0 ~ N(0, I) in the data space; ignores the condition."""

    guided = False

    def __init__(self, space=None):
        super().__init__()
        self.space = space or EuclideanSpace()

    def encode(self, cond, template: torch.Tensor) -> torch.Tensor:
        """The source mean for each sample: zeros like template (B, *D)."""
        return torch.zeros_like(template)

    def forward(self, template: torch.Tensor, cond=None, mask=None, generator=None) -> torch.Tensor:
        """x0: (B, *D) shaped like template."""
        return self.space.randn_like(template, mask, generator)


class GuidedSource(GaussianSource):
    """x0 = φ_ω(c) + σ_c·ε0, with φ_ω an nn.Module mapping the condition to a tensor shaped like the data."""

    guided = True

    def __init__(self, encoder: nn.Module, sigma_c: float, space=None):
        super().__init__(space)
        if sigma_c < 0:
            raise ValueError(f"sigma_c must be >= 0, got {sigma_c}")
        self.encoder, self.sigma_c = encoder, float(sigma_c)

    def encode(self, cond, template: torch.Tensor) -> torch.Tensor:
        mean = self.encoder(cond).reshape(template.shape)
        return self.space.project(mean)

    def forward(self, template, cond=None, mask=None, generator=None):
        if cond is None:
            raise ValueError("a guided source needs a condition")
        return self.space.project(self.encode(cond, template), mask) + self.sigma_c * self.space.randn_like(
            template, mask, generator)

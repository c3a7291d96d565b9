"""RMFlow: the average-velocity network together with its source and its refinement scale."""
from __future__ import annotations

from torch import nn

from .refine import FixedScale
from .sources import GaussianSource
from .space import EuclideanSpace


class RMFlow(nn.Module):
    """Holds u_θ(x, t, r, cond, mask) (`net`), the source (with φ_ω when guided) and the refinement scale.

    Calling the module evaluates the network: x (B, *D), t and r (B,) -> u (B, *D). Sampling lives in
    rmflow.flow.samplers; losses in rmflow.flow.objective.
    """

    def __init__(self, net: nn.Module, source: GaussianSource | None = None, refiner: nn.Module | None = None,
                 space=None):
        super().__init__()
        self.space = space or (source.space if source is not None else EuclideanSpace())
        self.net = net
        self.source = source if source is not None else GaussianSource(self.space)
        self.refiner = refiner if refiner is not None else FixedScale(sigma_min=1e-3, sigma=0.0)

    def forward(self, x, t, r, cond=None, mask=None):
        return self.net(x, t, r, cond, mask)

    def draw_source(self, template: torch.Tensor, cond=None, mask=None, generator=None) -> torch.Tensor:
        """x0 shaped like template: (B, *D)."""
        return self.source(template, cond, mask, generator)

"""RMFlow: the average-velocity network together with its source and its refinement scale."""
from __future__ import annotations

import torch
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
        # a network of one's own may take (x, t, r, cond) only: it is then called without the mask
        self._net_takes_mask = _accepts_mask(net)
        self.space = space or (source.space if source is not None else EuclideanSpace())
        self.net = net
        self.source = source if source is not None else GaussianSource(self.space)
        self.refiner = refiner if refiner is not None else FixedScale(sigma_min=1e-3, sigma=0.0)

    def forward(self, x, t, r, cond=None, mask=None):
        return self.net(x, t, r, cond, mask) if self._net_takes_mask else self.net(x, t, r, cond)

    def draw_source(self, template: torch.Tensor, cond=None, mask=None, generator=None) -> torch.Tensor:
        """x0 shaped like template: (B, *D)."""
        return self.source(template, cond, mask, generator)


def _accepts_mask(net: nn.Module) -> bool:
    """Whether net.forward takes a fifth argument (the mask) after (x, t, r, cond)."""
    import inspect
    try:
        params = list(inspect.signature(net.forward).parameters.values())
    except (TypeError, ValueError):   # e.g. a scripted module: assume the full signature
        return True
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return True
    return len([p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]) >= 5

"""Samplers of the time pair (t, r), 0 <= t <= r <= 1, for the MeanFlow loss."""
from __future__ import annotations

import torch


class TimeSampler:
    """Draws (t, r) with t <= r.

    Two times are drawn i.i.d. from `dist` ("uniform" on [0, 1] or "logit_normal": sigmoid(N(mean, std)))
    and sorted; then a share `1 - ratio_neq` of the batch gets r = t (plain flow matching) and a share
    `ratio_one_step` gets (t, r) = (0, 1), the one-step map itself (0 <= ratio_one_step <= ratio_neq <= 1; the
    config checks the settings where it is loaded).
    """

    def __init__(self, dist: str = "uniform", mean: float = 0.0, std: float = 1.0,
                 ratio_neq: float = 0.25, ratio_one_step: float = 0.0):
        self.dist, self.mean, self.std = dist, mean, std
        self.ratio_neq, self.ratio_one_step = ratio_neq, ratio_one_step

    def _draw(self, n: int, generator, device) -> torch.Tensor:
        if self.dist == "uniform":
            return torch.rand(n, generator=generator, device=device)
        return torch.sigmoid(self.mean + self.std * torch.randn(n, generator=generator, device=device))

    def sample(self, batch_size: int, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Returns t, r: (B,) each, with t <= r."""
        a, b = self._draw(batch_size, generator, device), self._draw(batch_size, generator, device)
        t, r = torch.minimum(a, b), torch.maximum(a, b)
        u = torch.rand(batch_size, generator=generator, device=device)
        equal = u >= self.ratio_neq
        r = torch.where(equal, t, r)
        one_step = u < self.ratio_one_step
        t = torch.where(one_step, torch.zeros_like(t), t)
        r = torch.where(one_step, torch.ones_like(r), r)
        return t, r

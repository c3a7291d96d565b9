"""Samplers of the time pair (t, r), 0 <= t <= r <= 1, for the MeanFlow loss."""
from __future__ import annotations

import torch


class TimeSampler:
    """Draws (t, r) with t <= r.

    Two times are drawn i.i.d. from `dist` ("uniform" on [0, 1] or "logit_normal": sigmoid(N(mean, std)))
    and sorted; then a share `1 - ratio_neq` of the batch gets r = t (plain flow matching) and a share
    `ratio_one_step` gets (t, r) = (0, 1), the one-step map itself (0 <= ratio_one_step <= ratio_neq <= 1; the
    config checks the settings where it is loaded).

    `pair_dist` = "uniform" draws the rows with r != t from two uniform times (sorted) whatever `dist` is, so a
    `dist` that concentrates the flow-matching rows near the data (logit-normal with mean > 0, which sharpens the
    instantaneous velocity at small noise) does not also take away the long jumps from t near 0 that one-step
    sampling needs (docs/results/qm9.md §7). "same" draws them like the r = t rows. The library's default
    (config.TimeConfig) is logit-normal(1, 1) with pair_dist = "uniform" (docs/METHOD.md §6); this constructor's
    own defaults are the plain uniform draw.

    `fm_warmup` = k > 0: while the step set by `set_step` is below k, every row gets r = t (flow matching only),
    so the network has a sensible instantaneous velocity before the MeanFlow target's (r - t)·du/dt term, built
    from that network's own derivative, enters the loss (docs/METHOD.md §9). The switch is a Python flag that
    changes once, so torch.compile recompiles once instead of every step.
    """

    def __init__(self, dist: str = "uniform", mean: float = 0.0, std: float = 1.0,
                 ratio_neq: float = 0.25, ratio_one_step: float = 0.0, fm_warmup: int = 0,
                 pair_dist: str = "same"):
        self.dist, self.mean, self.std, self.pair_dist = dist, mean, std, pair_dist
        self.ratio_neq, self.ratio_one_step = ratio_neq, ratio_one_step
        self.fm_warmup = fm_warmup
        self._warming = fm_warmup > 0

    def set_step(self, step: int) -> None:
        """The training step about to run (the trainer calls this through the objective before every step)."""
        self._warming = step < self.fm_warmup

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
        ratio_neq, ratio_one_step = (0.0, 0.0) if self._warming else (self.ratio_neq, self.ratio_one_step)
        equal = u >= ratio_neq
        if self.pair_dist == "uniform":
            c, d = torch.rand(batch_size, generator=generator, device=device), \
                torch.rand(batch_size, generator=generator, device=device)
            t = torch.where(equal, t, torch.minimum(c, d))
            r = torch.where(equal, t, torch.maximum(c, d))
        else:
            r = torch.where(equal, t, r)
        one_step = u < ratio_one_step
        t = torch.where(one_step, torch.zeros_like(t), t)
        r = torch.where(one_step, torch.ones_like(r), r)
        return t, r

"""The noise-injection refinement: x̂_tgt = x̂1 + s·ε2 (RMFlow eq. 9).

The paper fixes s = sqrt(σ_min² - σ²). LearnedScale makes s a parameter (or a small network of the condition)
fitted by the Gaussian likelihood of the residual with its log-variance term:

    L_scale = ‖y - sg(x̂1)‖² / (2 s²) + dof · log s,      minimiser s² = E‖y - x̂1‖² / dof,

so the scale never changes the gradient that reaches the transport map (that one comes from λ1·L_NLL).
"""
from __future__ import annotations

import math

import torch
from torch import nn


class FixedScale(nn.Module):
    """s = sqrt(σ_min² - σ²), the paper's choice."""

    learned = False

    def __init__(self, sigma_min: float, sigma: float):
        super().__init__()
        if not 0 <= sigma < sigma_min:
            raise ValueError(f"need 0 <= sigma < sigma_min, got sigma={sigma}, sigma_min={sigma_min}")
        # not persistent: the scale follows the config, so a stage-2 run with another σ_min that starts from a
        # stage-1 checkpoint samples with its own scale
        self.register_buffer("value", torch.tensor(math.sqrt(sigma_min ** 2 - sigma ** 2)), persistent=False)

    def forward(self, batch_size: int, cond=None) -> torch.Tensor:
        """Scale per sample: (B,)."""
        return self.value.expand(batch_size)


class LearnedScale(nn.Module):
    """s = exp(log_s) (a scalar), or s = exp(g(c)) for a network g of the condition; always positive."""

    learned = True

    def __init__(self, init: float, cond_net: nn.Module | None = None):
        super().__init__()
        if init <= 0:
            raise ValueError(f"initial refinement scale must be > 0, got {init}")
        self.log_scale = nn.Parameter(torch.tensor(math.log(init)))
        self.cond_net = cond_net

    def forward(self, batch_size: int, cond=None) -> torch.Tensor:
        log_s = self.log_scale.expand(batch_size)
        if self.cond_net is not None and cond is not None:
            log_s = log_s + self.cond_net(cond).reshape(batch_size)
        return log_s.exp()


def scale_nll(residual_sq: torch.Tensor, scale: torch.Tensor, dof: torch.Tensor) -> torch.Tensor:
    """Gaussian negative log-likelihood (without the 2π constant) of a residual with ‖·‖² = residual_sq:
    residual_sq/(2 s²) + dof·log s. All (B,)."""
    return residual_sq / (2 * scale ** 2) + dof * torch.log(scale)

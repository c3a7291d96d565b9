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

from .path import expand_time
from .space import EuclideanSpace


class Refiner(nn.Module):
    """The interface of a refinement (each class below implements it):

        refine(x0, x_hat, space, cond, mask, generator) -> x̂_tgt (B, *D)           the sampler's last step
        likelihood(x0, x_hat, y, residual_sq, dof, cond) -> (terms (k,) or None, stats)
                                   the refiner's own terms added to λ1·L_NLL (its own parameters' training signal)
        ema: bool                  whether the trainer's EMA averages the refiner's weights (False: it copies them)
    """

    ema = True

    def likelihood(self, x0, x_hat, y, residual_sq, dof, cond=None) -> tuple[torch.Tensor | None, dict]:
        return None, {}


class _GaussianRefinement(Refiner):
    """x̂_tgt = x̂1 + s·ε2 in the task's space, s = self(B, cond): (B,)."""

    def refine(self, x0, x_hat, space, cond=None, mask=None, generator=None) -> torch.Tensor:
        """x0, x_hat: (B, *D) source and one-step output -> the refined sample (B, *D)."""
        scale = self(x_hat.shape[0], cond)
        return x_hat + expand_time(scale, x_hat) * space.randn_like(x_hat, mask, generator)


class FixedScale(_GaussianRefinement):
    """s = sqrt(σ_min² - σ²), the paper's choice."""

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


class LearnedScale(_GaussianRefinement):
    """s = exp(log_s) (a scalar), or s = exp(g(c)) for a network g of the condition; always positive. Trained by
    L_scale (module docstring) on the detached residual."""

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

    def likelihood(self, x0, x_hat, y, residual_sq, dof, cond=None):
        scale = self(len(x0), cond)
        return scale_nll(residual_sq.detach(), scale, dof), {"refine_scale": scale.detach().mean()}


def scale_nll(residual_sq: torch.Tensor, scale: torch.Tensor, dof: torch.Tensor) -> torch.Tensor:
    """Gaussian negative log-likelihood (without the 2π constant) of a residual with ‖·‖² = residual_sq:
    residual_sq/(2 s²) + dof·log s. All (B,)."""
    return residual_sq / (2 * scale ** 2) + dof * torch.log(scale)


class MixtureRefiner(Refiner):
    """A refinement that may jump: a K-component Gaussian mixture around the one-step output,

        p(y | x0) = Σ_k π_k N(y; x̂1 + δ_k, s² I),     (δ_1..δ_K, logits of π) = g(x0, x̂1),

    g a small MLP of the source point and the one-step output (vector data, (B, D)), s = sqrt(σ_min² - σ²) fixed.
    A continuous map x0 -> x̂1 must pass through the space between two modes where its target jumps from one to
    the other (docs/METHOD.md §4); here the jump is carried by the discrete choice of component. Sampling:
    x̂_tgt = x̂1 + δ_c + s·ε2, with c = argmax_k π_k(x0) (`pick="argmax"`: against a deterministic teacher the ideal
    π is one-hot, so this removes only π's approximation error) or c ~ Cat(π) (`pick="sample"`, the mixture
    itself). The transport network's own gradient is untouched: g is trained on sg(x̂1) by `nll` (the mixture's
    negative log-likelihood times s², so that it is on the scale of a squared error).
    """

    ema = False   # g starts training with stage 2: an average would keep e^(-n(1-decay)) of its random start

    def __init__(self, dim: int, components: int, sigma_min: float, sigma: float, hidden: int = 256,
                 pick: str = "argmax"):
        super().__init__()
        self.pick = pick
        self.scale = FixedScale(sigma_min, sigma)
        self.dim, self.components = dim, components
        self.net = nn.Sequential(nn.Linear(2 * dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, components * (dim + 1)))
        with torch.no_grad():  # start near the fixed refinement: small, distinct offsets, near-uniform weights
            self.net[-1].weight.mul_(0.1)
            self.net[-1].bias.normal_(0.0, 0.1 * float(self.scale.value))

    def forward(self, batch_size: int, cond=None) -> torch.Tensor:
        """The Gaussian scale s per sample: (B,)."""
        return self.scale(batch_size)

    def mixture_params(self, x0: torch.Tensor, x_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x0, x_hat: (B, D) -> component means (B, K, D) and log-weights (B, K)."""
        out = self.net(torch.cat([x0, x_hat], dim=-1)).view(-1, self.components, self.dim + 1)
        return x_hat.unsqueeze(1) + out[..., :-1], torch.log_softmax(out[..., -1], dim=-1)

    def nll(self, x0: torch.Tensor, x_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """s²·(−log p(y | x0)) without the 2π and log s constants: −s²·logsumexp_k(log π_k − ‖y − μ_k‖²/(2s²)),
        (B,). Gradients reach g only (x_hat is detached)."""
        means, log_w = self.mixture_params(x0, x_hat.detach())
        s2 = self.scale.value ** 2
        sq = (y.unsqueeze(1) - means).pow(2).sum(-1)
        return -s2 * torch.logsumexp(log_w - sq / (2 * s2), dim=-1)

    def likelihood(self, x0, x_hat, y, residual_sq, dof, cond=None):
        mix = self.nll(x0, x_hat, y)
        return mix, {"nll_mixture": mix.detach().mean()}

    def refine(self, x0, x_hat, space=None, cond=None, mask=None, generator=None) -> torch.Tensor:
        """One draw of x̂_tgt per row: (B, D): the chosen component's mean, then the fixed-scale Gaussian step."""
        means, log_w = self.mixture_params(x0, x_hat)
        if self.pick == "argmax":
            c = log_w.argmax(1)
        else:
            c = torch.multinomial(log_w.exp(), 1, generator=generator).squeeze(1)
        mean = means[torch.arange(len(c), device=c.device), c]
        return self.scale.refine(x0, mean, space or EuclideanSpace(), cond, mask, generator)

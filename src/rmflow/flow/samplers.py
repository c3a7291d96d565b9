"""Samplers. Each returns the samples and the number of network evaluations (NFE) it spent.

- one_step (RMFlow, 1 NFE):   x̂1 = x0 + u(x0, 0, 1),   x̂_tgt = x̂1 + s·ε2   (s from the model's refiner)
- meanflow (k NFE):           x_{τ+1} = x_τ + (τ_{i+1} - τ_i)·u(x_τ, τ_i, τ_{i+1}) on a uniform grid
- flow_matching_ode:          dx/dt = u(x, t, t) (the instantaneous velocity), Euler (k NFE) or Heun (2k - 1)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SampleResult:
    x: torch.Tensor   # (B, *D)
    nfe: int


def _full(x: torch.Tensor, value: float) -> torch.Tensor:
    return torch.full((x.shape[0],), float(value), device=x.device, dtype=x.dtype)


@torch.no_grad()
def meanflow(model, x0: torch.Tensor, steps: int = 1, cond=None, mask=None) -> SampleResult:
    """k uniform MeanFlow jumps from t = 0 to t = 1 (k = steps)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    grid = torch.linspace(0.0, 1.0, steps + 1).tolist()
    x = x0
    for a, b in zip(grid[:-1], grid[1:]):
        x = x + (b - a) * model(x, _full(x, a), _full(x, b), cond, mask)
    return SampleResult(x, steps)


@torch.no_grad()
def one_step(model, x0: torch.Tensor, cond=None, mask=None, refine: bool = True,
             generator: torch.Generator | None = None) -> SampleResult:
    """RMFlow's sampler: one MeanFlow jump then the noise-injection refinement (1 NFE; a mixture refiner adds
    one evaluation of its small network g, not of u_θ)."""
    x = meanflow(model, x0, 1, cond, mask).x
    if refine:
        x = model.refiner.refine(x0, x, model.space, cond, mask, generator)
    return SampleResult(x, 1)


@torch.no_grad()
def flow_matching_ode(model, x0: torch.Tensor, steps: int = 100, cond=None, mask=None,
                      method: str = "euler") -> SampleResult:
    """Integrates the instantaneous velocity u(x, t, t) from 0 to 1 with `steps` uniform steps."""
    if method not in ("euler", "heun"):
        raise ValueError(f"ODE method must be 'euler' or 'heun', got {method!r}")
    grid = torch.linspace(0.0, 1.0, steps + 1).tolist()
    x, nfe = x0, 0
    for a, b in zip(grid[:-1], grid[1:]):
        ta = _full(x, a)
        v = model(x, ta, ta, cond, mask)
        nfe += 1
        if method == "heun" and b < 1.0:
            tb = _full(x, b)
            v = 0.5 * (v + model(x + (b - a) * v, tb, tb, cond, mask))
            nfe += 1
        x = x + (b - a) * v
    return SampleResult(x, nfe)


def sample(model, x0: torch.Tensor, method: str, steps: int = 1, cond=None, mask=None,
           generator: torch.Generator | None = None) -> SampleResult:
    """Dispatch by name: "rmflow" (1 NFE + refinement), "meanflow" (k steps), "fm" (Euler ODE), "fm_heun"."""
    if method == "rmflow":
        return one_step(model, x0, cond, mask, refine=True, generator=generator)
    if method == "meanflow":
        return meanflow(model, x0, steps, cond, mask)
    if method in ("fm", "fm_heun"):
        return flow_matching_ode(model, x0, steps, cond, mask, "heun" if method == "fm_heun" else "euler")
    raise ValueError(f"unknown sampler {method!r}; use rmflow, meanflow, fm or fm_heun")

"""Samplers. Each returns the samples and the number of network evaluations (NFE) it spent.

- one_step (RMFlow, 1 NFE):   x̂1 = x0 + u(x0, 0, 1),   x̂_tgt = x̂1 + s·ε2   (s from the model's refiner)
- meanflow (k NFE):           x_{τ+1} = x_τ + (τ_{i+1} - τ_i)·u(x_τ, τ_i, τ_{i+1}) on a uniform grid
- flow_matching_ode:          dx/dt = u(x, t, t) (the instantaneous velocity), Euler (k NFE) or Heun (2k - 1)

Classifier-free guidance (`guidance=ω`, every sampler; None: no guidance, exactly the unguided sampler). Every
network evaluation u(x, t, r | c) is replaced by its guided version:

- a network that takes ω as an input (`takes_guidance`: trained with the guided target of flow/cmfm.py over a range
  of ω) gets it in its condition, cond["guidance"] = ω (B,): u(x, t, r | c, ω), one evaluation;
- any other network, standard CFG with the null condition ∅ (flow/rows.py `null_condition`):

      u_ω = u(x, t, r | ∅) + ω·(u(x, t, r | c) − u(x, t, r | ∅))          (`cfg_combine`)

  two evaluations, counted as 2 NFE per step; ω = 1 is the conditional evaluation alone (1 NFE, bit for bit the
  unguided sampler) and ω = 0 the unconditional one (1 NFE).

The source x0 and the refinement of `one_step` keep the real condition c.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .jvp import unwrap
from .rows import null_condition, with_guidance


@dataclass
class SampleResult:
    x: torch.Tensor   # (B, *D)
    nfe: int


def _full(x: torch.Tensor, value: float) -> torch.Tensor:
    return torch.full((x.shape[0],), float(value), device=x.device, dtype=x.dtype)


def takes_guidance(model) -> bool:
    """Whether the network (or the network inside an RMFlow model / DDP / compile wrapper) takes the guidance scale
    ω as an input: its `takes_guidance` attribute is true (e.g. UNet(guidance_embed=True))."""
    m = unwrap(model)
    if getattr(m, "takes_guidance", False):
        return True
    net = getattr(m, "net", None)
    return net is not None and bool(getattr(unwrap(net), "takes_guidance", False))


def cfg_combine(u_cond: torch.Tensor, u_null: torch.Tensor, scale) -> torch.Tensor:
    """Standard CFG: u(·|∅) + ω·(u(·|c) − u(·|∅)); scale a float or a tensor broadcastable to u."""
    return u_null + scale * (u_cond - u_null)


class GuidedField:
    """u(x, t, r) of `model` for a fixed condition, mask and guidance scale (module docstring); `evals` network
    evaluations per call."""

    def __init__(self, model, cond=None, mask=None, guidance: float | None = None):
        self.model, self.cond, self.mask = model, cond, mask
        self.scale, self.null, self.as_input, self.evals = None, None, False, 1
        if guidance is None:
            return
        w = float(guidance)
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"guidance scale must be a finite number >= 0, got {guidance!r}")
        if takes_guidance(model):
            with_guidance(cond, None)   # refuses a missing or tensor condition with a clear error
            self.scale, self.as_input = w, True
        elif w == 1.0:
            return
        elif cond is None:
            raise ValueError(f"guidance ω = {w:g} needs a conditional model (this one samples without a condition)")
        elif w == 0.0:
            self.cond = null_condition(cond)   # u(·|∅) alone
        else:
            self.scale, self.null, self.evals = w, null_condition(cond), 2

    def __call__(self, x: torch.Tensor, t: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        if self.as_input:
            return self.model(x, t, r, with_guidance(self.cond, _full(x, self.scale)), self.mask)
        if self.null is None:
            return self.model(x, t, r, self.cond, self.mask)
        return cfg_combine(self.model(x, t, r, self.cond, self.mask), self.model(x, t, r, self.null, self.mask),
                           self.scale)


@torch.no_grad()
def meanflow(model, x0: torch.Tensor, steps: int = 1, cond=None, mask=None,
             guidance: float | None = None) -> SampleResult:
    """k uniform MeanFlow jumps from t = 0 to t = 1 (k = steps); guidance: the scale ω (module docstring)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    field = GuidedField(model, cond, mask, guidance)
    grid = torch.linspace(0.0, 1.0, steps + 1).tolist()
    x = x0
    for a, b in zip(grid[:-1], grid[1:]):
        x = x + (b - a) * field(x, _full(x, a), _full(x, b))
    return SampleResult(x, steps * field.evals)


@torch.no_grad()
def one_step(model, x0: torch.Tensor, cond=None, mask=None, refine: bool = True,
             generator: torch.Generator | None = None, guidance: float | None = None) -> SampleResult:
    """RMFlow's sampler: one MeanFlow jump then the noise-injection refinement (1 NFE; a mixture refiner adds
    one evaluation of its small network g, not of u_θ; 2 NFE with standard CFG)."""
    jump = meanflow(model, x0, 1, cond, mask, guidance)
    x = jump.x
    if refine:
        x = model.refiner.refine(x0, x, model.space, cond, mask, generator)
    return SampleResult(x, jump.nfe)


@torch.no_grad()
def flow_matching_ode(model, x0: torch.Tensor, steps: int = 100, cond=None, mask=None,
                      method: str = "euler", guidance: float | None = None) -> SampleResult:
    """Integrates the instantaneous velocity u(x, t, t) from 0 to 1 with `steps` uniform steps."""
    if method not in ("euler", "heun"):
        raise ValueError(f"ODE method must be 'euler' or 'heun', got {method!r}")
    field = GuidedField(model, cond, mask, guidance)
    grid = torch.linspace(0.0, 1.0, steps + 1).tolist()
    x, nfe = x0, 0
    for a, b in zip(grid[:-1], grid[1:]):
        ta = _full(x, a)
        v = field(x, ta, ta)
        nfe += field.evals
        if method == "heun" and b < 1.0:
            tb = _full(x, b)
            v = 0.5 * (v + field(x + (b - a) * v, tb, tb))
            nfe += field.evals
        x = x + (b - a) * v
    return SampleResult(x, nfe)


def sample(model, x0: torch.Tensor, method: str, steps: int = 1, cond=None, mask=None,
           generator: torch.Generator | None = None, guidance: float | None = None) -> SampleResult:
    """Dispatch by name: "rmflow" (1 NFE + refinement), "meanflow" (k steps), "fm" (Euler ODE), "fm_heun";
    guidance: the CFG scale ω (module docstring), None for none."""
    if method == "rmflow":
        return one_step(model, x0, cond, mask, refine=True, generator=generator, guidance=guidance)
    if method == "meanflow":
        return meanflow(model, x0, steps, cond, mask, guidance)
    if method in ("fm", "fm_heun"):
        return flow_matching_ode(model, x0, steps, cond, mask, "heun" if method == "fm_heun" else "euler",
                                 guidance)
    raise ValueError(f"unknown sampler {method!r}; use rmflow, meanflow, fm or fm_heun")

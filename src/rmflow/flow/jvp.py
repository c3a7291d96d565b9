"""The total time derivative of the average velocity, du/dt = ∂_x u · v + ∂_t u, as an exact JVP.

Tangents (v, 1, 0) for the inputs (x, t, r): a forward-mode Jacobian-vector product, no finite differences.
The x-tangent v is any velocity: the conditional x1 - x0 for MeanFlow, the model's own u(x, t, t) for iMF.
It is computed without a graph (it only enters the stop-gradient target), so a MeanFlow step costs one JVP plus
one ordinary forward/backward.
"""
from __future__ import annotations

import torch
from torch import nn

BACKENDS = ("func", "autograd")


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / compile wrapper (func.jvp cannot run through DDP)."""
    while hasattr(module, "module") or hasattr(module, "_orig_mod"):
        module = getattr(module, "module", None) or getattr(module, "_orig_mod")
    return module


def mean_velocity_time_derivative(net, x: torch.Tensor, t: torch.Tensor, r: torch.Tensor,
                                  v: torch.Tensor, cond=None, mask=None, backend: str = "func"
                                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (u, du/dt), both (B, *D) and detached, for u = net(x, t, r, cond, mask).

    x, v: (B, *D); t, r: (B,). du/dt = J_x u · v + ∂u/∂t, the derivative along the path (dx/dt = v, dr/dt = 0).
    backend "func" uses torch.func.jvp (forward mode); "autograd" uses torch.autograd.functional.jvp (the
    double-backward trick, slower, for modules that forward mode does not support).
    """
    def f(x_, t_, r_):
        return net(x_, t_, r_, cond, mask)

    tangents = (v, torch.ones_like(t), torch.zeros_like(r))
    if backend == "func":
        with torch.no_grad():
            u, dudt = torch.func.jvp(f, (x, t, r), tangents)
    elif backend == "autograd":
        with torch.enable_grad():
            u, dudt = torch.autograd.functional.jvp(f, (x, t, r), tangents, create_graph=False)
    else:
        raise ValueError(f"jvp backend must be one of {BACKENDS}, got {backend!r}")
    return u.detach(), dudt.detach()

"""rmflow: one-step generative modelling with Refined Mean Flow (RMFlow).

Conventions (shared by every module): prior at t = 0, data at t = 1, linear path
x_t = (1 - t) x0 + t x1, average-velocity network u(x, t, r, cond) with x_r = x_t + (r - t) u(x_t, t, r).
"""

__version__ = "0.1.0"


def load(path, use_ema: bool = True, device="cpu"):
    """A trained model ready to sample: `rmflow.load("runs/x").sample(1000)` (see rmflow.pipeline)."""
    from .pipeline import load as _load
    return _load(path, use_ema, device)

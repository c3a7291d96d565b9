"""The linear probability path between a source sample x0 (t = 0) and a data sample x1 (t = 1)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


def expand_time(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape times t: (B,) so that they broadcast against like: (B, *D)."""
    return t.reshape(t.shape[0], *([1] * (like.dim() - 1)))


@dataclass
class PathSample:
    """A point on the path: x_t (B, *D) and the conditional velocity v = x1 - x0 (B, *D)."""

    x_t: torch.Tensor
    velocity: torch.Tensor


class LinearPath:
    """x_t = (1 - t)·x0 + t·x1 and v = x1 - x0 (the straight, constant-speed path)."""

    def sample(self, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> PathSample:
        """x0, x1: (B, *D); t: (B,). Returns the point at time t and its velocity."""
        if x0.shape != x1.shape:
            raise ValueError(f"x0 {tuple(x0.shape)} and x1 {tuple(x1.shape)} must have the same shape")
        tt = expand_time(t, x0)
        return PathSample(x_t=(1 - tt) * x0 + tt * x1, velocity=x1 - x0)

"""Data spaces: how noise is drawn in a task's data space, and how many degrees of freedom a sample has.

flow/ only ever draws noise through a space, so a task can restrict noise to a subspace (for example zero centre
of mass for atom positions) or mask padded entries without any change to the method's code.
"""
from __future__ import annotations

import torch


class EuclideanSpace:
    """R^D with standard Gaussian noise; every entry is a degree of freedom."""

    def project(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Map x: (B, *D) onto the space (identity here); mask: same leading shape, 1 = real entry."""
        return x if mask is None else x * mask

    def randn_like(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
        """Standard Gaussian noise in the space, shaped like x: (B, *D)."""
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return self.project(eps, mask)

    def dof(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Degrees of freedom per sample: (B,). Used to normalise Gaussian log-likelihoods."""
        if mask is None:
            return torch.full((x.shape[0],), float(x[0].numel()), device=x.device)
        return torch.broadcast_to(mask, x.shape).flatten(1).sum(1).to(x.dtype)

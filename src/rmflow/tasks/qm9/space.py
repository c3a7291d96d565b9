"""The molecule data space: per atom [positions (3) | atom-type features (F)], positions with zero centre of mass.

x: (B, N, 3 + F), mask: (B, N, 1) (1 = real atom). The subspace is

    { x : x_i = 0 for padding atoms,  Σ_{i real} pos_i = 0 }

so a molecule with n real atoms has 3(n - 1) + F·n degrees of freedom. Projection onto it (orthogonal, hence
a standard Gaussian projected is the standard Gaussian of the subspace):

    pos_i ← (pos_i - (1/n) Σ_{j real} pos_j) · m_i,    features_i ← features_i · m_i
"""
from __future__ import annotations

import torch

from ...flow import EuclideanSpace


def remove_mean(pos: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """pos: (B, N, 3) -> pos minus the mean over real atoms, zero on padding; mask (B, N, 1) or None (all real)."""
    if mask is None:
        return pos - pos.mean(dim=1, keepdim=True)
    mask = mask.to(pos.dtype)
    n = mask.sum(dim=1, keepdim=True).clamp(min=1.0)
    mean = (pos * mask).sum(dim=1, keepdim=True) / n
    return (pos - mean) * mask


class ZeroCoMSpace(EuclideanSpace):
    """EuclideanSpace restricted to zero centre of mass on the first `num_pos` features of every atom."""

    def __init__(self, num_pos: int = 3):
        self.num_pos = num_pos

    def _atom_mask(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
        if mask is None:
            return None
        if mask.dim() != 3 or mask.shape[:2] != x.shape[:2] or mask.shape[2] != 1:
            raise ValueError(f"atom mask must have shape (B, N, 1) = {(*x.shape[:2], 1)}, got {tuple(mask.shape)}")
        return mask.to(x.dtype)

    def project(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, N, 3 + F) -> its orthogonal projection onto the subspace."""
        m = self._atom_mask(x, mask)
        pos = remove_mean(x[..., :self.num_pos], m)
        feat = x[..., self.num_pos:] if m is None else x[..., self.num_pos:] * m
        return torch.cat([pos, feat], dim=-1)

    def dof(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """3(n - 1) + F·n per molecule: (B,)."""
        b, n_max, d = x.shape
        n = (torch.full((b,), float(n_max), device=x.device, dtype=x.dtype) if mask is None
             else self._atom_mask(x, mask).flatten(1).sum(1))
        return n * d - self.num_pos * (n > 0).to(x.dtype)

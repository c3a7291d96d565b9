"""GroupNorm and LayerNorm written from elementary ops, for torch.compile of a loss that runs torch.func.jvp.

Dynamo cannot trace the fused `group_norm` / `layer_norm` kernels under functorch's forward-mode transform (the
fake-tensor pass fails on their GradTrackingTensor inputs, seen with torch 2.11 on CUDA and 2.13 on CPU), so a
compiled MeanFlow loss of a network with these layers fell back to eager execution. These subclasses compute the
same function, y = (x − mean) / sqrt(var + eps) · weight + bias (biased variance, as torch's), with mean/var
reductions that every transform and the compiler handle. Like torch's under autocast, the statistics are taken in
at least float32 (a bf16 input is normalised in float32 and returned as bf16). Parameter names and shapes are
torch's, so checkpoints of either load into the other.
"""
from __future__ import annotations

import torch
from torch import nn


class GroupNorm(nn.GroupNorm):
    """x (B, C, *S) normalised over each of `num_groups` channel groups and S, then an affine map per channel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        g = x.reshape(b, self.num_groups, -1).to(_stats_dtype(x))
        mean = g.mean(-1, keepdim=True)
        var = (g - mean).pow(2).mean(-1, keepdim=True)
        y = ((g - mean) * torch.rsqrt(var + self.eps)).reshape(x.shape)
        if self.affine:
            shape = (1, c) + (1,) * (x.dim() - 2)
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        return y.to(x.dtype)


class LayerNorm(nn.LayerNorm):
    """x (*, *normalized_shape) normalised over its last len(normalized_shape) axes, then the elementwise affine."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(-len(self.normalized_shape), 0))
        h = x.to(_stats_dtype(x))
        mean = h.mean(dims, keepdim=True)
        var = (h - mean).pow(2).mean(dims, keepdim=True)
        y = (h - mean) * torch.rsqrt(var + self.eps)
        if self.elementwise_affine:
            y = y * self.weight
            if self.bias is not None:
                y = y + self.bias
        return y.to(x.dtype)


def _stats_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 for half-precision inputs, the input's own dtype for float32 and float64."""
    return torch.promote_types(x.dtype, torch.float32)

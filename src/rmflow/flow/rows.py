"""Rows of a batch's companions. A condition or mask is None, a tensor with one row per sample, or a dict of such
tensors (a task's structured condition); these helpers treat the three alike."""
from __future__ import annotations

import torch


def cond_rows(cond, index):
    """Rows `index` (a slice or index tensor) of a condition or mask."""
    if cond is None:
        return None
    if isinstance(cond, dict):
        return {key: v[index] for key, v in cond.items()}
    return cond[index]


def cat_rows(a, b):
    """Rows of `a` followed by rows of `b` (both None, tensors, or dicts of tensors with the same keys)."""
    if a is None and b is None:
        return None
    if isinstance(a, dict):
        return {key: torch.cat([v, b[key]]) for key, v in a.items()}
    return torch.cat([a, b])


def to_device(value, device):
    """A condition or mask on `device` (non-tensor entries pass through)."""
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value.to(device) if torch.is_tensor(value) else value

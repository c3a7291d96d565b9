"""Rows of a batch's companions. A condition or mask is None, a tensor with one row per sample, or a dict of such
tensors (a task's structured condition); these helpers treat the three alike.

The null condition ∅ of classifier-free guidance is defined here and only here (`null_condition`): every tensor of
the condition (nested dicts included) is zeroed on the chosen rows, i.e. a zero embedding means "no condition". A
task whose condition holds integer ids must therefore keep the id 0 for "none" (or hand over embeddings). Masks
are not conditions: they travel separately and are never nulled. The guidance scale ω that a network may take as
an input travels in the condition dict under GUIDANCE_KEY (`with_guidance`); it is added after any nulling.
"""
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


GUIDANCE_KEY = "guidance"   # cond[GUIDANCE_KEY]: (B,) float, the guidance scale ω of each row (flow/cmfm.py)


def null_condition(cond, drop: torch.Tensor | None = None):
    """The condition with the rows `drop` ((B,) bool; None: every row) replaced by the null condition ∅: every
    tensor, in nested dicts too, zeroed on those rows (same shapes and dtypes; non-tensor entries pass through).

    A tensor that does not have one row per sample (first dim != B) can only be nulled as a whole (drop=None)."""
    if cond is None:
        return None
    if isinstance(cond, dict):
        return {key: null_condition(v, drop) for key, v in cond.items()}
    if not torch.is_tensor(cond):
        return cond
    if drop is None:
        return torch.zeros_like(cond)
    if cond.dim() == 0 or cond.shape[0] != drop.shape[0]:
        raise ValueError(f"a condition tensor of shape {tuple(cond.shape)} has no row per sample (batch "
                         f"{drop.shape[0]}): it cannot be nulled row by row")
    keep = ~drop.to(device=cond.device, dtype=torch.bool).reshape(-1, *([1] * (cond.dim() - 1)))
    return torch.where(keep, cond, torch.zeros((), dtype=cond.dtype, device=cond.device))


def with_guidance(cond, scale):
    """A copy of the dict condition `cond` with cond[GUIDANCE_KEY] = scale ((B,) tensor). Only networks that take ω
    as an input get it (see `takes_guidance` in flow/samplers.py); a tensor or missing condition cannot carry it."""
    if not isinstance(cond, dict):
        kind = "no condition" if cond is None else f"a {type(cond).__name__} condition"
        raise ValueError(f"the guidance scale ω travels as cond[{GUIDANCE_KEY!r}]: it needs a dict condition, "
                         f"got {kind}")
    return {**cond, GUIDANCE_KEY: scale}

"""The frozen-teacher pairing, RMFlow's default: x0 ~ source, partner T_k(x0), a k-step map of a copy of the model
frozen when the likelihood stage starts (the paper's two-stage shape: MeanFlow first, then L_NLL). The map is
either k MeanFlow jumps (`sampler="meanflow"`, the paper) or k Euler steps of the ODE of the model's own
instantaneous velocity dx/dt = u(x, t, t) (`sampler="ode"`): the same network, read as a flow-matching model.

Options; all but the filter leave the minimiser of L_NLL unchanged (the target is a deterministic function of x0 plus
independent noise, so any sampling law of x0 with full support has the same minimiser):

- `bank = N`: the pairs (x0, T_k(x0)) are computed once for N source draws when the teacher is frozen
  (deterministically from `bank_seed`, so a resumed run rebuilds the same bank), instead of k teacher evaluations
  per step. For conditional or masked data `bank_conditions` holds N training conditions (and masks); each pair then
  carries its own condition into L_NLL. With a guided source the bank's x0 come from φ_ω as it was at the freeze.
- `filter_q = q` with `filter_reference` (M, *D), a sample of the data: bank pairs whose partner lies farther from
  the data than the q-quantile of the data's own nearest-neighbour distances are dropped. This one *does* change
  the target: the teacher's own bridge mass between modes is not copied (docs/METHOD.md §4c).
- `focus = q`: a share q of the batch is the q·B pairs with the largest current one-step error among 4·B
  candidates, where the one-step map's errors concentrate (where the teacher's transport jumps between modes).
- `stored_errors` (needs a bank and focus): each bank pair keeps the error ‖T_k(x0) − x0 − u_θ(x0, 0, 1)‖² of its
  last use (one pass over the bank initialises them), as in prioritised experience replay (Schaul et al., 2016); a
  step then pays for no candidate forward, at the price of stale errors.
"""
from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from . import samplers
from .cmfm import masked_sq_norm
from .pairing import Pairing, Pairs, data_support_mask
from .rows import cond_rows

CHUNK = 8192   # bank rows per teacher call


class TeacherPairing(Pairing):
    """Pairs (x0, T_k(x0)) from a frozen copy of `model`; see the module docstring for the options."""

    def __init__(self, model: nn.Module, steps: int, sampler: str = "ode", bank: int = 0, bank_seed: int = 0, focus: float = 0.0,
                 stored_errors: bool = False, filter_q: float = 0.0, filter_reference: torch.Tensor | None = None,
                 bank_conditions: tuple | None = None):
        super().__init__()
        if bank_conditions is not None:
            cond, mask = bank_conditions
            rows = len(mask if cond is None else (next(iter(cond.values())) if isinstance(cond, dict) else cond))
            if rows != bank:
                raise ValueError(f"bank_conditions has {rows} rows, the bank {bank}")
            if filter_q:
                raise ValueError("the teacher filter compares partners with unconditional data: it needs an "
                                 "unconditional bank")
        self.teacher = copy.deepcopy(model).requires_grad_(False).eval()
        if sampler not in ("meanflow", "ode"):
            raise ValueError(f"teacher sampler must be 'meanflow' or 'ode', got {sampler!r}")
        self.steps, self.sampler, self.bank_size, self.bank_seed = int(steps), sampler, int(bank), int(bank_seed)
        self.focus, self.stored_errors, self.filter_q = float(focus), bool(stored_errors), float(filter_q)
        self.filter_reference = filter_reference
        self.bank_conditions = bank_conditions   # (cond, mask) rows of training data, or None
        self.bank: Pairs | None = None           # built lazily after the freeze
        self.errors: torch.Tensor | None = None  # (N,) stored one-step errors of the bank pairs
        self._restored_errors: torch.Tensor | None = None

    # -- stage boundary and checkpoints ----------------------------------------------------------------------
    @torch.no_grad()
    def start_likelihood_stage(self, source: nn.Module) -> None:
        """Copy the weights of `source` (the model or its EMA) into the teacher; the bank is rebuilt on first use."""
        self.teacher.load_state_dict(source.state_dict())
        self.bank = self.errors = None

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        out = {f"teacher.{k}": v for k, v in self.teacher.state_dict().items()}
        if self.errors is not None:
            out["focus_errors"] = self.errors
        return out

    def load_checkpoint_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restores the teacher (absent from a stage-1 checkpoint) and the stored errors, which the bank takes over
        when it is rebuilt, so a resumed run continues exactly."""
        saved = {k[len("teacher."):]: v for k, v in tensors.items() if k.startswith("teacher.")}
        if saved:   # refiner entries follow the config (another refiner than the checkpoint's keeps its own)
            own = self.teacher.state_dict()
            saved = {k: v for k, v in saved.items() if not k.startswith("refiner.") or k in own}
            self.teacher.load_state_dict({**{k: v for k, v in own.items() if k.startswith("refiner.")}, **saved})
        if "focus_errors" in tensors:
            self._restored_errors, self.bank = tensors["focus_errors"], None

    # -- pairs -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def pairs(self, model, x_data, cond=None, mask=None) -> Pairs:
        if not (self.bank_size or self.focus):   # plain: k teacher evaluations for fresh source draws
            x0 = model.draw_source(x_data, cond, mask).detach()
            return Pairs(x0, self.partner(x0, cond, mask), cond, mask)
        b = x_data.shape[0]
        pool = 4 * b if self.focus else b
        n_hard = int(round(self.focus * b))
        if self.bank_size:
            if (cond is not None or mask is not None) and self.bank_conditions is None:
                raise ValueError("a teacher bank for conditional or masked data needs their conditions "
                                 "(bank_conditions)")
            bank = self._bank(model, x_data)
            idx = torch.randint(len(bank.x0), (pool,), device=x_data.device)
            if self.errors is not None:   # stored errors: pick the focus rows without any forward
                cand = idx[b - n_hard:]
                idx = torch.cat([idx[:b - n_hard], cand[self.errors[cand].topk(n_hard).indices]])
                return Pairs(bank.x0[idx], bank.y[idx], cond_rows(bank.cond, idx), cond_rows(bank.mask, idx), idx)
            p = Pairs(bank.x0[idx], bank.y[idx], cond_rows(bank.cond, idx), cond_rows(bank.mask, idx))
        else:
            if cond is not None or mask is not None:
                raise ValueError("focus without a teacher bank needs unconditional, unmasked data")
            x0 = model.draw_source(x_data.new_zeros((pool, *x_data.shape[1:])))
            p = Pairs(x0, self.partner(x0))
        if not self.focus:
            return p
        hard = slice(b - n_hard, None)
        err = one_step_error(model, p.x0[hard], p.y[hard], cond_rows(p.cond, hard), cond_rows(p.mask, hard))
        keep = torch.cat([torch.arange(b - n_hard, device=p.x0.device), err.topk(n_hard).indices + b - n_hard])
        return Pairs(p.x0[keep], p.y[keep], cond_rows(p.cond, keep), cond_rows(p.mask, keep))

    @torch.no_grad()
    def partner(self, x0: torch.Tensor, cond=None, mask=None) -> torch.Tensor:
        """T_k(x0), (B, *D): k MeanFlow jumps or k Euler steps of the teacher's instantaneous-velocity ODE."""
        if self.sampler == "ode":
            return samplers.flow_matching_ode(self.teacher, x0, self.steps, cond, mask).x
        return samplers.meanflow(self.teacher, x0, self.steps, cond, mask).x

    @torch.no_grad()
    def observe(self, pairs: Pairs, x_hat: torch.Tensor) -> None:
        if pairs.bank_idx is not None:
            self.errors[pairs.bank_idx] = masked_sq_norm(self.bank.y[pairs.bank_idx] - x_hat.detach(), pairs.mask)

    @torch.no_grad()
    def _bank(self, model, like: torch.Tensor) -> Pairs:
        """(x0, T_k(x0), cond, mask) for `bank_size` source draws, built once per frozen teacher."""
        if self.bank is None:
            cond, mask = self.bank_conditions or (None, None)
            gen = torch.Generator(device=like.device).manual_seed(self.bank_seed)
            x0 = model.draw_source(like.new_zeros((self.bank_size, *like.shape[1:])), cond, mask, gen)
            chunks = [slice(i, i + CHUNK) for i in range(0, len(x0), CHUNK)]
            y = torch.cat([self.partner(x0[c], cond_rows(cond, c), cond_rows(mask, c)) for c in chunks])
            if self.filter_q:
                keep = data_support_mask(y, self.filter_reference.to(y.device), self.filter_q)
                if keep.any():
                    x0, y = x0[keep], y[keep]
                else:   # a teacher that is still far from the data: nothing to filter by, keep the bank whole
                    warnings.warn(f"the teacher filter (q = {self.filter_q}) would keep none of the {len(y)} bank "
                                  "pairs (every teacher partner lies off the data); the bank is used unfiltered. "
                                  "Train stage 1 longer (rmflow.nll_start_step) or set rmflow.teacher_filter=0.")
            self.bank = Pairs(x0, y, cond, mask)
            if self._restored_errors is not None and len(self._restored_errors) == len(x0):
                self.errors, self._restored_errors = self._restored_errors, None
            elif self.stored_errors:
                self.errors = torch.cat([one_step_error(model, x0[c], y[c], cond_rows(cond, c), cond_rows(mask, c))
                                         for c in chunks])
        return self.bank


@torch.no_grad()
def one_step_error(model, x0: torch.Tensor, y: torch.Tensor, cond=None, mask=None) -> torch.Tensor:
    """(N,) ‖y − x0 − u_θ(x0, 0, 1)‖² of the current model, without a graph."""
    ones = x0.new_ones(len(x0))
    return masked_sq_norm(y - (x0 + model(x0, 0 * ones, ones, cond, mask)), mask)

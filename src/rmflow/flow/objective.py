"""The RMFlow objective (RMFlow eq. 12), per sample:

    L = L_CMFM + λ1·L_NLL + λ2·‖φ_ω(c)‖² (+ L_scale when the refinement scale is learned)

    L_CMFM  on the path from x0 to x1 = x_data + σ·ε1                               (flow/meanflow.py)
    L_NLL   = ‖y - (x0 + u_θ(x0, 0, 1))‖²,   (x0, y) drawn from a coupling π         (the pairing)

With `refine: mixture` a small network g adds its own term, the mixture likelihood of y around sg(x̂1)
(flow/refine.py, MixtureRefiner); the transport network's gradient is the same as with a fixed scale.

L_NLL is, up to constants, the negative log-likelihood of y under the one-step model
p_θ(y | x0) = N(x0 + u_θ(x0, 0, 1), s²I); docs/METHOD.md shows that it bounds KL(law of y ‖ p_θ) only when π
is (nearly) deterministic, and which pairings do that:

- "independent":  x0 ~ source, y = x_data + σ_min·ε            (paper-literal; collapses onto E[x_data])
- "minibatch_ot": x0 ~ source re-ordered by exact OT to the data batch, y = x_data + σ_min·ε
- "inverse":      x0 = sg(x_data - u_θ(x_data, 1, 0)) (the model's own inverse map), y = x_data + σ_min·ε
- "self":         x0 ~ source, y = sg(T_k(x0)) + σ_min·ε, T_k = k-step MeanFlow of the current model
- "teacher":      as "self" with a frozen copy of the model taken when the likelihood stage starts (two stages)

The likelihood term is switched on at step `nll_start_step` (0: from the start). The trainer calls
`set_step` before each step and `freeze_teacher` when that stage starts.

Options of the "teacher" pairing; all but the filter leave its minimiser unchanged (the target y is a deterministic
function of x0 plus independent noise, so any sampling law of x0 with full support has the same minimiser):
- `teacher_bank = N`: the teacher's pairs (x0, T_k(x0)) are computed once for N source draws when the teacher
  is frozen (deterministically from `bank_seed`, so resume rebuilds the same bank), instead of k teacher
  evaluations per step. For conditional or masked data the bank holds N conditions (and masks) of training data
  too, handed over with `set_bank_conditions`; each pair then carries its own condition into L_NLL. With a guided
  source the bank's x0 come from φ_ω as it was when the teacher was frozen.
- `teacher_filter = q`: bank pairs whose partner T_k(x0) lies off the data's support — farther from a reference
  sample of the data than the q-quantile of the data's own nearest-neighbour distances — are dropped. This one
  *does* change the target: the teacher's own bridge mass between modes is not copied (docs/METHOD.md §4c).
  The trainer hands the reference sample over with `set_filter_reference`.
- `nll_focus = q`: a share q of the L_NLL batch is the q·B pairs with the largest current error among a pool
  of 4·B candidates: the one-step map's errors concentrate where the teacher's transport jumps between modes,
  and plain sampling visits those x0 rarely.
- `focus_errors`: how the candidates' errors are known. "fresh": the current model scores every candidate at
  every step (a no-grad forward over 3.5·B rows). "stored" (needs a bank): each bank pair keeps the error
  ‖T_k(x0) − x0 − u_θ(x0, 0, 1)‖² of its last use in L_NLL (one pass over the bank initialises them), as in
  prioritised experience replay (Schaul et al., 2016); the step then pays for no candidate forward, at the
  price of stale errors.

`nll_batch = f` (0 < f ≤ 1) forms the L_NLL pairs from the first ⌈f·B⌉ rows of the batch only (the focus pool
shrinks with it): an unbiased but noisier estimate of the same term at a fraction of its cost.
`batch_split = True` gives those rows to L_NLL *instead of* L_CMFM: L_CMFM is the mean over the other B − ⌈f·B⌉
rows, and one network forward evaluates both terms' rows, so a likelihood-stage step costs about what a MeanFlow
step does (one JVP on fewer rows, one forward and backward on B rows, plus the refiner's g).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from . import samplers
from .meanflow import CMFMLoss, masked_sq_norm
from .model import RMFlow, cond_rows
from .pairing import PAIRINGS, data_support_mask, minibatch_ot_permutation
from .refine import scale_nll

COUPLINGS = ("independent", "minibatch_ot")


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor                       # (B,) per-sample L_CMFM + the batch means of the other terms;
    #                                          the trainer takes its mean
    stats: dict[str, torch.Tensor] = field(default_factory=dict)  # detached scalars for logging


class Pairs(NamedTuple):
    """Likelihood pairs: x0, y (k, *D); their condition and mask rows (or None); bank_idx (k,) when they come
    from the teacher bank with stored focus errors, else None."""
    x0: torch.Tensor
    y: torch.Tensor
    cond: object = None
    mask: torch.Tensor | None = None
    bank_idx: torch.Tensor | None = None


class RMFlowObjective(nn.Module):
    """Wraps an RMFlow model; `forward(x_data, cond, mask)` returns per-sample losses.

    The whole objective is one module so that DistributedDataParallel and torch.compile wrap it in one piece:
    the JVP runs without a graph on the inner network, and every gradient-carrying call goes through forward.
    """

    def __init__(self, model: RMFlow, cmfm: CMFMLoss, sigma: float = 0.0, sigma_min: float = 0.1,
                 lambda_nll: float = 0.0, lambda_enc: float = 0.0, pairing: str = "independent",
                 teacher_steps: int = 8, nll_start_step: int = 0, coupling: str = "independent",
                 teacher_bank: int = 0, nll_focus: float = 0.0, bank_seed: int = 0, teacher_filter: float = 0.0,
                 nll_batch: float = 1.0, focus_errors: str = "fresh", batch_split: bool = False):
        super().__init__()
        if not 0 <= sigma < sigma_min:
            raise ValueError(f"need 0 <= sigma < sigma_min, got sigma={sigma}, sigma_min={sigma_min}")
        if lambda_nll < 0 or lambda_enc < 0:
            raise ValueError("lambda_nll and lambda_enc must be >= 0")
        if pairing not in PAIRINGS:
            raise ValueError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")
        if coupling not in COUPLINGS:
            raise ValueError(f"coupling must be one of {COUPLINGS}, got {coupling!r}")
        self.model, self.cmfm = model, cmfm
        self.sigma, self.sigma_min = float(sigma), float(sigma_min)
        self.lambda_nll, self.lambda_enc = float(lambda_nll), float(lambda_enc)
        self.pairing, self.teacher_steps, self.coupling = pairing, int(teacher_steps), coupling
        self.nll_start_step = int(nll_start_step)
        if teacher_bank < 0 or not 0 <= nll_focus < 1:
            raise ValueError("need teacher_bank >= 0 and 0 <= nll_focus < 1")
        self.teacher_bank, self.nll_focus, self.bank_seed = int(teacher_bank), float(nll_focus), int(bank_seed)
        self._bank: Pairs | None = None            # the teacher bank (x0, T_k(x0), cond, mask)
        self._bank_conditions: tuple | None = None  # (cond, mask) rows of training data for a conditional bank
        if not 0 <= teacher_filter < 1 or (teacher_filter and not teacher_bank):
            raise ValueError("teacher_filter must be in [0, 1) and needs teacher_bank > 0")
        self.teacher_filter = float(teacher_filter)
        if not 0 < nll_batch <= 1:
            raise ValueError(f"nll_batch must be in (0, 1], got {nll_batch}")
        self.nll_batch = float(nll_batch)
        if focus_errors not in ("fresh", "stored"):
            raise ValueError(f"focus_errors must be 'fresh' or 'stored', got {focus_errors!r}")
        if focus_errors == "stored" and not (teacher_bank and nll_focus):
            raise ValueError("focus_errors='stored' keeps an error per bank pair: needs teacher_bank > 0 and "
                             "nll_focus > 0")
        self.focus_errors = focus_errors
        self._bank_err: torch.Tensor | None = None   # (N,) stored errors of the bank pairs ("stored")
        self._restored_err: torch.Tensor | None = None  # errors from a checkpoint, used when the bank is rebuilt
        if batch_split and not nll_batch < 1:
            raise ValueError("batch_split gives the first ⌈nll_batch·B⌉ rows to L_NLL and the rest to L_CMFM: "
                             f"needs nll_batch < 1, got {nll_batch}")
        self.batch_split = bool(batch_split)
        self._filter_ref: torch.Tensor | None = None
        # a Python flag, not the step number: torch.compile then guards on a value that changes once (one
        # recompile when the likelihood stage starts) instead of breaking the graph to read a tensor every step
        self._in_nll_stage = self.nll_start_step <= 0
        self.teacher = None
        if pairing == "teacher" and lambda_nll > 0:
            self.teacher = copy.deepcopy(model).requires_grad_(False).eval()

    # -- stage control -------------------------------------------------------------------------------------
    def set_step(self, step: int) -> None:
        self._in_nll_stage = step >= self.nll_start_step

    @property
    def nll_active(self) -> bool:
        return self.lambda_nll > 0 and self._in_nll_stage

    @torch.no_grad()
    def freeze_teacher(self, source: nn.Module) -> None:
        """Copy the weights of `source` (the model or its EMA) into the frozen teacher."""
        if self.teacher is not None:
            self.teacher.load_state_dict(source.state_dict())
            self._bank = self._bank_err = None

    def set_filter_reference(self, data: torch.Tensor) -> None:
        """data: (M, *D) a sample of the training data, the reference of `teacher_filter`."""
        self._filter_ref = data.detach()
        self._bank = self._bank_err = None

    def set_bank_conditions(self, cond, mask) -> None:
        """cond, mask: `teacher_bank` rows of training-data conditions and masks (None where the data have none),
        the conditions of a conditional teacher bank."""
        if cond is None and mask is None:
            self._bank_conditions = None
            return
        rows = len(mask if cond is None else (next(iter(cond.values())) if isinstance(cond, dict) else cond))
        if rows != self.teacher_bank:
            raise ValueError(f"set_bank_conditions: got {rows} rows, the bank has teacher_bank = {self.teacher_bank}")
        if self.teacher_filter:
            raise ValueError("teacher_filter compares partners with unconditional data: it needs an unconditional bank")
        self._bank_conditions = (cond, mask)
        self._bank = self._bank_err = None

    @property
    def bank_kept(self) -> float:
        """Share of the teacher bank that passed `teacher_filter` (1.0 before the bank is built)."""
        return 1.0 if self._bank is None else len(self._bank.x0) / self.teacher_bank

    @torch.no_grad()
    def _teacher_bank(self, like: torch.Tensor) -> Pairs:
        """(x0, T_k(x0), cond, mask) for `teacher_bank` source draws, built once per frozen teacher."""
        if self._bank is None:
            cond, mask = self._bank_conditions or (None, None)
            gen = torch.Generator(device=like.device).manual_seed(self.bank_seed)
            template = like.new_zeros((self.teacher_bank, *like.shape[1:]))
            x0 = self.model.draw_source(template, cond, mask, gen)
            chunks = [slice(i, i + 8192) for i in range(0, len(x0), 8192)]
            y = torch.cat([samplers.meanflow(self.teacher, x0[c], self.teacher_steps, cond_rows(cond, c),
                                             cond_rows(mask, c)).x for c in chunks])
            if self.teacher_filter:
                if self._filter_ref is None:
                    raise RuntimeError("teacher_filter: call set_filter_reference(data) before the likelihood stage")
                keep = data_support_mask(y, self._filter_ref.to(y.device), self.teacher_filter)
                x0, y = x0[keep], y[keep]
            self._bank = Pairs(x0, y, cond, mask)
            if self._restored_err is not None and len(self._restored_err) == len(x0):
                self._bank_err, self._restored_err = self._restored_err, None
            elif self.focus_errors == "stored":
                self._bank_err = torch.cat([self._one_step_error(x0[c], y[c], None, cond_rows(cond, c),
                                                                 cond_rows(mask, c)) for c in chunks])
        return self._bank

    @property
    def focus_state(self) -> torch.Tensor | None:
        """The stored focus errors (N,) for a checkpoint (None unless focus_errors='stored' and the bank exists).
        Setting it (on resume) hands them to the bank when it is rebuilt, so a resumed run continues exactly."""
        return self._bank_err

    @focus_state.setter
    def focus_state(self, errors: torch.Tensor) -> None:
        self._restored_err, self._bank = errors, None

    def _one_step_error(self, x0: torch.Tensor, partner: torch.Tensor, x_hat: torch.Tensor | None = None,
                        cond=None, mask=None) -> torch.Tensor:
        """(N,) ‖partner − x̂1‖², x̂1 = x0 + u_θ(x0, 0, 1) (computed here unless given), without a graph."""
        with torch.no_grad():
            if x_hat is None:
                ones = x0.new_ones(len(x0))
                x_hat = x0 + self.model(x0, 0 * ones, ones, cond, mask)
            return masked_sq_norm(partner - x_hat.detach(), mask)

    # -- the loss --------------------------------------------------------------------------------------------
    def _pair(self, x_data, cond, mask) -> Pairs:
        """The L_NLL pairs for the rows x_data (k, *D) according to the pairing; y already carries the σ_min
        noise. Bank pairs bring their own conditions; the others take the rows' cond and mask."""
        space = self.model.space
        if self.pairing == "teacher" and (self.teacher_bank or self.nll_focus):
            p = self._teacher_pairs(x_data, cond, mask)
            return p._replace(y=p.y + self.sigma_min * space.randn_like(p.y, p.mask))
        x0 = self.model.draw_source(x_data, cond, mask)
        partner = x_data
        if self.pairing == "minibatch_ot":
            x0 = x0[minibatch_ot_permutation(x0, x_data)]
        elif self.pairing == "inverse":
            with torch.no_grad():
                x0 = samplers.meanflow(_Reverse(self.model), x_data, 1, cond, mask).x
        elif self.pairing in ("teacher", "self"):
            # the partner is a stop-gradient function of x0, so no gradient may reach φ_ω through x0 either
            # (it would only see the student's side and push ‖φ_ω(c)‖ to grow)
            x0 = x0.detach()
            transport = self.teacher if self.pairing == "teacher" else self.model
            with torch.no_grad():
                partner = samplers.meanflow(transport, x0, self.teacher_steps, cond, mask).x
        y = partner + self.sigma_min * space.randn_like(x_data, mask)
        return Pairs(x0, y, cond, mask)

    @torch.no_grad()
    def _teacher_pairs(self, x_data, cond, mask) -> Pairs:
        """Teacher pairs (noise-free y = T_k(x0)) drawn from the bank and/or focused on the hardest of 4·B
        candidates; without a bank, unconditional data only."""
        b = x_data.shape[0]
        pool = 4 * b if self.nll_focus else b
        if self.teacher_bank:
            if (cond is not None or mask is not None) and self._bank_conditions is None:
                raise ValueError("a teacher bank for conditional or masked data needs their conditions: call "
                                 "set_bank_conditions(cond, mask) (the trainer does) before the likelihood stage")
            bank = self._teacher_bank(x_data)
            idx = torch.randint(len(bank.x0), (pool,), device=x_data.device)
            stored = self._bank_err is not None
            if stored:  # stored errors: pick the focus rows without any forward
                n_hard = int(round(self.nll_focus * b))
                cand = idx[b - n_hard:]
                idx = torch.cat([idx[:b - n_hard], cand[self._bank_err[cand].topk(n_hard).indices]])
            p = Pairs(bank.x0[idx], bank.y[idx], cond_rows(bank.cond, idx), cond_rows(bank.mask, idx),
                      idx if stored else None)
            if stored:
                return p
        else:
            if cond is not None or mask is not None:
                raise ValueError("rmflow.nll_focus without rmflow.teacher_bank needs unconditional, unmasked data")
            x0 = self.model.draw_source(x_data.new_zeros((pool, *x_data.shape[1:])))
            p = Pairs(x0, samplers.meanflow(self.teacher, x0, self.teacher_steps).x)
        if self.nll_focus:
            n_hard = int(round(self.nll_focus * b))
            hard = slice(b - n_hard, None)
            err = self._one_step_error(p.x0[hard], p.y[hard], None, cond_rows(p.cond, hard), cond_rows(p.mask, hard))
            keep = torch.cat([torch.arange(b - n_hard, device=p.x0.device), err.topk(n_hard).indices + b - n_hard])
            p = Pairs(p.x0[keep], p.y[keep], cond_rows(p.cond, keep), cond_rows(p.mask, keep))
        return p

    def forward(self, x_data: torch.Tensor, cond=None, mask=None) -> ObjectiveOutput:
        """x_data: (B, *D) clean data; cond: the condition (task-defined) or None; mask: real entries."""
        model, space = self.model, self.model.space
        x1 = x_data + self.sigma * space.randn_like(x_data, mask) if self.sigma > 0 else x_data
        x0 = model.draw_source(x_data, cond, mask)
        if self.coupling == "minibatch_ot":
            x0 = x0[minibatch_ot_permutation(x0, x1)]
        if not self.nll_active:
            out = self.cmfm(model, x0, x1, cond, mask)
            return self._with_encoder_penalty(out.loss, self._cmfm_stats(out), x_data, cond, mask)
        n = x_data.shape[0]
        k = math.ceil(self.nll_batch * n)
        xk, ck, mk = x_data[:k], cond_rows(cond, slice(k)), cond_rows(mask, slice(k))
        with torch.autocast(x_data.device.type, enabled=False):  # the partner stays in float32
            x0n, y, ck, mk, bank_idx = self._pair(xk, ck, mk)
        ones, zeros = x0n.new_ones(k), x0n.new_zeros(k)
        if self.batch_split:   # rows k.. carry L_CMFM, rows ..k L_NLL: one forward of n rows evaluates both
            rest = slice(k, None)
            out = self.cmfm(model, x0[rest], x1[rest], cond_rows(cond, rest), cond_rows(mask, rest),
                            extra=(x0n, zeros, ones, ck, mk))
            x_hat = x0n + out.extra
        else:
            out = self.cmfm(model, x0, x1, cond, mask)
            x_hat = x0n + model(x0n, zeros, ones, ck, mk)
        stats = self._cmfm_stats(out)
        if bank_idx is not None:
            self._bank_err[bank_idx] = self._one_step_error(x0n, self._bank.y[bank_idx], x_hat, mask=mk)
        nll = masked_sq_norm(y - x_hat, mk)
        terms = self.lambda_nll * nll      # (k,) the likelihood terms of each pair
        stats["nll"] = nll.detach().mean()
        if getattr(model.refiner, "learned", False):
            scale = model.refiner(k, ck)
            terms = terms + scale_nll(nll.detach(), scale, space.dof(x0n, mk))
            stats["refine_scale"] = scale.detach().mean()
        if getattr(model.refiner, "mixture", False):
            mix = model.refiner.nll(x0n, x_hat, y)
            terms = terms + mix
            stats["nll_mixture"] = mix.detach().mean()
        # per-row losses whose mean over the n rows is L_CMFM + λ1·L_NLL (+ the refiner's terms), each term the mean
        # over its own rows
        if self.batch_split:
            loss = torch.cat([(n / k) * terms, (n / (n - k)) * out.loss])
        else:
            loss = out.loss + terms.mean()
        return self._with_encoder_penalty(loss, stats, x_data, cond, mask)

    @staticmethod
    def _cmfm_stats(out) -> dict[str, torch.Tensor]:
        return {"cmfm": out.loss.detach().mean(), "cmfm_sq": out.sq_error.mean(), "dudt_norm_max": out.dudt_norm.max()}

    def _with_encoder_penalty(self, loss, stats, x_data, cond, mask) -> ObjectiveOutput:
        """Adds λ2·‖φ_ω(c)‖² per row (guided sources only)."""
        if self.lambda_enc > 0 and self.model.source.guided:
            enc = masked_sq_norm(self.model.source.encode(cond, x_data), mask)
            loss = loss + self.lambda_enc * enc
            stats["enc"] = enc.detach().mean()
        return ObjectiveOutput(loss, stats)


class _Reverse(nn.Module):
    """u(x, 1 - t, 1 - r): the model run backwards in time, so meanflow(_Reverse(m), x1, 1) = x1 - u(x1, 1, 0)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, t, r, cond=None, mask=None):
        return -self.model(x, 1 - t, 1 - r, cond, mask)

"""The RMFlow objective (RMFlow eq. 12), per sample:

    L = L_CMFM + λ1·L_NLL + λ2·‖φ_ω(c)‖²   (+ the refiner's own likelihood terms)

    L_CMFM  on the path from x0 to x1 = x_data + σ·ε1                                  (flow/cmfm.py)
    L_NLL   = ‖y − (x0 + u_θ(x0, 0, 1))‖²,  y = partner + σ_min·ε, (x0, partner) from a pairing
                                                                    (flow/pairing.py, flow/teacher.py)

L_NLL is, up to constants, the negative log-likelihood of y under the one-step model
p_θ(y | x0) = N(x0 + u_θ(x0, 0, 1), s²I); docs/METHOD.md shows that it bounds KL(law of y ‖ p_θ) only when the
pairing is (nearly) deterministic, and which pairings are. The refiner adds what trains its own parameters (a
learned scale, the mixture's g: flow/refine.py); the transport network's gradient is that of λ1·L_NLL.

When L_NLL is on (`LikelihoodSchedule`): from step `start` (0: from the start; the trainer calls `set_step` before
each step and `start_likelihood_stage` at the boundary), on the first ⌈fraction·B⌉ rows of the batch (an unbiased,
noisier estimate at a fraction of the cost); with `split` those rows carry L_NLL *instead of* L_CMFM, and one network
forward evaluates both terms' rows, so a likelihood-stage step costs about what a MeanFlow step does.

`cmfm_velocity = "teacher"` (needs a pairing with a frozen `teacher`): in the likelihood stage L_CMFM regresses the
teacher's instantaneous velocity u_T(x_t, t, t) instead of x1 − x0 (flow/cmfm.py). Both terms then have the same
minimiser — the teacher's ODE map, whose k-step Euler version is L_NLL's partner — and L_CMFM loses its
conditional variance, which otherwise drowns L_NLL's gradient (docs/METHOD.md §8).

`guidance` (a `ClassifierFreeGuidance`, flow/cmfm.py): classifier-free guidance of L_CMFM. Each step first drops
conditions (rows → ∅) and draws the scales ω, then draws x0 from the source with the dropped condition, and L_CMFM
regresses the guided velocity ṽ (with `cmfm_velocity = "teacher"`: ω·u_T(·|c) + (1 − ω)·u_T(·|∅)). L_NLL's pairs and
λ2's penalty use the real condition: the likelihood term trains the conditional map at ω = 1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .cmfm import ClassifierFreeGuidance, CMFMLoss, masked_sq_norm
from .model import RMFlow
from .pairing import Pairing, minibatch_ot_permutation
from .rows import cond_rows


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor                       # (B,) per-row losses whose mean is the objective; the trainer takes it
    stats: dict[str, torch.Tensor] = field(default_factory=dict)  # detached scalars for logging


@dataclass(frozen=True)
class LikelihoodSchedule:
    """When and on which rows L_NLL is computed (module docstring)."""
    start: int = 0
    fraction: float = 1.0
    split: bool = False


class RMFlowObjective(nn.Module):
    """Wraps an RMFlow model; `forward(x_data, cond, mask)` returns per-row losses.

    pairing: None for plain MeanFlow (λ1 = 0). path_coupling: "minibatch_ot" re-orders the L_CMFM path's x0 by
    exact OT to x1 (a coupling of the path, not of L_NLL). The whole objective is one module so that
    DistributedDataParallel and torch.compile wrap it in one piece: the JVP runs without a graph on the inner
    network, and every gradient-carrying call goes through forward.
    """

    def __init__(self, model: RMFlow, cmfm: CMFMLoss, pairing: Pairing | None = None, sigma: float = 0.0,
                 sigma_min: float = 0.1, lambda_nll: float = 0.0, lambda_enc: float = 0.0,
                 schedule: LikelihoodSchedule = LikelihoodSchedule(), path_coupling: str = "independent",
                 cmfm_velocity: str = "data", guidance: ClassifierFreeGuidance | None = None):
        super().__init__()
        self.guidance = guidance if guidance is not None and guidance.enabled else None
        if cmfm_velocity not in ("data", "teacher"):
            raise ValueError(f"cmfm_velocity must be 'data' or 'teacher', got {cmfm_velocity!r}")
        if cmfm_velocity == "teacher" and pairing is not None and not hasattr(pairing, "teacher"):
            raise ValueError("cmfm_velocity 'teacher' regresses the frozen teacher's velocity: it needs the "
                             "'teacher' pairing")
        self.cmfm_velocity = cmfm_velocity
        self.model, self.cmfm, self.pairing = model, cmfm, pairing
        self.sigma, self.sigma_min = float(sigma), float(sigma_min)
        self.lambda_nll, self.lambda_enc = float(lambda_nll), float(lambda_enc)
        self.schedule, self.path_coupling = schedule, path_coupling
        # a Python flag, not the step number: torch.compile then guards on a value that changes once (one
        # recompile when the likelihood stage starts) instead of breaking the graph to read a tensor every step
        self._in_nll_stage = schedule.start <= 0

    # -- stage control -------------------------------------------------------------------------------------
    def set_step(self, step: int) -> None:
        self._in_nll_stage = step >= self.schedule.start
        set_times_step = getattr(self.cmfm.times, "set_step", None)   # a custom time sampler may have no schedule
        if set_times_step is not None:
            set_times_step(step)

    def start_likelihood_stage(self, source: nn.Module) -> None:
        """The stage boundary: the pairing takes what it needs from `source` (the frozen teacher's weights)."""
        if self.pairing is not None:
            self.pairing.start_likelihood_stage(source)

    @property
    def nll_active(self) -> bool:
        return self.pairing is not None and self.lambda_nll > 0 and self._in_nll_stage

    # -- the loss --------------------------------------------------------------------------------------------
    def forward(self, x_data: torch.Tensor, cond=None, mask=None) -> ObjectiveOutput:
        """x_data: (B, *D) clean data; cond: the condition (task-defined) or None; mask: real entries."""
        model, space = self.model, self.model.space
        x1 = x_data + self.sigma * space.randn_like(x_data, mask) if self.sigma > 0 else x_data
        cmfm_cond, draw = cond, None   # L_CMFM's condition: with guidance, dropped rows are ∅
        if self.guidance is not None:
            cmfm_cond, draw = self.guidance.draw(cond, x_data.shape[0], x_data.device)
        x0 = model.draw_source(x_data, cmfm_cond, mask)
        if self.path_coupling == "minibatch_ot":
            x0 = x0[minibatch_ot_permutation(x0, x1)]
        if not self.nll_active:
            out = self.cmfm(model, x0, x1, cmfm_cond, mask, guidance=draw)
            return self._with_encoder_penalty(out.loss, self._cmfm_stats(out), x_data, cond, mask)
        n = x_data.shape[0]
        k = math.ceil(self.schedule.fraction * n)
        with torch.autocast(x_data.device.type, enabled=False):  # the partner stays in float32
            pairs = self.pairing.pairs(model, x_data[:k], cond_rows(cond, slice(k)), cond_rows(mask, slice(k)))
            y = pairs.y + self.sigma_min * space.randn_like(pairs.y, pairs.mask)
        ones, zeros = pairs.x0.new_ones(k), pairs.x0.new_zeros(k)
        velocity = self._teacher_velocity if self.cmfm_velocity == "teacher" else None
        if self.schedule.split:   # rows k.. carry L_CMFM, rows ..k L_NLL: one forward of n rows evaluates both
            rest = slice(k, None)
            out = self.cmfm(model, x0[rest], x1[rest], cond_rows(cmfm_cond, rest), cond_rows(mask, rest),
                            extra=(pairs.x0, zeros, ones, pairs.cond, pairs.mask), velocity=velocity,
                            guidance=None if draw is None else draw.rows(rest))
            x_hat = pairs.x0 + out.extra
        else:
            out = self.cmfm(model, x0, x1, cmfm_cond, mask, velocity=velocity, guidance=draw)
            x_hat = pairs.x0 + model(pairs.x0, zeros, ones, pairs.cond, pairs.mask)
        stats = self._cmfm_stats(out)
        self.pairing.observe(pairs, x_hat)
        nll = masked_sq_norm(y - x_hat, pairs.mask)
        terms = self.lambda_nll * nll      # (k,) the likelihood terms of each pair
        stats["nll"] = nll.detach().mean()
        own, own_stats = model.refiner.likelihood(pairs.x0, x_hat, y, nll, space.dof(pairs.x0, pairs.mask),
                                                  pairs.cond)
        if own is not None:
            terms = terms + own
            stats.update(own_stats)
        # per-row losses whose mean over the n rows is L_CMFM + λ1·L_NLL (+ the refiner's terms), each term the mean
        # over its own rows
        if self.schedule.split:
            loss = torch.cat([(n / k) * terms, (n / (n - k)) * out.loss])
        else:
            loss = out.loss + terms.mean()
        return self._with_encoder_penalty(loss, stats, x_data, cond, mask)

    def _teacher_velocity(self, x_t, t, cond, mask) -> torch.Tensor:
        """u_T(x_t, t, t) of the frozen teacher, (B, *D)."""
        return self.pairing.teacher(x_t, t, t, cond, mask)

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

"""L_CMFM, the conditional MeanFlow matching loss (Geng et al. 2025; RMFlow eq. 4).

    target = v + (r - t) · du/dt,            du/dt = ∂_x u · v + ∂_t u   (exact JVP, stop-gradient)
    L_CMFM = w · ‖u_θ(x_t, t, r) - sg(target)‖²,   w = sg(1 / (‖Δ‖² + c)^p)   (w = 1 when p = 0)

with x_t = (1 - t) x0 + t x1 and v = x1 - x0. At r = t the target is v: plain flow matching, so with
`ratio_neq = 0` no JVP runs at all. The target is always computed in float32 (outside any autocast region), and
with `jvp_subset` the JVP runs only on the rows with r != t (the target on the others is v whatever du/dt is: the
same loss, a smaller JVP; row-wise results may differ from the full-batch JVP by float32 round-off).

objective "imf" (improved MeanFlow, Geng et al. 2025, arXiv 2512.02012) regresses a compound instantaneous
velocity on v instead, with the model's own velocity v̂ as the JVP tangent (lower variance, a target free of θ):

    v̂ = sg(u_θ(x_t, t, t)),   D = sg(∂_x u_θ(x_t, t, r) · v̂ + ∂_t u_θ(x_t, t, r))
    V_θ = u_θ(x_t, t, r) - (r - t) · D,   L_iMF = w · ‖V_θ - v‖²

(one extra no-grad forward for v̂; at r = t, V_θ = u_θ(x_t, t, t) and L_iMF = L_CMFM, flow matching).

`velocity`: a callable that replaces the conditional velocity v = x1 - x0 by a velocity field evaluated at x_t, e.g.
a frozen teacher's instantaneous velocity u_T(x_t, t, t) (RMFlow's likelihood stage with `rmflow.cmfm_velocity:
teacher`). v then has no conditional variance, and the fixed point of L_CMFM is the average velocity of the ODE
dx/dt = u_T(x, t, t) over [t, r] (the MeanFlow identity applied to that ODE; docs/METHOD.md §8).

Classifier-free guidance (`guidance=`, a `GuidanceDraw`; MeanFlow's CFG with κ = 0, and improved MeanFlow's
guidance scale as a network input, arXiv 2512.02012). `ClassifierFreeGuidance.draw` decides, per row:

- dropout: with probability p_drop the row's condition c becomes the null condition ∅ (flow/rows.py: every tensor
  of c zeroed; masks are never dropped). The objective draws x0 after this, so a guided source x0 = φ(c) + σ_c·ε
  sees ∅ on those rows too;
- the scale: ω ~ U[ω_min, ω_max] on kept rows, ω = 1 on dropped rows (ω_min = ω_max: a fixed scale, no draw).

The conditional velocity v (x1 − x0, or `velocity`'s u_T(x_t, t, t | c)) of a kept row with ω != 1 becomes

    ṽ = ω·v + (1 − ω)·u_θ(x_t, t, t | ∅),       with `velocity`:  ṽ = ω·u_T(x_t, t, t | c) + (1 − ω)·u_T(x_t, t, t | ∅)

(the network's own unconditional instantaneous velocity with the current weights, no gradient, float32; one extra
forward of those rows), dropped rows keep ṽ = v. ṽ replaces v everywhere: target ṽ + (r − t)·du/dt with du/dt along
the tangent ṽ (iMF: L_iMF regresses ṽ). At r = t the minimiser is E[ṽ | x_t, c, ω] = ω·E[v | x_t, c] +
(1 − ω)·E[v | x_t], the CFG velocity at scale ω; the MeanFlow identity then makes u_θ(·, t, r | c, ω) the average
velocity of that guided ODE, so one step samples with guidance.

A network that takes ω as an input (`as_input`, `takes_guidance` in flow/samplers.py) gets cond["guidance"] = ω (B,)
in the loss forward and the JVP; its ∅ and `velocity` evaluations use ω = 1 (the unguided fields). Every ω of the
range is then served by one network at sampling time. A network without it learns the one scale ω_min = ω_max, baked
in (sample it with ω = 1); a range of ω needs the input (rmflow.train.build refuses it otherwise).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .jvp import mean_velocity_time_derivative, unwrap
from .path import LinearPath, expand_time
from .rows import cat_rows, cond_rows, null_condition, with_guidance
from .times import TimeSampler


def masked_sq_norm(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """‖x‖² per sample: x (B, *D) -> (B,), counting only entries where mask (broadcastable to x) is 1. Entries
    outside the mask are selected away, not multiplied by 0, so non-finite padding cannot leak into the sum."""
    if mask is not None:
        x = torch.where(mask.bool(), x, x.new_zeros(()))
    return x.float().pow(2).flatten(1).sum(1)


@dataclass
class CMFMOutput:
    loss: torch.Tensor        # (B,) weighted per-sample loss
    sq_error: torch.Tensor    # (B,) unweighted ‖Δ‖² (iMF: ‖V_θ - v‖²)
    dudt_norm: torch.Tensor   # (B,) ‖du/dt‖ (iMF: ‖D‖), logged to catch late blow-ups
    extra: torch.Tensor | None = None   # (E, *D) u_θ on the `extra` rows, with its graph


OBJECTIVES = ("meanflow", "imf")


@dataclass
class GuidanceDraw:
    """The guidance of one batch (module docstring): per-row scale ω (B,), 1 on dropped rows, the dropped rows (B,)
    bool, and whether the network takes ω as cond["guidance"]."""
    scale: torch.Tensor
    dropped: torch.Tensor
    as_input: bool = False

    def rows(self, index) -> "GuidanceDraw":
        return GuidanceDraw(self.scale[index], self.dropped[index], self.as_input)


class ClassifierFreeGuidance:
    """Training-time CFG: condition dropout with probability p_drop and ω ~ U[w_min, w_max] per kept row."""

    def __init__(self, p_drop: float = 0.0, w_min: float = 1.0, w_max: float = 1.0, as_input: bool = False):
        if not 0 <= p_drop < 1:
            raise ValueError(f"p_drop must be in [0, 1), got {p_drop}")
        if not 0 <= w_min <= w_max:
            raise ValueError(f"need 0 <= w_min <= w_max, got w_min={w_min}, w_max={w_max}")
        self.p_drop, self.w_min, self.w_max, self.as_input = float(p_drop), float(w_min), float(w_max), as_input

    @property
    def enabled(self) -> bool:
        return self.p_drop > 0 or self.w_min != 1 or self.w_max != 1

    def draw(self, cond, batch: int, device) -> tuple[object, GuidanceDraw]:
        """(the condition with dropped rows nulled, the batch's GuidanceDraw); uses torch's global RNG (one
        uniform per row for the dropout when p_drop > 0, one for ω when w_min < w_max)."""
        if cond is None:
            raise ValueError("classifier-free guidance needs a conditional task (this batch has no condition)")
        if self.p_drop > 0:
            dropped = torch.rand(batch, device=device) < self.p_drop
            cond = null_condition(cond, dropped)
        else:
            dropped = torch.zeros(batch, dtype=torch.bool, device=device)
        if self.w_max > self.w_min:
            scale = self.w_min + (self.w_max - self.w_min) * torch.rand(batch, device=device)
        else:
            scale = torch.full((batch,), self.w_min, device=device)
        scale = torch.where(dropped, torch.ones_like(scale), scale)
        return cond, GuidanceDraw(scale, dropped, self.as_input)


class CMFMLoss:
    """Per-sample L_CMFM (objective "meanflow") or L_iMF ("imf") for a model u(x, t, r, cond, mask)."""

    def __init__(self, time_sampler: TimeSampler, adaptive_p: float = 0.0, adaptive_c: float = 1e-3,
                 jvp_backend: str = "func", jvp_subset: bool = False, objective: str = "meanflow"):
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        self.path = LinearPath()
        self.times = time_sampler
        self.p, self.c = adaptive_p, adaptive_c
        self.jvp_backend, self.jvp_subset = jvp_backend, jvp_subset
        self.objective = objective

    def target(self, net, x_t, t, r, v, cond=None, mask=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The stop-gradient MeanFlow target v + (r - t)·du/dt, (B, *D), and du/dt, in float32."""
        with torch.autocast(x_t.device.type, enabled=False):
            if not self.jvp_subset:
                _, dudt = mean_velocity_time_derivative(unwrap(net), x_t, t, r, v, cond, mask, self.jvp_backend)
            else:
                dudt = torch.zeros_like(v)
                idx = (r != t).nonzero().squeeze(1)
                if idx.numel():
                    _, d = mean_velocity_time_derivative(unwrap(net), x_t[idx], t[idx], r[idx], v[idx],
                                                         _rows(cond, idx, len(t)), _rows(mask, idx, len(t)),
                                                         self.jvp_backend)
                    dudt = dudt.index_copy(0, idx, d)
            return (v + expand_time(r - t, v) * dudt).detach(), dudt

    def imf_derivative(self, net, x_t, t, r, v, cond=None, mask=None) -> torch.Tensor:
        """The iMF term D = ∂_x u · v̂ + ∂_t u at (x_t, t, r) with v̂ = u(x_t, t, t), (B, *D), detached, in float32.
        v: the conditional velocity, only the tangent's value on masked-out entries (as in the MeanFlow JVP)."""
        def derivative(x, t_, r_, v_, c, m):
            with torch.no_grad():
                v_hat = unwrap(net)(x, t_, t_, c, m).detach()
            if m is not None:
                v_hat = torch.where(m.bool(), v_hat, v_)
            return mean_velocity_time_derivative(unwrap(net), x, t_, r_, v_hat, c, m, self.jvp_backend)[1]

        with torch.autocast(x_t.device.type, enabled=False):
            if not self.jvp_subset:
                return derivative(x_t, t, r, v, cond, mask)
            d = torch.zeros_like(v)
            idx = (r != t).nonzero().squeeze(1)
            if idx.numel():
                d = d.index_copy(0, idx, derivative(x_t[idx], t[idx], r[idx], v[idx], _rows(cond, idx, len(t)),
                                                    _rows(mask, idx, len(t))))
            return d

    def __call__(self, net, x0: torch.Tensor, x1: torch.Tensor, cond=None, mask=None,
                 times: tuple[torch.Tensor, torch.Tensor] | None = None, extra: tuple | None = None,
                 velocity: Callable | None = None, guidance: GuidanceDraw | None = None) -> CMFMOutput:
        """x0, x1: (B, *D) paired source and (smoothed) data samples; times optionally fixes (t, r).
        velocity(x_t, t, cond, mask) -> (B, *D): replaces v = x1 - x0 (module docstring); no gradient flows into it.
        guidance: classifier-free guidance of this batch (module docstring); `cond` is then the condition after
        dropout (dropped rows already ∅), without the scale.

        extra = (x, t, r, cond, mask): E more rows that the same gradient-carrying forward evaluates (no L_CMFM on
        them, no JVP); their output u_θ(x, t, r) is returned as `extra`, so another loss term shares the pass."""
        t, r = times if times is not None else self.times.sample(x0.shape[0], device=x0.device)
        plain_cond = cond   # what `velocity` and the ∅ evaluation see: ω = 1 for a network that takes ω
        if guidance is not None and guidance.as_input:
            plain_cond = with_guidance(cond, torch.ones_like(guidance.scale))
            cond = with_guidance(cond, guidance.scale)
            if extra is not None:
                xe, te, re, ce, me = extra
                extra = (xe, te, re, with_guidance(ce, torch.ones_like(te)), me)
        point = self.path.sample(x0, x1, t)
        if velocity is not None:
            with torch.no_grad(), torch.autocast(x0.device.type, enabled=False):
                v = velocity(point.x_t, t, plain_cond, mask).detach().float()
            point.velocity = v if mask is None else torch.where(mask.bool(), v, point.velocity)
        if guidance is not None:
            point.velocity = self.guided_velocity(net, point.x_t, t, point.velocity, plain_cond, mask, guidance,
                                                  velocity)
        if times is None and getattr(self.times, "ratio_neq", None) == 0:  # r = t everywhere: plain flow matching, no JVP needed
            target, dudt = point.velocity, torch.zeros_like(point.velocity)
        elif self.objective == "imf":
            target, dudt = None, self.imf_derivative(net, point.x_t, t, r, point.velocity, cond, mask)
        else:
            target, dudt = self.target(net, point.x_t, t, r, point.velocity, cond, mask)
        u_extra = None
        if extra is None:
            u = net(point.x_t, t, r, cond, mask)  # through the (possibly DDP-wrapped) module: gradients sync
        else:
            xe, te, re, ce, me = extra
            u = net(torch.cat([point.x_t, xe]), torch.cat([t, te]), torch.cat([r, re]), cat_rows(cond, ce),
                    cat_rows(mask, me))
            u, u_extra = u[:len(t)], u[len(t):]
        if target is None:   # iMF: V_θ = u_θ - (r - t)·D against v
            sq = masked_sq_norm(u.float() - expand_time(r - t, dudt) * dudt.float() - point.velocity.float(), mask)
        else:
            sq = masked_sq_norm(u.float() - target.float(), mask)
        weight = (sq.detach() + self.c).pow(-self.p) if self.p > 0 else torch.ones_like(sq)
        return CMFMOutput(loss=weight * sq, sq_error=sq.detach(),
                          dudt_norm=masked_sq_norm(dudt, mask).sqrt(), extra=u_extra)

    def guided_velocity(self, net, x_t, t, v, cond, mask, guidance: GuidanceDraw, velocity: Callable | None = None
                        ) -> torch.Tensor:
        """ṽ = ω·v + (1 − ω)·u(x_t, t, t | ∅) on the kept rows with ω != 1, v elsewhere (module docstring), (B, *D)
        in v's dtype (float32 in training), detached. u is the network (or `velocity`, evaluated at ∅); cond: the
        condition after dropout, with ω = 1 for a network that takes ω (whose ∅ keeps that ω = 1)."""
        idx = ((~guidance.dropped) & (guidance.scale != 1)).nonzero().squeeze(1)
        if not idx.numel():
            return v
        n = len(t)
        sub_cond, sub_mask = _rows(cond, idx, n), _rows(mask, idx, n)
        null = null_condition(sub_cond)
        if guidance.as_input:
            null = with_guidance(null, sub_cond["guidance"])
        with torch.no_grad(), torch.autocast(x_t.device.type, enabled=False):
            ti = t[idx]
            u_null = (velocity(x_t[idx], ti, null, sub_mask) if velocity is not None
                      else unwrap(net)(x_t[idx], ti, ti, null, sub_mask)).detach().to(v.dtype)
            w = expand_time(guidance.scale[idx].to(v.dtype), u_null)
            guided = w * v[idx] + (1 - w) * u_null
            if sub_mask is not None:
                guided = torch.where(sub_mask.bool(), guided, v[idx])
        return v.index_copy(0, idx, guided)


def _rows(value, idx: torch.Tensor, batch: int):
    """Rows idx of a condition or mask, leaving tensors that broadcast over the batch (first dim != batch) whole."""
    if torch.is_tensor(value) and (value.dim() == 0 or value.shape[0] != batch):
        return value
    if isinstance(value, dict):
        return {k: _rows(v, idx, batch) for k, v in value.items()}
    return cond_rows(value, idx)

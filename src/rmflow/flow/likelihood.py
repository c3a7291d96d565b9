"""Held-out log-likelihoods: the one-step model's exact marginal (by importance sampling) and the flow-matching
ODE's (by the instantaneous change of variables).

One-step model (RMFlow, and MeanFlow 1-NFE scored with the same channel). The model is the latent-variable
density of docs/METHOD.md,

    p_θ(y) = E_{x0 ~ p0} p_θ(y | x0),       f_θ(x0) = x0 + u_θ(x0, 0, 1),
    p_θ(y | x0) = N(y; f_θ(x0), s² I)                                   (FixedScale / LearnedScale refiners)
    p_θ(y | x0) = Σ_k π_k(x0) N(y; f_θ(x0) + δ_k(x0), s² I)             (MixtureRefiner),

and its log is estimated per held-out point by a log-mean-exp over M source draws (`one_step_log_likelihood`).
The bound of METHOD.md (1) (the paper's Theorem 4.1) is a lower bound on E_q log p_θ(y) through a pairing; this
module estimates log p_θ(y) itself, so the two can be set side by side.

Flow matching (`flow_matching_log_likelihood`): the density that the ODE dx/dt = u(x, t, t) carries from p0 at
t = 0 to t = 1,  log p1(y) = log p0(x(0)) − ∫_0^1 div_x u(x(t), t, t) dt  with x(1) = y, integrated backwards.

Both work on data (N, *D) through the model's space (noise drawn by `space.randn_like`, differences measured after
`space.project`, dimension `space.dof`), so a mask or a linear subspace with an orthogonal projection (zero centre
of mass) is handled; the mixture refiner is for vector data (N, D) without mask. The source must be the Gaussian
p0 = N(μ(c), σ0² I) of rmflow.flow.sources: μ = 0, σ0 = 1 (GaussianSource) or μ = φ_ω(c), σ0 = σ_c (GuidedSource).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .refine import MixtureRefiner
from .rows import cond_rows

PROPOSALS = ("prior", "inverse", "laplace")
DIVERGENCES = ("exact", "hutchinson")
ODE_METHODS = ("rk4", "heun")


class OneStepLikelihood(NamedTuple):
    """The estimate of `one_step_log_likelihood`.

    mean:       mean over the N points of the per-point estimates (nats per point, not per dimension)
    stderr:     standard error of that mean over points, std(per_point) / sqrt(N) (nan for N = 1). It measures
                the spread of log p over the held-out set, not the Monte-Carlo error of each point; that one is
                about sqrt(1/ess − 1/M) nats per point (delta method)
    per_point:  (N,) float64, log p̂_θ(y_i)
    ess:        (N,) float64, effective sample size of the M weights of each point, (Σ w)² / Σ w², in [1, M].
                Near 1 means one draw carried the estimate: it is unreliable (and, by Jensen, probably low)
    """

    mean: float
    stderr: float
    per_point: torch.Tensor
    ess: torch.Tensor

    @property
    def median_ess(self) -> float:
        return float(self.ess.median())


# ------------------------------------------------------------------------------------------------ helpers
def _full(x: torch.Tensor, value: float) -> torch.Tensor:
    return torch.full((x.shape[0],), float(value), device=x.device, dtype=x.dtype)


def _col(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1), broadcastable against like (B, *D)."""
    return v.reshape(v.shape[0], *([1] * (like.dim() - 1)))


def _source_gaussian(model, template: torch.Tensor, cond, mask) -> tuple[torch.Tensor, float]:
    """p0 = N(mean, std² I) for each row: mean (B, *D), std a float."""
    source = model.source
    if getattr(source, "guided", False):
        return model.space.project(source.encode(cond, template), mask), float(source.sigma_c)
    return torch.zeros_like(template), 1.0


def _gauss_logpdf(x: torch.Tensor, mean: torch.Tensor, std, dof: torch.Tensor, space, mask) -> torch.Tensor:
    """log N(x; mean, std² I) on the space (dof degrees of freedom): (B,). std: float or (B,)."""
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device).expand(x.shape[0])
    sq = space.project(x - mean, mask).flatten(1).pow(2).sum(1)
    return -sq / (2 * std ** 2) - dof * (torch.log(std) + 0.5 * math.log(2 * math.pi))


# ------------------------------------------------------------------------------------------------ one step
def _jacobian(fn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fn(x) (B, *D) and its Jacobian per row, (B, D, D) over the flattened coordinates (row i = ∂fn_i/∂x), by D
    vector-Jacobian products through one batched forward."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        out = fn(xg)
        flat = out.flatten(1)
        dim = flat.shape[1]
        rows = []
        for i in range(dim):
            e = torch.zeros_like(flat)
            e[:, i] = 1
            (g,) = torch.autograd.grad(out, xg, grad_outputs=e.view_as(out), retain_graph=i + 1 < dim,
                                       allow_unused=True)
            rows.append(torch.zeros_like(flat) if g is None else g.flatten(1))
    return out.detach(), torch.stack(rows, dim=1)


class _Isotropic:
    """q = N(c, τ² I) on the space, per point: centre (n, *D), spread τ (n,). Draws and densities for m draws per
    point, rows grouped by point as in `rep = arange(n).repeat_interleave(m)`."""

    def __init__(self, centre, spread, space):
        self.centre, self.spread, self.space = centre, spread, space

    def draw(self, m, like, mask, generator):
        """(n·m, *D)."""
        c, tau = self.centre.repeat_interleave(m, dim=0), self.spread.repeat_interleave(m)
        return c + _col(tau, like) * self.space.randn_like(like, mask, generator)

    def log_prob(self, x, m, dof, mask):
        """(n·m,)."""
        return _gauss_logpdf(x, self.centre.repeat_interleave(m, dim=0), self.spread.repeat_interleave(m), dof,
                             self.space, mask)


class _Laplace:
    """q = N(c, w² Λ⁻¹) on the space, Λ = Ĵᵀ Ĵ / s² + P / σ0² + (I − P), Ĵ = P J P, J = ∂μ/∂x0 at c (μ the mean of
    the channel's Gaussian, f_θ or f_θ + δ_k), P the space's projection as a (n, D, D) matrix: the Laplace
    (Gauss–Newton) approximation of p(x0 | y) ∝ p0(x0) N(y; μ(x0), s² I), after `newton` Gauss–Newton steps from
    the start c. With P an orthogonal projection Λ is block-diagonal across range(P) and its complement, so
    P·N(0, Λ⁻¹) is the subspace Gaussian and log det Λ is its log-determinant."""

    def __init__(self, mean_fn, y, centre, s, mean0, std0, widen, newton, space, mask):
        shape, dim = y.shape, y[0].numel()
        eye = torch.eye(dim, dtype=y.dtype, device=y.device)
        proj = torch.stack([space.project(eye[i].expand(shape[0], dim).reshape(shape), mask).flatten(1)
                            for i in range(dim)], dim=2)                                  # (n, D, D): P e_i
        s2 = (s ** 2)[:, None]
        for k in range(newton + 1):
            mu, jac = _jacobian(mean_fn, centre)
            jac = proj @ jac @ proj
            prec = jac.transpose(1, 2) @ jac / s2[:, :, None] + proj / std0 ** 2 + (eye - proj)
            if k == newton:
                break
            # Gauss–Newton step on log p0(x0) + log N(y; μ(x0), s² I) towards the posterior mode
            resid = space.project(y - mu, mask).flatten(1)
            grad = (jac.transpose(1, 2) @ resid[:, :, None]).squeeze(-1) / s2 \
                - space.project(centre - mean0, mask).flatten(1) / std0 ** 2
            centre = space.project(centre + torch.linalg.solve(prec, grad).view(shape), mask)
        self.chol = torch.linalg.cholesky(prec)                                             # Λ = L Lᵀ
        self.centre, self.widen, self.space = centre, widen, space
        self.log_det = 2 * torch.log(torch.diagonal(self.chol, dim1=1, dim2=2)).sum(1)      # log det Λ

    def draw(self, m, like, mask, generator):
        """(n·m, *D), rows grouped by point."""
        n, dim = self.chol.shape[0], self.chol.shape[1]
        eps = torch.randn((n, dim, m), generator=generator, device=like.device, dtype=like.dtype)
        z = torch.linalg.solve_triangular(self.chol.transpose(1, 2), eps, upper=True)   # cov Λ⁻¹ per column
        z = z.transpose(1, 2).reshape(like.shape)
        return self.centre.repeat_interleave(m, dim=0) + self.space.project(self.widen * z, mask)

    def log_prob(self, x, m, dof, mask):
        """(n·m,)."""
        n, dim = self.chol.shape[0], self.chol.shape[1]
        d = self.space.project(x - self.centre.repeat_interleave(m, dim=0), mask) / self.widen
        lt = self.chol.transpose(1, 2) @ d.reshape(n, m, dim).transpose(1, 2)              # Lᵀ d: ‖·‖² = dᵀΛd
        quad = lt.pow(2).sum(1).reshape(n * m)
        return (-0.5 * quad + 0.5 * self.log_det.repeat_interleave(m)
                - dof * (math.log(self.widen) + 0.5 * math.log(2 * math.pi)))


class _Uniform:
    """q = (1/K) Σ_k q_k: one part per mixture component."""

    def __init__(self, parts):
        self.parts = parts

    def draw(self, m, like, mask, generator):
        if len(self.parts) == 1:
            return self.parts[0].draw(m, like, mask, generator)
        draws = torch.stack([q.draw(m, like, mask, generator) for q in self.parts])       # (K, n·m, *D)
        pick = torch.randint(len(self.parts), (like.shape[0],), generator=generator, device=like.device)
        return draws[pick, torch.arange(like.shape[0], device=like.device)]

    def log_prob(self, x, m, dof, mask):
        logs = torch.stack([q.log_prob(x, m, dof, mask) for q in self.parts])
        return torch.logsumexp(logs, dim=0) - math.log(len(self.parts))


def _importance_proposal(model, proposal, y, s, mean0, std0, tau, widen, newton, mixture, cond, mask):
    """The non-prior part of q for n points y (n, *D): around the reverse map's x0*(y) = y − u(y, 1, 0); for the
    mixture refiner one part per component k, started at x0*(y − δ_k(x0*)) (δ_k evaluated at x0*)."""
    space, ones, zeros = model.space, _full(y, 1.0), _full(y, 0.0)

    def f(x):
        return x + model(x, zeros, ones, cond, mask)

    def reverse(x):
        return space.project(x - model(x, ones, zeros, cond, mask), mask)

    x_star = reverse(y)
    if mixture:
        f_star = f(x_star)
        offsets = model.refiner.mixture_params(x_star, f_star)[0] - f_star.unsqueeze(1)          # (n, K, D)
        starts = [reverse(y - offsets[:, k]) for k in range(offsets.shape[1])]
        mean_fns = [lambda x, k=k: model.refiner.mixture_params(x, f(x))[0][:, k] for k in range(len(starts))]
    else:
        starts, mean_fns = [x_star], [f]
    if proposal == "laplace":
        return _Uniform([_Laplace(fn, y, c, s, mean0, std0, widen, newton, space, mask)
                         for fn, c in zip(mean_fns, starts)])
    spread = 2 * s if tau is None else _full(y, tau)
    return _Uniform([_Isotropic(c, spread, space) for c in starts])


@torch.no_grad()
def _channel_log_likelihood(model, y, x0, s, dof, mixture: bool, cond=None, mask=None) -> torch.Tensor:
    """log p_θ(y | x0) (B,) of the refinement channel: N(y; f_θ(x0), s²I), or with the mixture refiner
    Σ_k π_k N(y; f_θ(x0) + δ_k, s²I); f_θ(x0) = x0 + u_θ(x0, 0, 1). y, x0: (B, *D); s, dof: (B,)."""
    x_hat = x0 + model(x0, _full(y, 0.0), _full(y, 1.0), cond, mask)
    if not mixture:
        return _gauss_logpdf(y, x_hat, s, dof, model.space, mask)
    means, log_pi = model.refiner.mixture_params(x0, x_hat)                   # (B, K, D), (B, K)
    sq = (y.unsqueeze(1) - means).pow(2).sum(-1)                              # (B, K)
    return torch.logsumexp(log_pi - sq / (2 * s[:, None] ** 2), dim=1) - dof * (
        torch.log(s) + 0.5 * math.log(2 * math.pi))


def one_step_log_likelihood(model, y: torch.Tensor, num_draws: int = 1024, batch: int = 65536,
                            generator: torch.Generator | None = None, cond=None, mask=None,
                            proposal: str = "prior", tau: float | None = None, alpha: float = 0.9,
                            widen: float = 1.2, newton: int = 2, scale: float | None = None) -> OneStepLikelihood:
    """Importance-sampled log-likelihood of held-out points y (N, *D) under the one-step model.

    For each point, with M = num_draws draws x0_j ~ q(· | y) (independent across points),

        p̂(y) = (1/M) Σ_j w_j,     w_j = p0(x0_j) · p_θ(y | x0_j) / q(x0_j | y),     log p̂(y) = logsumexp − log M,

    p_θ(y | x0) the model's refinement channel (module docstring; s from `model.refiner(B, cond)`, or `scale`).

    proposal="prior":    q = p0, w_j = p_θ(y | x0_j): plain Monte Carlo. Hopeless when s is small: p_θ(y | x0) is
                         a spike of width s around f_θ⁻¹(y) that almost no prior draw hits (watch `ess`).
    proposal="inverse":  defensive importance sampling around the model's own inverse
                         x0*(y) = y − u_θ(y, 1, 0) (the reverse one-step map, as pairing.Reverse / InversePairing):

                             q = α·N(x0*, τ² I) + (1 − α)·p0,      τ = `tau` (default 2s, per row).

                         The posterior of x0 given y is about N(x0_map, s² (JᵀJ)⁻¹) (J = ∂f_θ/∂x0): its width along
                         a singular direction of J is s/σ_j. A Gaussian proposal narrower than 1/√2 of the target's
                         width has weights of infinite variance, so τ should exceed 0.71·s/σ_min(J); wider is safe
                         but wastes draws (ESS ~ M·Π_j (width_j/τ)). The prior share 1 − α bounds every weight by
                         p_θ(y | x0)/(1 − α), so the estimate stays finite when x0* is off; α = 1 drops it.
                         Costs one extra network call per point; works for any D.
    proposal="laplace":  q = α·N(x̄0, w² Λ⁻¹) + (1 − α)·p0, the Laplace approximation of p(x0 | y) for the
                         Gaussian part of the channel: start at x0*, take `newton` Gauss–Newton steps towards the
                         posterior mode x̄0 (they repair an inexact reverse map), Λ = JᵀJ/s² + I/σ0² at x̄0 and
                         w = `widen` (> 1 keeps the proposal's tails above the target's). Exact for an affine map.
                         Costs (newton + 1)·(1 forward + D backward passes) per point and a (D, D) matrix per
                         point: small flattened D only (vector data).

    Mixture refiner: y may come from any component, so the non-prior part of q is a uniform mixture of K parts
    (1/K)·Σ_k q_k, part k built as above for component k's channel mean μ_k = f_θ + δ_k and started at
    x0*(y − δ_k(x0*)), δ_k evaluated at x0* (exact for constant offsets; otherwise the Gauss–Newton steps of
    "laplace" and the prior share have to make up for it). This costs K times the proposal's network calls.

    Bias: p̂(y) is unbiased for p_θ(y) (not for log p_θ(y)); by Jensen E log p̂ ≤ log E p̂ = log p_θ(y), so the
    reported value is a stochastic lower bound in expectation (like IWAE), whose gap shrinks as the ESS grows
    (about (1/ess − 1/M)/2 nats per point for well-behaved weights). Compare models at the same M and proposal,
    and look at `ess` before trusting a number: ESS near 1 means one draw carried the estimate.

    MeanFlow 1-NFE "with the same channel": a MeanFlow model has no trained refiner; score its map
    x0 + u(x0, 0, 1) under the same Gaussian channel by passing the RMFlow model's s as `scale` (or give it
    `FixedScale(sigma_min=s, sigma=0)` as refiner). `scale` overrides the model's refiner, mixture included.

    Args:
        model: an RMFlow (net u(x, t, r, cond, mask), source, refiner, space); put it in eval mode first.
        y: (N, *D) held-out points (projected onto the model's space).
        num_draws: M, draws per point.
        batch: at most this many (point, draw) pairs per network call; memory is O(batch), not O(N·M).
        generator: for the draws (on y's device).
        cond, mask: per-point rows (None, a tensor or a dict of tensors with N rows), repeated per draw.
        proposal, tau, alpha, widen, newton: see above (tau: "inverse"; widen, newton: "laplace"; alpha: both).
        scale: a Gaussian channel scale s to use instead of the model's refiner.

    Returns:
        OneStepLikelihood(mean, stderr, per_point (N,), ess (N,)); per_point and ess are float64 on y's device.
    """
    if proposal not in PROPOSALS:
        raise ValueError(f"proposal must be one of {PROPOSALS}, got {proposal!r}")
    if num_draws < 1 or batch < 1 or newton < 0:
        raise ValueError(f"need num_draws, batch >= 1 and newton >= 0, got {num_draws}, {batch}, {newton}")
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    if (tau is not None and tau <= 0) or widen <= 0:
        raise ValueError(f"tau and widen must be > 0, got {tau}, {widen}")
    if scale is not None and scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    mixture = scale is None and isinstance(model.refiner, MixtureRefiner)
    if mixture and mask is not None:
        raise NotImplementedError("the mixture refiner is for vector data without a mask")
    space = model.space
    y = space.project(y, mask)
    n_points = y.shape[0]
    per_chunk = max(1, batch // num_draws)           # points per chunk
    draws_chunk = min(num_draws, batch)              # draws per network call
    per_point, ess = [], []
    for start in range(0, n_points, per_chunk):
        idx = torch.arange(start, min(start + per_chunk, n_points), device=y.device)
        yc, cc, mc = y[idx], cond_rows(cond, idx), cond_rows(mask, idx)
        n = len(idx)
        s = _full(yc, scale) if scale is not None else model.refiner(n, cc).to(yc.dtype).expand(n)
        mean0, std0 = _source_gaussian(model, yc, cc, mc)
        near = None
        if proposal != "prior":
            if std0 <= 0:
                raise ValueError("an importance proposal needs a source with a density (sigma_c > 0)")
            near = _importance_proposal(model, proposal, yc, s, mean0, std0, tau, widen, newton, mixture, cc, mc)
        lse_w = torch.full((n,), -math.inf, dtype=torch.float64, device=y.device)
        lse_w2 = lse_w.clone()
        for d_start in range(0, num_draws, draws_chunk):
            m = min(draws_chunk, num_draws - d_start)
            rep = torch.arange(n, device=y.device).repeat_interleave(m)
            yr, cr, mr = yc[rep], cond_rows(cc, rep), cond_rows(mc, rep)
            dof = space.dof(yr, mr).to(yr.dtype)
            x0 = mean0[rep] + std0 * space.randn_like(yr, mr, generator)
            log_w = torch.zeros(len(rep), dtype=yr.dtype, device=yr.device)
            if near is not None:
                x_near = near.draw(m, yr, mr, generator)
                if alpha < 1:
                    pick = torch.rand(len(rep), generator=generator, device=yr.device, dtype=yr.dtype) < alpha
                    x0 = torch.where(_col(pick, yr), x_near, x0)
                else:
                    x0 = x_near
                log_p0 = _gauss_logpdf(x0, mean0[rep], std0, dof, space, mr)
                log_near = near.log_prob(x0, m, dof, mr)
                log_q = log_near if alpha == 1 else torch.logaddexp(
                    math.log(alpha) + log_near, math.log1p(-alpha) + log_p0)
                log_w = log_p0 - log_q
            log_lik = _channel_log_likelihood(model, yr, x0, s[rep], dof, mixture, cr, mr)
            terms = (log_w + log_lik).double().view(n, m)
            lse_w = torch.logaddexp(lse_w, torch.logsumexp(terms, dim=1))
            lse_w2 = torch.logaddexp(lse_w2, torch.logsumexp(2 * terms, dim=1))
        per_point.append(lse_w - math.log(num_draws))
        ess.append(torch.exp(2 * lse_w - lse_w2))
    per_point, ess = torch.cat(per_point), torch.cat(ess)
    stderr = float(per_point.std() / math.sqrt(n_points)) if n_points > 1 else float("nan")
    return OneStepLikelihood(float(per_point.mean()), stderr, per_point, ess)


# ------------------------------------------------------------------------------------------------ ODE
def _basis_probes(x: torch.Tensor, space, mask) -> list[torch.Tensor]:
    """The coordinate vectors e_i (i < prod D), each projected onto the space: D tensors shaped like x."""
    flat = x.flatten(1)
    probes = []
    for i in range(flat.shape[1]):
        e = torch.zeros_like(flat)
        e[:, i] = 1
        probes.append(space.project(e.view_as(x), mask))
    return probes


def _velocity_and_divergence(model, x, t: float, probes, weight: float, cond, mask):
    """v = u(x, t, t) (B, *D), detached, and Σ_p weight · p·(∂v/∂x) p: (B,) float64."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        tt = _full(x, t)
        v = model(xg, tt, tt, cond, mask)
        div = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        if v.requires_grad:
            for k, p in enumerate(probes):
                (g,) = torch.autograd.grad(v, xg, grad_outputs=p, retain_graph=k + 1 < len(probes),
                                           allow_unused=True)
                if g is not None:
                    div = div + weight * (g * p).flatten(1).sum(1).double()
    return v.detach(), div


def flow_matching_log_likelihood(model, y: torch.Tensor, steps: int = 64, divergence: str = "exact",
                                 method: str = "rk4", probes: int = 1, batch: int = 4096,
                                 generator: torch.Generator | None = None, cond=None, mask=None) -> torch.Tensor:
    """Continuous-flow log-likelihood of y (N, *D) under dx/dt = u(x, t, t), source p0 at t = 0, data at t = 1.

    Along a trajectory of the ODE, d/dt log p_t(x(t)) = −div_x u(x(t), t, t) (instantaneous change of variables),
    so with x(1) = y

        log p1(y) = log p0(x(0)) − ∫_0^1 div_x u(x(t), t, t) dt.

    The augmented state (x, ℓ), dx/dt = u, dℓ/dt = div u, ℓ(1) = 0, is integrated backwards from t = 1 to t = 0
    with `steps` uniform steps of classical RK4 (4 evaluations per step, error O(steps⁻⁴)) or Heun (2, O(steps⁻²));
    then ℓ(0) = −∫_0^1 div u dt and log p1(y) = log p0(x(0)) + ℓ(0). ℓ is accumulated in float64; pass a float64
    y and a `.double()` model for float64 throughout.

    divergence="exact":       tr(P ∂u/∂x P) = Σ_i (P e_i)ᵀ (∂u/∂x) (P e_i) over the D coordinate vectors (P the
                              space's projection: the mask, or the zero-centre-of-mass projection), one backward
                              pass each: D vector-Jacobian products per evaluation, for small D.
    divergence="hutchinson":  (1/P) Σ_p ε_pᵀ (∂u/∂x) ε_p with `probes` projected Rademacher vectors, drawn once per
                              point and kept along the trajectory (FFJORD): unbiased for the log-likelihood, exact
                              when ∂u/∂x is diagonal, with variance 2 Σ_{i≠j} J_ij² per evaluation otherwise.

    MeanFlow 1-NFE and RMFlow are scored by `one_step_log_likelihood` (a Gaussian channel, pass the same s); this
    function scores the same network used as a flow-matching ODE (its u(x, t, t)), which has a density without
    any channel.

    Args:
        model: u(x, t, r, cond, mask) with the source and space of an RMFlow; samples must not interact in the
            network (the divergence is taken through a batched backward pass).
        y: (N, *D); steps: ODE steps; method: "rk4" or "heun"; probes: Hutchinson probes per point;
        batch: points per chunk (bounds the memory of the backward passes); generator: for the probes;
        cond, mask: per-point rows.

    Returns:
        (N,) float64: log p1(y_i) in nats.
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    if method not in ODE_METHODS:
        raise ValueError(f"ODE method must be one of {ODE_METHODS}, got {method!r}")
    if steps < 1 or probes < 1 or batch < 1:
        raise ValueError(f"steps, probes and batch must be >= 1, got {steps}, {probes}, {batch}")
    space = model.space
    y = space.project(y, mask)
    out = []
    for start in range(0, y.shape[0], batch):
        idx = torch.arange(start, min(start + batch, y.shape[0]), device=y.device)
        x, cc, mc = y[idx], cond_rows(cond, idx), cond_rows(mask, idx)
        if divergence == "exact":
            vecs, weight = _basis_probes(x, space, mc), 1.0
        else:
            vecs = [space.project(2.0 * torch.randint(0, 2, x.shape, generator=generator, device=x.device)
                                  .to(x.dtype) - 1.0, mc) for _ in range(probes)]
            weight = 1.0 / probes

        def field(x_, t_):
            return _velocity_and_divergence(model, x_, t_, vecs, weight, cc, mc)

        ell = torch.zeros(len(idx), dtype=torch.float64, device=y.device)
        h = -1.0 / steps
        for k in range(steps):
            t = 1.0 - k / steps
            v1, d1 = field(x, t)
            if method == "heun":
                v2, d2 = field(x + h * v1, t + h)
                x, ell = x + (h / 2) * (v1 + v2), ell + (h / 2) * (d1 + d2)
            else:
                v2, d2 = field(x + (h / 2) * v1, t + h / 2)
                v3, d3 = field(x + (h / 2) * v2, t + h / 2)
                v4, d4 = field(x + h * v3, t + h)
                x = x + (h / 6) * (v1 + 2 * v2 + 2 * v3 + v4)
                ell = ell + (h / 6) * (d1 + 2 * d2 + 2 * d3 + d4)
        mean0, std0 = _source_gaussian(model, x, cc, mc)
        dof = space.dof(x, mc).to(x.dtype)
        out.append(_gauss_logpdf(x, mean0, std0, dof, space, mc).double() + ell)
    return torch.cat(out)

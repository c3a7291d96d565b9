"""Reference forecasts of the time-series task: the rows that bound every forecasting metric (issue 17, item 1).

The forecasting problem (conditional mode) is: given a context of k steps observed with Gaussian noise of std
σ = task.obs_noise per channel (normalised units, independent over channels and steps), forecast the H clean
future steps of the window. Each function below is a forecaster using only what a model sees (the noisy
context, and the training split), except `true_system_forecast`, which also knows the exact dynamics. All work
in normalised units on the evaluation's distinct contexts, contexts (n, C, k), and return ensembles
(n, M, C, H); `DynamicsTask.reference_rows` lays them out like a model's samples ((n·M, C, H), context i's
members in rows i·M … i·M + M − 1) and `task.evaluate` scores them like a model.

- persistence: the last (noisy) context value repeated over the horizon; every member is that same path
  (a point forecast with zero spread: its CRPS is the mean absolute error; no noise is added to the members).
- climatology: M forecast parts (steps k … L − 1) of training windows drawn at random (seeded), ignoring the
  context: the skill of knowing only the system's invariant distribution of windows.
- analogue (k-nearest analogues, k = M): the M training windows whose clean contexts are nearest to the noisy
  context (Euclidean distance over all C·k normalised values), their continuations as members, nearest first.
- true_system (simulated systems only): the physical limit, the Bayes forecast of a forecaster that knows the
  exact dynamics and the noise model: members sample p(future | noisy context) = ∫ p(future | x) p(x | noisy
  context) dx, by importance sampling over the state x (below), then integrating the true system (its own
  integrator: solve_ivp, DOP853, rtol = atol = 1e-8, as the data) from the chosen states over the horizon.

true_system, what is exact and what is approximated. Exact: the observation model (y_t = x_t + σ·ε_t in normalised
units, as the task adds the noise) and the dynamics (up to the integrator's tolerance). Approximated:
(a) the prior of the state: the system's invariant measure, estimated by AttractorPrior, a Gaussian kernel density
    of the training split's recorded states with bandwidth h (2 × their median nearest-neighbour distance, about
    0.01–0.02 normalised units on the default data). It is placed LEAD[system] steps before the context and
    carried into it by the flow, which pulls the kernel's off-attractor width back onto the attractor: 0 steps for
    Lorenz (transverse directions contract within a fraction of a time unit), 16 steps (32 time units) for
    FitzHugh–Nagumo, an excitable system in which small off-attractor offsets can trigger or suppress a spike
    (and whose slow variables relax on a time scale 1/c = 50 time units). Without such a prior the Bayes ensemble is far too wide: a naive "true state + σ-noise at the
    context's end" ensemble, which ignores both the context and the attractor, scored worse than the analogue
    forecast on both systems during development, i.e. it is no limit at all.
(b) finite importance sampling: PARTICLES proposals per context and stage. Stage 1 proposes kernels N(c, h²I)
    around CANDIDATES attractor states c (the states LEAD steps before the training windows whose contexts are
    nearest the noisy context), mixed half and half, when LEAD = 0, with N(y_0, σ²I) (the states consistent with
    the first observation; this part keeps the sampler efficient as σ → 0). Each later stage (STAGES in all)
    proposes a defensive mixture 0.8·N(m, 1.5²S + (0.05σ)²I) + 0.2·(stage 1's proposal), m and S the previous
    stage's weighted mean and covariance. Weights ∝ prior(x)·Π_t N(y_t; x_t, σ²I) / q(x); the M members are a
    systematic resample of the last stage's particles, so members repeat when the effective sample size is small
    (`info["ess"]` reports it per context: a few to tens out of 1024 on the hardest contexts, e.g. a Lorenz
    context near the saddle at the origin, whose next lobe is undecided).
With σ = 0 the context determines the state and the ensemble is M copies of the true continuation integrated from
the last context state (up to float32 rounding of the stored data and the integrator's tolerance).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.spatial import cKDTree
from scipy.special import logsumexp

from .data import Windows
from .systems import simulate

PARTICLES = 1024              # true_system: importance-sampling proposals per context and stage
CANDIDATES = 64               # true_system: attractor states (of the nearest training windows) in stage 1's proposal
STAGES = 4                    # true_system: importance-sampling stages
LEAD = {"lorenz": 0, "fhn": 16}   # true_system: steps before the context at which the attractor prior sits
MAX_STACKED = 16384           # trajectories integrated as one stacked system (memory and shared-step cost)


def _np64(x) -> np.ndarray:
    return x.detach().cpu().double().numpy() if torch.is_tensor(x) else np.asarray(x, dtype=np.float64)


# ------------------------------------------------------------------------------------------------ simple ones
def persistence_forecast(contexts: torch.Tensor, horizon: int, members: int) -> torch.Tensor:
    """contexts (n, C, k) -> (n, M, C, H): the last context value over the horizon, the same path for every member."""
    n, c, _ = contexts.shape
    return contexts[:, None, :, -1:].expand(n, members, c, horizon).contiguous()


def climatology_forecast(windows: Windows, context_len: int, num_contexts: int, members: int,
                         generator: torch.Generator) -> torch.Tensor:
    """(n, M, C, H): forecast parts of num_contexts·M training windows drawn with replacement (seeded generator)."""
    w = windows.random(num_contexts * members, generator)[..., context_len:]
    return w.reshape(num_contexts, members, *w.shape[1:]).contiguous()


def training_contexts(windows: Windows, context_len: int) -> torch.Tensor:
    """All training contexts, flattened: (N, C·k) float64, row i = context of window i (Windows.take order)."""
    v = windows.view[..., :context_len]                  # (n_series, C, per_series, k)
    return v.permute(0, 2, 1, 3).reshape(len(windows), -1).double()


def analogue_indices(contexts: torch.Tensor, library: torch.Tensor, members: int, chunk: int = 8) -> torch.Tensor:
    """contexts (n, C, k), library (N, C·k) -> (n, M) indices of the nearest library rows (Euclidean, nearest
    first; exact pairwise differences, not the matrix-product expansion). With N < M the N nearest repeat."""
    q = contexts.reshape(len(contexts), -1).double()
    k = min(members, len(library))
    out = []
    for i in range(0, len(q), chunk):
        d = torch.cdist(q[i:i + chunk], library, compute_mode="donot_use_mm_for_euclid_dist")
        out.append(d.topk(k, dim=1, largest=False, sorted=True).indices)
    idx = torch.cat(out)
    if k < members:
        idx = idx[:, torch.arange(members) % k]
    return idx


def analogue_forecast(contexts: torch.Tensor, windows: Windows, context_len: int, members: int,
                      library: torch.Tensor | None = None) -> torch.Tensor:
    """(n, M, C, H): the continuations of the M training windows with the nearest contexts, nearest first."""
    library = training_contexts(windows, context_len) if library is None else library
    idx = analogue_indices(contexts, library, members)
    w = windows.take(idx.reshape(-1))[..., context_len:]
    return w.reshape(len(contexts), members, *w.shape[1:]).contiguous()


# ------------------------------------------------------------------------------------------------ true system
def _integrate(system, states: np.ndarray, dt: float, steps: int) -> np.ndarray:
    """states (P, D) system units -> (P, D, steps) (first column = the states), integrated in stacked chunks."""
    if steps == 1:
        return np.asarray(states, dtype=np.float64)[..., None].copy()
    out = [simulate(system, states[i:i + MAX_STACKED], dt, steps, 0.0) for i in range(0, len(states), MAX_STACKED)]
    return np.concatenate(out)


def _gauss_logpdf(z: np.ndarray, mean: np.ndarray, chol: np.ndarray) -> np.ndarray:
    """z (n, P, D), mean (n, D), chol (n, D, D) lower Cholesky factor -> log N(z; mean, chol cholᵀ), (n, P)."""
    diff = z - mean[:, None]
    sol = np.linalg.solve(chol[:, None], diff[..., None])[..., 0]          # L⁻¹(z − m)
    d = z.shape[-1]
    logdet = np.log(np.diagonal(chol, axis1=-2, axis2=-1)).sum(-1)          # ½ log|Σ|
    return -0.5 * (sol ** 2).sum(-1) - logdet[:, None] - 0.5 * d * math.log(2 * math.pi)


def _iso_logpdf(z: np.ndarray, centres: np.ndarray, scale: float) -> np.ndarray:
    """z (n, P, D), centres (n, K, D) -> log of the equal-weight mixture of N(centre, scale²I), (n, P)."""
    d = z.shape[-1]
    sq = ((z[:, :, None] - centres[:, None]) ** 2).sum(-1)                  # (n, P, K)
    return (logsumexp(-0.5 * sq / scale ** 2, axis=2) - math.log(centres.shape[1])
            - 0.5 * d * math.log(2 * math.pi * scale ** 2))


def _ess(logw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log weights (n, P) -> normalised weights (n, P) and effective sample sizes (n,)."""
    w = np.exp(logw - logw.max(axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)
    return w, 1.0 / (w ** 2).sum(axis=1)


class AttractorPrior:
    """The system's invariant measure, estimated from the training split: a Gaussian kernel density of its recorded
    states (normalised units) with bandwidth h, by default twice the median nearest-neighbour distance between them
    (so the density fills the gaps between recorded states without thickening the attractor by much more)."""

    def __init__(self, states, bandwidth: float | None = None, neighbours: int = 128):
        self.states = _np64(states)
        self.tree = cKDTree(self.states)
        self.neighbours = min(neighbours, len(self.states))
        if bandwidth is None:
            sub = self.states[:: max(1, len(self.states) // 4000)]
            gaps = self.tree.query(sub, k=2)[0][:, 1]
            bandwidth = 2.0 * float(np.median(gaps[gaps > 0])) if (gaps > 0).any() else 1e-3
        self.h = float(bandwidth)

    def log_density(self, z: np.ndarray) -> np.ndarray:
        """z (..., D) -> log p(z) (...): the kernel sum over the `neighbours` nearest states within 5h (the rest
        contribute < e^-12.5 each); beyond 5h of every state, the nearest state's kernel alone."""
        flat = z.reshape(-1, z.shape[-1])
        dist, _ = self.tree.query(flat, k=self.neighbours, distance_upper_bound=5 * self.h)
        dist = dist.reshape(len(flat), -1)
        with np.errstate(divide="ignore"):
            out = logsumexp(-0.5 * (dist / self.h) ** 2, axis=1)        # inf distances add nothing
        far = ~np.isfinite(out)
        if far.any():
            out[far] = -0.5 * (self.tree.query(flat[far], k=1)[0] / self.h) ** 2
        d = flat.shape[-1]
        out = out - math.log(len(self.states)) - 0.5 * d * math.log(2 * math.pi * self.h ** 2)
        return out.reshape(z.shape[:-1])


def true_system_forecast(system, dt: float, mean, std, contexts, horizon: int, members: int, sigma: float,
                         rng: np.random.Generator, prior: AttractorPrior | None = None, candidates=None,
                         lead: int = 0, particles: int | None = None, stages: int | None = None
                         ) -> tuple[torch.Tensor, dict]:
    """The physical limit (module docstring): contexts (n, C, k) noisy, normalised -> ((n, M, C, H) float32 ensemble
    in normalised units, info {"ess": (n,) the last stage's effective sample sizes, "ess1": stage 1's}).

    mean, std (C,): the task's normalisation (system units = z·std + mean); sigma: the observation noise std in
    normalised units (the noise of the contexts); dt: the data's sampling step. prior: the invariant measure of the
    state `lead` steps before the context (None = flat); candidates (n, K, C): states `lead` steps before the first
    steps of training windows whose contexts are near each context (the analogues), kernels of the first stage's
    proposal (needs `prior`; with lead > 0 the only ones). particles, stages: default PARTICLES, STAGES."""
    particles = PARTICLES if particles is None else particles
    stages = STAGES if stages is None else stages
    mean, std = _np64(mean), _np64(std)
    y = _np64(contexts)                                   # (n, C, k)
    n, d, k = y.shape

    def to_system(z):
        return z * std + mean

    def to_norm(traj):                                    # (P, D, T) system units -> normalised
        return (traj - mean[None, :, None]) / std[None, :, None]

    if sigma <= 0:
        start = to_system(y[:, :, -1])
        f = to_norm(_integrate(system, start, dt, horizon + 1))[:, :, 1:]
        ens = np.repeat(f[:, None], members, axis=1)
        return torch.from_numpy(ens).float(), {"ess": None, "ess1": None}

    if lead > 0 and (prior is None or candidates is None):
        raise ValueError("lead > 0 needs a prior and candidates (the proposal lives `lead` steps before the context)")

    def log_target(z0):                                   # z0 (n, P, D) -> (log π (n, P), end states (n, P, D))
        traj = _integrate(system, to_system(z0.reshape(-1, d)), dt, lead + k)   # (n·P, D, lead + k) system units
        z = to_norm(traj[..., lead:]).reshape(n, particles, d, k)
        logp = -0.5 * (((z - y[:, None]) / sigma) ** 2).sum(axis=(2, 3))
        if prior is not None:
            logp = logp + prior.log_density(z0)
        return logp, traj[..., -1].reshape(n, particles, d)

    eye = np.broadcast_to(np.eye(d), (n, d, d))
    y0 = y[:, :, 0]
    chol0 = sigma * eye
    cand = None if candidates is None or prior is None else _np64(candidates)

    share = 0.0 if cand is None else (1.0 if lead > 0 else 0.5)   # of the candidates' kernels in stage 1

    def draw_first(count_shape):
        """Stage 1's proposal: N(y_0, σ²I) (the states consistent with the first observation; lead = 0 only), mixed
        with kernels N(c, h²I) around the candidates (the states of the attractor near the context)."""
        z = y0[:, None] + sigma * rng.standard_normal(count_shape + (d,))
        if share > 0:
            pick = rng.integers(cand.shape[1], size=count_shape)
            near = np.take_along_axis(cand, pick[..., None], axis=1) + prior.h * rng.standard_normal(count_shape + (d,))
            z = np.where((rng.random(count_shape) < share)[..., None], near, z)
        return z

    def log_first(z):
        if share == 1.0:
            return _iso_logpdf(z, cand, prior.h)
        lq = _gauss_logpdf(z, y0, chol0)
        if share > 0:
            lq = np.logaddexp(math.log(1 - share) + lq, math.log(share) + _iso_logpdf(z, cand, prior.h))
        return lq

    z = draw_first((n, particles))
    lp, end = log_target(z)
    w, ess = _ess(lp - log_first(z))
    ess1 = ess
    # stages 2 … : defensive mixtures of a Gaussian around the previous stage's weighted mean and (inflated,
    # floored) covariance, and the first stage's proposal
    alpha = 0.2
    for _ in range(stages - 1):
        m = (w[..., None] * z).sum(axis=1)
        c = z - m[:, None]
        cov = np.einsum("np,npi,npj->nij", w, c, c) * 1.5 ** 2 + (0.05 * sigma) ** 2 * eye
        chol = np.linalg.cholesky(cov)
        first = rng.random((n, particles)) < alpha
        gauss = m[:, None] + np.einsum("nij,npj->npi", chol, rng.standard_normal((n, particles, d)))
        z = np.where(first[..., None], draw_first((n, particles)), gauss)
        logq = np.logaddexp(math.log(1 - alpha) + _gauss_logpdf(z, m, chol), math.log(alpha) + log_first(z))
        lp, end = log_target(z)
        w, ess = _ess(lp - logq)
    # systematic resampling of M members, then the true dynamics over the horizon from their context-end states
    positions = (rng.random((n, 1)) + np.arange(members)[None]) / members
    cum = np.cumsum(w, axis=1)
    cum[:, -1] = 1.0
    idx = np.stack([np.searchsorted(cum[i], positions[i]) for i in range(n)])   # (n, M)
    start = np.take_along_axis(end, idx[..., None], axis=1).reshape(-1, d)
    f = to_norm(_integrate(system, start, dt, horizon + 1))[:, :, 1:].reshape(n, members, d, horizon)
    return torch.from_numpy(f).float(), {"ess": ess, "ess1": ess1}

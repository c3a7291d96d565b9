"""Target densities with closed forms (or exact-to-quadrature ones) in D = 1, 2, 16 and 64.

Low-dimensional (D = 2 unless said):
- ring8:        8 isotropic Gaussians (std 0.2) evenly on a circle of radius 4, equal weights
- mog1d:        3 Gaussians at -3, 0, 3 with std 0.3 / 0.5 / 0.3 and weights 0.3 / 0.4 / 0.3 (D = 1)
- checkerboard: uniform on the 8 dark cells of a 4×4 board on [-4, 4]²; its 8 modes are the cells, weights 1/8
- grid25:       25 Gaussians (std 0.15) on a 5×5 grid with spacing 2, unequal weights ∝ 1, 2, 3, 4, 1, …
- six:          6 isotropic Gaussians at irregular centres within radius 3.4 (table SIX: centre, std, weight), weights
                .35/.25/.15/.10/.10/.05, stds .40/.30/.20/.35/.15/.25; centres ≥ 2.5 apart, > 6× the larger std
- moons:        2 half-circles of radius 2 (sklearn's make_moons ×2, centred): (2 cos πu − 1, 2 sin πu − 0.5) and
                its point reflection (1 − 2 cos πu, 0.5 − 2 sin πu), u ~ U[0, 1] (uniform in arc length); noise
                std 0.15; equal weights
- spirals:      2 Archimedean arms r·(cos φ, sin φ), φ = ρ(r − 0.5), ρ = 3π/3.5 (1.5 turns while r grows from 0.5
                to 4), the second rotated by π; uniform in arc length; noise std 0.15; equal weights
- pinwheel:     5 arms r·(cos φ, sin φ), φ = 2πk/5 + 0.35 r, r ~ U[0.6, 3.6] (uniform in r, not in arc length);
                noise std 0.15; equal weights
Higher-dimensional:
- subspace16, subspace64: 8 isotropic Gaussians (std 0.3 in all D = 16 / 64 dims), means at the corners (±2.5)³
                of a cube in a random 3-D subspace (random_basis(D, 3, seed=D)), weights ∝ 1, 1, 2, 2, 3, 3, 4, 4
                (corners in cartesian_prod order); projected onto the first two subspace axes
- moons16:      the moons curves embedded in D = 16 by random_basis(16, 2, seed=216), isotropic noise std 0.15 in
                all 16 dims; projected onto that plane

Every density has: dim; sample(n, generator) (N, D) float32 and sample_with_modes(n, generator), which also gives
the mode of each draw; log_prob(x) (N,) float64; off_mode(x) (N,) bool; modes, the number K of modes; weights (K,),
their true weights; assign(x) (N,) long, the mode a sample belongs to (mixtures and curves: the largest posterior
responsibility; checkerboard: the dark cell, -1 outside); project(x) (N, min(D, 2)), the view that TV and plots
use (the identity for D ≤ 2).

Off-mode rule, in any D: x is off-mode when its squared Mahalanobis distance to every component (Gaussian:
‖x − m_k‖²/s_k²; curve: min_j ‖x − B c_k(u_j)‖²/σ² over its quadrature nodes) exceeds q_D = χ²_D.isf(e^{-4.5}): the
2-D 3σ rule carried to D dims by its tail, so that a Gaussian's own draws are off-mode with probability
e^{-4.5} ≈ 0.0111 in every D. D = 2: q_D = 9, exactly the rule ‖x − m_k‖ > 3 s_k. D = 1 (mog1d): |x − m_k| > 2.54 s_k
(it was 3 s_k, tail 0.0027). A curve's own draws are off-mode a little less often (the nearest node is nearer than
the point drawn).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from scipy.stats import chi2

OFF_MODE_TAIL = math.exp(-4.5)     # P(‖z‖ > 3) for a standard 2-D Gaussian
CHUNK_CELLS = 4_000_000            # float64 entries of one chunk of a sample × node distance matrix (32 MB)
LOG_2PI = math.log(2 * math.pi)

# six: (centre x, centre y, std, weight)
SIX = ((-2.0, 1.5, 0.40, 0.35), (1.5, 2.5, 0.30, 0.25), (3.0, -0.5, 0.20, 0.15),
       (0.5, -1.0, 0.35, 0.10), (-1.0, -3.0, 0.15, 0.10), (-3.2, -1.0, 0.25, 0.05))


def off_mode_threshold(dim: int) -> float:
    """q_D = χ²_D.isf(e^{-4.5}): the squared Mahalanobis distance beyond which a sample is off a mode (9 for D = 2)."""
    return float(chi2.isf(OFF_MODE_TAIL, df=dim))


def random_basis(dim: int, k: int, seed: int) -> torch.Tensor:
    """Orthonormal basis (dim, k) float64 of a random k-dimensional subspace: Q of the QR decomposition of a standard
    Gaussian (dim, k) matrix from torch.Generator().manual_seed(seed), columns signed so that diag(R) > 0."""
    q, r = torch.linalg.qr(torch.randn(dim, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


# ------------------------------------------------------------------------------------------------------ base
class Density:
    """What every target shares. Subclasses provide dim, weights (K,) and sample_with_modes; `basis` (D, 2)
    orthonormal, where set, is the plane that project() maps onto."""

    basis: torch.Tensor | None = None

    @property
    def modes(self) -> int:
        return len(self.weights)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws: (n, D) float32."""
        return self.sample_with_modes(n, generator)[0]

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, D) -> x·B (N, 2), its coordinates in the basis plane; x itself where there is no basis (D ≤ 2)."""
        return x if self.basis is None else x @ self.basis.to(x.dtype)


class Components(Density):
    """A mixture with components k of log joint density log w_k + log p_k(x) (`joint_log_prob`, (N, K)) and squared
    Mahalanobis distance to x (`mahalanobis2`, (N, K)); both float64."""

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) = logsumexp_k (log w_k + log p_k(x)): (N, D) -> (N,) float64."""
        return torch.logsumexp(self.joint_log_prob(x), dim=1)

    def assign(self, x: torch.Tensor) -> torch.Tensor:
        """The component of largest posterior responsibility w_k p_k(x) / p(x): (N, D) -> (N,) long."""
        return self.joint_log_prob(x).argmax(dim=1)

    def off_mode(self, x: torch.Tensor) -> torch.Tensor:
        """True where the squared Mahalanobis distance to every component exceeds off_mode_threshold(D): (N,) bool."""
        return (self.mahalanobis2(x) > off_mode_threshold(self.dim)).all(dim=1)


# --------------------------------------------------------------------------------------------- Gaussian mixture
@dataclass
class Mixture(Components):
    """Isotropic Gaussian mixture: means (K, D), stds (K,), weights (K,) summing to 1; basis (D, 2) the plane of
    project() (None: the identity)."""

    means: torch.Tensor
    stds: torch.Tensor
    weights: torch.Tensor
    basis: torch.Tensor | None = None

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample_with_modes(self, n: int, generator: torch.Generator | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x (n, D), k (n,) long): k ~ Categorical(w), x = m_k + s_k ε, ε ~ N(0, I_D)."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator)
        return self.means[k] + self.stds[k, None] * eps, k

    def mahalanobis2(self, x: torch.Tensor) -> torch.Tensor:
        """‖x − m_k‖² / s_k²: (N, D) -> (N, K) float64."""
        return torch.cdist(x.double(), self.means.double()).pow(2) / self.stds.double() ** 2

    def joint_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log w_k − ‖x − m_k‖²/(2 s_k²) − D log s_k − (D/2) log 2π: (N, D) -> (N, K) float64."""
        s, w = self.stds.double(), self.weights.double()
        return -0.5 * self.mahalanobis2(x) - self.dim * torch.log(s) - 0.5 * self.dim * LOG_2PI + torch.log(w)


# ------------------------------------------------------------------------------------------------------ curves
@dataclass(frozen=True)
class HalfCircle:
    """u ∈ [0, 1] -> centre + radius·(cos θ, sin θ), θ = start + πu: uniform in arc length. (M,) -> (M, 2)."""

    centre: tuple[float, float]
    radius: float
    start: float

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        theta = self.start + math.pi * u
        return torch.stack([self.centre[0] + self.radius * theta.cos(),
                            self.centre[1] + self.radius * theta.sin()], dim=1)


def spiral_length(r: torch.Tensor, rate: float) -> torch.Tensor:
    """Arc length of r ↦ r·(cos(φ₀ + ρr), sin(φ₀ + ρr)) from r = 0: ℓ(r) = (ρr·√(1 + ρ²r²) + asinh ρr) / (2ρ),
    the integral of its speed √(1 + ρ²r²)."""
    z = rate * r
    return (z * torch.sqrt(1 + z * z) + torch.asinh(z)) / (2 * rate)


@dataclass(frozen=True)
class SpiralArm:
    """Archimedean arm u ∈ [0, 1] -> r·(cos φ, sin φ), φ = phase + rate·r, r from r0 to r1. (M,) -> (M, 2).

    by_length=False: uniform in r, r = r0 + (r1 − r0)u. by_length=True: uniform in arc length, ℓ(r) = ℓ(r0) +
    u·(ℓ(r1) − ℓ(r0)) solved for r by Newton's method from √(2ℓ/ρ), which is ≥ the root since ℓ(r) ≥ ρr²/2; ℓ is
    increasing and convex, so the iterates decrease monotonically to the root (6 steps reach machine precision for
    the arms here)."""

    r0: float
    r1: float
    phase: float
    rate: float
    by_length: bool = False

    def radius(self, u: torch.Tensor) -> torch.Tensor:
        """The radius at parameter u: (M,) -> (M,)."""
        if not self.by_length:
            return self.r0 + (self.r1 - self.r0) * u
        ends = spiral_length(torch.tensor([self.r0, self.r1], dtype=u.dtype), self.rate)
        target = ends[0] + u * (ends[1] - ends[0])
        r = torch.sqrt(2 * target / self.rate)
        for _ in range(6):
            r = r - (spiral_length(r, self.rate) - target) / torch.sqrt(1 + (self.rate * r) ** 2)
        return r

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        r = self.radius(u)
        phi = self.phase + self.rate * r
        return torch.stack([r * phi.cos(), r * phi.sin()], dim=1)


def simpson(m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Composite Simpson's rule on [0, 1] with m (even) intervals: nodes u_j = j/m and weights
    ω = (1, 4, 2, 4, …, 2, 4, 1)/(3m), Σω = 1; both (m + 1,) float64. Error O(m⁻⁴) for smooth integrands."""
    w = torch.full((m + 1,), 2.0, dtype=torch.float64)
    w[1::2] = 4.0
    w[[0, -1]] = 1.0
    return torch.arange(m + 1, dtype=torch.float64) / m, w / (3 * m)


def max_speed(arm: Callable[[torch.Tensor], torch.Tensor], steps: int = 4096) -> float:
    """max_u |c'(u)| of a plane curve on [0, 1], from the chords of `steps` equal steps in u."""
    c = arm(torch.linspace(0, 1, steps + 1, dtype=torch.float64))
    return float((c[1:] - c[:-1]).norm(dim=1).max()) * steps


@dataclass
class Curves(Components):
    """Equal-weight mixture of K plane curves c_k: [0, 1] -> R² (`arms`), embedded in D dims by an orthonormal
    basis B (D, 2) (None: D = 2, B = I) and blurred by isotropic noise of std σ in all D dims:

        x = B c_k(u) + σε,   k ~ U{0, …, K−1},  u ~ U[0, 1],  ε ~ N(0, I_D);
        p(x) = (1/K) Σ_k ∫₀¹ N(x; B c_k(u), σ² I_D) du ≈ (1/K) Σ_k Σ_j ω_j N(x; B c_k(u_j), σ² I_D),

    composite Simpson's rule (simpson(M)) in the same parameter u that sampling draws uniformly (each arm says
    whether u is proportional to arc length). M is the smallest even number of intervals that puts neighbouring
    nodes at most spacing·σ apart in space on every arm, M ≥ max_{k,u} |c_k'(u)| / (spacing·σ) (σ/12 by default:
    M = 504 for moons, 1728 for spirals, 388 for pinwheel). The error: along the inside of an arm the sum is a
    Riemann sum of a Gaussian, exact up to about exp(−2π²/(2·spacing)²) (nil); what is left comes from the arms'
    ends, by Euler–Maclaurin about (spacing·δ/σ)⁴/180 relative for a point δ ≥ σ beyond an end: < 3e-5 up to
    δ = 3σ, 3e-3 at δ = 10σ (tests/synthetic/test_targets.py compares with 10× finer nodes)."""

    arms: tuple[Callable[[torch.Tensor], torch.Tensor], ...]
    std: float
    basis: torch.Tensor | None = None
    spacing: float = 1 / 12
    nodes: torch.Tensor = field(init=False, repr=False)          # (K, M + 1, D) float64: B c_k(u_j)
    log_weights: torch.Tensor = field(init=False, repr=False)    # (M + 1,) float64: log ω_j

    def __post_init__(self):
        m = 2 * math.ceil(max(max_speed(arm) for arm in self.arms) / (2 * self.spacing * self.std))
        u, w = simpson(m)
        self.nodes = torch.stack([self.embed(arm(u)) for arm in self.arms])
        self.log_weights = w.log()

    @property
    def dim(self) -> int:
        return 2 if self.basis is None else self.basis.shape[0]

    @property
    def weights(self) -> torch.Tensor:
        return torch.full((len(self.arms),), 1 / len(self.arms), dtype=torch.float64)

    def embed(self, c: torch.Tensor) -> torch.Tensor:
        """Plane points c (N, 2) -> B c (N, D) float64."""
        c = c.double()
        return c if self.basis is None else c @ self.basis.double().T

    def sample_with_modes(self, n: int, generator: torch.Generator | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x (n, D) float32, k (n,) long): x = B c_k(u) + σε as in the class docstring."""
        k = torch.randint(len(self.arms), (n,), generator=generator)
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        c = torch.stack([arm(u) for arm in self.arms])[k, torch.arange(n)]
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return (self.embed(c) + self.std * eps).float(), k

    def _over_nodes(self, x: torch.Tensor, reduce: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """reduce(q) (n, K) of q = ‖x − B c_k(u_j)‖²/σ² (n, K, M), over chunks of the rows of x (N, D): (N, K)."""
        k, m, d = self.nodes.shape
        flat = self.nodes.reshape(k * m, d)
        rows = max(1, CHUNK_CELLS // (k * m))
        return torch.cat([reduce(torch.cdist(chunk, flat).pow(2).view(len(chunk), k, m) / self.std ** 2)
                          for chunk in x.double().split(rows)])

    def mahalanobis2(self, x: torch.Tensor) -> torch.Tensor:
        """min_j ‖x − B c_k(u_j)‖²/σ²: (N, D) -> (N, K) float64."""
        return self._over_nodes(x, lambda q: q.amin(dim=2))

    def joint_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log w_k + log Σ_j ω_j N(x; B c_k(u_j), σ² I_D): (N, D) -> (N, K) float64."""
        const = -math.log(len(self.arms)) - self.dim * math.log(self.std) - 0.5 * self.dim * LOG_2PI
        return self._over_nodes(x, lambda q: torch.logsumexp(self.log_weights - 0.5 * q, dim=2)) + const


# ------------------------------------------------------------------------------------------------ checkerboard
@dataclass
class Checkerboard(Density):
    """Uniform density on the dark cells of a 4×4 board of side-2 cells covering [-4, 4]². Dark cell c ∈ {0, …, 7}
    lies in row c // 2 and column 2(c % 2) + (row % 2) (rows and columns counted from -4)."""

    dim: int = 2

    @property
    def weights(self) -> torch.Tensor:
        return torch.full((8,), 1 / 8, dtype=torch.float64)

    def sample_with_modes(self, n: int, generator: torch.Generator | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x (n, 2), its cell (n,) long): a uniform cell, then a uniform point in it."""
        cell = torch.randint(0, 8, (n,), generator=generator)
        row = cell // 2
        col = 2 * (cell % 2) + (row % 2)
        u = torch.rand(n, 2, generator=generator)
        return torch.stack([-4 + 2 * col + 2 * u[:, 0], -4 + 2 * row + 2 * u[:, 1]], dim=1), cell

    @staticmethod
    def row_col(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The board row and column of each point (N, 2) (any integers outside the board): (N,), (N,)."""
        return torch.floor((x[:, 1] + 4) / 2), torch.floor((x[:, 0] + 4) / 2)

    def inside(self, x: torch.Tensor) -> torch.Tensor:
        row, col = self.row_col(x)
        in_box = (x.abs() <= 4).all(dim=1)
        return in_box & ((row + col) % 2 == 0)

    def assign(self, x: torch.Tensor) -> torch.Tensor:
        """The dark cell 2·row + col // 2 that holds each point, -1 outside the dark cells: (N, 2) -> (N,) long."""
        row, col = (v.clamp(0, 3).long() for v in self.row_col(x))
        return torch.where(self.inside(x), 2 * row + col // 2, -1)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log(1/32) on the dark cells (total area 32), -inf elsewhere."""
        inside = self.inside(x)
        out = torch.full((x.shape[0],), -math.inf, dtype=torch.float64)
        out[inside] = -math.log(32.0)
        return out

    def off_mode(self, x: torch.Tensor) -> torch.Tensor:
        return ~self.inside(x)


# ----------------------------------------------------------------------------------------------------- catalogue
MOONS = (HalfCircle((-1.0, -0.5), 2.0, 0.0), HalfCircle((1.0, 0.5), 2.0, math.pi))
SPIRAL_RATE = 3 * math.pi / 3.5     # 1.5 turns from r = 0.5 to r = 4


def _ring8() -> Mixture:
    angles = torch.arange(8) * (2 * math.pi / 8)
    means = 4.0 * torch.stack([angles.cos(), angles.sin()], dim=1)
    return Mixture(means, torch.full((8,), 0.2), torch.full((8,), 1 / 8))


def _mog1d() -> Mixture:
    return Mixture(torch.tensor([[-3.0], [0.0], [3.0]]), torch.tensor([0.3, 0.5, 0.3]), torch.tensor([0.3, 0.4, 0.3]))


def _grid25() -> Mixture:
    g = torch.arange(-2, 3, dtype=torch.float32) * 2.0
    means = torch.cartesian_prod(g, g)
    w = torch.tensor([1.0 + (i % 4) for i in range(25)])
    return Mixture(means, torch.full((25,), 0.15), w / w.sum())


def _six() -> Mixture:
    table = torch.tensor(SIX)
    return Mixture(table[:, :2].contiguous(), table[:, 2].contiguous(), table[:, 3] / table[:, 3].sum())


def _spirals() -> Curves:
    arm = dict(r0=0.5, r1=4.0, rate=SPIRAL_RATE, by_length=True)
    phase = -0.5 * SPIRAL_RATE       # φ = 0 at r = 0.5
    return Curves((SpiralArm(phase=phase, **arm), SpiralArm(phase=phase + math.pi, **arm)), std=0.15)


def _pinwheel() -> Curves:
    return Curves(tuple(SpiralArm(0.6, 3.6, 2 * math.pi * k / 5, 0.35) for k in range(5)), std=0.15)


def _subspace(dim: int) -> Mixture:
    basis = random_basis(dim, 3, seed=dim)
    corners = 2.5 * torch.cartesian_prod(*[torch.tensor([-1.0, 1.0], dtype=torch.float64)] * 3)   # (8, 3)
    w = torch.tensor([1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0])
    return Mixture((corners @ basis.T).float(), torch.full((8,), 0.3), w / w.sum(), basis=basis[:, :2])


BUILDERS: dict[str, Callable[[], Density]] = {
    "ring8": _ring8, "mog1d": _mog1d, "checkerboard": Checkerboard, "grid25": _grid25, "six": _six,
    "moons": lambda: Curves(MOONS, std=0.15), "spirals": _spirals, "pinwheel": _pinwheel,
    "subspace16": lambda: _subspace(16), "subspace64": lambda: _subspace(64),
    "moons16": lambda: Curves(MOONS, std=0.15, basis=random_basis(16, 2, seed=216)),
}
DATASETS = tuple(BUILDERS)


def make_dataset(name: str) -> Density:
    if name not in BUILDERS:
        raise ValueError(f"config key 'task.dataset': unknown dataset {name!r}; choose from {DATASETS}")
    return BUILDERS[name]()

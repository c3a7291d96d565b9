"""Dynamical systems of the RMFlow time-series task, their vector fields and a seeded simulator.

- Lorenz-63:  dx/dt = σ(y − x),  dy/dt = x(ρ − z) − y,  dz/dt = xy − βz,   σ = 10, ρ = 28, β = 8/3.
  Equilibria: the origin and C± = (±√(β(ρ−1)), ±√(β(ρ−1)), ρ − 1). The ball
  V = x² + y² + (z − σ − ρ)² ≤ β²(σ + ρ)² / (4(β − 1)) is forward invariant (dV/dt < 0 outside the ellipsoid
  σx² + y² + β(z − (σ+ρ)/2)² ≤ β(σ+ρ)²/4, and the largest V on that ellipsoid is the bound), for β ≥ 2, σ ≥ 1.
- FitzHugh–Nagumo, two diffusively coupled units (Ansmann et al. 2013; Farazmand & Sapsis 2019):
      dx_i/dt = x_i (a_i − x_i)(x_i − 1) − y_i + k Σ_{j≠i} (x_j − x_i),    dy_i/dt = b_i x_i − c_i y_i,
  a1 = a2 = −0.025794, b1 = 0.0065, b2 = 0.0135, c1 = c2 = 0.02, k = 0.128. State order (x1, x2, y1, y2).
  The origin is an equilibrium.

Trajectories start from seeded random initial conditions, the transient is integrated and dropped, and the
state is recorded every `dt` time units (scipy's solve_ivp with a dense, tightly toleranced solution).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.integrate import solve_ivp


@dataclass(frozen=True)
class Lorenz63:
    sigma: float = 10.0
    rho: float = 28.0
    beta: float = 8.0 / 3.0
    name: str = "lorenz"
    channels: tuple = ("x", "y", "z")
    projection: tuple = (0, 2)        # the butterfly: x against z
    default_dt: float = 0.05
    default_transient: float = 20.0
    method: str = "DOP853"

    def rhs(self, t: float, s: np.ndarray) -> np.ndarray:
        """s: (3,) or (3, n) -> ds/dt of the same shape."""
        x, y, z = s
        return np.stack([self.sigma * (y - x), x * (self.rho - z) - y, x * y - self.beta * z])

    def equilibria(self) -> np.ndarray:
        """(3, 3): the origin and C±."""
        q = math.sqrt(self.beta * (self.rho - 1))
        return np.array([[0.0, 0.0, 0.0], [q, q, self.rho - 1], [-q, -q, self.rho - 1]])

    def absorbing_bound(self) -> float:
        """Largest V = x² + y² + (z − σ − ρ)² on the absorbing set: β²(σ+ρ)²/(4(β−1))."""
        return self.beta ** 2 * (self.sigma + self.rho) ** 2 / (4 * (self.beta - 1))

    def initial_conditions(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """(n, 3): x, y ~ U(−10, 10), z ~ U(10, 40), inside the invariant ball."""
        lo, hi = np.array([-10.0, -10.0, 10.0]), np.array([10.0, 10.0, 40.0])
        return lo + (hi - lo) * rng.random((n, 3))


@dataclass(frozen=True)
class FitzHughNagumo2:
    a: tuple = (-0.025794, -0.025794)
    b: tuple = (0.0065, 0.0135)
    c: tuple = (0.02, 0.02)
    k: float = 0.128
    name: str = "fhn"
    channels: tuple = ("x1", "x2", "y1", "y2")
    projection: tuple = (0, 1)        # the two fast variables
    default_dt: float = 2.0
    default_transient: float = 1000.0
    method: str = "DOP853"

    def rhs(self, t: float, s: np.ndarray) -> np.ndarray:
        x1, x2, y1, y2 = s
        a, b, c, k = self.a, self.b, self.c, self.k
        return np.stack([
            x1 * (a[0] - x1) * (x1 - 1) - y1 + k * (x2 - x1),
            x2 * (a[1] - x2) * (x2 - 1) - y2 + k * (x1 - x2),
            b[0] * x1 - c[0] * y1,
            b[1] * x2 - c[1] * y2,
        ])

    def equilibria(self) -> np.ndarray:
        return np.zeros((1, 4))

    def initial_conditions(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """(n, 4): x_i ~ U(−0.5, 1), y_i ~ U(−0.1, 0.3)."""
        lo, hi = np.array([-0.5, -0.5, -0.1, -0.1]), np.array([1.0, 1.0, 0.3, 0.3])
        return lo + (hi - lo) * rng.random((n, 4))


SYSTEMS = {"lorenz": Lorenz63(), "fhn": FitzHughNagumo2()}


def simulate(system, initial_states: np.ndarray, dt: float, num_steps: int, transient: float,
             rtol: float = 1e-8, atol: float = 1e-8) -> np.ndarray:
    """Trajectories from initial_states (n, D): integrate `transient` time units, then record num_steps states
    every dt. Returns (n, D, num_steps) float64.

    All n trajectories are integrated as one stacked system (one adaptive solver, vectorised right-hand side),
    which is much faster than n solver loops; the step size is then shared, so a trajectory's last digits
    depend on the other initial states of the call (the seeded generators below always make the same call).
    """
    initial_states = np.atleast_2d(np.asarray(initial_states, dtype=np.float64))
    n, d = initial_states.shape
    if dt <= 0 or num_steps < 1 or transient < 0:
        raise ValueError(f"need dt > 0, num_steps >= 1, transient >= 0; got {dt}, {num_steps}, {transient}")
    if n == 0:
        return np.zeros((0, d, num_steps))

    def rhs(t, flat):
        return system.rhs(t, flat.reshape(n, d).T).T.ravel()

    t_eval = transient + dt * np.arange(num_steps)
    sol = solve_ivp(rhs, (0.0, float(t_eval[-1])), initial_states.ravel(), method=system.method,
                    t_eval=t_eval, rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"{system.name}: integration failed: {sol.message}")
    return sol.y.reshape(n, d, num_steps).copy()


def simulate_many(system, seed: int, num_traj: int, dt: float, num_steps: int, transient: float) -> np.ndarray:
    """num_traj trajectories from initial conditions drawn with numpy seed `seed`: (num_traj, D, num_steps)."""
    ics = system.initial_conditions(np.random.default_rng(seed), num_traj)
    return simulate(system, ics, dt, num_steps, transient)

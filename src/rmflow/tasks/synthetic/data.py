"""Low-dimensional densities with known closed forms.

- ring8:        8 isotropic Gaussians (std 0.2) evenly on a circle of radius 4, equal weights (2-D)
- mog1d:        3 Gaussians at -3, 0, 3 with std 0.3 / 0.5 / 0.3 and weights 0.3 / 0.4 / 0.3 (1-D)
- checkerboard: uniform on the 8 dark cells of a 4×4 board on [-4, 4]² (2-D)
- grid25:       25 Gaussians (std 0.15) on a 5×5 grid with spacing 2, unequal weights ∝ 1, 2, 3, 4, 1, … (2-D)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

DATASETS = ("ring8", "mog1d", "checkerboard", "grid25")


@dataclass
class Mixture:
    """Isotropic Gaussian mixture: means (K, D), stds (K,), weights (K,) summing to 1."""

    means: torch.Tensor
    stds: torch.Tensor
    weights: torch.Tensor

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator)
        return self.means[k] + self.stds[k, None] * eps

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x): (N, D) -> (N,)."""
        x = x.double()
        m, s, w = self.means.double(), self.stds.double(), self.weights.double()
        d2 = torch.cdist(x, m).pow(2)                                        # (N, K)
        comp = -0.5 * d2 / s ** 2 - self.dim * torch.log(s) - 0.5 * self.dim * math.log(2 * math.pi)
        return torch.logsumexp(comp + torch.log(w), dim=1)

    def off_mode(self, x: torch.Tensor, num_std: float = 3.0) -> torch.Tensor:
        """True where x is farther than num_std standard deviations from every mode centre: (N,) bool."""
        d = torch.cdist(x.double(), self.means.double())
        return (d > num_std * self.stds.double()).all(dim=1)


@dataclass
class Checkerboard:
    """Uniform density on the dark cells of a 4×4 board of side-2 cells covering [-4, 4]²."""

    dim: int = 2

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        cell = torch.randint(0, 8, (n,), generator=generator)
        row = cell // 2
        col = 2 * (cell % 2) + (row % 2)
        u = torch.rand(n, 2, generator=generator)
        return torch.stack([-4 + 2 * col + 2 * u[:, 0], -4 + 2 * row + 2 * u[:, 1]], dim=1)

    def inside(self, x: torch.Tensor) -> torch.Tensor:
        col = torch.floor((x[:, 0] + 4) / 2)
        row = torch.floor((x[:, 1] + 4) / 2)
        in_box = (x.abs() <= 4).all(dim=1)
        return in_box & ((row + col) % 2 == 0)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log(1/32) on the dark cells (total area 32), -inf elsewhere."""
        inside = self.inside(x)
        out = torch.full((x.shape[0],), -math.inf, dtype=torch.float64)
        out[inside] = -math.log(32.0)
        return out

    def off_mode(self, x: torch.Tensor, num_std: float = 3.0) -> torch.Tensor:
        return ~self.inside(x)


def make_dataset(name: str):
    if name == "ring8":
        angles = torch.arange(8) * (2 * math.pi / 8)
        means = 4.0 * torch.stack([angles.cos(), angles.sin()], dim=1)
        return Mixture(means, torch.full((8,), 0.2), torch.full((8,), 1 / 8))
    if name == "mog1d":
        return Mixture(torch.tensor([[-3.0], [0.0], [3.0]]), torch.tensor([0.3, 0.5, 0.3]),
                       torch.tensor([0.3, 0.4, 0.3]))
    if name == "checkerboard":
        return Checkerboard()
    if name == "grid25":
        g = torch.arange(-2, 3, dtype=torch.float32) * 2.0
        means = torch.cartesian_prod(g, g)
        w = torch.tensor([1.0 + (i % 4) for i in range(25)])
        return Mixture(means, torch.full((25,), 0.15), w / w.sum())
    raise ValueError(f"config key 'task.dataset': unknown dataset {name!r}; choose from {DATASETS}")

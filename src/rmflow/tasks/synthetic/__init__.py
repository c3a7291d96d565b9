"""The synthetic benchmark (RMFlow §5.1 and beyond): 1-D and 2-D mixtures, a checkerboard, a 25-mode grid, curves
(moons, spirals, pinwheel), and Gaussian mixtures on random 3-D subspaces of D = 16 and 64 and moons in D = 16."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...errors import check
from ...flow import EuclideanSpace
from ...nets import MLP
from ..base import Batch, Task, TaskSpec, build_rmflow, register_task, user_network
from .data import DATASETS, make_dataset
from .metrics import METRIC_FORMAT, sample_metrics
from .plots import plot_panels


@dataclass
class SyntheticData:
    """A target of data.DATASETS: ring8, mog1d (1-D), checkerboard, grid25, six, moons, spirals, pinwheel (2-D),
    subspace16, subspace64 (8 Gaussians on a cube in a random 3-D subspace of D = 16, 64) and moons16 (moons in
    D = 16); data.py gives their exact parameters, metrics.py the metrics."""

    name: str = "synthetic"
    dataset: str = "ring8"
    bin_width: float = 0.2          # TV histogram cell size
    num_ot: int = 2000              # samples used for W2, energy distance and MMD

    def validate(self, key: str) -> None:
        check(self.dataset in DATASETS, f"{key}.dataset", f"must be one of {DATASETS}")
        check(self.bin_width > 0, f"{key}.bin_width", "must be > 0")
        check(self.num_ot >= 2, f"{key}.num_ot", "must be >= 2")


@dataclass
class SyntheticModel:
    hidden: int = 256
    depth: int = 3
    time_dim: int = 64
    time_embed: str = "sinusoidal"  # sinusoidal | raw
    target: str = ""                # a network of one's own, "package.module:Class", built as Class(dim=D, **options)
    options: dict = field(default_factory=dict)

    def validate(self, key: str) -> None:
        check(self.time_embed in ("sinusoidal", "raw"), f"{key}.time_embed", "must be 'sinusoidal' or 'raw'")
        for name in ("hidden", "depth", "time_dim"):
            check(getattr(self, name) >= 1, f"{key}.{name}", "must be >= 1")
        check(self.time_dim % 2 == 0, f"{key}.time_dim", "must be even")


class SyntheticTask(Task):
    """Infinite training data drawn from the true density; evaluation against a fresh held-out draw (metrics.py);
    figures of the density's 2-D view (`project`) for D > 2."""

    metric_format = METRIC_FORMAT        # table columns of `rmflow compare`

    def __init__(self, cfg):
        self.cfg = cfg
        self.density = make_dataset(cfg.task.dataset)
        self.space = EuclideanSpace()

    def build_model(self):
        m = self.cfg.model
        if m.target:
            net = user_network(m.target, dim=self.density.dim, **m.options)
            return build_rmflow(net, self.cfg, self.space, vector_dim=self.density.dim)
        net = MLP(self.density.dim, hidden=m.hidden, depth=m.depth, time_dim=m.time_dim, time_embed=m.time_embed)
        return build_rmflow(net, self.cfg, self.space, vector_dim=self.density.dim)

    def batch(self, batch_size: int) -> Batch:
        return Batch(self.density.sample(batch_size))

    def reference(self, num_samples: int, seed: int) -> Batch:
        return Batch(self.density.sample(num_samples, torch.Generator().manual_seed(seed)))

    def evaluate(self, samples, reference):
        t = self.cfg.task
        return sample_metrics(samples, reference.x, self.density, t.num_ot, t.bin_width)

    def plot(self, panels, reference, path):
        views = {"data": reference.x, **panels}
        plot_panels({title: self.density.project(x) for title, x in views.items()}, path)


SPEC = register_task(TaskSpec("synthetic", SyntheticData, SyntheticModel, SyntheticTask))

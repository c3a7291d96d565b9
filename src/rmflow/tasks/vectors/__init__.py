"""Your own vectors: RMFlow on a file of N rows × D numbers (.npy, .csv, .tsv, .parquet, .safetensors), no code.

    rmflow train vectors-example task.path=points.npy
    rmflow compare vectors-example task.path=table.csv task.columns=[height,weight]

The rows are split (seeded) into training and held-out rows; each column is standardised with the training
split's mean and std, and the model works in that standardised space: `batch`, `reference`, the samplers' output,
`evaluate` and `plot` are all standardised. The (mean, std) travel with the model as buffers (`model.units`, see
prepare.DataUnits), so that every checkpoint holds them; `task.to_data_units(x, model)` maps samples back to the
units of the file (what `rmflow sample` should write).

Metrics (anyd_metrics): sliced W2, energy distance and MMD² of the samples against the held-out rows, and
memorisation against the training rows. The data row of `rmflow compare` (`data_baseline`) is the training split
itself: an independent draw of the same distribution, so its sw2, energy and mmd are about the best a model can
score against this held-out set, and its memo_share 1 and memo_ratio 0 are what pure copying scores.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Literal

import torch

from ...errors import check
from ...flow import EuclideanSpace
from ...nets import MLP
from ..anyd_metrics import vector_metrics
from ..base import Batch, Task, TaskSpec, build_rmflow, register_task, user_network
from ..tables import load_table
from .plots import plot_vectors
from .prepare import DataUnits, prepare

METRIC_FORMAT = {"sw2": ("sliced W2", ".3f"), "energy": ("energy dist.", ".4f"), "mmd": ("MMD²", ".4f"),
                 "memo_share": ("share ≤ q5% NN-to-train", ".3f"), "memo_ratio": ("NN-to-train ratio", ".3f")}


@dataclass
class VectorsData:
    name: str = "vectors"
    path: str | None = ""          # the file (required; None only to name it in the error); relative: current folder
    format: Literal["auto", "npy", "csv", "tsv", "parquet", "safetensors"] = "auto"   # auto: from the extension
    columns: list[int | str] = field(default_factory=list)   # names or 0-based indices; empty: every numeric column
    key: str = ""                  # the tensor of a safetensors file; empty: its only tensor
    standardize: bool = True       # per-column (x − mean)/std, both from the training split
    heldout: float = 0.1           # share of the rows held out for evaluation
    split_seed: int = 0
    nonfinite: Literal["refuse", "drop"] = "refuse"   # rows with NaN/inf/missing values
    max_rows: int = 0              # only the file's first max_rows rows (0: all)
    num_eval: int = 5000           # samples (and held-out rows) the metrics use, the first ones
    num_projections: int = 128     # directions of the sliced W2

    def validate(self, key: str) -> None:
        check(isinstance(self.path, str) and bool(self.path.strip()), f"{key}.path",
              f"required: the file of vectors to train on (.npy, .csv, .tsv, .parquet or .safetensors), e.g. "
              f"task.path=points.npy; got {self.path!r}")
        check(0 < self.heldout < 1, f"{key}.heldout", f"must be in (0, 1); got {self.heldout}")
        check(self.max_rows >= 0, f"{key}.max_rows", "must be >= 0 (0: all rows)")
        check(self.num_eval >= 2, f"{key}.num_eval", "must be >= 2")
        check(self.num_projections >= 1, f"{key}.num_projections", "must be >= 1")
        for i, c in enumerate(self.columns):
            ok = (isinstance(c, int) and not isinstance(c, bool) and c >= 0) or (isinstance(c, str) and c != "")
            check(ok, f"{key}.columns[{i}]", f"must be a column name or a 0-based index; got {c!r}")
        check(len(set(map(str, self.columns))) == len(self.columns), f"{key}.columns", "lists a column twice")


@dataclass
class VectorsModel:
    hidden: int = 256
    depth: int = 3
    time_dim: int = 64
    time_embed: Literal["sinusoidal", "raw"] = "sinusoidal"
    target: str = ""                # a network of one's own, "package.module:Class", built as Class(dim=D, **options)
    options: dict = field(default_factory=dict)

    def validate(self, key: str) -> None:
        for name in ("hidden", "depth", "time_dim"):
            check(getattr(self, name) >= 1, f"{key}.{name}", "must be >= 1")
        check(self.time_dim % 2 == 0, f"{key}.time_dim", "must be even")


class VectorsTask(Task):
    """Training rows drawn with replacement; evaluation against the held-out rows, all in the standardised space."""

    metric_format = METRIC_FORMAT        # table columns of `rmflow compare`
    data_label = "data (training split)"   # what data_baseline returns (the data row of `rmflow compare`)

    def __init__(self, cfg):
        self.cfg = cfg
        t = cfg.task
        table = load_table(t.path, t.format, t.columns, t.key, t.max_rows)
        self.data = prepare(table.values, table.names, t.path, t.nonfinite, t.heldout, t.split_seed, t.standardize)
        self.space = EuclideanSpace()

    @property
    def dim(self) -> int:
        return self.data.train.shape[1]

    @property
    def names(self) -> list[str]:
        return self.data.names

    def build_model(self):
        """RMFlow with an MLP on D = number of columns; `model.units` holds the standardisation (buffers)."""
        m = self.cfg.model
        net = (user_network(m.target, dim=self.dim, **m.options) if m.target else
               MLP(self.dim, hidden=m.hidden, depth=m.depth, time_dim=m.time_dim, time_embed=m.time_embed))
        model = build_rmflow(net, self.cfg, self.space, vector_dim=self.dim)
        model.units = DataUnits(self.data.mean, self.data.std)
        return model

    def batch(self, batch_size: int) -> Batch:
        """batch_size training rows (B, D), drawn with replacement with torch's global RNG."""
        return Batch(self.data.train[torch.randint(len(self.data.train), (batch_size,))])

    def reference(self, num_samples: int, seed: int) -> Batch:
        """num_samples rows (num_samples, D) of the held-out split: each held-out row ⌊n/H⌋ or ⌈n/H⌉ times, in a
        seeded order (num_samples < H: a seeded subset). Its length sets how many samples the samplers draw."""
        h = self.data.heldout
        g = torch.Generator().manual_seed(seed)
        reps = -(-num_samples // len(h))
        idx = torch.cat([torch.randperm(len(h), generator=g) for _ in range(reps)])[:num_samples]
        return Batch(h[idx])

    def data_baseline(self, reference: Batch, seed: int) -> torch.Tensor:
        """The training rows (up to num_eval of them, a seeded subset), scored like samples: the metrics' floor
        for an independent draw of the data, and the memorisation of a model that copies its training set."""
        tr = self.data.train
        idx = torch.randperm(len(tr), generator=torch.Generator().manual_seed(seed))[: self.cfg.task.num_eval]
        return tr[idx]

    def evaluate(self, samples, reference):
        """sw2, energy, mmd of the first num_eval samples (N, D) against the held-out rows (all of them; the
        `reference` batch only repeats them), and memo_share, memo_ratio against the training rows; standardised
        space (unit-variance columns, so that no column dominates by its units)."""
        t = self.cfg.task
        x = samples.detach()[: t.num_eval]
        if not torch.isfinite(x).all():
            bad = (~torch.isfinite(x)).any(dim=1).double().mean().item()
            raise ValueError(f"samples contain NaN/inf ({bad:.1%} of rows)")
        return vector_metrics(x, self.data.heldout[: t.num_eval], self.data.train, t.num_projections,
                              seed=self.cfg.task.split_seed)

    def plot(self, panels, reference, path):
        plot_vectors({"data (training split)": self.data.train, **panels}, self.names, path)

    # ------------------------------------------------------------------------------------------ data units
    def to_data_units(self, x: torch.Tensor, model=None) -> torch.Tensor:
        """Standardised rows x (N, D) -> the units of the file (N, D) float64: x·std + mean, with the (mean, std)
        stored in `model` (its checkpoint's) when given, else this task's own (from the file as it is now)."""
        units = self.units(model)
        return units.to_data(x).to(x.device)

    def from_data_units(self, x: torch.Tensor, model=None) -> torch.Tensor:
        """Rows in the units of the file (N, D) -> standardised (N, D) float64; the inverse of to_data_units."""
        return self.units(model).to_model(x).to(x.device)

    def units(self, model=None) -> DataUnits:
        """The model's DataUnits (cpu copy), warning if they differ from this task's (the file changed since
        training); this task's own without a model."""
        own = DataUnits(self.data.mean, self.data.std)
        stored = getattr(model, "units", None)
        if stored is None:
            return own
        stored = DataUnits(stored.mean.cpu(), stored.std.cpu())
        if not (torch.allclose(stored.mean, own.mean) and torch.allclose(stored.std, own.std)):
            warnings.warn(f"{self.cfg.task.path}: the standardisation stored with the model differs from the one of "
                          "the file now (the file changed since training?); using the model's", stacklevel=3)
        return stored


SPEC = register_task(TaskSpec("vectors", VectorsData, VectorsModel, VectorsTask))

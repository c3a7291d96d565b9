"""The time-series task (RMFlow's dynamical systems): trajectories of Lorenz-63 and two coupled
FitzHugh–Nagumo units, yearly sunspot numbers as real data, or a user's own series from a file
(system "file": task.path to a .npy array (N, T, C), (T, C) or (T,), or a CSV with one column per channel;
see data.file_series for the split and the checks).

- mode "unconditional": a sample is a whole window x: (B, C, L).
- mode "conditional":  a sample is the future x: (B, C, H) of a window, given its first k steps, the
  context cond: (B, C, k), with H = window_len − context_len. The context reaches the model through guided
  encoding, x0 = φ_ω(context) + σ_c·ε (model.encoder), and/or as an input of the network (model.context_input).

Evaluation: `reference(n, seed)` holds n = (number of contexts) × task.ensemble rows; conditional references are
the first contexts of an evenly spaced, fixed list of test windows, each repeated `ensemble` times in a row
(the seed does not change them, so the "data" row of `rmflow compare` is the truth scored against itself, the
floor of every metric). Unconditional references are random test windows drawn with the seed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Union

import torch

from ...errors import check
from ...flow import EuclideanSpace
from ...nets.temporal import SequenceFlowNet
from ..base import Batch, Task, TaskSpec, build_rmflow, register_task
from .data import FILE, REAL, Windows, file_series, simulated_series, sunspots_series
from .metrics import (CONDITIONAL_FORMAT, LABELS, UNCONDITIONAL_FORMAT, conditional_metrics,
                      unconditional_metrics)
from .model import ContextEncoder
from .plots import plot_forecast_fans, plot_unconditional
from .systems import SYSTEMS

MODES = ("conditional", "unconditional")
ENCODERS = ("linear", "zero", "none")


@dataclass
class DynamicsData:
    name: str = "dynamics"
    system: str = "lorenz"          # lorenz | fhn | sunspots | file (task.path)
    mode: str = "conditional"       # conditional | unconditional
    window_len: int = 64            # L: steps per window (context + horizon in conditional mode)
    context_len: int = 16           # k: observed first steps (conditional mode)
    dt: float = 0.0                 # sampling step in the system's time units; 0 = the system's default
    transient: float = -1.0         # time units integrated and dropped; < 0 = the system's default
    traj_len: int = 2000            # recorded steps per simulated trajectory
    train_traj: int = 32
    valid_traj: int = 4
    test_traj: int = 8
    data_seed: int = 0
    cache_dir: str = ""             # "" = $RMFLOW_CACHE/dynamics or ~/.cache/rmflow/dynamics
    use_cache: bool = True
    ensemble: int = 32              # forecasts per context in evaluation
    crps_estimator: str = "fair"    # scoringrules estimator: fair | nrg | pwm | ...
    plot_contexts: int = 3
    # system "file": a user's own series
    path: str = ""                  # .npy (N, T, C) many series | (T, C) or (T,) one series; .csv/.tsv rows = steps
    columns: list[Union[int, str]] = field(default_factory=list)   # channels: CSV names or 0-based indices;
                                    # [] = every numeric column
    format: Literal["auto", "npy", "csv"] = "auto"   # auto: from the suffix (.npy | .csv .tsv .txt)
    split: list[float] = field(default_factory=lambda: [0.7, 0.1, 0.2])   # train/valid/test shares: of the
                                    # series (N >= 2), or contiguous time blocks of one long series (also sunspots)

    def validate(self, key: str) -> None:
        allowed = sorted(SYSTEMS) + list(REAL) + [FILE]
        check(self.system in allowed, f"{key}.system", f"must be one of {allowed}")
        check(self.mode in MODES, f"{key}.mode", f"must be one of {MODES}")
        check(self.window_len >= 2, f"{key}.window_len", "must be >= 2")
        if self.mode == "conditional":
            check(1 <= self.context_len < self.window_len, f"{key}.context_len",
                  f"must be in [1, window_len - 1] = [1, {self.window_len - 1}] in conditional mode")
        check(self.dt >= 0, f"{key}.dt", "must be >= 0 (0 = the system's default)")
        if self.system in SYSTEMS:
            check(self.traj_len >= self.window_len, f"{key}.traj_len", f"must be >= window_len ({self.window_len})")
        check(len(self.split) == 3 and all(s >= 0 for s in self.split) and self.split[0] > 0 and self.split[2] > 0,
              f"{key}.split", "must be three shares [train, valid, test] >= 0, train and test > 0 "
              f"(they are divided by their sum); got {self.split}")
        if self.system == FILE:
            check(bool(self.path.strip()), f"{key}.path", "system 'file' needs the path of a .npy or .csv file")
            for i, c in enumerate(self.columns):
                check(isinstance(c, (int, str)) and not isinstance(c, bool), f"{key}.columns[{i}]",
                      f"must be a column name or a 0-based index, got {c!r}")
        for name in ("train_traj", "test_traj"):
            check(getattr(self, name) >= 1, f"{key}.{name}", "must be >= 1")
        check(self.valid_traj >= 0, f"{key}.valid_traj", "must be >= 0")
        check(self.ensemble >= 2, f"{key}.ensemble", "must be >= 2")
        check(self.crps_estimator in ("fair", "nrg", "pwm", "akr", "akr_circperm", "int", "qd"),
              f"{key}.crps_estimator", "must be a scoringrules ensemble estimator (fair, nrg, pwm, ...)")

    @property
    def horizon(self) -> int:
        return self.window_len - self.context_len if self.mode == "conditional" else self.window_len


@dataclass
class DynamicsModel:
    width: int = 64                 # channels of the U-Net's first level
    mults: list = field(default_factory=lambda: [1, 2])
    blocks: int = 1
    time_dim: int = 64
    time_scale: float = 1.0         # sinusoid argument scale of t and r − t (1000 makes MeanFlow diverge here)
    attention: bool = True
    heads: int = 4
    context_input: bool = True      # conditional: feed the context to the network as well
    encoder: str = "linear"         # conditional guided encoding φ_ω: linear (persistence + linear) | zero | none

    def validate(self, key: str) -> None:
        check(self.width >= 1, f"{key}.width", "must be >= 1")
        check(isinstance(self.mults, list) and len(self.mults) >= 1 and all(
            isinstance(m, int) and m >= 1 for m in self.mults), f"{key}.mults", "must be a list of ints >= 1")
        check(self.blocks >= 1, f"{key}.blocks", "must be >= 1")
        check(self.time_dim >= 2 and self.time_dim % 2 == 0, f"{key}.time_dim", "must be even and >= 2")
        check(self.time_scale > 0, f"{key}.time_scale", "must be > 0")
        check(not self.attention or (self.width * self.mults[-1]) % self.heads == 0, f"{key}.heads",
              "must divide width * mults[-1]")
        check(self.encoder in ENCODERS, f"{key}.encoder", f"must be one of {ENCODERS}")


class DynamicsTask(Task):
    """Windows of normalised series; training windows drawn with torch's global RNG."""

    def __init__(self, cfg):
        self.cfg = cfg
        t = cfg.task
        self.space = EuclideanSpace()
        self.conditional = t.mode == "conditional"
        self.k = t.context_len if self.conditional else 0
        overlap = t.context_len if self.conditional else 0
        if t.system == FILE:
            self.data = file_series(t.path, t.columns, t.format, t.window_len, overlap, t.split, t.data_seed)
        elif t.system in REAL:
            self.data = sunspots_series(overlap=overlap, fractions=t.split)
        else:
            system = SYSTEMS[t.system]
            dt = t.dt or system.default_dt
            transient = t.transient if t.transient >= 0 else system.default_transient
            counts = {"train": t.train_traj, "valid": t.valid_traj, "test": t.test_traj}
            self.data = simulated_series(t.system, dt, transient, t.traj_len, counts, t.data_seed,
                                         t.cache_dir or None, t.use_cache)
        self.channels = len(self.data.channels)
        self.train_windows = Windows(self.data.normalised("train"), t.window_len, "task.system train split")
        self.test_windows = Windows(self.data.normalised("test"), t.window_len, "task.system test split")
        fmt = CONDITIONAL_FORMAT if self.conditional else UNCONDITIONAL_FORMAT
        self.metric_format = {k: (LABELS[k], f) for k, f in fmt.items()}   # table columns of `rmflow compare`

    # -- model ----------------------------------------------------------------------------------------------
    def build_model(self):
        m, t = self.cfg.model, self.cfg.task
        net = SequenceFlowNet(self.channels, self.k, m.context_input, width=m.width, mults=tuple(m.mults),
                              blocks=m.blocks, time_dim=m.time_dim, attention=m.attention, heads=m.heads,
                              time_scale=m.time_scale)
        encoder = None
        if self.conditional and m.encoder != "none":
            encoder = ContextEncoder(self.channels, self.k, t.horizon, persistence=m.encoder == "linear")
        if self.conditional and encoder is None and not m.context_input:
            raise ValueError("conditional mode needs model.encoder != 'none' or model.context_input: true "
                             "(otherwise the model never sees the context)")
        return build_rmflow(net, self.cfg, self.space, encoder=encoder)

    # -- data -----------------------------------------------------------------------------------------------
    def _split(self, windows: torch.Tensor) -> Batch:
        if self.conditional:
            return Batch(windows[..., self.k:].contiguous(), cond=windows[..., : self.k].contiguous())
        return Batch(windows.contiguous())

    def batch(self, batch_size: int) -> Batch:
        return self._split(self.train_windows.random(batch_size))

    def reference(self, num_samples: int, seed: int) -> Batch:
        if self.conditional:
            m = self.cfg.task.ensemble
            contexts = max(num_samples // m, 1)
            windows = self.test_windows.evenly_spaced(contexts)
            return self._split(windows.repeat_interleave(m, dim=0))
        gen = torch.Generator().manual_seed(seed)
        return self._split(self.test_windows.random(num_samples, gen))

    def evaluate(self, samples, reference):
        if self.conditional:
            m = self.cfg.task.ensemble
            n = len(reference.x) // m
            forecasts = samples[: n * m].reshape(n, m, *samples.shape[1:])
            return conditional_metrics(forecasts, reference.x[: n * m: m], self.cfg.task.crps_estimator)
        return unconditional_metrics(samples, reference.x)

    def plot(self, panels, reference, path):
        if self.conditional:
            m = self.cfg.task.ensemble
            plot_forecast_fans(panels, reference.cond[::m], reference.x[::m], m, path, self.data.channels,
                               self.cfg.task.plot_contexts)
        else:
            plot_unconditional({"data": reference.x, **panels}, path, self.data.projection, self.data.channels)


SPEC = register_task(TaskSpec("dynamics", DynamicsData, DynamicsModel, DynamicsTask))

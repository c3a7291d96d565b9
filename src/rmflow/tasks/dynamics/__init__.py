"""The time-series task (RMFlow's dynamical systems): trajectories of Lorenz-63 and two coupled
FitzHugh–Nagumo units, yearly sunspot numbers or monthly El Niño sea surface temperature as real data (data.REAL),
or a user's own series from a file
(system "file": task.path to a .npy array (N, T, C), (T, C) or (T,), or a CSV with one column per channel;
see data.file_series for the split and the checks).

- mode "unconditional": a sample is a whole window x: (B, C, L).
- mode "conditional":  a sample is the future x: (B, C, H) of a window, given its first k steps, the
  context cond: (B, C, k), with H = window_len − context_len. The context reaches the model through guided
  encoding, x0 = φ_ω(context) + σ_c·ε (model.encoder), and/or as an input of the network (model.context_input).

Source of uncertainty of a forecast (conditional mode): the context is observed with noise. Every context the
model sees, in training and in evaluation, is the clean context plus Gaussian noise of std σ = task.obs_noise per
value, in normalised units (units of each channel's training std), independent over channels and steps, drawn anew
for each context window; the forecast target (the future) is clean. The default (task.obs_noise < 0) is σ = 0.1 for
the simulated systems (lorenz, fhn), whose clean context determines the future exactly (a perfect forecast, CRPS 0,
would otherwise exist), and σ = 0 for measured series (sunspots, elnino, file), which carry their own noise; σ = 0
gives the noise-free task of earlier versions exactly. The ensemble spread therefore represents the forecast
distribution p(future | noisy context): the uncertainty of the state left by the noisy observations, propagated by
the dynamics (for measured series, whatever the context does not determine). Its best attainable score is the true
system's Bayes ensemble (`reference_rows`, "true system").

Evaluation: `reference(n, seed)` holds n = (number of contexts) × task.ensemble rows; conditional references are
the first contexts of an evenly spaced, fixed list of test windows, each repeated `ensemble` times in a row, with
observation noise drawn once per context from a generator seeded with EVAL_NOISE_SEED + task.data_seed (neither
the windows nor their noise depend on the seed, so every seed and method scores the same noisy contexts).
Unconditional references are random test windows drawn with the seed (task.obs_noise plays no part).

Reference rows (`reference_rows(reference, seed)`, printed by `rmflow compare` and by
`python -m rmflow.tasks.dynamics CONFIG`): conditional: data (truth against itself: every metric's floor),
persistence, climatology, analogue and, for the simulated systems, the true system (references.py says what each
is); unconditional: data (a second draw of held-out windows) and climatology (random training windows).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Union

import numpy as np
import torch

from ...errors import check
from ...flow import EuclideanSpace
from ...nets.temporal import SequenceFlowNet
from ..base import Batch, Task, TaskSpec, build_rmflow, register_task
from .data import FILE, REAL, Windows, file_series, real_series, simulated_series
from .metrics import (CONDITIONAL_FORMAT, LABELS, UNCONDITIONAL_FORMAT, conditional_metrics,
                      unconditional_metrics)
from .model import ContextEncoder
from .plots import plot_forecast_fans, plot_unconditional
from .references import (CANDIDATES, LEAD, AttractorPrior, analogue_forecast, analogue_indices, climatology_forecast,
                         persistence_forecast, training_contexts, true_system_forecast)
from .systems import SYSTEMS

MODES = ("conditional", "unconditional")
ENCODERS = ("linear", "zero", "none")
OBS_NOISE_DEFAULT = {"lorenz": 0.1, "fhn": 0.1}   # task.obs_noise < 0: this for simulated systems, 0 otherwise
EVAL_NOISE_SEED = 7919                             # + task.data_seed: the evaluation contexts' observation noise


@dataclass
class DynamicsData:
    name: str = "dynamics"
    system: str = "lorenz"          # lorenz | fhn | sunspots | elnino | file (task.path)
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
    obs_noise: float = -1.0         # conditional: std of Gaussian observation noise added to every context value
                                    # (normalised units; training and evaluation); < 0 = the system's default:
                                    # 0.1 for lorenz/fhn (makes their forecasts well posed), 0 for real series/file
    crps_estimator: str = "fair"    # scoringrules estimator: fair | nrg | pwm | ...
    plot_contexts: int = 3
    # system "file": a user's own series
    path: str = ""                  # .npy (N, T, C) many series | (T, C) or (T,) one series; .csv/.tsv rows = steps
    columns: list[Union[int, str]] = field(default_factory=list)   # channels: CSV names or 0-based indices;
                                    # [] = every numeric column
    format: Literal["auto", "npy", "csv"] = "auto"   # auto: from the suffix (.npy | .csv .tsv .txt)
    split: list[float] = field(default_factory=lambda: [0.7, 0.1, 0.2])   # train/valid/test shares: of the
                                    # series (N >= 2), or contiguous time blocks of one long series (also REAL series)

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
        check(np.isfinite(self.obs_noise), f"{key}.obs_noise", "must be a finite number (< 0 = the system's default)")
        check(self.crps_estimator in ("fair", "nrg", "pwm", "akr", "akr_circperm", "int", "qd"),
              f"{key}.crps_estimator", "must be a scoringrules ensemble estimator (fair, nrg, pwm, ...)")

    @property
    def horizon(self) -> int:
        return self.window_len - self.context_len if self.mode == "conditional" else self.window_len

    @property
    def obs_noise_std(self) -> float:
        """The observation noise std of the contexts (normalised units): task.obs_noise, or the system's default."""
        return float(self.obs_noise) if self.obs_noise >= 0 else OBS_NOISE_DEFAULT.get(self.system, 0.0)


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
    """Windows of normalised series; training windows (and their contexts' observation noise) drawn with torch's
    global RNG. Conditional mode forecasts the clean future of a window from its context observed with noise of
    std task.obs_noise_std; the ensemble spread is the forecast uncertainty this noise leaves (module docstring)."""

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
            self.data = real_series(t.system, overlap=overlap, fractions=t.split)
        else:
            system = SYSTEMS[t.system]
            dt = t.dt or system.default_dt
            transient = t.transient if t.transient >= 0 else system.default_transient
            counts = {"train": t.train_traj, "valid": t.valid_traj, "test": t.test_traj}
            self.data = simulated_series(t.system, dt, transient, t.traj_len, counts, t.data_seed,
                                         t.cache_dir or None, t.use_cache)
        self.channels = len(self.data.channels)
        self.train_windows = Windows(self.data.normalised("train"), t.window_len, "task.system train split")
        self.obs_noise = t.obs_noise_std if self.conditional else 0.0
        self.system = SYSTEMS.get(t.system)
        self.dt = (t.dt or self.system.default_dt) if self.system is not None else None
        self._library = None                 # training contexts (N, C·k) of the analogue forecast, built once
        self._prior = None                   # the training states' kernel density (true-system reference)
        self.last_ess = None                 # true-system importance sampling: ESS per context of the last call
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
    def _split(self, windows: torch.Tensor, noise: torch.Tensor | None = None) -> Batch:
        if self.conditional:
            cond = windows[..., : self.k]
            cond = cond + noise if noise is not None else cond
            return Batch(windows[..., self.k:].contiguous(), cond=cond.contiguous())
        return Batch(windows.contiguous())

    def batch(self, batch_size: int) -> Batch:
        windows = self.train_windows.random(batch_size)
        noise = None
        if self.obs_noise > 0:   # σ = 0 draws nothing: the RNG stream (and training) of the noise-free task
            noise = self.obs_noise * torch.randn(windows.shape[0], windows.shape[1], self.k)
        return self._split(windows, noise)

    def clean_reference_windows(self, num_samples: int) -> torch.Tensor:
        """The distinct noise-free test windows of a conditional reference: (num_samples // ensemble, C, L)."""
        return self.test_windows.evenly_spaced(max(num_samples // self.cfg.task.ensemble, 1))

    def eval_context_noise(self, num_contexts: int) -> torch.Tensor:
        """The observation noise of the evaluation contexts, (num_contexts, C, k): fixed by task.data_seed."""
        gen = torch.Generator().manual_seed(EVAL_NOISE_SEED + self.cfg.task.data_seed)
        return self.obs_noise * torch.randn(num_contexts, self.channels, self.k, generator=gen)

    def reference(self, num_samples: int, seed: int) -> Batch:
        if self.conditional:
            m = self.cfg.task.ensemble
            windows = self.clean_reference_windows(num_samples)
            noise = self.eval_context_noise(len(windows)) if self.obs_noise > 0 else None
            return self._split(windows.repeat_interleave(m, dim=0),
                               None if noise is None else noise.repeat_interleave(m, dim=0))
        gen = torch.Generator().manual_seed(seed)
        return self._split(self.test_windows.random(num_samples, gen))

    # -- reference rows -------------------------------------------------------------------------------------
    def _contexts(self, reference: Batch) -> torch.Tensor:
        """The distinct (noisy) contexts of a conditional reference: (n, C, k), n = len // ensemble."""
        m = self.cfg.task.ensemble
        return reference.cond[: (len(reference.x) // m) * m: m]

    def persistence(self, reference: Batch) -> torch.Tensor:
        """(n·M, C, H): the last noisy context value over the horizon, every member the same path."""
        f = persistence_forecast(self._contexts(reference), self.cfg.task.horizon, self.cfg.task.ensemble)
        return f.flatten(0, 1)

    def climatology(self, reference: Batch, seed: int) -> torch.Tensor:
        """(n·M, C, H): forecast parts of random training windows (seeded), whatever the context."""
        gen = torch.Generator().manual_seed(seed)
        f = climatology_forecast(self.train_windows, self.k, len(self._contexts(reference)),
                                 self.cfg.task.ensemble, gen)
        return f.flatten(0, 1)

    def analogue(self, reference: Batch) -> torch.Tensor:
        """(n·M, C, H): continuations of the M training windows whose clean contexts are nearest the noisy one."""
        if self._library is None:
            self._library = training_contexts(self.train_windows, self.k)
        f = analogue_forecast(self._contexts(reference), self.train_windows, self.k, self.cfg.task.ensemble,
                              self._library)
        return f.flatten(0, 1)

    def true_system(self, reference: Batch, seed: int, obs_noise: float | None = None,
                    lead: int | None = None) -> torch.Tensor:
        """(n·M, C, H): the true system's Bayes ensemble given the noisy contexts (references.true_system_forecast),
        with the training states' kernel density as the prior `lead` steps before the context (default
        references.LEAD[system]); obs_noise: the σ the contexts were observed with (default the task's).
        Simulated systems only."""
        if self.system is None:
            raise ValueError(f"the true-system reference needs a simulated system ({sorted(SYSTEMS)}), "
                             f"not {self.cfg.task.system!r}")
        sigma = self.obs_noise if obs_noise is None else obs_noise
        lead = LEAD.get(self.cfg.task.system, 0) if lead is None else lead
        contexts = self._contexts(reference)
        if self._prior is None:
            states = self.train_windows.series.permute(0, 2, 1).reshape(-1, self.channels)
            self._prior = AttractorPrior(states)
        if self._library is None:
            self._library = training_contexts(self.train_windows, self.k)
        # candidates: the states `lead` steps before the nearest training windows (among those starting >= lead)
        per = self.train_windows.per_series
        start = torch.arange(len(self.train_windows)) % per
        usable = torch.nonzero(start >= lead).squeeze(1)
        if len(usable) == 0:
            raise ValueError(f"no training window starts {lead} steps into its series (true-system lead)")
        near = usable[analogue_indices(contexts, self._library[usable], CANDIDATES)]       # (n, K)
        series = self.train_windows.series
        cand = series[near // per, :, near % per - lead]                                    # (n, K, C)
        f, info = true_system_forecast(self.system, self.dt, self.data.mean, self.data.std, contexts,
                                       self.cfg.task.horizon, self.cfg.task.ensemble, sigma,
                                       np.random.default_rng([seed, 17]), prior=self._prior, candidates=cand,
                                       lead=lead)
        self.last_ess = info["ess"]
        return f.flatten(0, 1)

    def reference_rows(self, reference: Batch, seed: int) -> dict[str, torch.Tensor]:
        """label -> samples shaped like a model's samples for `reference`, to be scored by `evaluate`: the rows that
        bound every metric (module docstring); `seed` draws climatology and the true system's particles."""
        if not self.conditional:
            gen = torch.Generator().manual_seed(seed)
            return {"data (second draw)": self.test_windows.random(len(reference.x), gen),
                    "climatology (random training windows)": self.train_windows.random(len(reference.x), gen)}
        m, noisy = self.cfg.task.ensemble, "noisy " if self.obs_noise > 0 else ""
        rows = {"data (truth against itself)": reference.x,
                f"persistence (last {noisy}context value)": self.persistence(reference),
                "climatology (random training windows)": self.climatology(reference, seed),
                f"analogue ({m} nearest training contexts)": self.analogue(reference)}
        if self.system is not None:
            rows[f"true system (Bayes ensemble, obs noise {self.obs_noise:g})"] = self.true_system(reference, seed)
        return rows

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

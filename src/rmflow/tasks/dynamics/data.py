"""Data of the time-series task: simulated (Lorenz-63, FitzHugh–Nagumo) or real (yearly sunspots) series,
split into train/valid/test, normalised per channel with train statistics, and cut into windows.

Simulated splits are generated deterministically: split s of data seed d uses numpy seed [d, s] for its
initial conditions, so the test trajectories never depend on how many training trajectories were asked for.
They are cached on disk as .npz files named by a hash of everything that determines them.

Sunspots (statsmodels.datasets.sunspots, yearly 1700–2008, 309 values, needs `pip install statsmodels`):
square-root transformed (the usual variance-stabilising step), then split chronologically 70/10/20 %; the
valid and test pieces start `overlap` years early so that their first windows' contexts are available while
every forecast target lies inside the held-out period.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .systems import SYSTEMS, simulate_many

SPLITS = ("train", "valid", "test")
REAL = ("sunspots",)
CACHE_VERSION = 1


@dataclass
class SeriesData:
    """Raw (un-normalised) splits, each (n, C, T); per-channel train mean/std (C,); channel names."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    channels: tuple
    projection: tuple
    mean: np.ndarray = None
    std: np.ndarray = None

    def __post_init__(self):
        if self.mean is None:
            self.mean = self.train.mean(axis=(0, 2))
            self.std = self.train.std(axis=(0, 2))
        self.std = np.where(self.std > 0, self.std, 1.0)

    def normalised(self, split: str) -> torch.Tensor:
        """(n, C, T) float32, (x − mean)/std with the train statistics."""
        x = getattr(self, split)
        return torch.from_numpy((x - self.mean[None, :, None]) / self.std[None, :, None]).float()

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of the normalisation for x: (..., C, T)."""
        mean = torch.as_tensor(self.mean, dtype=x.dtype)[:, None]
        std = torch.as_tensor(self.std, dtype=x.dtype)[:, None]
        return x * std + mean


def default_cache_dir() -> Path:
    return Path(os.environ.get("RMFLOW_CACHE", Path.home() / ".cache" / "rmflow")) / "dynamics"


def simulation_key(system_name: str, dt: float, transient: float, traj_len: int, counts: dict, seed: int) -> dict:
    """Everything that determines a simulated data set (the cache file is named by its hash)."""
    system = SYSTEMS[system_name]
    params = {k: v for k, v in dataclasses.asdict(system).items() if k not in ("channels", "projection")}
    return {"version": CACHE_VERSION, "system": params, "dt": float(dt), "transient": float(transient),
            "traj_len": int(traj_len), "counts": {s: int(counts[s]) for s in SPLITS}, "seed": int(seed)}


def cache_path(cache_dir: Path, key: dict) -> Path:
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{key['system']['name']}-{digest}.npz"


def simulated_series(system_name: str, dt: float, transient: float, traj_len: int, counts: dict, seed: int,
                     cache_dir: str | Path | None = None, use_cache: bool = True) -> SeriesData:
    """Simulate (or load from the cache) the three splits of a system. counts: split -> number of trajectories."""
    if system_name not in SYSTEMS:
        raise ValueError(f"unknown system {system_name!r}; simulated systems: {sorted(SYSTEMS)}")
    system = SYSTEMS[system_name]
    key = simulation_key(system_name, dt, transient, traj_len, counts, seed)
    path = cache_path(Path(cache_dir) if cache_dir else default_cache_dir(), key)
    if use_cache and path.exists():
        with np.load(path) as f:
            arrays = {s: f[s] for s in SPLITS}
    else:
        arrays = {s: simulate_many(system, [seed, i], counts[s], dt, traj_len, transient).astype(np.float32)
                  for i, s in enumerate(SPLITS)}
        if use_cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + f".tmp{os.getpid()}.npz")
            np.savez(tmp, **arrays, key=json.dumps(key))
            os.replace(tmp, path)   # atomic: a concurrent reader never sees a half-written file
    return SeriesData(arrays["train"], arrays["valid"], arrays["test"], system.channels, system.projection)


def sunspots_series(overlap: int, fractions=(0.7, 0.1, 0.2)) -> SeriesData:
    """Yearly sunspot numbers from statsmodels, sqrt-transformed, split chronologically; each split (1, 1, T)."""
    try:
        from statsmodels.datasets import sunspots
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("task.system 'sunspots' needs statsmodels: pip install statsmodels") from e
    values = np.sqrt(sunspots.load_pandas().data["SUNACTIVITY"].to_numpy(dtype=np.float64))
    return split_series(values, overlap, fractions, channels=("sqrt_sunspots",))


def split_series(values: np.ndarray, overlap: int, fractions=(0.7, 0.1, 0.2), channels=("value",)) -> SeriesData:
    """Chronological split of a 1-D series; valid/test start `overlap` steps before their boundary."""
    n = len(values)
    b1 = int(round(fractions[0] * n))
    b2 = int(round((fractions[0] + fractions[1]) * n))
    pieces = {"train": values[:b1], "valid": values[max(b1 - overlap, 0):b2], "test": values[max(b2 - overlap, 0):]}
    arrays = {k: v.astype(np.float32)[None, None, :] for k, v in pieces.items()}
    proj = (0, 0)
    return SeriesData(arrays["train"], arrays["valid"], arrays["test"], channels, proj)


class Windows:
    """All windows of length L of a set of series x: (n, C, T), without copying (a strided view)."""

    def __init__(self, series: torch.Tensor, length: int, what: str = "series"):
        if series.shape[-1] < length:
            raise ValueError(f"{what}: series of length {series.shape[-1]} are shorter than the window ({length})")
        self.series, self.length = series, length
        self.view = series.unfold(2, length, 1)           # (n, C, T − L + 1, L)
        self.per_series = self.view.shape[2]

    def __len__(self) -> int:
        return self.series.shape[0] * self.per_series

    def take(self, index: torch.Tensor) -> torch.Tensor:
        """Windows number `index` (flat over series and start): (B, C, L)."""
        traj, start = index // self.per_series, index % self.per_series
        return self.view[traj, :, start]

    def random(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.take(torch.randint(len(self), (batch_size,), generator=generator))

    def evenly_spaced(self, num: int) -> torch.Tensor:
        """num windows spread evenly over all windows (deterministic): (num, C, L)."""
        index = torch.linspace(0, len(self) - 1, num).round().long()
        return self.take(index)

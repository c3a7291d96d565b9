"""Data of the time-series task: simulated (Lorenz-63, FitzHugh–Nagumo) or real (yearly sunspots, monthly El Niño
sea surface temperature) series, split into train/valid/test, normalised per channel with train statistics, and cut
into windows.

Simulated splits are generated deterministically: split s of data seed d uses numpy seed [d, s] for its
initial conditions, so the test trajectories never depend on how many training trajectories were asked for.
They are cached on disk as .npz files named by a hash of everything that determines them.

Sunspots (statsmodels.datasets.sunspots, yearly 1700–2008, 309 values, needs `pip install statsmodels`):
square-root transformed (the usual variance-stabilising step), then split chronologically 70/10/20 %; the
valid and test pieces start `overlap` years early so that their first windows' contexts are available while
every forecast target lies inside the held-out period.

El Niño (statsmodels.datasets.elnino, needs `pip install statsmodels`): monthly mean sea surface temperature (°C) of
the Niño 1+2 region (0–10° S, 90–80° W; NOAA ERSST v3b), January 1950 – December 2010. statsmodels ships it as a wide
table, one row per year and one column per month; `flatten_monthly_table` reads it row by row (years ascending,
months January to December) into 732 monthly values. Chosen over Mauna Loa CO₂ because it is stationary: a strong
seasonal cycle (monthly means 20.6–26.3 °C) with irregular El Niño / La Niña excursions on top recurs throughout, so
the training years (18.95–28.85 °C) cover the test years (19.28–27.39 °C) with no transformation, whereas CO₂ rises
from 315 to 371 ppm (yearly means, 1958–2001): split 70/10/20 %, 98 % of its monthly test values lie above every
training value, so it would need differencing or detrending first. The El Niño forecast (where this year's anomaly
goes) is genuinely uncertain; the series has no missing values (CO₂ has 59 of 2284 weekly values) and more steps
(732 months against 526 for monthly CO₂). Split: train Jan 1950 – Aug 1992 (512 months), valid forecasts Sep 1992 –
Oct 1998, test forecasts Nov 1998 – Dec 2010 (146 months; the 1997–98 El Niño falls in valid). No transform is applied:
the series is kept in °C and, like every system, standardised with the training split's mean and std (metrics are in
those normalised units; multiply by `SeriesData.std` for °C). Split chronologically like sunspots (70/10/20 %).

Files (task.system "file", `file_series`): a user's own series from a .npy array or a CSV table.
- (N, T, C) .npy: N series of T steps and C channels, windows cut from each series like simulated trajectories;
  the series (not the windows) are split into train/valid/test by a seeded permutation (task.data_seed) in the
  task.split proportions (at least one training and one test series; N = 1 counts as one long series).
- (T, C) or (T,) .npy, or a CSV (rows = time steps, columns = channels; a header row names them): one long series,
  split chronologically like sunspots (contiguous blocks, valid/test starting `overlap` steps early).
Values must all be finite (NaN, inf and missing cells are counted and refused). No transform is applied; the task
standardises every channel with the training split's mean and std like every other system (SeriesData).
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

from ...errors import ConfigError
from ..tables import load_table
from .systems import SYSTEMS, simulate_many

SPLITS = ("train", "valid", "test")
REAL = ("sunspots", "elnino")        # task.system of the real series shipped with statsmodels (real_series)
MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
FILE = "file"                       # task.system of a user's own file
FILE_FORMATS = ("auto", "npy", "csv")
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


def flatten_monthly_table(table) -> np.ndarray:
    """A wide table of monthly values (a pandas DataFrame: a YEAR column and one column per month named as in MONTHS,
    one row per year) -> (12·years,) float64 in time order: years ascending, January to December within each.
    Refuses (ValueError) missing month columns, years that are not consecutive, and NaN/inf values."""
    missing = [m for m in ("YEAR",) + MONTHS if m not in table.columns]
    if missing:
        raise ValueError(f"monthly table: columns {missing} are missing (has {list(table.columns)})")
    years = table["YEAR"].to_numpy(dtype=np.float64)
    order = np.argsort(years, kind="stable")
    years = years[order]
    if len(years) == 0 or np.any(np.diff(years) != 1):
        raise ValueError(f"monthly table: the years must be consecutive, got {years.astype(int).tolist()}")
    values = table[list(MONTHS)].to_numpy(dtype=np.float64)[order].reshape(-1)   # row-major: year, then month
    bad = ~np.isfinite(values)
    if bad.any():
        first = int(np.argmax(bad))
        raise ValueError(f"monthly table: {int(bad.sum())} missing/non-finite values (first: "
                         f"{MONTHS[first % 12]} {int(years[first // 12])})")
    return values


def elnino_values() -> np.ndarray:
    """Monthly Niño 1+2 sea surface temperature (°C) from statsmodels, Jan 1950 – Dec 2010: (732,) float64."""
    try:
        from statsmodels.datasets import elnino
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("task.system 'elnino' needs statsmodels: pip install statsmodels") from e
    return flatten_monthly_table(elnino.load_pandas().data)


def elnino_series(overlap: int, fractions=(0.7, 0.1, 0.2)) -> SeriesData:
    """El Niño SST in °C (no transform), split chronologically like sunspots; each split (1, 1, T)."""
    return split_series(elnino_values(), overlap, fractions, channels=("sst_nino12",))


def real_series(name: str, overlap: int, fractions=(0.7, 0.1, 0.2)) -> SeriesData:
    """The real series `name` (one of REAL), split chronologically with valid/test starting `overlap` steps early."""
    loaders = {"sunspots": sunspots_series, "elnino": elnino_series}
    if name not in loaders:
        raise ValueError(f"unknown real series {name!r}; real series: {list(REAL)}")
    return loaders[name](overlap, fractions)


def block_bounds(n: int, fractions=(0.7, 0.1, 0.2)) -> tuple[int, int]:
    """The two boundaries (train | valid | test) of a chronological split of n steps."""
    total = float(sum(fractions))
    b1 = int(round(fractions[0] / total * n))
    b2 = int(round((fractions[0] + fractions[1]) / total * n))
    return b1, b2


def split_series(values: np.ndarray, overlap: int, fractions=(0.7, 0.1, 0.2), channels=("value",)) -> SeriesData:
    """Chronological split of a series (T,) or (T, C); valid/test start `overlap` steps before their boundary."""
    values = np.asarray(values)
    if values.ndim == 1:
        values = values[:, None]
    b1, b2 = block_bounds(len(values), fractions)
    pieces = {"train": values[:b1], "valid": values[max(b1 - overlap, 0):b2], "test": values[max(b2 - overlap, 0):]}
    arrays = {k: np.ascontiguousarray(v.astype(np.float32).T[None]) for k, v in pieces.items()}   # (1, C, T)
    proj = (0, 1) if values.shape[1] > 1 else (0, 0)
    return SeriesData(arrays["train"], arrays["valid"], arrays["test"], tuple(channels), proj)


# -------------------------------------------------------------------------------------------------- files
def _refuse(key: str, message: str):
    raise ConfigError(f"config key '{key}': {message}")


def _column_index(spec, names: list[str], key: str, named: bool) -> int:
    """A column given by name (str) or 0-based index (int, or a string of digits that is not a name)."""
    if isinstance(spec, bool) or not isinstance(spec, (int, str)):
        _refuse(key, f"a column is a name or a 0-based index, got {spec!r}")
    if isinstance(spec, str) and named and spec in names:
        return names.index(spec)
    if isinstance(spec, str) and not spec.strip().lstrip("-").isdigit():
        where = f"the header names {names}" if named else "the file has no header row (pick columns by index)"
        _refuse(key, f"no column named {spec!r}; {where}")
    i = int(spec)
    if not 0 <= i < len(names):
        _refuse(key, f"column index {i} is out of range: the file has {len(names)} columns (0..{len(names) - 1})")
    return i


def read_csv_series(path: Path, columns: list) -> tuple[np.ndarray, tuple[str, ...]]:
    """A CSV/TSV table (rows = time steps) -> values (T, C) float64 (NaN where missing) and the channel names;
    read by the tasks' shared table reader (tasks/tables.py: the same header rule, column choice and errors)."""
    fmt = "tsv" if path.suffix.lower() == ".tsv" else "csv"
    table = load_table(str(path), fmt, list(columns))
    return table.values, tuple(table.names)


def read_npy_series(path: Path, columns: list) -> tuple[np.ndarray, tuple[str, ...], bool]:
    """A .npy array -> (values (N, T, C) float64, channel names, one long series?)."""
    name = path.name
    try:
        x = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        _refuse("task.path", f"{name} cannot be read as a .npy array ({e}); is task.format right?")
    if not isinstance(x, np.ndarray):
        _refuse("task.path", f"{name} holds several arrays (.npz); save the series alone with np.save")
    if np.iscomplexobj(x) or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        _refuse("task.path", f"{name} has dtype {x.dtype}, not real numbers")
    if x.ndim not in (1, 2, 3) or x.size == 0:
        _refuse("task.path", f"{name} has shape {x.shape}; expected (N, T, C) = N series of T steps and C channels, "
                "or (T, C) / (T,) = one long series (rows = time steps)")
    long = x.ndim < 3 or x.shape[0] == 1
    x = x.astype(np.float64)
    x = x.reshape(1, -1, 1) if x.ndim == 1 else (x[None] if x.ndim == 2 else x)
    names = [f"c{j}" for j in range(x.shape[2])]
    if columns:
        chosen = [_column_index(c, names, f"task.columns[{k}]", False) for k, c in enumerate(columns)]
        x, names = x[..., chosen], [names[j] for j in chosen]
    return x, tuple(names), long


def read_series_file(path: str | Path, columns: list = (), fmt: str = "auto"
                     ) -> tuple[np.ndarray, tuple[str, ...], bool]:
    """Read and check a series file: (values (N, T, C) float64, channel names, one long series?).
    Raises ConfigError naming task.path / task.columns / task.format."""
    if not str(path):
        _refuse("task.path", "task.system 'file' needs the path of a .npy or .csv file")
    p = Path(path).expanduser()
    if not p.exists():
        _refuse("task.path", f"no such file: {str(p)!r} (relative paths start at {os.getcwd()})")
    if not p.is_file():
        _refuse("task.path", f"{str(p)!r} is not a file")
    if fmt == "auto":
        suffix = p.suffix.lower()
        if suffix == ".npy":
            fmt = "npy"
        elif suffix in (".csv", ".tsv", ".txt"):
            fmt = "csv"
        else:
            _refuse("task.format", f"cannot tell the format of {p.name!r} from its suffix; set task.format to "
                    "'npy' or 'csv'")
    if fmt == "npy":
        values, names, long = read_npy_series(p, list(columns))
    else:
        values, names = read_csv_series(p, list(columns))
        values, long = values[None], True
    bad = ~np.isfinite(values)
    if bad.any():
        n, t, c = (int(i) for i in np.argwhere(bad)[0])
        where = (f"step {t}" if long else f"series {n}, step {t}") + f", channel {names[c]!r}"
        _refuse("task.path", f"{p.name} holds {int(bad.sum())} NaN/inf/missing values (first at {where}); the task "
                "refuses them: fill or drop them before training")
    return values, names, long


def file_series(path: str | Path, columns: list, fmt: str, window_len: int, overlap: int,
                fractions=(0.7, 0.1, 0.2), seed: int = 0) -> SeriesData:
    """A user's series file as SeriesData: many series split by series (a permutation seeded with `seed`), or one
    long series split into contiguous blocks (valid/test start `overlap` steps early). Checks that the training
    and test splits hold at least one window of window_len steps."""
    values, names, long = read_series_file(path, columns, fmt)
    name = Path(path).name
    if long:
        series = values[0]
        t = len(series)
        b1, b2 = block_bounds(t, fractions)
        train_len, test_len = b1, t - max(b2 - overlap, 0)
        if min(train_len, test_len) < window_len:
            hint = " (is your array (C, T)? rows must be time steps: transpose it)" if series.shape[1] > t else ""
            _refuse("task.window_len", f"{name} is one series of {t} steps{hint}; split {list(fractions)} "
                    f"(task.split) it leaves {train_len} training and {test_len} test steps, and both need at least "
                    f"window_len = {window_len}: use a longer series or a shorter task.window_len")
        return split_series(series, overlap, fractions, names)
    n, t, _ = values.shape
    if t < window_len:
        _refuse("task.window_len", f"the series in {name} have {t} steps, fewer than window_len = {window_len}")
    total = float(sum(fractions))
    n_test = min(max(1, int(round(fractions[2] / total * n))), n - 1)
    n_valid = min(int(round(fractions[1] / total * n)), n - 1 - n_test)
    perm = np.random.default_rng(seed).permutation(n)
    index = {"test": perm[:n_test], "valid": perm[n_test:n_test + n_valid], "train": perm[n_test + n_valid:]}
    arrays = {k: np.ascontiguousarray(values[np.sort(v)].transpose(0, 2, 1).astype(np.float32))
              for k, v in index.items()}                                       # (n, C, T)
    proj = (0, 1) if len(names) > 1 else (0, 0)
    return SeriesData(arrays["train"], arrays["valid"], arrays["test"], names, proj)


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

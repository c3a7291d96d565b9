"""QM9 as EDM (Hoogeboom et al. 2022) uses it, read offline from the PyPI package `qm9pack`.

- 130,831 characterised molecules, at most 29 atoms of types H, C, N, O, F (coordinates in Å).
- Split: numpy seed 0 permutation of the molecules ordered by their GDB-9 index → 100,000 train / 17,748 valid /
  13,083 test (train keeps the permutation order, as EDM's files do).
- Conditional halves of the training split: numpy seed 42 permutation p of the 100,000 training rows;
  "first half" = p[:50,000] (the property classifier), "second half" = p[50,000:] (the generator), as in EDM.
- Heavy-atom subsets (`max_heavy_atoms = k`, 1..9): every split above restricted to the molecules with at most
  k atoms other than H, order kept. Over all 130,831 molecules k = 6 keeps 783 (≤ 20 atoms), k = 7 keeps 3,921
  (≤ 23), k = 8 keeps 21,800 (≤ 26); the halves are EDM's halves restricted in the same way.
- Properties in EDM's units: μ (D), α (Bohr³), HOMO, LUMO, gap (eV; MAEs are printed in meV), Cv (cal/mol K).

The CSVs are parsed once and cached as an uncompressed .npz (no pickle) under $RMFLOW_CACHE (default
~/.cache/rmflow). A cache that cannot be read or fails its checks is rebuilt.
"""
from __future__ import annotations

import importlib.util
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ATOM_TYPES = ("H", "C", "N", "O", "F")
MAX_ATOMS = 29
MAX_HEAVY_ATOMS = 9     # QM9 molecules have at most 9 atoms other than hydrogen (C, N, O, F)
NUM_MOLECULES = 130_831
SPLIT_SIZES = {"train": 100_000, "valid": 17_748, "test": 13_083}
HARTREE_TO_EV = 27.211386246
PROPERTIES = ("mu", "alpha", "homo", "lumo", "gap", "Cv")
PROPERTY_UNITS = {"mu": "D", "alpha": "Bohr³", "homo": "eV", "lumo": "eV", "gap": "eV", "Cv": "cal/mol K"}
_CSV_COLUMNS = {"mu": "Dipole_debye", "alpha": "Polarizability_bohr3", "homo": "HOMO_au", "lumo": "LUMO_au",
                "gap": "HOMO_LUMO_gap_au", "Cv": "Heatcapacity_Cv_cal_mol_K"}
_CSV_FILES = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")
CACHE_VERSION = 1
CACHE_NAME = f"qm9_v{CACHE_VERSION}.npz"

# EDM's training-split histogram of atom counts (configs/datasets_config.py, qm9 with H); sums to 100,000.
EDM_NODE_HISTOGRAM = {22: 3393, 17: 13025, 23: 4848, 21: 9970, 19: 13832, 20: 9482, 16: 10644, 13: 3060,
                      15: 7796, 25: 1506, 18: 13364, 12: 1689, 11: 807, 24: 539, 14: 5136, 26: 48, 7: 16,
                      10: 362, 8: 49, 9: 124, 27: 266, 4: 4, 29: 25, 6: 9, 5: 5, 3: 1}


class QM9Unavailable(RuntimeError):
    """The qm9pack package (which ships the QM9 CSVs) is not installed."""


def cache_dir() -> Path:
    """$RMFLOW_CACHE, or ~/.cache/rmflow."""
    return Path(os.environ.get("RMFLOW_CACHE") or Path.home() / ".cache" / "rmflow")


def qm9pack_data_dir() -> Path:
    """The folder with qm9pack's CSVs, found without importing qm9pack (its __init__ needs pkg_resources)."""
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise QM9Unavailable("QM9 needs the PyPI package 'qm9pack' (offline CSVs of all 130,831 molecules): "
                             "pip install 'rmflow[qm9]'  (or: pip install qm9pack rdkit)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    missing = [f for f in _CSV_FILES if not (folder / f).is_file()]
    if missing:
        raise QM9Unavailable(f"qm9pack is installed at {folder.parent} but lacks {missing}; reinstall it")
    return folder


# ----------------------------------------------------------------------------------------------- parsing
def _parse_positions(text: str) -> np.ndarray:
    """'[[x,y,z],[x,y,z],...]' -> (n, 3) float64 (the CSV writes numbers like '0.' that JSON rejects)."""
    flat = text.replace("[", "").replace("]", "").split(",")
    return np.asarray(flat, dtype=np.float64).reshape(-1, 3)


def _parse_elements(text: str) -> list[str]:
    """"['C','H','H']" -> ['C', 'H', 'H']."""
    return [s.strip().strip("'\"") for s in text.strip("[]").split(",")]


def parse_qm9pack(data_dir: Path | None = None) -> dict[str, np.ndarray]:
    """Read qm9pack's CSVs into arrays ordered by GDB-9 index:
    index (M,) int64, num_atoms (M,) int64, types (M, 29) int8 (0..4 = H..F, -1 padding),
    positions (M, 29, 3) float32 in Å (as in the file, not centred), props (M, 6) float64 in EDM's units."""
    import pandas as pd  # a dependency of qm9pack

    data_dir = data_dir or qm9pack_data_dir()
    cols = ["Index", "N_atoms", "Elements", "XYZ_Ang", *_CSV_COLUMNS.values()]
    frame = pd.concat([pd.read_csv(data_dir / f, usecols=cols) for f in _CSV_FILES], ignore_index=True)
    frame = frame.sort_values("Index", kind="stable").reset_index(drop=True)
    m = len(frame)
    code = {a: i for i, a in enumerate(ATOM_TYPES)}
    types = np.full((m, MAX_ATOMS), -1, dtype=np.int8)
    positions = np.zeros((m, MAX_ATOMS, 3), dtype=np.float32)
    num_atoms = frame["N_atoms"].to_numpy(dtype=np.int64)
    for i, (elements, xyz) in enumerate(zip(frame["Elements"], frame["XYZ_Ang"])):
        el = _parse_elements(elements)
        pos = _parse_positions(xyz)
        n = len(el)
        if n != num_atoms[i] or pos.shape[0] != n or n > MAX_ATOMS:
            raise ValueError(f"qm9pack row with Index {frame['Index'][i]}: inconsistent atom count")
        types[i, :n] = [code[a] for a in el]
        positions[i, :n] = pos
    props = np.stack([frame[_CSV_COLUMNS[p]].to_numpy(dtype=np.float64) for p in PROPERTIES], axis=1)
    for j, p in enumerate(PROPERTIES):
        if p in ("homo", "lumo", "gap"):
            props[:, j] *= HARTREE_TO_EV
    return {"index": frame["Index"].to_numpy(dtype=np.int64), "num_atoms": num_atoms, "types": types,
            "positions": positions, "props": props}


# ------------------------------------------------------------------------------------------------- cache
_KEYS = {"index": 1, "num_atoms": 1, "types": 2, "positions": 3, "props": 2, "version": 0}


def _check_arrays(arrays: dict[str, np.ndarray]) -> None:
    """Raise ValueError unless the arrays look like a complete QM9 table."""
    missing = set(_KEYS) - set(arrays)
    if missing:
        raise ValueError(f"missing arrays {sorted(missing)}")
    if int(arrays["version"]) != CACHE_VERSION:
        raise ValueError("cache version mismatch")
    m = arrays["index"].shape[0]
    if m != NUM_MOLECULES:
        raise ValueError(f"{m} molecules, expected {NUM_MOLECULES}")
    shapes = {"num_atoms": (m,), "types": (m, MAX_ATOMS), "positions": (m, MAX_ATOMS, 3), "props": (m, 6)}
    for k, shape in shapes.items():
        if arrays[k].shape != shape:
            raise ValueError(f"array {k!r} has shape {arrays[k].shape}, expected {shape}")
    counts = (arrays["types"] >= 0).sum(1)
    if not np.array_equal(counts, arrays["num_atoms"]):
        raise ValueError("atom counts disagree with the type table")
    if not np.all(np.diff(arrays["index"]) > 0):
        raise ValueError("molecules are not ordered by GDB-9 index")


def _read_cache(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    _check_arrays(arrays)
    return arrays


def load_arrays(cache: Path | None = None, rebuild: bool = False, log=None) -> dict[str, np.ndarray]:
    """All 130,831 molecules as arrays (see parse_qm9pack), from the cache or parsed and cached.

    A cache that cannot be opened or fails the checks (truncated, wrong shapes, other version) is rebuilt."""
    folder = Path(cache) if cache is not None else cache_dir()
    path = folder / CACHE_NAME
    if path.exists() and not rebuild:
        try:
            return _read_cache(path)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            if log:
                log(f"QM9 cache {path} is unusable ({err}); rebuilding it")
    arrays = parse_qm9pack()
    arrays["version"] = np.asarray(CACHE_VERSION)
    _check_arrays(arrays)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, path)  # atomic: a reader never sees a half-written cache
    return arrays


# ------------------------------------------------------------------------------------------------ splits
def edm_split_indices(num_molecules: int = NUM_MOLECULES) -> dict[str, np.ndarray]:
    """Row indices (into the index-ordered table) of EDM's train/valid/test split: numpy seed 0."""
    n_train = SPLIT_SIZES["train"]
    n_test = int(0.1 * num_molecules)
    n_valid = num_molecules - n_train - n_test
    perm = np.random.RandomState(0).permutation(num_molecules)
    return {"train": perm[:n_train], "valid": perm[n_train:n_train + n_valid], "test": perm[n_train + n_valid:]}


def edm_half_indices(train_rows: np.ndarray) -> dict[str, np.ndarray]:
    """EDM's halves of the training split (numpy seed 42): rows into the table."""
    n = len(train_rows)
    perm = np.random.RandomState(42).permutation(n)
    return {"first_half": train_rows[perm[: n // 2]], "second_half": train_rows[perm[n // 2:]]}


SPLITS = ("train", "valid", "test", "first_half", "second_half")


def heavy_atom_counts(types: np.ndarray) -> np.ndarray:
    """types (M, 29) ints (0..4 = H, C, N, O, F; -1 padding) -> (M,) int64: atoms other than hydrogen."""
    return (np.asarray(types) > 0).sum(1).astype(np.int64)


def check_max_heavy_atoms(max_heavy_atoms: int) -> None:
    """Raise ValueError unless max_heavy_atoms is 0 (no limit) or 1..9."""
    if not (isinstance(max_heavy_atoms, (int, np.integer)) and 0 <= max_heavy_atoms <= MAX_HEAVY_ATOMS):
        raise ValueError(f"max_heavy_atoms must be 0 (all of QM9) or 1..{MAX_HEAVY_ATOMS} (QM9 molecules have at "
                         f"most {MAX_HEAVY_ATOMS} heavy atoms); got {max_heavy_atoms!r}")


def restrict_rows(rows: np.ndarray, types: np.ndarray, max_heavy_atoms: int) -> np.ndarray:
    """The entries of `rows` (row indices into the table, any order) whose molecule has at most `max_heavy_atoms`
    heavy atoms, in their given order; `rows` itself when max_heavy_atoms is 0. types: the table's (M, 29)."""
    check_max_heavy_atoms(max_heavy_atoms)
    if not max_heavy_atoms:
        return rows
    return rows[heavy_atom_counts(types[rows]) <= max_heavy_atoms]


def _check_split_name(name: str) -> None:
    if name not in SPLITS:
        raise ValueError(f"unknown QM9 split {name!r}; use one of {SPLITS}")


def split_rows(name: str, arrays: dict, max_heavy_atoms: int = 0) -> np.ndarray:
    """Row indices (into the index-ordered table) of one of SPLITS: EDM's split (and halves) first, then restricted
    to molecules with at most max_heavy_atoms heavy atoms (0 = no limit), order kept."""
    _check_split_name(name)
    splits = edm_split_indices(len(arrays["index"]))
    if name in ("first_half", "second_half"):
        rows = edm_half_indices(splits["train"])[name]
    else:
        rows = splits[name]
    return restrict_rows(rows, arrays["types"], max_heavy_atoms)


@dataclass
class QM9Split:
    """Dense tensors of one split.

    positions (M, N, 3) with zero centre of mass over real atoms; types (M, N) long (-1 padding);
    mask (M, N) bool; props (M, 6) float64 in EDM's units; num_atoms (M,); index (M,) GDB-9 indices.
    N = 29 (MAX_ATOMS) unless the split was cropped (`crop`)."""

    positions: torch.Tensor
    types: torch.Tensor
    mask: torch.Tensor
    props: torch.Tensor
    num_atoms: torch.Tensor
    index: torch.Tensor

    def __len__(self) -> int:
        return self.positions.shape[0]

    def node_histogram(self) -> dict[int, int]:
        values, counts = torch.unique(self.num_atoms, return_counts=True)
        return {int(v): int(c) for v, c in zip(values, counts)}

    def type_counts(self) -> torch.Tensor:
        """(5,) int64: real atoms of each type H, C, N, O, F over the whole split."""
        return torch.bincount(self.types[self.mask], minlength=len(ATOM_TYPES))

    def heavy_atoms(self) -> torch.Tensor:
        """(M,) int64: atoms other than hydrogen per molecule."""
        return ((self.types > 0) & self.mask).sum(1)

    def subset(self, rows) -> "QM9Split":
        return QM9Split(*(getattr(self, f)[rows] for f in
                          ("positions", "types", "mask", "props", "num_atoms", "index")))

    def crop(self, num_atoms: int) -> "QM9Split":
        """The same molecules padded to `num_atoms` slots instead of N (atoms are stored first, padding last).
        Raises ValueError if a molecule has more atoms than that."""
        if len(self) and int(self.num_atoms.max()) > num_atoms:
            raise ValueError(f"cannot pad to {num_atoms} atoms: a molecule has {int(self.num_atoms.max())}")
        return QM9Split(self.positions[:, :num_atoms], self.types[:, :num_atoms], self.mask[:, :num_atoms],
                        self.props, self.num_atoms, self.index)


def split_statistics(split: QM9Split) -> dict:
    """What a model takes from its training data, as plain numbers: molecules, max atoms (the padding size),
    node-count histogram {n: count}, heavy-atom histogram {k: count}, atom-type counts and shares {H..F: ...}."""
    counts = split.type_counts()
    heavy, heavy_counts = torch.unique(split.heavy_atoms(), return_counts=True)
    total = max(int(counts.sum()), 1)
    return {"molecules": len(split), "max_atoms": int(split.num_atoms.max()) if len(split) else 0,
            "node_histogram": split.node_histogram(),
            "heavy_atom_histogram": {int(k): int(c) for k, c in zip(heavy, heavy_counts)},
            "type_counts": {a: int(c) for a, c in zip(ATOM_TYPES, counts)},
            "type_shares": {a: int(c) / total for a, c in zip(ATOM_TYPES, counts)}}


def load_split(name: str, cache: Path | None = None, arrays: dict | None = None,
               max_heavy_atoms: int = 0) -> QM9Split:
    """One of SPLITS as tensors (positions centred), restricted to molecules with at most max_heavy_atoms heavy
    atoms (0 = all; see split_rows). Padded to 29 atoms."""
    _check_split_name(name)
    arrays = arrays if arrays is not None else load_arrays(cache)
    rows = split_rows(name, arrays, max_heavy_atoms)
    types = torch.from_numpy(arrays["types"][rows].astype(np.int64))
    mask = types >= 0
    pos = torch.from_numpy(arrays["positions"][rows]).float()
    n = mask.sum(1, keepdim=True).clamp(min=1)
    com = (pos * mask[..., None]).sum(1, keepdim=True) / n[..., None]
    pos = (pos - com) * mask[..., None]
    return QM9Split(pos, types, mask, torch.from_numpy(arrays["props"][rows]),
                    torch.from_numpy(arrays["num_atoms"][rows]), torch.from_numpy(arrays["index"][rows]))


def mean_mad(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """EDM's context normalisation statistics: mean and mean absolute deviation over dim 0."""
    mean = values.mean(0)
    return mean, (values - mean).abs().mean(0)

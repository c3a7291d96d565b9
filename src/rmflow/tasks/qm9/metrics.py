"""EDM's evaluation of 3-D molecules (Hoogeboom et al. 2022), re-implemented.

Bond order of an atom pair at distance d (pm) from tabulated lengths L1 (single), L2 (double), L3 (triple):

    order = 0                      if d >= L1 + 10
          = 1                      if d <  L1 + 10 and not (d < L2 + 5)
          = 2                      if d <  L2 + 5  and not (d < L3 + 3)
          = 3                      if d <  L3 + 3
(pairs without a double / triple entry never reach that order). An atom is stable when the sum of its bond
orders equals its valence (H 1, C 4, N 3, O 2, F 1); a molecule is stable when all its atoms are.

Validity: an RDKit molecule with those bonds is sanitised; it is valid when sanitisation succeeds, and its
largest fragment's canonical SMILES is kept. Uniqueness = distinct valid SMILES / valid; novelty = unique
SMILES not among the training SMILES / unique (both as in EDM).

Inputs are checked once at each public function: atom types of real atoms must be indices 0..4 (types on padding
are ignored, e.g. the data's -1) and positions / types / mask must agree in shape; both raise ValueError saying
what was expected. Arrays or torch tensors are accepted.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .data import ATOM_TYPES

VALENCE = np.array([1, 4, 3, 2, 1])   # H, C, N, O, F
MARGINS = (10.0, 5.0, 3.0)            # pm, for single / double / triple

_SINGLE = {("H", "H"): 74, ("H", "C"): 109, ("H", "N"): 101, ("H", "O"): 96, ("H", "F"): 92,
           ("C", "C"): 154, ("C", "N"): 147, ("C", "O"): 143, ("C", "F"): 135, ("N", "N"): 145,
           ("N", "O"): 140, ("N", "F"): 136, ("O", "O"): 148, ("O", "F"): 142, ("F", "F"): 142}
_DOUBLE = {("C", "C"): 134, ("C", "N"): 129, ("C", "O"): 120, ("N", "N"): 125, ("N", "O"): 121,
           ("O", "O"): 121}
_TRIPLE = {("C", "C"): 120, ("C", "N"): 116, ("C", "O"): 113, ("N", "N"): 110}


def _table(entries: dict) -> np.ndarray:
    """Symmetric 5×5 table of bond lengths in pm; NaN where the bond does not exist."""
    t = np.full((5, 5), np.nan)
    for (a, b), v in entries.items():
        i, j = ATOM_TYPES.index(a), ATOM_TYPES.index(b)
        t[i, j] = t[j, i] = v
    return t


BOND_LENGTHS = np.stack([_table(_SINGLE), _table(_DOUBLE), _table(_TRIPLE)])   # (3, 5, 5) pm


def _array(a, dtype=None) -> np.ndarray:
    return np.asarray(a.detach().cpu() if torch.is_tensor(a) else a, dtype=dtype)


def _checked(positions, types, mask, batched: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positions float64, types int64 with padding set to 0, mask bool) after checking shapes and atom types.

    batched: positions (B, N, 3), types (B, N), mask (B, N); otherwise one molecule, (N, 3), (N,), (N,)."""
    positions, types, mask = _array(positions, np.float64), _array(types), _array(mask, bool)
    lead = mask.shape
    if (mask.ndim != (2 if batched else 1) or types.shape != lead or positions.shape != (*lead, 3)):
        want = "(B, N, 3), (B, N), (B, N)" if batched else "(N, 3), (N,), (N,)"
        raise ValueError(f"positions, types and mask must have shapes {want}; got {positions.shape}, "
                         f"{types.shape}, {mask.shape}")
    bad = mask & ~np.isin(types, np.arange(len(ATOM_TYPES)))     # floats like 1.5, and NaN, are bad too
    if bad.any():
        where = np.argwhere(bad)[0]
        first = f"molecule {where[0]}, atom {where[1]}" if batched else f"atom {where[0]}"
        raise ValueError(f"atom types must be indices 0..4 (H, C, N, O, F); got values "
                         f"{np.unique(types[bad])[:10].tolist()} at {int(bad.sum())} real atom(s), first at {first}")
    return positions, np.where(mask, types, 0).astype(np.int64), mask


def bond_orders(positions: np.ndarray, types: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """EDM's distance-table bond orders.

    positions: (B, N, 3) in Å; types: (B, N) ints in 0..4 (any value on padding); mask: (B, N) bool (real atoms).
    Returns (B, N, N) int8 with zeros on the diagonal and wherever an atom is padding or a distance is NaN.
    Raises ValueError for mismatched shapes or a real atom's type outside 0..4."""
    return _bond_orders(*_checked(positions, types, mask))


def _bond_orders(positions: np.ndarray, types: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """bond_orders on checked inputs (_checked's output)."""
    diff = positions[:, :, None, :] - positions[:, None, :, :]
    dist = np.sqrt((diff ** 2).sum(-1)) * 100.0                                    # pm
    ti, tj = types[:, :, None], types[:, None, :]
    thresholds = [BOND_LENGTHS[k][ti, tj] + MARGINS[k] for k in range(3)]          # NaN = no such bond
    with np.errstate(invalid="ignore"):
        single, double, triple = (dist < thr for thr in thresholds)               # NaN compares False
    order = np.where(single, np.where(double, np.where(triple, 3, 2), 1), 0).astype(np.int8)
    pair = mask[:, :, None] & mask[:, None, :] & ~np.eye(mask.shape[1], dtype=bool)[None]
    return np.where(pair, order, 0).astype(np.int8)


def stability(positions, types, mask) -> tuple[np.ndarray, np.ndarray]:
    """Per-atom stability (B, N) bool (False on padding) and per-molecule stability (B,) bool.

    Shapes and types as for bond_orders. A molecule without atoms is counted unstable."""
    return _stability(*_checked(positions, types, mask))


def _stability(positions, types, mask) -> tuple[np.ndarray, np.ndarray]:
    valence_sum = _bond_orders(positions, types, mask).sum(-1)
    want = VALENCE[types]
    atom_ok = (valence_sum == want) & mask
    mol_ok = (atom_ok | ~mask).all(1) & mask.any(1)
    return atom_ok, mol_ok


def build_rdkit(positions, types, mask, orders=None):
    """An RDKit RWMol (not sanitised) of one molecule: positions (N, 3), types (N,) in 0..4, mask (N,).

    orders: (N, N) bond orders, or None to compute them with bond_orders."""
    positions, types, mask = _checked(positions, types, mask, batched=False)
    return _build_rdkit(positions, types, mask, _checked_orders(orders, len(mask)))


def _checked_orders(orders, n: int) -> np.ndarray | None:
    if orders is None:
        return None
    orders = _array(orders)
    if orders.shape != (n, n):
        raise ValueError(f"orders must have shape (N, N) = {(n, n)} for N = {n} atoms; got {orders.shape}")
    return orders


def _build_rdkit(positions, types, mask, orders=None):
    """build_rdkit on checked inputs."""
    from rdkit import Chem

    idx = np.flatnonzero(mask)
    if orders is None:
        orders = _bond_orders(positions[None], types[None], mask[None])[0]
    bond_type = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE}
    mol = Chem.RWMol()
    for i in idx:
        mol.AddAtom(Chem.Atom(ATOM_TYPES[int(types[i])]))
    for a, i in enumerate(idx):
        for b in range(a + 1, len(idx)):
            o = int(orders[i, idx[b]])
            if o:
                mol.AddBond(a, b, bond_type[o])
    return mol


def _sanitised_smiles(mol):
    from rdkit import Chem

    try:
        Chem.SanitizeMol(mol)
    except Exception:   # RDKit raises ValueError subclasses (valence, kekulisation); never let one escape
        return None
    return Chem.MolToSmiles(mol)


def molecule_smiles(positions, types, mask, orders=None) -> str | None:
    """Largest-fragment canonical SMILES if the molecule sanitises, else None (EDM's validity).

    One molecule: positions (N, 3), types (N,) in 0..4, mask (N,); orders (N, N) or None, as for build_rdkit."""
    positions, types, mask = _checked(positions, types, mask, batched=False)
    return _molecule_smiles(positions, types, mask, _checked_orders(orders, len(mask)))


def _molecule_smiles(positions, types, mask, orders=None) -> str | None:
    from rdkit import Chem

    if not mask.any():
        return None
    mol = _build_rdkit(positions, types, mask, orders)
    if _sanitised_smiles(mol) is None:
        return None
    frags = Chem.GetMolFrags(mol, asMols=True, sanitizeFrags=False)
    largest = max(frags, default=mol, key=lambda m: m.GetNumAtoms())
    return _sanitised_smiles(Chem.Mol(largest))


def smiles_list(positions, types, mask, batch: int = 2048) -> list[str | None]:
    """molecule_smiles for every molecule of a batch (B, N, ...); RDKit's sanitisation messages are silenced.

    Shapes and types as for bond_orders."""
    return _smiles_list(*_checked(positions, types, mask), batch)


def _smiles_list(positions, types, mask, batch: int = 2048) -> list[str | None]:
    from rdkit import RDLogger

    RDLogger.DisableLog("rdApp.*")
    out = []
    for s in range(0, len(positions), batch):
        orders = _bond_orders(positions[s:s + batch], types[s:s + batch], mask[s:s + batch])
        for k in range(orders.shape[0]):
            out.append(_molecule_smiles(positions[s + k], types[s + k], mask[s + k], orders[k]))
    return out


def _rate(num: float, den: float) -> float:
    return float(num) / den if den else math.nan


def evaluate_molecules(positions, types, mask, training_smiles: set | None = None,
                       batch: int = 2048, known_sets: dict[str, set] | None = None) -> dict[str, float]:
    """EDM's metrics for B molecules: positions (B, N, 3) Å, types (B, N) 0..4, mask (B, N).

    Returns atom_stable (stable atoms / real atoms), mol_stable, valid, unique (of valid), novel (of unique;
    only when training_smiles is given), copied (only then too: the share of all B molecules, repeats counted,
    that are exact copies of a training molecule — memorisation as a user meets it, which `novel` hides when one
    training molecule is drawn many times) and the counts; for every (name, smiles set) of known_sets also
    name = unique SMILES outside that set / unique (e.g. novelty against all of QM9, not only the training part).
    Empty input gives NaN rates, never an exception; mismatched shapes or a real atom's type outside 0..4 raise
    ValueError."""
    positions, types, mask = _checked(positions, types, mask)
    n_mol = positions.shape[0]
    n_atoms, n_stable_atoms, n_stable_mols = 0, 0, 0
    for s in range(0, n_mol, batch):
        atom_ok, mol_ok = _stability(positions[s:s + batch], types[s:s + batch], mask[s:s + batch])
        n_atoms += int(mask[s:s + batch].sum())
        n_stable_atoms += int(atom_ok.sum())
        n_stable_mols += int(mol_ok.sum())
    smiles = _smiles_list(positions, types, mask, batch)
    valid = [s for s in smiles if s is not None]
    unique = set(valid)
    out = {"atom_stable": _rate(n_stable_atoms, n_atoms), "mol_stable": _rate(n_stable_mols, n_mol),
           "valid": _rate(len(valid), n_mol), "unique": _rate(len(unique), len(valid)),
           "num_molecules": float(n_mol)}
    if training_smiles is not None:
        out["novel"] = _rate(len(unique - training_smiles), len(unique))
        out["copied"] = _rate(sum(s in training_smiles for s in valid), n_mol)
    for name, known in (known_sets or {}).items():
        out[name] = _rate(len(unique - known), len(unique))
    return out


QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def geometry_report(positions, types, mask) -> dict:
    """Where stability is lost: per-type atom stability, valence errors and bond-length spread (B molecules).

    positions (B, N, 3) Å, types (B, N) 0..4, mask (B, N). Returns stable_<type> (stable share of that type's real
    atoms; NaN without such atoms), under_valent / over_valent (share of real atoms whose bond-order sum is below /
    above the valence), h_bond_q (the 5/25/50/75/95 % quantiles of each hydrogen's distance to its nearest heavy atom,
    Å) and heavy_nn_q (the same for each heavy atom's nearest heavy neighbour). The data's C–H, N–H and O–H bonds
    (1.09 / 1.01 / 0.96 Å) make h_bond_q tight; its spread in samples measures how precisely a model places atoms."""
    positions, types, mask = _checked(positions, types, mask)
    valence = _bond_orders(positions, types, mask).sum(-1)
    want = VALENCE[types]
    out = {}
    for i, name in enumerate(ATOM_TYPES):
        of_type = mask & (types == i)
        out[f"stable_{name}"] = _rate(int((of_type & (valence == want)).sum()), int(of_type.sum()))
    n = int(mask.sum())
    out["under_valent"] = _rate(int((mask & (valence < want)).sum()), n)
    out["over_valent"] = _rate(int((mask & (valence > want)).sum()), n)
    dist = np.linalg.norm(positions[:, :, None] - positions[:, None], axis=-1)            # (B, N, N)
    heavy = mask & (types != 0)
    to_heavy = np.where(heavy[:, None, :] & ~np.eye(mask.shape[1], dtype=bool), dist, np.inf).min(-1)   # (B, N)
    for key, rows in (("h_bond_q", mask & (types == 0)), ("heavy_nn_q", heavy)):
        d = to_heavy[rows & np.isfinite(to_heavy)]
        out[key] = [float(q) for q in np.quantile(d, QUANTILES)] if d.size else [math.nan] * len(QUANTILES)
    return out


def decode(x: torch.Tensor, mask: torch.Tensor, num_pos: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Model samples (B, N, 3 + 5) and mask (B, N, 1) -> positions (B, N, 3), types (B, N) argmax, mask (B, N).

    The argmax over the 5 type features always gives indices 0..4. Raises ValueError for other shapes."""
    n_types = len(ATOM_TYPES)
    if x.dim() != 3 or x.shape[-1] != num_pos + n_types or tuple(mask.shape) not in (
            (*x.shape[:2], 1), tuple(x.shape[:2])):
        raise ValueError(f"decode expects x (B, N, {num_pos} + {n_types}) and mask (B, N, 1) or (B, N); got "
                         f"{tuple(x.shape)} and {tuple(mask.shape)}")
    m = mask.reshape(x.shape[0], x.shape[1]) > 0.5
    return x[..., :num_pos], x[..., num_pos:].argmax(-1), m

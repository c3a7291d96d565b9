"""QM9 molecule generation (RMFlow §5.2), unconditional or context-to-molecule, evaluated as EDM does.

Data sample: x (29, 3 + 5) = [positions in Å with zero centre of mass | type_scale · one-hot(H, C, N, O, F)],
mask (29, 1). Noise lives in the zero-centre-of-mass subspace (space.ZeroCoMSpace). Unconditional models train
on EDM's 100,000-molecule training split and sample atom counts from its histogram; conditional models
(`task.condition: alpha`, …) train on the second half and are given (property, atom count) pairs drawn jointly
from that half. `task.max_heavy_atoms: k` restricts every split to the molecules with at most k heavy atoms (EDM's
split restricted, data.split_rows); the atom-count histogram, the padding size (N = the largest training molecule
instead of 29), the atom-type statistics and the context normalisation then come from the subset's own parts.
See data.py (split, units), metrics.py (EDM's evaluation), conditioning.py (the two routes).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch

from ...errors import ConfigError, check
from ...nets import EGNN
from ..base import Batch, Task, TaskSpec, build_rmflow, register_task
from .conditioning import ROUTES, MoleculeNet, PropertyEncoder
from .data import (ATOM_TYPES, MAX_HEAVY_ATOMS, PROPERTIES, QM9Split, cache_dir, load_arrays, load_split,
                   mean_mad, split_statistics)
from .metrics import decode, evaluate_molecules, smiles_list
from .space import ZeroCoMSpace

NUM_TYPES = len(ATOM_TYPES)


@dataclass
class QM9Data:
    name: str = "qm9"
    condition: str = ""             # "" (unconditional) or one of mu, alpha, homo, lumo, gap, Cv
    condition_route: str = "encoder"  # encoder (guided encoding φ_ω) | node (EGNN node features) | both
    encode_positions: bool = False  # φ_ω also places atoms (breaks the source's E(3) invariance)
    type_scale: float = 0.25        # one-hot atom types are multiplied by this (EDM: 1/4)
    max_heavy_atoms: int = 0        # 0 = all of QM9; k = 1..9: only molecules with <= k atoms other than H, in
    #                                 every split (EDM's split restricted); statistics and padding from that subset
    max_train: int = 0              # use only the first K training molecules (0 = all); for quick tests
    novelty: bool = True            # compute novelty against the training SMILES (cached after the first run)
    novelty_qm9: bool = False       # also `novel_qm9`: novelty against all 130,831 QM9 molecules (every split, no
    #                                 heavy-atom limit); their SMILES take a few CPU minutes once, then are cached
    cache: str = ""                 # cache folder; "" = $RMFLOW_CACHE or ~/.cache/rmflow
    classifier: str = ""            # conditional runs: path (no suffix) of a property classifier trained with
    #                                 `python -m rmflow.tasks.qm9.classifier`; adds the MAE column

    def validate(self, key: str) -> None:
        check(self.condition in ("",) + PROPERTIES, f"{key}.condition", f"must be '' or one of {PROPERTIES}")
        check(self.condition_route in ROUTES, f"{key}.condition_route", f"must be one of {ROUTES}")
        check(self.type_scale > 0, f"{key}.type_scale", "must be > 0")
        check(self.max_train >= 0, f"{key}.max_train", "must be >= 0")
        check(isinstance(self.max_heavy_atoms, int) and 0 <= self.max_heavy_atoms <= MAX_HEAVY_ATOMS,
              f"{key}.max_heavy_atoms", f"must be 0 (all of QM9) or 1..{MAX_HEAVY_ATOMS} heavy atoms (QM9 has at "
              f"most {MAX_HEAVY_ATOMS}); got {self.max_heavy_atoms!r}")


@dataclass
class QM9Model:
    hidden: int = 256
    layers: int = 9
    time_dim: int = 64
    edge_mlp: bool = True           # per-edge H×H layers (EDM-like); false is ~5x cheaper on CPU
    coords_range: float = 15.0      # total bound on a position update, split over the layers
    norm_constant: float = 1.0      # (p_i - p_j) / (d_ij + norm_constant)
    distance_rbf: int = 0           # K > 0: K Gaussian radial basis functions of each distance, centres on
    rbf_max: float = 5.0            # [0, rbf_max] Å, join the edge input (nets/egnn.py); 0 = d² only
    encoder_hidden: int = 64        # φ_ω width
    time_scale: float = 10.0        # sinusoid frequencies of the time embedding: from time_scale down to
    time_max_period: float = 10000.0  # time_scale / time_max_period (rad per unit t); 1000 / 10000 made
    #                                   L_CMFM's target blow up here, 10 / 10000 did not (docs/results/qm9.md)

    def validate(self, key: str) -> None:
        for name in ("hidden", "layers", "time_dim", "encoder_hidden"):
            check(getattr(self, name) >= 1, f"{key}.{name}", "must be >= 1")
        check(self.time_dim % 2 == 0, f"{key}.time_dim", "must be even")
        check(self.coords_range > 0, f"{key}.coords_range", "must be > 0")
        check(self.norm_constant >= 0, f"{key}.norm_constant", "must be >= 0")
        check(self.distance_rbf >= 0, f"{key}.distance_rbf", "must be >= 0 (0 = no radial basis)")
        check(self.rbf_max > 0, f"{key}.rbf_max", "must be > 0 (Å)")
        check(self.time_scale > 0, f"{key}.time_scale", "must be > 0")
        check(self.time_max_period >= 1, f"{key}.time_max_period", "must be >= 1")


def to_model_space(split: QM9Split, type_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x (M, N, 8), mask (M, N, 1)) from a split padded to N atoms: centred positions and scaled one-hot types."""
    onehot = torch.nn.functional.one_hot(split.types.clamp(min=0), NUM_TYPES).float() * split.mask[..., None]
    x = torch.cat([split.positions.float(), type_scale * onehot], dim=-1)
    return x, split.mask[..., None].float()


class QM9Task(Task):
    metric_format = {"atom_stable": ("atom stab.", ".4f"), "mol_stable": ("mol. stab.", ".4f"),
                     "valid": ("valid", ".4f"), "unique": ("unique (of valid)", ".4f"),
                     "novel": ("novel (of unique)", ".4f"), "copied": ("copies of training (of all)", ".4f"),
                     "novel_qm9": ("novel vs QM9 (of unique)", ".4f"),
                     "mae": ("property MAE", ".4g"), "samples_per_s": ("samples/s", ".1f")}

    def __init__(self, cfg, arrays: dict | None = None):
        self.cfg = cfg
        t = cfg.task
        self.cache = t.cache or None
        arrays = arrays if arrays is not None else load_arrays(self.cache)
        self.split_name = "second_half" if t.condition else "train"
        self.train = self._training_split(arrays)
        self.max_atoms = self.train.positions.shape[1]          # N: the padding size of every batch and sample
        self.x, self.mask = to_model_space(self.train, t.type_scale)
        self.space = ZeroCoMSpace(3)
        hist = torch.bincount(self.train.num_atoms, minlength=self.max_atoms + 1).float()
        self.node_probs = hist / hist.sum()                       # (N + 1,): P(atom count = n), training part
        self.prop_index = PROPERTIES.index(t.condition) if t.condition else None
        if t.condition:
            # EDM normalises the context of second-half models with the validation split's mean and MAD (here
            # the validation split restricted to the same heavy-atom subset)
            valid = load_split("valid", arrays=arrays, max_heavy_atoms=t.max_heavy_atoms)
            self.prop_mean, self.prop_mad = mean_mad(valid.props[:, self.prop_index])
        self._qm9_arrays = arrays if t.novelty_qm9 else None     # kept only for the all-QM9 novelty SMILES
        self._train_smiles = None
        self._qm9_smiles = None

    def _training_split(self, arrays: dict) -> QM9Split:
        """The training part: EDM's split (or second half) restricted to the heavy-atom subset, then the first
        max_train molecules. A subset is padded to its largest training molecule; full QM9 keeps 29 slots."""
        t = self.cfg.task
        split = load_split(self.split_name, arrays=arrays, max_heavy_atoms=t.max_heavy_atoms)
        if t.max_train:
            split = split.subset(slice(0, t.max_train))
        if not len(split):
            raise ConfigError(f"config key 'task.max_heavy_atoms': no {self.split_name} molecule has at most "
                              f"{t.max_heavy_atoms} heavy atoms")
        return split.crop(int(split.num_atoms.max())) if t.max_heavy_atoms else split

    def statistics(self) -> dict:
        """The training part's statistics (data.split_statistics): molecules, padding size, node-count and
        heavy-atom histograms, atom-type counts and shares."""
        return split_statistics(self.train)

    # ---------------------------------------------------------------------------------------- model
    def build_model(self):
        m, t = self.cfg.model, self.cfg.task
        node = bool(t.condition) and t.condition_route in ("node", "both")
        egnn = EGNN(NUM_TYPES, hidden=m.hidden, layers=m.layers, time_dim=m.time_dim, cond_dim=1 if node else 0,
                    coords_range=m.coords_range, norm_constant=m.norm_constant, edge_mlp=m.edge_mlp,
                    time_scale=m.time_scale, time_max_period=m.time_max_period, distance_rbf=m.distance_rbf,
                    rbf_max=m.rbf_max)
        encoder = None
        if t.condition and t.condition_route in ("encoder", "both"):
            encoder = PropertyEncoder(1, NUM_TYPES, self.max_atoms, m.encoder_hidden, 3, t.encode_positions)
        return build_rmflow(MoleculeNet(egnn, node), self.cfg, self.space, encoder)

    # ----------------------------------------------------------------------------------------- data
    def _cond(self, rows) -> dict | None:
        if self.prop_index is None:
            return None
        p = self.train.props[rows, self.prop_index]
        return {"props": ((p - self.prop_mean) / self.prop_mad).float()[:, None],
                "num_atoms": self.train.num_atoms[rows].float()}

    def normalise(self, values: torch.Tensor) -> torch.Tensor:
        return (values - self.prop_mean) / self.prop_mad

    def batch(self, batch_size: int) -> Batch:
        rows = torch.randint(len(self.x), (batch_size,))
        return Batch(self.x[rows], self._cond(rows), self.mask[rows])

    def reference(self, num_samples: int, seed: int) -> Batch:
        """Real training molecules whose atom counts follow the training histogram exactly.

        The counts are the histogram's quantiles at (i + 0.5)/num_samples in a fixed shuffled order, so they do
        not depend on `seed`; the seed only picks which molecule of each count is drawn. Two references of the
        same size therefore share their mask, and one can be scored as "data" under the other's mask. Sampling
        uses only the mask (and, when conditional, the molecule's property: properties given the atom count)."""
        cdf = torch.cumsum(self.node_probs.double(), 0)
        q = (torch.arange(num_samples, dtype=torch.float64) + 0.5) / num_samples
        counts = torch.searchsorted(cdf, q).clamp(max=self.max_atoms)
        counts = counts[torch.randperm(num_samples, generator=torch.Generator().manual_seed(0))]
        order = torch.argsort(self.train.num_atoms, stable=True)
        start = torch.searchsorted(self.train.num_atoms[order], counts)
        size = torch.bincount(self.train.num_atoms, minlength=self.max_atoms + 1)[counts]
        u = torch.rand(num_samples, generator=torch.Generator().manual_seed(seed))
        rows = order[start + (u * size).long().clamp(max=size - 1)]
        return Batch(self.x[rows], self._cond(rows), self.mask[rows])

    # ----------------------------------------------------------------------------------- evaluation
    def _cached_smiles(self, name: str, split: QM9Split) -> set:
        """Largest-fragment SMILES of a split's molecules through the evaluation pipeline, cached as JSON under
        the cache folder as qm9_smiles_{name}_v1.json (recomputed when the cached list has the wrong length)."""
        folder = self.cache or str(cache_dir())
        path = os.path.join(folder, f"qm9_smiles_{name}_v1.json")
        smiles = None
        if os.path.exists(path):
            try:
                smiles = json.loads(open(path).read())
            except (OSError, ValueError):
                smiles = None
        if not isinstance(smiles, list) or len(smiles) != len(split):
            smiles = smiles_list(split.positions, split.types.clamp(min=0), split.mask)
            os.makedirs(folder, exist_ok=True)
            tmp = f"{path}.tmp{os.getpid()}"
            with open(tmp, "w") as fh:
                json.dump(smiles, fh)
            os.replace(tmp, path)
        return {s for s in smiles if s is not None}

    def training_smiles(self) -> set:
        """SMILES of the training part (the heavy-atom subset's, when one is set): what `novel` compares with."""
        if self._train_smiles is None:
            t = self.cfg.task
            name = (self.split_name + (f"_heavy{t.max_heavy_atoms}" if t.max_heavy_atoms else "")
                    + (f"_first{t.max_train}" if t.max_train else ""))
            self._train_smiles = self._cached_smiles(name, self.train)
        return self._train_smiles

    def qm9_smiles(self) -> set:
        """SMILES of all 130,831 QM9 molecules (train, valid and test, any size): what `novel_qm9` compares with."""
        if self._qm9_smiles is None:
            arrays = self._qm9_arrays if self._qm9_arrays is not None else load_arrays(self.cache)
            parts = [load_split(name, arrays=arrays) for name in ("train", "valid", "test")]
            every = QM9Split(*(torch.cat([getattr(p, f) for p in parts]) for f in
                               ("positions", "types", "mask", "props", "num_atoms", "index")))
            self._qm9_smiles = self._cached_smiles("all", every)
            self._qm9_arrays = None
        return self._qm9_smiles

    def evaluate(self, samples, reference):
        pos, types, mask = decode(samples, reference.mask)
        known = self.training_smiles() if self.cfg.task.novelty else None
        more = {"novel_qm9": self.qm9_smiles()} if self.cfg.task.novelty_qm9 else None
        out = evaluate_molecules(pos, types, mask, known, known_sets=more)
        if self.prop_index is not None and self.cfg.task.classifier:
            from .classifier import conditional_mae, load_classifier
            model, meta = load_classifier(self.cfg.task.classifier, self.cfg.train.device)
            if meta["property"] != self.cfg.task.condition:
                raise ValueError(f"config key 'task.classifier': it predicts {meta['property']!r}, "
                                 f"not the condition {self.cfg.task.condition!r}")
            target = reference.cond["props"][:, 0].double() * self.prop_mad + self.prop_mean
            out["mae"] = conditional_mae(model, meta, pos, types, mask, target)
        return out

    def plot(self, panels, reference, path):
        from .plots import molecule_grid
        grid = {label: decode(x, reference.mask[:len(x)]) for label, x in panels.items()}
        molecule_grid(grid, path)


SPEC = register_task(TaskSpec("qm9", QM9Data, QM9Model, QM9Task))

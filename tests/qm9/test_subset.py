"""QM9 heavy-atom subsets (task.max_heavy_atoms): EDM's split restricted, statistics from the subset's training part,
novelty sets, validation and the qm9-small preset.

Most tests run on a synthetic table with QM9's shape (130,831 rows, so EDM's split applies unchanged) whose heavy-atom
counts, hydrogen counts, atom types and properties are drawn at random; only the last test reads the real QM9."""
import numpy as np
import pytest
import torch

from rmflow.config import ConfigError, build_config, load_config, to_dict
from rmflow.tasks.qm9 import data as D

M = D.NUM_MOLECULES


@pytest.fixture(scope="module")
def synthetic():
    """A QM9-shaped table: heavy atoms 2..9 (types C, N, O, F), 0..20 hydrogens, H first in even rows; the
    properties grow with the heavy-atom count, so a subset's statistics differ from the full table's."""
    rng = np.random.RandomState(3)
    heavy = rng.randint(2, 10, M)
    hyd = rng.randint(0, 21, M)
    n = heavy + hyd
    slot = np.arange(D.MAX_ATOMS)[None]
    heavy_type = rng.randint(1, 5, (M, D.MAX_ATOMS))
    is_heavy = np.where((np.arange(M) % 2 == 0)[:, None], (slot >= hyd[:, None]) & (slot < n[:, None]),
                        slot < heavy[:, None])
    types = np.where(slot < n[:, None], np.where(is_heavy, heavy_type, 0), -1).astype(np.int8)
    positions = (rng.randn(M, D.MAX_ATOMS, 3) * (slot < n[:, None])[..., None]).astype(np.float32)
    props = heavy[:, None] + rng.randn(M, 6)
    return {"index": np.arange(1, M + 1, dtype=np.int64), "num_atoms": n.astype(np.int64), "types": types,
            "positions": positions, "props": props, "version": np.asarray(D.CACHE_VERSION)}


def make_cfg(cache, **task):
    data = {"name": "t", "task": {"name": "qm9", "cache": str(cache), "novelty": False, **task},
            "model": {"hidden": 8, "layers": 1, "time_dim": 8, "edge_mlp": False, "encoder_hidden": 8},
            "train": {"steps": 2, "batch_size": 4, "progress": False, "warmup_steps": 0}}
    return build_config(data)


def make_task(cfg, arrays):
    from rmflow.tasks.qm9 import QM9Task
    return QM9Task(cfg, arrays=arrays)


def expected_rows(arrays, name, k):
    """The reference restriction, written independently: EDM's rows of `name` whose molecule has <= k heavy atoms."""
    s = D.edm_split_indices()
    rows = D.edm_half_indices(s["train"])[name] if "half" in name else s[name]
    heavy = ((arrays["types"] > 0).sum(1))
    return np.array([r for r in rows if heavy[r] <= k], dtype=np.int64)


# ------------------------------------------------------------------------------------------------------ filter
def test_restrict_rows_keeps_exactly_the_small_molecules_in_order():
    types = np.full((6, D.MAX_ATOMS), -1, dtype=np.int8)
    for row, atoms in enumerate([[1, 0, 0], [1, 1, 2, 0], [0, 3, 0, 4, 1], [1] * 9, [2, 0, 0], [0, 0]]):
        types[row, :len(atoms)] = atoms
    assert D.heavy_atom_counts(types).tolist() == [1, 3, 3, 9, 1, 0]
    rows = np.array([5, 3, 2, 1, 0, 4])
    assert D.restrict_rows(rows, types, 1).tolist() == [5, 0, 4]       # hydrogen-only and one-heavy rows, order kept
    assert D.restrict_rows(rows, types, 3).tolist() == [5, 2, 1, 0, 4]
    assert D.restrict_rows(rows, types, 0) is rows                       # 0 = no limit
    for bad in (-1, 10, 2.5, "7"):
        with pytest.raises(ValueError, match="max_heavy_atoms"):
            D.restrict_rows(rows, types, bad)


@pytest.mark.parametrize("k", [3, 7])
def test_subset_is_edm_split_restricted(synthetic, k):
    got = {name: D.split_rows(name, synthetic, k) for name in D.SPLITS}
    for name in D.SPLITS:
        assert np.array_equal(got[name], expected_rows(synthetic, name, k)), name
    small = np.flatnonzero((synthetic["types"] > 0).sum(1) <= k)
    parts = np.concatenate([got["train"], got["valid"], got["test"]])
    assert np.array_equal(np.sort(parts), small)                         # a partition of the subset
    halves = np.concatenate([got["first_half"], got["second_half"]])
    assert np.array_equal(np.sort(halves), np.sort(got["train"]))
    split = D.load_split("valid", arrays=synthetic, max_heavy_atoms=k)
    assert np.array_equal(split.index.numpy(), synthetic["index"][got["valid"]])
    assert int(split.heavy_atoms().max()) <= k < 9


# ------------------------------------------------------------------------------------------ training statistics
def test_statistics_padding_and_histogram_come_from_the_subsets_training_part(synthetic, tmp_path):
    k = 3
    task = make_task(make_cfg(tmp_path, max_heavy_atoms=k), synthetic)
    rows = expected_rows(synthetic, "train", k)
    n = synthetic["num_atoms"][rows]
    full_n = synthetic["num_atoms"][D.edm_split_indices()["train"]]
    assert n.max() < full_n.max()                                        # the full set would pad differently
    assert task.max_atoms == n.max() and task.x.shape == (len(rows), n.max(), 8)
    assert task.batch(5).x.shape == (5, n.max(), 8) and task.reference(7, seed=0).mask.shape == (7, n.max(), 1)
    want = np.bincount(n, minlength=n.max() + 1) / len(n)
    assert np.allclose(task.node_probs.numpy(), want)
    stats = task.statistics()
    counts = np.bincount(synthetic["types"][rows].ravel() + 1, minlength=6)[1:]   # -1 padding dropped
    full = np.bincount(synthetic["types"][D.edm_split_indices()["train"]].ravel() + 1, minlength=6)[1:]
    assert list(stats["type_counts"].values()) == counts.tolist() != full.tolist()
    assert stats["type_shares"]["H"] == pytest.approx(counts[0] / counts.sum())
    assert set(stats["heavy_atom_histogram"]) <= set(range(2, k + 1))
    assert stats["molecules"] == len(rows) and stats["max_atoms"] == n.max()


def test_conditional_subset_uses_restricted_half_and_validation(synthetic, tmp_path):
    k = 4
    task = make_task(make_cfg(tmp_path, max_heavy_atoms=k, condition="alpha"), synthetic)
    assert np.array_equal(task.train.index.numpy(), synthetic["index"][expected_rows(synthetic, "second_half", k)])
    alpha = synthetic["props"][expected_rows(synthetic, "valid", k), 1]
    assert float(task.prop_mean) == pytest.approx(alpha.mean())         # the full table's mean is about 5.5
    assert float(task.prop_mad) == pytest.approx(np.abs(alpha - alpha.mean()).mean())
    assert task.build_model().source.encoder.max_atoms == task.max_atoms


def test_no_limit_keeps_all_of_qm9_and_29_slots(synthetic, tmp_path):
    task = make_task(make_cfg(tmp_path, max_train=50), synthetic)
    assert task.max_atoms == D.MAX_ATOMS and len(task.train) == 50
    assert np.array_equal(task.train.index.numpy(), synthetic["index"][D.edm_split_indices()["train"][:50]])


# --------------------------------------------------------------------------------------------------- novelty
def test_novelty_sets_are_the_subsets_training_part_and_all_of_qm9(synthetic, tmp_path, monkeypatch):
    import rmflow.tasks.qm9 as Q
    seen = []

    def fake_smiles(positions, types, mask):
        seen.append(len(mask))
        return [f"A{int(c)}" for c in mask.sum(1)]

    monkeypatch.setattr(Q, "smiles_list", fake_smiles)
    task = make_task(make_cfg(tmp_path, max_heavy_atoms=3, novelty=True, novelty_qm9=True), synthetic)
    assert task.training_smiles() == {f"A{c}" for c in task.train.num_atoms.tolist()}
    assert seen == [len(task.train)] and (tmp_path / "qm9_smiles_train_heavy3_v1.json").exists()
    assert task.qm9_smiles() == {f"A{c}" for c in range(2, 30)}
    assert seen == [len(task.train), M] and (tmp_path / "qm9_smiles_all_v1.json").exists()
    assert make_task(make_cfg(tmp_path, max_heavy_atoms=3), synthetic).training_smiles() and len(seen) == 2  # cached


def test_evaluate_molecules_scores_extra_known_sets():
    pytest.importorskip("rdkit")
    from rmflow.tasks.qm9.metrics import evaluate_molecules
    d = 1.09 / 3 ** 0.5                                                  # methane, C-H 1.09 Å
    pos = torch.tensor([[[0, 0, 0], [d, d, d], [-d, -d, d], [-d, d, -d], [d, -d, -d]]], dtype=torch.float64)
    types, mask = torch.tensor([[1, 0, 0, 0, 0]]), torch.ones(1, 5, dtype=torch.bool)
    methane = "[H]C([H])([H])[H]"
    out = evaluate_molecules(pos, types, mask, set(), known_sets={"novel_qm9": {methane}, "novel_other": {"C"}})
    assert out["valid"] == 1.0 and out["novel"] == 1.0
    assert out["novel_qm9"] == 0.0 and out["novel_other"] == 1.0


# ------------------------------------------------------------------------------------------- config, preset
@pytest.mark.parametrize("value", ["-1", "10", "2.5"])
def test_option_validates(value):
    with pytest.raises(ConfigError, match="task.max_heavy_atoms"):
        load_config("qm9-cpu", [f"task.max_heavy_atoms={value}"])


def test_empty_subset_is_a_clear_error(synthetic, tmp_path):
    with pytest.raises(ConfigError, match=r"task.max_heavy_atoms.*no train molecule"):
        make_task(make_cfg(tmp_path, max_heavy_atoms=1), synthetic)          # the table's molecules have >= 2


def test_preset_loads():
    cfg, base = load_config("qm9-small"), load_config("qm9-cpu")
    assert cfg.name == "qm9-small" and cfg.task.name == "qm9" and cfg.task.max_heavy_atoms == 7
    assert to_dict(cfg)["rmflow"] == to_dict(base)["rmflow"]             # pinned: the qm9-cpu block unchanged
    assert cfg.train.num_threads == 1 and cfg.train.compile
    assert {"meanflow", "flow_matching", "rmflow"} <= set(cfg.compare)
    small8 = load_config("qm9-small8")
    assert small8.task.max_heavy_atoms == 8 and to_dict(small8)["model"] == to_dict(cfg)["model"]


# ------------------------------------------------------------------------------------------------- real QM9
def test_real_subset_counts(qm9_arrays):
    heavy = D.heavy_atom_counts(qm9_arrays["types"])
    counts = {k: int((heavy <= k).sum()) for k in (6, 7, 8)}
    assert counts == {6: 783, 7: 3_921, 8: 21_800}                        # the numbers, all 130,831 molecules
    assert {k: int(qm9_arrays["num_atoms"][heavy <= k].max()) for k in (6, 7, 8)} == {6: 20, 7: 23, 8: 26}
    sizes = {name: len(D.split_rows(name, qm9_arrays, 7)) for name in ("train", "valid", "test")}
    assert sizes == {"train": 3_009, "valid": 533, "test": 379}
    train = D.load_split("train", arrays=qm9_arrays, max_heavy_atoms=7)
    assert min(train.node_histogram()) == 3 and max(train.node_histogram()) == 23

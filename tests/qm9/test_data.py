"""QM9 data: EDM's split, halves, node histogram, units, centring, cache rebuild, missing-package error."""
import numpy as np
import pytest
import torch

from rmflow.tasks.qm9 import data as D


def test_split_sizes_and_disjointness(qm9_arrays):
    assert len(qm9_arrays["index"]) == D.NUM_MOLECULES == 130_831
    s = D.edm_split_indices()
    assert {k: len(v) for k, v in s.items()} == {"train": 100_000, "valid": 17_748, "test": 13_083}
    allrows = np.concatenate([s["train"], s["valid"], s["test"]])
    assert np.array_equal(np.sort(allrows), np.arange(D.NUM_MOLECULES))
    # independent: EDM calls the legacy global RNG, np.random.seed(0); np.random.permutation(n)
    state = np.random.get_state()
    np.random.seed(0)
    perm = np.random.permutation(D.NUM_MOLECULES)
    np.random.set_state(state)
    assert np.array_equal(s["train"], perm[:100_000]) and np.array_equal(s["test"], perm[-13_083:])


def test_halves(qm9_arrays):
    s = D.edm_split_indices()
    h = D.edm_half_indices(s["train"])
    assert len(h["first_half"]) == len(h["second_half"]) == 50_000
    assert np.intersect1d(h["first_half"], h["second_half"]).size == 0
    assert np.array_equal(np.sort(np.concatenate([h["first_half"], h["second_half"]])), np.sort(s["train"]))
    state = np.random.get_state()
    np.random.seed(42)
    perm = np.random.permutation(100_000)
    np.random.set_state(state)
    assert np.array_equal(h["second_half"], s["train"][perm[50_000:]])   # EDM: second half = perm[n//2:]


def test_node_histogram_matches_edm(qm9_arrays):
    train = D.load_split("train", arrays=qm9_arrays)
    assert train.node_histogram() == D.EDM_NODE_HISTOGRAM
    assert sum(D.EDM_NODE_HISTOGRAM.values()) == 100_000
    # EDM's atom-type counts of the training split (datasets_config.py 'atom_types', H, C, N, O, F)
    counts = torch.bincount(train.types[train.mask], minlength=5).tolist()
    assert counts == [923537, 635559, 101476, 140202, 2323]


def test_positions_centred_and_padding(qm9_arrays):
    test = D.load_split("test", arrays=qm9_arrays)
    m = test.mask[..., None].double()
    com = (test.positions.double() * m).sum(1) / m.sum(1)
    assert com.abs().max() < 1e-5
    assert (test.positions[~test.mask] == 0).all()
    assert ((test.types >= 0) == test.mask).all()


def test_units_methane(qm9_arrays):
    # GDB-9 molecule 1 is CH4: HOMO -0.3877 Ha, LUMO 0.1171 Ha, gap 0.5048 Ha, α 13.21 Bohr³, μ 0 D, Cv 6.469
    row = 0
    assert qm9_arrays["index"][row] == 1 and qm9_arrays["num_atoms"][row] == 5
    p = dict(zip(D.PROPERTIES, qm9_arrays["props"][row]))
    assert p["homo"] == pytest.approx(-0.3877 * 27.211386246)
    assert p["gap"] == pytest.approx(0.5048 * 27.211386246)
    assert p["alpha"] == pytest.approx(13.21) and p["mu"] == 0 and p["Cv"] == pytest.approx(6.469)
    assert sorted(qm9_arrays["types"][row][:5].tolist()) == [0, 0, 0, 0, 1]


def test_corrupt_cache_is_rebuilt(qm9_arrays, tmp_path, monkeypatch):
    calls = []

    def fake_parse():
        calls.append(1)
        return {k: v for k, v in qm9_arrays.items() if k != "version"}

    monkeypatch.setattr(D, "parse_qm9pack", fake_parse)
    path = tmp_path / D.CACHE_NAME
    path.write_bytes(b"not a zip file at all")
    out = D.load_arrays(tmp_path)
    assert calls == [1] and np.array_equal(out["num_atoms"], qm9_arrays["num_atoms"])
    D.load_arrays(tmp_path)                      # now a good cache: read, not rebuilt
    assert calls == [1]
    # a readable archive with a wrong table (truncated) is rebuilt too
    np.savez(path, **{k: v[:10] for k, v in qm9_arrays.items() if k != "version"}, version=np.asarray(1))
    D.load_arrays(tmp_path)
    assert calls == [1, 1]
    # half-written file (truncated bytes)
    path.write_bytes(path.read_bytes()[:1000])
    D.load_arrays(tmp_path)
    assert calls == [1, 1, 1]


def test_cache_location_env(monkeypatch, tmp_path):
    monkeypatch.setenv("RMFLOW_CACHE", str(tmp_path / "c"))
    assert D.cache_dir() == tmp_path / "c"


def test_missing_package_error(monkeypatch):
    import importlib.util
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(D.QM9Unavailable, match="pip install"):
        D.qm9pack_data_dir()


def test_unknown_split(qm9_arrays):
    with pytest.raises(ValueError, match="unknown QM9 split"):
        D.load_split("training", arrays=qm9_arrays)

"""benchmarks/qm9_geometry.py on a toy QM9 run: a row for the data and for every sampler, and the data row is the
reference molecules' own report (stable, with tight C–H bonds)."""
import json

import pytest

pytest.importorskip("rdkit")

from rmflow.config import build_config  # noqa: E402
from rmflow.train import Trainer  # noqa: E402


def toy_run(tmp_path, qm9_cache, steps: int = 2, **model):
    """A flow-matching run on the ≤ 3 heavy-atom subset with a tiny EGNN, trained `steps` steps: its folder."""
    cfg = build_config({"name": "toy", "out_dir": str(tmp_path), "task": {"name": "qm9", "max_heavy_atoms": 3,
                        "cache": str(qm9_cache), "novelty": False},
                        "model": {"hidden": 8, "layers": 1, "time_dim": 8, "edge_mlp": False, **model},
                        "rmflow": {"lambda_nll": 0.0}, "flow": {"time": {"ratio_neq": 0.0}},
                        "train": {"steps": steps, "batch_size": 4, "progress": False, "warmup_steps": 0,
                                  "ckpt_every": steps}})
    Trainer(cfg, cfg.run_dir).train()
    return cfg.run_dir


def test_geometry_script_rows(qm9_arrays, qm9_cache, tmp_path, benchmark_script):
    run_dir = toy_run(tmp_path, qm9_cache, distance_rbf=4)
    script = benchmark_script("qm9_geometry")
    out = tmp_path / "rows.json"
    rows = script.main([str(run_dir), "--samplers", "fm@2", "--num-samples", "8", "--json", str(out)])
    assert list(rows) == ["data", "fm@2"] and out.read_text() == json.dumps(rows, indent=1)
    data = rows["data"]
    assert data["atom_stable"] > 0.9 and data["under_valent"] < 0.1
    assert 0.9 < data["h_bond_q"][2] < 1.15      # C–H / N–H / O–H bonds
    assert set(rows["fm@2"]) == set(data)


def test_geometry_script_memorisation(qm9_arrays, qm9_cache, tmp_path, benchmark_script, monkeypatch):
    """--memorisation: the data row is made of training molecules, so each valid one is a copy and none is novel;
    novelty against 'all of QM9' (here stubbed by a set without methane) comes from that set."""
    from rmflow.tasks.qm9 import QM9Task
    run_dir = toy_run(tmp_path, qm9_cache, steps=1)
    monkeypatch.setattr(QM9Task, "qm9_smiles", lambda self: self.training_smiles() - {"[H]C([H])([H])[H]"})
    rows = benchmark_script("qm9_geometry").main([str(run_dir), "--samplers", "fm@1", "--num-samples", "40",
                                                  "--memorisation"])
    data = rows["data"]
    assert data["copied"] == pytest.approx(data["valid"]) and data["novel"] == 0.0
    assert 0.0 < data["novel_qm9"] < 1.0                 # methane is among the 40 smallest-subset molecules
    assert {"unique", "novel", "copied", "novel_qm9"} <= set(rows["fm@1"])

"""benchmarks/suite.py end to end on a tiny network: `run` writes a result, and `stage2` (everything after the
stage boundary again, from the stage-1 checkpoints) reproduces it exactly under unchanged code."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SUITE = Path(__file__).resolve().parents[2] / "benchmarks" / "suite.py"
TINY = ["model.hidden=16", "model.depth=1", "model.time_dim=8", "train.batch_size=32", "train.steps=24",
        "rmflow.nll_start_step=16", "train.ckpt_every=8", "train.warmup_steps=2", "eval.num_samples=400",
        "rmflow.teacher_bank=256", "rmflow.teacher_steps=4", "rmflow.filter_reference=200"]


@pytest.fixture(scope="module")
def suite():
    spec = importlib.util.spec_from_file_location("rmflow_suite", SUITE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_run_then_stage2_reproduces_the_result(suite, tmp_path, monkeypatch):
    monkeypatch.setattr(suite, "NETWORK", {"hidden": 16, "depth": 1})
    suite.main(["run", "--targets", "ring8", "--seeds", "0", "--out", str(tmp_path), "--points", "2",
                "--ll-points", "20", *TINY])
    path = tmp_path / "ring8" / "s0.json"
    first = json.loads(path.read_text())
    assert {r["method"] for r in first["final"]} == {"rmflow", "control", "stage1", "fm"}
    assert sorted({c["step"] for c in first["curves"]}) == [8, 16, 20, 24]
    assert set(first["likelihood"]) == {"rmf1", "mf1", "fm100", "true"}
    suite.main(["stage2", str(tmp_path), "--targets", "ring8", "--seeds", "0"])
    second = json.loads(path.read_text())
    assert second["final"] == first["final"] and second["curves"] == first["curves"]
    assert second["likelihood"] == first["likelihood"]
    assert "RMF-1" in suite.report(tmp_path, None, None)
    # a variant with start=fm begins its likelihood stage from the flow-matching run's stage-1 checkpoint
    loaded = []
    original = suite.Trainer.load
    monkeypatch.setattr(suite.Trainer, "load", lambda self, p, **kw: loaded.append(Path(p)) or original(self, p, **kw))
    suite.main(["variants", str(tmp_path), "--targets", "ring8", "--seeds", "0",
                "--variant", "fmstart:start=fm", "--variant", "plain:rmflow.lambda_nll=10"])
    assert [p.parent.parent.name for p in loaded] == ["fm", "rmflow"]
    third = json.loads(path.read_text())
    assert {c["method"] for c in third["curves"]} >= {"rmflow:fmstart", "rmflow:plain"}


def test_probe_records_rows_at_each_point_and_the_training_trace(suite, tmp_path, monkeypatch):
    monkeypatch.setattr(suite, "NETWORK", {"hidden": 16, "depth": 1})
    suite.main(["probe", "--target", "ring8", "--tag", "b2", "--out", str(tmp_path), "--points", "3", *TINY,
                "train.steps=12", "train.log_every=4", "train.adam_beta2=0.99"])
    result = json.loads((tmp_path / "probe" / "ring8-s0-b2.json").read_text())
    assert [(r["sampler"], r["step"]) for r in result["rows"]] == [
        (s, k) for k in (4, 8, 12) for s in ("meanflow@1", "meanflow@8")]
    assert [t["step"] for t in result["trace"]] == [4, 8, 12]
    assert {"cmfm", "grad_norm", "dudt_norm_max"} <= set(result["trace"][0])
    assert "train.adam_beta2=0.99" in result["overrides"]

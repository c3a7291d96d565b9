"""benchmarks/suite.py end to end on a tiny network: `run` writes a result, and `stage2` (everything after the
stage boundary again, from the stage-1 checkpoints) reproduces it exactly under unchanged code."""
from __future__ import annotations

import json
from pathlib import Path

TINY = ["model.hidden=16", "model.depth=1", "model.time_dim=8", "train.batch_size=32", "train.steps=24",
        "rmflow.nll_start_step=16", "train.ckpt_every=8", "train.warmup_steps=2", "eval.num_samples=400",
        "rmflow.teacher_bank=256", "rmflow.teacher_steps=4", "rmflow.filter_reference=200"]


def test_run_then_stage2_reproduces_the_result(suite, tmp_path, monkeypatch):
    monkeypatch.setattr(suite, "NETWORK", {"hidden": 16, "depth": 1})
    suite.main(["run", "--targets", "ring8", "--seeds", "0", "--out", str(tmp_path), "--points", "2",
                "--ll-points", "20", *TINY])
    path = tmp_path / "ring8" / "s0.json"
    first = json.loads(path.read_text())
    assert {r["method"] for r in first["final"]} == {"rmflow", "control", "stage1", "fm"}
    assert sorted({c["step"] for c in first["curves"]}) == [8, 16, 20, 24]
    one_run = [(c["sampler"], c["step"]) for c in first["curves"] if c["method"] == "mf_one"]
    assert one_run == [(f"meanflow@{k}", s) for s in (16, 24) for k in (1, 8, 32)]
    assert set(first["likelihood"]) == {"rmf1", "mf1", "fm100", "true"}
    suite.main(["stage2", str(tmp_path), "--targets", "ring8", "--seeds", "0"])
    second = json.loads(path.read_text())
    assert second["final"] == first["final"] and second["curves"] == first["curves"]
    assert second["likelihood"] == first["likelihood"]
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "six-s0-tag.json").write_text("{}")   # a probe's result is not read as a suite result
    assert "RMF-1" in suite.report(tmp_path, None, None) and "| MF-8 (one run) |" in suite.report(tmp_path, None, None)
    # `mf-one` adds the one-run MeanFlow to a result without it: the same rows as `run` trained (same seed)
    path.write_text(json.dumps(first | {"curves": [c for c in first["curves"] if c["method"] != "mf_one"]}))
    suite.main(["mf-one", str(tmp_path), "--targets", "ring8", "--seeds", "0"])
    mf_one = lambda r: [c for c in r["curves"] if c["method"] == "mf_one"]   # noqa: E731
    assert mf_one(json.loads(path.read_text())) == mf_one(second) != []
    # a variant with start=fm begins its likelihood stage from the flow-matching run's stage-1 checkpoint
    loaded = []
    original = suite.Trainer.load
    monkeypatch.setattr(suite.Trainer, "load", lambda self, p, **kw: loaded.append(Path(p)) or original(self, p, **kw))
    suite.main(["variants", str(tmp_path), "--targets", "ring8", "--seeds", "0",
                "--variant", "fmstart:start=fm", "--variant", "plain:rmflow.lambda_nll=10"])
    assert [p.parent.parent.name for p in loaded] == ["fm", "rmflow"]
    third = json.loads(path.read_text())
    assert {c["method"] for c in third["curves"]} >= {"rmflow:fmstart", "rmflow:plain"}


def test_one_run_meanflow_is_plain_meanflow_with_one_cosine_decay(suite, tmp_path):
    cfg = suite.target_config("ring8", 0, tmp_path, ["train.steps=300", "rmflow.nll_start_step=200"], "mf_one")
    assert cfg.rmflow.lambda_nll == 0 and cfg.train.lr_schedule == "cosine" and cfg.train.steps == 300
    assert cfg.flow.time.ratio_neq > 0   # MeanFlow, not flow matching


def test_probe_records_rows_at_each_point_and_the_training_trace(suite, tmp_path, monkeypatch):
    monkeypatch.setattr(suite, "NETWORK", {"hidden": 16, "depth": 1})
    suite.main(["probe", "--target", "ring8", "--tag", "b2", "--out", str(tmp_path), "--points", "3", *TINY,
                "train.steps=12", "train.log_every=4", "train.adam_beta2=0.99"])
    result = json.loads((tmp_path / "probe" / "ring8-s0-b2.json").read_text())
    assert [(r["sampler"], r["step"]) for r in result["rows"]] == [
        (s, k) for k in (4, 8, 12) for s in ("meanflow@1", "meanflow@8", "fm@100")]
    assert [t["step"] for t in result["trace"]] == [4, 8, 12]
    assert {"cmfm", "grad_norm", "dudt_norm_max"} <= set(result["trace"][0])
    assert "train.adam_beta2=0.99" in result["overrides"]


def test_diff_counts_the_metrics_the_candidate_improved_per_paired_seed(suite, tmp_path):
    def result(root, seed, **metrics):
        row = {"method": "rmflow", "sampler": "rmflow", "step": 3} | metrics
        (root / "ring8").mkdir(parents=True, exist_ok=True)
        (root / "ring8" / f"s{seed}.json").write_text(json.dumps(
            {"target": "ring8", "seed": seed, "S": 2, "steps": 3, "final": [row], "curves": []}))
    result(tmp_path / "a", 0, tv_half=0.3, off_mode=0.1, log_density=-3.0)
    result(tmp_path / "b", 0, tv_half=0.2, off_mode=0.2, log_density=-2.0)   # better, worse, better (higher)
    result(tmp_path / "b", 1, tv_half=0.1, off_mode=0.0, log_density=0.0)    # no seed 1 in the base: not compared
    text = suite.diff(tmp_path / "a", tmp_path / "b")
    assert "| ring8 | 0 | RMF-1 | 0.300 → 0.200 | – | 0.100 → 0.200 | – | 2/3 |" in text
    assert "| ring8 | 1 |" not in text and text.endswith("RMF-1 2/3")
    assert "| ring8 | 2/3 | – | – | – | – |" in text   # the per-target tally

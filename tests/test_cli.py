import json

import numpy as np
import torch

from rmflow.cli import main

TINY_RUN = """
base: ring
name: smoke
model: {hidden: 16, depth: 1}
rmflow: {nll_start_step: 6, teacher_steps: 2, teacher_bank: 500}
train: {steps: 10, batch_size: 32, progress: false, log_every: 2, ckpt_every: 2}
eval: {num_samples: 300}
task: {num_ot: 100}
seeds: [0]
compare:
  meanflow: {set: {rmflow.lambda_nll: 0.0, train.steps: 6}, samplers: ["meanflow@1", "meanflow@8"]}
  flow_matching: {set: {rmflow.lambda_nll: 0.0, flow.time.ratio_neq: 0.0}, samplers: ["fm@20"]}
  rmflow: {from: meanflow, set: {}, samplers: ["rmflow"]}
  rmflow_paper: {from: meanflow, set: {rmflow.pairing: independent}, samplers: ["rmflow"]}
"""


def test_cli_run_train_evaluate_sample(tmp_path, capsys):
    config = tmp_path / "smoke.yaml"
    config.write_text(TINY_RUN)
    assert main(["run", str(config), f"out_dir={tmp_path}"]) == 0
    rows = json.loads((tmp_path / "smoke" / "results.json").read_text())
    assert {r["label"] for r in rows} >= {"RMFlow 1-NFE", "MeanFlow 8-NFE", "FM ODE (Euler) 20-step",
                                           "data (second draw)"}
    assert (tmp_path / "smoke" / "samples.png").stat().st_size > 1000
    table = (tmp_path / "smoke" / "results.md").read_text()
    assert "| rmflow | RMFlow 1-NFE | 1 |" in table and "| rmflow_paper | RMFlow 1-NFE | 1 |" in table
    run = tmp_path / "smoke" / "rmflow-s0"
    assert json.loads((run / "checkpoints" / "step_00000010.json").read_text())["state"]["step"] == 10
    assert main(["evaluate", str(run), "--samplers", "rmflow", "meanflow@2", "--num-samples", "200"]) == 0
    assert len(json.loads((run / "eval.json").read_text())) == 2
    out = tmp_path / "x.npy"
    assert main(["sample", str(run), "--out", str(out), "--num-samples", "50"]) == 0
    assert np.load(out).shape == (50, 2)
    # classifier-free guidance: ω = 1 is no guidance; an unconditional run refuses ω != 1 with one error line
    assert main(["sample", str(run), "--out", str(out), "--num-samples", "20", "--sampler", "meanflow@2",
                 "--guidance", "1"]) == 0
    capsys.readouterr()
    assert main(["sample", str(run), "--out", str(out), "--num-samples", "20", "--guidance", "2.5"]) == 2
    assert "rmflow:w=2.5" in capsys.readouterr().err and np.load(out).shape == (20, 2)
    assert main(["sample", str(run), "--out", str(out), "--sampler", "rmflow:w=2", "--guidance", "2"]) == 2
    assert "once" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--samplers", "meanflow@2:w=two"]) == 2
    assert "guidance suffix" in capsys.readouterr().err
    # a second run only loads the finished runs and evaluates them
    capsys.readouterr()
    assert main(["run", str(config), f"out_dir={tmp_path}", "--methods", "rmflow"]) == 0
    assert "training" not in capsys.readouterr().out


def test_cli_reports_config_errors(tmp_path, capsys):
    assert main(["train", "ring", f"out_dir={tmp_path}", "train.lr=-1"]) == 2
    assert "train.lr" in capsys.readouterr().err


def test_cli_run_train_only_then_cached_evaluation(tmp_path, monkeypatch):
    """`--train-only` scores nothing; the next run scores once and caches; a third run reuses every row, and a
    change of the task settings (or of the sample count) invalidates the cache."""
    from rmflow.tasks.synthetic import SyntheticTask
    config = tmp_path / "smoke.yaml"
    config.write_text(TINY_RUN)
    calls = []
    original = SyntheticTask.evaluate
    monkeypatch.setattr(SyntheticTask, "evaluate", lambda self, x, ref: calls.append(len(x)) or original(self, x, ref))
    args = ["run", str(config), f"out_dir={tmp_path}", "--methods", "meanflow,rmflow"]
    assert main(args + ["--train-only"]) == 0
    assert calls == [] and not (tmp_path / "smoke" / "results.json").exists()
    assert (tmp_path / "smoke" / "rmflow-s0" / "checkpoints" / "step_00000010.json").exists()
    assert main(args) == 0
    assert len(calls) == 4                                  # meanflow@1, meanflow@8, rmflow, the data row
    first = json.loads((tmp_path / "smoke" / "results.json").read_text())
    assert main(args) == 0
    assert len(calls) == 4                                  # everything came from the caches
    assert json.loads((tmp_path / "smoke" / "results.json").read_text()) == first
    assert (tmp_path / "smoke" / "samples.png").exists()
    assert main(args + ["eval.num_samples=200"]) == 0
    assert len(calls) == 8 and calls[-1] == 200
    assert main(args + ["task.num_ot=50"]) == 0             # a task setting: scored again
    assert len(calls) == 12


def test_cli_run_learning_curve(tmp_path):
    """`--curve 3` scores each method at 3 evenly spaced steps of its own training (a `from` method from its
    source's end), without changing the training: the final weights equal those of a run without a curve, the
    last point equals the final row, and a rerun reads every point from the caches."""
    from safetensors.torch import load_file
    config = tmp_path / "smoke.yaml"
    config.write_text(TINY_RUN)
    args = ["run", str(config), "--methods", "meanflow,rmflow"]
    assert main(args + [f"out_dir={tmp_path / 'plain'}", "--train-only"]) == 0
    assert main(args + [f"out_dir={tmp_path / 'curve'}", "--curve", "3"]) == 0
    root = tmp_path / "curve" / "smoke"
    rows = json.loads((root / "curve.json").read_text())
    steps = {}
    for r in rows:
        steps.setdefault((r["method"], r["sampler"]), []).append(r["step"])
    assert steps == {("meanflow", "meanflow@1"): [2, 4, 6], ("meanflow", "meanflow@8"): [2, 4, 6],
                     ("rmflow", "rmflow"): [7, 9, 10]}
    final = {r["sampler"]: r for r in json.loads((root / "results.json").read_text()) if r["method"] == "rmflow"}
    last = next(r for r in rows if r["sampler"] == "rmflow" and r["step"] == 10)
    assert last["tv_half"] == final["rmflow"]["tv_half"]
    assert "| rmflow @ 9 | RMFlow 1-NFE |" in (root / "curve.md").read_text()
    assert (root / "curve.png").stat().st_size > 1000
    for method in ("meanflow-s0", "rmflow-s0"):
        name = "step_00000006.safetensors" if method == "meanflow-s0" else "step_00000010.safetensors"
        a = load_file(str(tmp_path / "plain" / "smoke" / method / "checkpoints" / name))
        b = load_file(str(root / method / "checkpoints" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), method
    assert main(args + [f"out_dir={tmp_path / 'curve'}", "--curve", "3"]) == 0
    assert json.loads((root / "curve.json").read_text()) == rows
    assert main(args + [f"out_dir={tmp_path / 'curve'}", "--curve", "-1"]) == 2

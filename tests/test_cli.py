import json

import numpy as np

from rmflow.cli import main

TINY = ["model.hidden=16", "model.depth=1", "train.batch_size=32", "train.progress=false", "train.steps=8",
        "train.log_every=4", "train.ckpt_every=4", "eval.num_samples=300", "task.num_ot=100", "seeds=[0]"]


def test_cli_run_train_evaluate_sample(tmp_path, capsys):
    assert main(["run", "ring", f"out_dir={tmp_path}", "name=smoke", *TINY, "rmflow.nll_start_step=4",
                 "rmflow.teacher_steps=2"]) == 0
    rows = json.loads((tmp_path / "smoke" / "results.json").read_text())
    assert {r["label"] for r in rows} >= {"RMFlow 1-NFE", "MeanFlow 8-NFE", "FM ODE (Euler) 100-step",
                                           "data (second draw)"}
    assert (tmp_path / "smoke" / "samples.png").stat().st_size > 1000
    assert "| rmflow | RMFlow 1-NFE | 1 |" in (tmp_path / "smoke" / "results.md").read_text()
    run = tmp_path / "smoke" / "rmflow-s0"
    assert main(["evaluate", str(run), "--samplers", "rmflow", "meanflow@2", "--num-samples", "200"]) == 0
    assert len(json.loads((run / "eval.json").read_text())) == 2
    out = tmp_path / "x.npy"
    assert main(["sample", str(run), "--out", str(out), "--num-samples", "50"]) == 0
    assert np.load(out).shape == (50, 2)


def test_cli_reports_config_errors(tmp_path, capsys):
    assert main(["train", "ring", f"out_dir={tmp_path}", "train.lr=-1"]) == 2
    assert "train.lr" in capsys.readouterr().err

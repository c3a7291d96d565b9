"""Inference without training code (rmflow.load / export) and tasks from outside the package."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch

import rmflow
from rmflow.cli import main
from rmflow.config import load_config
from rmflow.train import Trainer

TINY = ["model.hidden=16", "model.depth=1", "train.batch_size=32", "train.progress=false", "train.steps=6",
        "train.ckpt_every=3", "rmflow.nll_start_step=3", "rmflow.teacher_bank=256", "rmflow.teacher_filter=0",
        "rmflow.teacher_steps=2", "eval.num_samples=100"]
SRC = Path(__file__).parents[1] / "src"


def test_load_export_round_trip_gives_identical_samples(tmp_path):
    cfg = load_config("ring", [f"out_dir={tmp_path}", "name=r", *TINY])
    trainer = Trainer(cfg, cfg.run_dir)
    trainer.train()
    pipe = rmflow.load(cfg.run_dir)
    x = pipe.sample(64, seed=3)
    assert x.shape == (64, 2) and torch.equal(x, rmflow.load(cfg.run_dir).sample(64, seed=3))
    with torch.no_grad():   # the EMA weights, as the trainer holds them
        ema = trainer.ema.shadow.state_dict()
        assert all(torch.equal(v, ema[k]) for k, v in pipe.model.state_dict().items())
    assert main(["export", str(cfg.run_dir), str(tmp_path / "exp")]) == 0
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == ["config.yaml", "model.safetensors"]
    again = rmflow.load(tmp_path / "exp")
    assert torch.equal(again.sample(64, seed=3), x)
    assert not torch.equal(again.sample(64, seed=4), x)
    assert torch.equal(again.sample(8, sampler="meanflow@2", seed=1), pipe.sample(8, sampler="meanflow@2", seed=1))
    assert main(["sample", str(tmp_path / "exp"), "--out", str(tmp_path / "s.npy"), "--num-samples", "64",
                 "--seed", "3"]) == 0
    assert np.array_equal(np.load(tmp_path / "s.npy"), x.numpy())
    assert main(["export", str(cfg.run_dir), str(tmp_path / "exp")]) == 2      # never over an existing export


PLUGIN = textwrap.dedent("""
    from dataclasses import dataclass
    from rmflow.tasks import TaskSpec, register_task
    from rmflow.tasks.synthetic import SyntheticData, SyntheticModel, SyntheticTask


    @dataclass
    class PluginData(SyntheticData):
        name: str = "plugin"


    SPEC = TaskSpec("plugin", PluginData, SyntheticModel, SyntheticTask)
    """)


def test_a_task_named_module_colon_spec_needs_no_import(tmp_path, monkeypatch):
    (tmp_path / "plugin_spec_mod.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "runs"
    assert main(["train", "ring", "task.name=plugin_spec_mod:SPEC", f"out_dir={out}", "name=p", *TINY]) == 0
    from rmflow.tasks.base import _REGISTRY
    _REGISTRY.pop("plugin_spec_mod:SPEC")
    assert main(["sample", str(out / "p"), "--out", str(tmp_path / "x.npy"), "--num-samples", "10"]) == 0


def test_a_task_declared_by_an_entry_point_trains_samples_and_evaluates_in_a_subprocess(tmp_path):
    """An installed package that declares its task under the entry-point group 'rmflow.tasks' (a dist-info folder on
    the path is what pip would write): train, sample and evaluate work with no --import."""
    (tmp_path / "plugin_ep_mod.py").write_text(PLUGIN + "register_task(TaskSpec('eptask', PluginData, SyntheticModel,"
                                                        " SyntheticTask))\n")
    info = tmp_path / "plugin_ep-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: plugin-ep\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[rmflow.tasks]\neptask = plugin_ep_mod\n")
    out = tmp_path / "runs"
    script = textwrap.dedent(f"""
        from rmflow.cli import main
        tiny = {TINY!r}
        assert main(["train", "ring", "task.name=eptask", "out_dir={out}", "name=e", *tiny]) == 0
        assert main(["sample", "{out / 'e'}", "--out", "{tmp_path / 'e.npy'}", "--num-samples", "10"]) == 0
        assert main(["evaluate", "{out / 'e'}", "--samplers", "rmflow", "--num-samples", "50"]) == 0
        """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(SRC)])}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert np.load(tmp_path / "e.npy").shape == (10, 2) and (out / "e" / "eval.json").exists()

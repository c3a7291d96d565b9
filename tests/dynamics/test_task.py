"""The task end to end: config validation, batches, references, a tiny train-and-sample run, the figure."""
import math

import numpy as np
import pytest
import torch

pytest.importorskip("scoringrules")
from rmflow.config import ConfigError, build_config  # noqa: E402
from rmflow.evaluate import evaluate_samplers  # noqa: E402
from rmflow.compare import markdown_table  # noqa: E402
from rmflow.train import Trainer  # noqa: E402


def config(tmp_path, **task):
    t = {"name": "dynamics", "system": "lorenz", "train_traj": 2, "valid_traj": 0, "test_traj": 1,
         "traj_len": 120, "window_len": 24, "context_len": 8, "ensemble": 4, "cache_dir": str(tmp_path),
         "transient": 2.0}
    t.update(task)
    return build_config({
        "task": t, "model": {"width": 8, "mults": [1, 2], "attention": True, "heads": 2},
        "rmflow": {"lambda_nll": 0.1, "pairing": "teacher", "teacher_steps": 2, "nll_start_step": 2,
                   "sigma_min": 0.05, "sigma_c": 0.5, "lambda_enc": 1e-3},
        "train": {"steps": 4, "batch_size": 8, "progress": False, "warmup_steps": 1, "num_threads": 1},
        "eval": {"num_samples": 16}})


def test_config_validation_names_keys(tmp_path):
    with pytest.raises(ConfigError, match="task.context_len"):
        config(tmp_path, context_len=24)
    with pytest.raises(ConfigError, match="task.system"):
        config(tmp_path, system="duffing")
    with pytest.raises(ConfigError, match="task.traj_len"):
        config(tmp_path, traj_len=10)
    with pytest.raises(ConfigError, match="unknown config key 'task.horizon'"):
        config(tmp_path, horizon=3)


def test_conditional_batches_and_reference(tmp_path):
    cfg = config(tmp_path)
    trainer = Trainer(cfg)
    b = trainer.task.batch(5)
    assert b.x.shape == (5, 3, 16) and b.cond.shape == (5, 3, 8)
    ref = trainer.task.reference(16, seed=0)
    assert ref.x.shape == (16, 3, 16) and ref.cond.shape == (16, 3, 8)
    # 4 contexts, each repeated `ensemble` = 4 times in a row; the seed does not change them
    torch.testing.assert_close(ref.x[0], ref.x[3])
    assert not torch.allclose(ref.x[0], ref.x[4])
    torch.testing.assert_close(trainer.task.reference(16, seed=5).x, ref.x)
    # context and future are consecutive pieces of one window: the last context step continues smoothly
    window = torch.cat([ref.cond, ref.x], dim=-1)
    jumps = (window[..., 1:] - window[..., :-1]).abs()
    assert jumps[..., 7].max() < 3 * jumps.max(dim=-1).values.max()
    # the truth scores perfectly against itself
    out = trainer.task.evaluate(ref.x, ref)
    assert out["crps"] == pytest.approx(0.0, abs=1e-7) and out["coverage90"] == 1.0


def test_tiny_train_and_sample_conditional(tmp_path):
    cfg = config(tmp_path)
    trainer = Trainer(cfg)
    assert trainer.model.source.guided
    losses = trainer.train()
    assert len(losses) == 4 and all(np.isfinite(losses))
    ref = trainer.task.reference(16, seed=0)
    rows, panels = evaluate_samplers(trainer.task, trainer.ema.shadow, ref, ["rmflow", "meanflow@2", "fm@3"], 0)
    assert [r["nfe"] for r in rows] == [1, 2, 3]
    for r in rows:
        for key in ("crps", "energy", "rel_err_mean", "coverage90"):
            assert np.isfinite(r[key]) and r[key] >= 0, key
    assert all(p.shape == (16, 3, 16) for p in panels.values())
    table = markdown_table([dict(r, method="rmflow", seed=0) for r in rows], trainer.task.metric_format)
    assert "CRPS" in table and "energy score" in table
    path = tmp_path / "fans.png"
    trainer.task.plot(panels, ref, path)
    assert path.stat().st_size > 1000


def test_tiny_train_and_sample_unconditional(tmp_path):
    cfg = config(tmp_path, mode="unconditional", system="fhn", dt=2.0, transient=100.0)
    trainer = Trainer(cfg)
    assert not trainer.model.source.guided
    b = trainer.task.batch(5)
    assert b.x.shape == (5, 4, 24) and b.cond is None
    trainer.train()
    ref = trainer.task.reference(16, seed=0)
    assert not torch.allclose(trainer.task.reference(16, seed=1).x, ref.x)
    rows, panels = evaluate_samplers(trainer.task, trainer.ema.shadow, ref, ["rmflow", "meanflow@1"], 0)
    for r in rows:
        for key in ("w1_marginal", "acf_dist", "psd_dist", "max_w1", "tail_q99"):
            assert np.isfinite(r[key]), key
    path = tmp_path / "traj.png"
    trainer.task.plot(panels, ref, path)
    assert path.stat().st_size > 1000


def test_context_only_through_the_network(tmp_path):
    cfg = config(tmp_path)
    cfg.model.encoder = "none"
    trainer = Trainer(cfg)
    assert not trainer.model.source.guided
    trainer.train(2)
    cfg.model.context_input = False
    with pytest.raises(ValueError, match="never sees the context"):
        Trainer(cfg)


def test_conditional_teacher_bank_with_split_batch_trains(tmp_path):
    """The cheap likelihood step on a conditional task: the trainer hands training contexts to the teacher bank,
    whose pairs then train with stored focus errors and the split batch."""
    cfg = config(tmp_path)
    from rmflow.config import apply_overrides, to_dict
    data = apply_overrides(to_dict(cfg), ["rmflow.teacher_bank=64", "rmflow.nll_focus=0.5",
                                          "rmflow.focus_errors=stored", "rmflow.nll_batch=0.5",
                                          "rmflow.batch_split=true"])
    trainer = Trainer(build_config(data))
    losses = trainer.train()
    assert len(losses) == 4 and all(np.isfinite(losses))
    bank = trainer.objective.pairing.bank
    rows = (cfg.train.steps - cfg.rmflow.nll_start_step) * math.ceil(0.5 * cfg.train.batch_size)   # the bank cap
    assert 0 < rows < 64
    assert bank is not None and bank.x0.shape == (rows, 3, 16) and bank.cond.shape == (rows, 3, 8)
    assert trainer.objective.pairing.errors.shape == (rows,)

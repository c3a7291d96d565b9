import json
import math

import pytest
import torch

from rmflow.config import load_config
from rmflow.flow import meanflow
from rmflow.train import CheckpointError, Trainer, TrainingDiverged, load_checkpoint, save_checkpoint

TINY = ["model.hidden=32", "model.depth=2", "train.batch_size=64", "train.progress=false", "train.log_every=2",
        "train.ckpt_every=5", "train.warmup_steps=3"]


def _cfg(tmp_path, *extra):
    return load_config("ring", TINY + [f"out_dir={tmp_path}", *extra])


def test_checkpoint_round_trip_and_corruption(tmp_path):
    t = {"w": torch.randn(3, 4), "step": torch.tensor(7)}
    save_checkpoint(tmp_path / "ck", t, {"step": 7, "note": "hi"})
    tensors, state = load_checkpoint(tmp_path / "ck.json")
    torch.testing.assert_close(tensors["w"], t["w"])
    assert state == {"step": 7, "note": "hi"}
    data = bytearray((tmp_path / "ck.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "ck.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(tmp_path / "ck")
    (tmp_path / "ck.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "ck")
    with pytest.raises(CheckpointError, match="incomplete"):
        load_checkpoint(tmp_path / "missing")


@pytest.mark.parametrize("extra", [[], ["rmflow.pairing=teacher", "rmflow.nll_start_step=6",
                                        "rmflow.teacher_steps=2", "rmflow.refine=learned"],
                                   ["rmflow.pairing=minibatch_ot", "rmflow.nll_start_step=0",
                                    "flow.path_coupling=minibatch_ot"],
                                   ["rmflow.pairing=teacher", "rmflow.nll_start_step=2", "rmflow.teacher_steps=2",
                                    "rmflow.teacher_bank=300", "rmflow.nll_focus=0.5", "rmflow.focus_errors=stored",
                                    "rmflow.nll_batch=0.5", "rmflow.batch_split=true",
                                    "rmflow.refine=mixture"]])
def test_resume_reproduces_the_uninterrupted_run(tmp_path, extra):
    full = Trainer(_cfg(tmp_path / "a", "train.steps=12", *extra), tmp_path / "a")
    losses = full.train()
    part = Trainer(_cfg(tmp_path / "b", "train.steps=12", *extra), tmp_path / "b")
    part.train(steps=5)                              # checkpoint written at step 5
    resumed = Trainer(_cfg(tmp_path / "b", "train.steps=12", *extra), tmp_path / "b")
    assert resumed.resume() and resumed.step == 5
    assert resumed.train() == losses                 # bit-for-bit the same losses
    for p, q in zip(full.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 12 and "loss" in rows[-1] and "steps_per_s" in rows[-1]


def test_nan_guard_keeps_the_last_checkpoint(tmp_path):
    tr = Trainer(_cfg(tmp_path, "train.steps=20"), tmp_path)
    tr.train(steps=5)
    with torch.no_grad():
        next(tr.model.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        tr.train()
    fresh = Trainer(_cfg(tmp_path, "train.steps=20"), tmp_path)
    assert fresh.resume() and fresh.step == 5
    assert all(torch.isfinite(p).all() for p in fresh.model.parameters())


def _interrupt_during_step(monkeypatch, tr, at: int):
    """Send a real SIGINT (Ctrl-C) to this process in the middle of the `at`-th train_step call."""
    import os
    import signal
    calls = {"n": 0}
    original = tr.train_step

    def step():
        calls["n"] += 1
        if calls["n"] == at:
            os.kill(os.getpid(), signal.SIGINT)   # delivered here, in the middle of the step
        return original()

    monkeypatch.setattr(tr, "train_step", step)


def test_ctrl_c_finishes_the_step_and_resumes_bit_for_bit(tmp_path, monkeypatch):
    """Ctrl-C during step 7: that step completes, a checkpoint is written at 7, and resuming reproduces the
    uninterrupted run exactly: losses, weights, and metrics.jsonl rows (one per logged step, same values)."""
    keys = ["train.steps=12", "train.log_every=5", "train.ckpt_every=100"]
    ref = Trainer(_cfg(tmp_path / "a", *keys), tmp_path / "a")
    ref.train()
    tr = Trainer(_cfg(tmp_path / "b", *keys), tmp_path / "b")
    _interrupt_during_step(monkeypatch, tr, 7)
    with pytest.raises(KeyboardInterrupt, match="checkpoint saved"):
        tr.train()
    fresh = Trainer(_cfg(tmp_path / "b", *keys), tmp_path / "b")
    assert fresh.resume() and fresh.step == 7
    fresh.train()
    assert fresh.history == ref.history
    for a, b in zip(fresh.model.parameters(), ref.model.parameters()):
        assert torch.equal(a, b)

    def rows(run):
        return [{k: v for k, v in json.loads(line).items() if k != "steps_per_s"}
                for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
    assert rows("b") == rows("a") and [r["step"] for r in rows("b")] == [5, 10, 12]


def test_training_moves_samples_onto_the_ring(tmp_path):
    """200 steps take 8-step samples from the Gaussian's mean radius (≈ 1.25) to near the ring's radius 4."""
    cfg = load_config("ring", ["model.hidden=64", "model.depth=2", "train.batch_size=128", "train.progress=false",
                               "train.steps=200", "train.lr=3e-3", "train.warmup_steps=3",
                               "train.lr_schedule=constant"])
    tr = Trainer(cfg)
    x0 = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0))
    before = meanflow(tr.model, x0, 8).x.norm(dim=1).mean().item()
    tr.train()
    after = meanflow(tr.model, x0, 8).x.norm(dim=1).mean().item()
    assert before < 2.0 and 3.0 < after < 5.5


def test_stage2_with_another_sigma_min_samples_with_its_own_scale(tmp_path):
    """Warm start from a stage-1 checkpoint must not carry the old refinement scale along."""
    first = Trainer(_cfg(tmp_path / "a", "train.steps=3", "rmflow.sigma_min=0.1"), tmp_path / "a")
    first.train()
    second = Trainer(_cfg(tmp_path / "b", "train.steps=5", "rmflow.sigma_min=0.3", "rmflow.nll_start_step=3",
                          "rmflow.teacher_steps=1"), tmp_path / "b")
    second.load(first.ckpt_dir / "step_00000003.json", warm_start=True)
    assert abs(second.model.refiner(1).item() - 0.3) < 1e-6
    assert abs(second.ema.shadow.refiner(1).item() - 0.3) < 1e-6


def test_cosine_schedule_warms_up_then_decays_to_zero_from_its_start(tmp_path):
    cfg = _cfg(tmp_path, "train.steps=300", "train.warmup_steps=10", "train.lr=0.002",
               "train.lr_schedule=cosine", "train.lr_decay_start=100")
    tr = Trainer(cfg)
    assert tr._lr(0) == pytest.approx(0.002 / 10)          # warm-up
    assert tr._lr(50) == pytest.approx(0.002)              # constant until the decay starts
    assert tr._lr(100) == pytest.approx(0.002)
    assert tr._lr(200) == pytest.approx(0.001)             # half way: (1 + cos(π/2))/2
    assert tr._lr(299) == pytest.approx(0.002 * 0.5 * (1 + math.cos(math.pi * 199 / 200)))
    assert tr._lr(299) < 1e-6
    constant = Trainer(_cfg(tmp_path / "c", "train.steps=300", "train.warmup_steps=0", "train.lr_schedule=constant"))
    assert constant._lr(0) == constant._lr(299) == constant.cfg.train.lr


def test_staged_cosine_restarts_at_the_likelihood_stage(tmp_path):
    cfg = _cfg(tmp_path, "train.steps=300", "train.warmup_steps=10", "train.lr=0.002",
               "train.lr_schedule=cosine_stages", "rmflow.nll_start_step=200", "rmflow.lambda_nll=0")
    tr = Trainer(cfg)
    half = lambda k, n: 0.002 * 0.5 * (1 + math.cos(math.pi * k / n))   # noqa: E731
    assert tr._lr(0) == pytest.approx(0.002 / 10 * half(0, 200) / 0.002)  # warm-up of stage 1
    assert tr._lr(100) == pytest.approx(0.001)                            # half way through stage 1
    assert tr._lr(199) == pytest.approx(half(199, 200)) and tr._lr(199) < 1e-6
    assert tr._lr(200) == pytest.approx(0.002 / 10)                       # restart: warm-up again
    assert tr._lr(250) == pytest.approx(half(50, 100))                    # half way through stage 2
    assert tr._lr(299) == pytest.approx(half(99, 100)) and tr._lr(299) < 1e-5
    single = Trainer(_cfg(tmp_path / "s", "train.steps=300", "train.warmup_steps=0",
                          "train.lr_schedule=cosine_stages", "rmflow.nll_start_step=0", "rmflow.lambda_nll=0"))
    assert single._lr(150) == pytest.approx(single.cfg.train.lr / 2)       # no stage boundary: one cycle


def test_ema_restarts_with_the_second_stage_and_warms_up(tmp_path):
    """With 'cosine_stages' the EMA at S is the model's weights (the teacher took the stage-1 average first), and its
    decay warms up as min(decay, (1 + k)/(10 + k)); the teacher holds the stage-1 average, not the model."""
    cfg = _cfg(tmp_path, "train.steps=12", "train.lr_schedule=cosine_stages", "rmflow.nll_start_step=6",
               "rmflow.pairing=teacher", "rmflow.teacher_steps=2", "rmflow.teacher_bank=0", "rmflow.nll_focus=0",
               "rmflow.teacher_filter=0", "rmflow.refine=fixed")
    tr = Trainer(cfg)
    tr.train(6)
    stage1_ema = {k: v.clone() for k, v in tr.ema.shadow.state_dict().items()}
    model = {k: v.clone() for k, v in tr.model.state_dict().items()}
    assert any(not torch.equal(stage1_ema[k], model[k]) for k in model)
    assert [tr._ema_decay(s) for s in (5, 6, 7, 8)] == [0.999, 0.1, 2 / 11, 3 / 12]
    seen = []
    tr.ema.update = lambda m, decay: seen.append((dict((k, v.clone()) for k, v in tr.ema.shadow.state_dict().items()),
                                                   decay))
    tr.train(7)
    shadow, decay = seen[0]
    for k in model:   # the EMA was reset to the model's weights before the first stage-2 update
        torch.testing.assert_close(shadow[k], model[k])
    assert decay == pytest.approx(0.1)
    teacher = tr.objective.pairing.teacher.state_dict()
    for k in model:
        torch.testing.assert_close(teacher[k], stage1_ema[k])
    constant = Trainer(_cfg(tmp_path / "c", "train.steps=12", "train.lr_schedule=constant", "rmflow.nll_start_step=6"))
    assert constant._ema_decay(8) == constant.cfg.train.ema_decay   # no restart without the staged schedule


def test_ema_copies_the_late_starting_mixture_refiner_and_averages_the_rest(tmp_path):
    tr = Trainer(_cfg(tmp_path, "rmflow.refine=mixture"))
    assert tr.ema.exact_prefixes == ("refiner.",)
    before = {k: v.clone() for k, v in tr.ema.shadow.named_parameters()}
    with torch.no_grad():
        for p in tr.model.parameters():
            p.add_(1.0)
    tr.ema.update(tr.model)
    after, model = dict(tr.ema.shadow.named_parameters()), dict(tr.model.named_parameters())
    assert any(n.startswith("refiner.net.") for n in model) and any(n.startswith("net.") for n in model)
    for name in model:
        if name.startswith("refiner.net."):
            torch.testing.assert_close(after[name], model[name])
        elif name.startswith("net."):
            torch.testing.assert_close(after[name], before[name] + (1 - tr.cfg.train.ema_decay))
    assert Trainer(_cfg(tmp_path / "f", "rmflow.refine=fixed")).ema.exact_prefixes == ()


def test_teacher_bank_is_capped_at_the_rows_stage_two_reads(tmp_path):
    """The bank holds min(teacher_bank, (steps − S)·⌈nll_batch·B⌉) pairs: 4 steps × ⌈0.5·64⌉ = 128 here, not the
    1,000 asked for; a stage 2 long enough to read them all keeps the configured size; 0 keeps the bank off."""
    from rmflow.train.build import bank_size

    base = ["rmflow.pairing=teacher", "rmflow.nll_start_step=6", "rmflow.teacher_steps=2", "rmflow.teacher_bank=1000",
            "rmflow.teacher_filter=0", "rmflow.nll_batch=0.5"]
    trainer = Trainer(_cfg(tmp_path, *base, "train.steps=10"))
    assert trainer.objective.pairing.bank_size == 128
    trainer.train()
    assert len(trainer.objective.pairing.bank.x0) == 128   # the bank that stage 2 built
    assert bank_size(_cfg(tmp_path, *base, "train.steps=100")) == 1000
    assert bank_size(_cfg(tmp_path, *base, "train.steps=3")) == 32   # no stage 2: one step's rows, never 0
    assert bank_size(_cfg(tmp_path, *base, "rmflow.teacher_bank=0")) == 0

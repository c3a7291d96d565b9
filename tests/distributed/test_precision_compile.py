"""bf16 autocast keeps the JVP target in float32; torch.compile of the loss module falls back to eager cleanly."""
from __future__ import annotations

import pytest
import torch

from rmflow.config import ConfigError, load_config
from rmflow.flow import mean_velocity_time_derivative
from rmflow.flow.path import expand_time
from rmflow.train import Trainer
from rmflow.train.distributed import (Autocast, CompiledWithFallback, prepare_loss_module,
                                      resolve_precision)

TINY = ["train.batch_size=16", "model.hidden=16", "model.depth=1", "model.time_dim=8", "train.progress=false",
        "train.num_threads=1", "rmflow.lambda_nll=0"]


def tiny_trainer(*extra: str) -> Trainer:
    return Trainer(load_config("ring", TINY + list(extra)))


def _output_dtypes(trainer, module, x):
    seen = []
    hook = trainer.model.net.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    try:
        out = module(x)
    finally:
        hook.remove()
    return out, seen


def test_bf16_autocast_forward_but_float32_target_and_loss():
    trainer = tiny_trainer("train.precision=bf16")
    assert isinstance(trainer.loss_module, Autocast)
    x = trainer.task.batch(16).x
    out, seen = _output_dtypes(trainer, trainer.loss_module, x)
    # the no-grad JVP ran in float32, the gradient-carrying forward in bf16
    assert seen == [torch.float32, torch.bfloat16]
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss).all()
    stats = trainer.train_step()
    assert torch.isfinite(torch.tensor(stats["loss"])) and trainer.step == 1
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())


def test_float32_target_matches_an_independent_float32_computation():
    trainer = tiny_trainer("train.precision=bf16")
    cmfm, model = trainer.objective.cmfm, trainer.model
    g = torch.Generator().manual_seed(0)
    x_t, v = torch.randn(16, 2, generator=g), torch.randn(16, 2, generator=g)
    t = torch.rand(16, generator=g)
    r = torch.minimum(t + 0.3, torch.ones(16))
    _, dudt = mean_velocity_time_derivative(model, x_t, t, r, v)            # no autocast anywhere
    expected = v + expand_time(r - t, v) * dudt
    with torch.autocast("cpu", dtype=torch.bfloat16):
        target, _ = cmfm.target(model, x_t, t, r, v)
        _, plain = mean_velocity_time_derivative(model, x_t, t, r, v)        # the JVP under autocast, for contrast
    assert target.dtype == torch.float32 and torch.equal(target, expected)
    assert plain.dtype == torch.bfloat16 or not torch.equal(plain, dudt)      # autocast would have changed it


def test_precision_resolution_and_validation():
    assert resolve_precision("fp32", torch.device("cpu")) is None
    assert resolve_precision("bf16", torch.device("cpu")) is torch.bfloat16
    with pytest.raises(ValueError, match="train.precision"):
        resolve_precision("fp16", torch.device("cpu"))
    with pytest.raises(ConfigError, match="train.precision"):
        load_config("ring", ["train.precision=fp16"])
    assert isinstance(tiny_trainer().loss_module, type(tiny_trainer().objective))   # fp32: no wrapper at all


def test_compile_failure_falls_back_to_eager_with_identical_results():
    def broken_backend(gm, example_inputs):
        raise RuntimeError("no compiler here")

    trainer, eager = tiny_trainer(), tiny_trainer()
    trainer.loss_module = prepare_loss_module(trainer.objective, trainer.device, compile=True,
                                              compile_backend=broken_backend)
    torch.manual_seed(5)
    with pytest.warns(UserWarning, match="falling back to eager"):
        a = trainer.train_step()
    assert not trainer.loss_module.compiled and "no compiler here" in trainer.loss_module.failure
    torch.manual_seed(5)
    b = eager.train_step()
    assert a["loss"] == b["loss"]                          # same weights and draws: the same step
    for p, q in zip(trainer.model.parameters(), eager.model.parameters()):
        assert torch.equal(p, q)
    trainer.train_step()                                   # later steps stay eager, without new warnings


def test_unknown_backend_falls_back_at_construction():
    with pytest.warns(UserWarning, match="running eagerly"):
        m = CompiledWithFallback(torch.nn.Linear(2, 2), backend="no-such-backend")
    assert not m.compiled and m(torch.ones(1, 2)).shape == (1, 2)


def test_compiled_loss_module_runs_and_matches_eager():
    """Dynamo captures the whole objective, JVP included (backend 'eager': tracing only, no C++ toolchain)."""
    trainer = tiny_trainer()
    module = prepare_loss_module(trainer.objective, trainer.device, compile=True, compile_backend="eager")
    x = trainer.task.batch(16).x
    torch.manual_seed(3)
    out = module(x)
    out.loss.mean().backward()
    assert module.compiled, module.failure
    torch.manual_seed(3)
    ref = trainer.objective(x)
    assert torch.allclose(out.loss, ref.loss, rtol=1e-5, atol=1e-6)
    assert all(p.grad is not None for p in trainer.model.net.parameters())


def test_train_compile_key_builds_the_fallback_wrapper():
    trainer = tiny_trainer("train.compile=true")
    assert isinstance(trainer.loss_module, CompiledWithFallback) and trainer.loss_module.module is trainer.objective


def test_compiled_likelihood_stage_with_stored_focus_and_batch_split():
    """The cheaper likelihood step (stored focus errors written in place, L_NLL rows sharing the L_CMFM forward) is
    captured by Dynamo without falling back, and rewrites stored errors at every stage-2 step."""
    trainer = tiny_trainer("rmflow.lambda_nll=1", "rmflow.pairing=teacher", "rmflow.nll_start_step=1",
                           "rmflow.teacher_steps=2", "rmflow.teacher_bank=200", "rmflow.nll_focus=0.5",
                           "rmflow.focus_errors=stored", "rmflow.nll_batch=0.5", "rmflow.batch_split=true",
                           "rmflow.refine=mixture")
    trainer.loss_module = prepare_loss_module(trainer.objective, trainer.device, compile=True,
                                              compile_backend="eager")
    assert "nll" not in trainer.train_step()              # step 0: stage 1
    errors = []
    for _ in range(3):
        assert "nll" in trainer.train_step()
        errors.append(trainer.objective.pairing.errors.clone())
    assert trainer.loss_module.compiled, trainer.loss_module.failure
    assert not torch.equal(errors[0], errors[1]) and not torch.equal(errors[1], errors[2])

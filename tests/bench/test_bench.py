"""`rmflow bench`: the loss variants it times, its memory tracker, its ratios, and a tiny end-to-end run."""
from __future__ import annotations

import json

import pytest
import torch

from rmflow.bench import METHODS, TensorMemoryTracker, method_overrides, parse_variants, ratios
from rmflow.cli import main
from rmflow.config import load_config
from rmflow.flow import CMFMLoss, TimeSampler, mean_velocity_time_derivative
from rmflow.flow.cmfm import _rows
from rmflow.nets import MLP

TINY = ["model.hidden=16", "model.depth=1", "model.time_dim=8", "train.batch_size=16", "train.num_threads=1"]


def test_memory_tracker_counts_known_allocations():
    with TensorMemoryTracker() as tr:
        a = torch.empty(1000, dtype=torch.float32)          # 4000 bytes
        b = torch.empty(500, dtype=torch.float64)           # 4000 bytes, peak 8000
        v = a.view(10, 100)                                 # a view: no new storage
        del a, b, v
        c = torch.empty(250, dtype=torch.float32)           # 1000 bytes after the frees
    assert tr.peak == 8000 and tr.live == 1000
    del c


def test_memory_tracker_sees_backward_and_jvp():
    lin = torch.nn.Linear(64, 64)
    x = torch.randn(32, 64)
    with TensorMemoryTracker() as tr:
        lin(x).pow(2).sum().backward()
    assert tr.peak >= lin.weight.numel() * 4                # at least the weight gradient
    with torch.no_grad(), TensorMemoryTracker() as tr2:
        torch.func.jvp(lambda z: lin(z).tanh(), (x,), (x,))
    assert tr2.peak >= 2 * x.numel() * 4                    # primal and tangent outputs


def _net_and_batch(n=12):
    torch.manual_seed(0)
    net = MLP(3, hidden=16, depth=2, time_dim=8, cond_dim=2)
    g = torch.Generator().manual_seed(1)
    x, v = torch.randn(n, 3, generator=g), torch.randn(n, 3, generator=g)
    t = torch.rand(n, generator=g)
    r = torch.where(torch.arange(n) % 3 == 0, torch.minimum(t + 0.4, torch.ones(n)), t)
    cond = torch.randn(n, 2, generator=g)
    return net, x, t, r, v, cond


def test_subset_jvp_target_equals_full_jvp_target():
    net, x, t, r, v, cond = _net_and_batch()
    times = TimeSampler()
    full, _ = CMFMLoss(times).target(net, x, t, r, v, cond)
    sub, dudt = CMFMLoss(times, jvp_subset=True).target(net, x, t, r, v, cond)
    assert torch.allclose(sub, full, atol=1e-6)
    # du/dt really was computed on the r != t rows only (zero elsewhere) and matches the full JVP there
    _, ref = mean_velocity_time_derivative(net, x, t, r, v, cond)
    neq = r != t
    assert torch.allclose(dudt[neq], ref[neq], atol=1e-6) and torch.all(dudt[~neq] == 0)
    assert neq.any() and (~neq).any()


def test_rows_helper():
    idx = torch.tensor([0, 2])
    d = {"a": torch.arange(4), "b": torch.ones(1, 3)}
    out = _rows(d, idx, 4)
    assert torch.equal(out["a"], torch.tensor([0, 2])) and out["b"].shape == (1, 3)   # broadcast entry kept
    assert _rows(None, idx, 4) is None


def test_method_overrides():
    cfg = load_config("ring", TINY)                          # preset: pairing teacher, nll_start_step > 0
    assert "rmflow.pairing=teacher" in method_overrides("rmflow", cfg)
    assert any(o.startswith("rmflow.nll_start_step=") and int(o.split("=")[1]) >= 1
               for o in method_overrides("rmflow", cfg))
    assert "rmflow.nll_start_step=0" in method_overrides("rmflow_ot", cfg)
    assert "flow.time.ratio_neq=0" in method_overrides("fm", cfg)
    assert "flow.jvp_subset=true" in method_overrides("meanflow_sub", cfg)
    assert "rmflow.lambda_nll=0" in method_overrides("meanflow", cfg)
    bank = method_overrides("rmflow_bank", cfg)
    assert "rmflow.pairing=teacher" in bank and any(o.startswith("rmflow.teacher_bank=") for o in bank)


def test_parse_variants():
    assert parse_variants(["lean=rmflow.nll_batch=0.5,rmflow.batch_split=true", "b=x.y=1"]) == {
        "lean": ["rmflow.nll_batch=0.5", "rmflow.batch_split=true"], "b": ["x.y=1"]}
    for bad in ("lean", "lean=", "=a.b=1", "lean=a.b"):
        with pytest.raises(ValueError, match="--variant"):
            parse_variants([bad])


def test_ratios():
    steps = [{"method": "fm", "compiled": False, "step_s": 2.0},
             {"method": "meanflow", "compiled": False, "step_s": 3.0},
             {"method": "rmflow", "compiled": False, "step_s": 4.5},
             {"method": "meanflow", "compiled": True, "step_s": 1.5}]
    samplers = [{"sampler": "meanflow@1", "samples_per_s": 500.0}, {"sampler": "fm@100", "samples_per_s": 5.0}]
    r = ratios(steps, samplers)
    assert r["meanflow/fm (eager)"] == 1.5 and r["rmflow/meanflow (eager)"] == 1.5
    assert r["meanflow compiled/eager"] == 0.5 and r["meanflow@1 / fm@100 throughput"] == 100.0
    assert "meanflow/fm (compiled)" not in r


def test_bench_command_tiny(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", "ring", *TINY, "rmflow.teacher_steps=2", "--steps", "2", "--rounds", "1", "--warmup", "1",
               "--nfe", "1", "2", "--sample-batch", "32", "--sample-repeats", "1", "--json", str(out),
               "--variant", "lean=rmflow.nll_batch=0.5,rmflow.batch_split=true"])
    assert rc == 0
    res = json.loads(out.read_text())
    assert [s["method"] for s in res["steps"]] == list(METHODS) + ["lean"]
    assert "lean/meanflow (eager)" in res["ratios"]
    assert all(s["step_s"] > 0 and s["peak_bytes"] > 0 for s in res["steps"])
    assert [(s["sampler"], s["nfe"]) for s in res["samplers"]] == [("meanflow@1", 1), ("meanflow@2", 2),
                                                                   ("rmflow@1", 1), ("fm@100", 100)]
    assert "rmflow/meanflow (eager)" in res["ratios"] and "meanflow@1 / fm@100 throughput" in res["ratios"]
    assert res["pairing"] == "teacher" and res["teacher_steps"] == 2
    text = capsys.readouterr().out
    assert "| rmflow_indep | no |" in text and "samples/s" in text

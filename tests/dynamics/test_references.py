"""Observation noise on the contexts and the reference rows (persistence, climatology, analogue, true system)."""
import numpy as np
import pytest
import torch

pytest.importorskip("scoringrules")
from rmflow.config import ConfigError, build_config  # noqa: E402
from rmflow.tasks.base import Batch  # noqa: E402
from rmflow.tasks.dynamics import DynamicsData, DynamicsTask  # noqa: E402
from rmflow.tasks.dynamics import references as R  # noqa: E402


def make_task(tmp_path, **task):
    t = {"name": "dynamics", "system": "lorenz", "train_traj": 2, "valid_traj": 0, "test_traj": 1,
         "traj_len": 120, "window_len": 24, "context_len": 8, "ensemble": 8, "cache_dir": str(tmp_path),
         "transient": 2.0}
    t.update(task)
    return DynamicsTask(build_config({"task": t, "model": {"width": 8, "mults": [1, 2], "attention": False},
                                      "eval": {"num_samples": 32}}))


def all_windows(windows):
    return windows.take(torch.arange(len(windows)))


def find_window(windows, part, lo, hi):
    """Index of the window whose steps lo:hi equal `part` (C, hi − lo) exactly, or None."""
    d = (all_windows(windows)[..., lo:hi] - part).abs().flatten(1).amax(1)
    i = int(d.argmin())
    return i if d[i] == 0 else None


def test_obs_noise_config():
    assert DynamicsData(system="lorenz").obs_noise_std == 0.1          # default for simulated systems
    assert DynamicsData(system="fhn").obs_noise_std == 0.1
    assert DynamicsData(system="sunspots").obs_noise_std == 0.0        # measured series carry their own noise
    assert DynamicsData(system="lorenz", obs_noise=0.0).obs_noise_std == 0.0
    assert DynamicsData(system="lorenz", obs_noise=0.25).obs_noise_std == 0.25
    with pytest.raises(ConfigError, match="task.obs_noise"):
        build_config({"task": {"name": "dynamics", "obs_noise": float("nan")}})


def test_evaluation_noise_has_the_stated_std_and_is_reproducible(tmp_path):
    task = make_task(tmp_path, obs_noise=0.2, ensemble=4)
    ref = task.reference(4 * 48, seed=0)
    clean = task.clean_reference_windows(4 * 48)                      # 48 distinct contexts
    noise = ref.cond - clean[..., :8].repeat_interleave(4, dim=0)
    # one noise draw per context, shared by its ensemble rows; the future is clean
    torch.testing.assert_close(noise[0::4], noise[3::4])
    torch.testing.assert_close(ref.x, clean[..., 8:].repeat_interleave(4, dim=0))
    distinct = noise[0::4]                                             # 48 × 3 × 8 = 1152 values
    assert distinct.std().item() == pytest.approx(0.2, rel=0.1)
    assert abs(distinct.mean().item()) < 0.03
    # fixed: neither the seed nor a new task instance changes it
    torch.testing.assert_close(task.reference(4 * 48, seed=7).cond, ref.cond)
    torch.testing.assert_close(make_task(tmp_path, obs_noise=0.2, ensemble=4).reference(4 * 48, seed=0).cond, ref.cond)
    # obs_noise 0: the clean contexts of the noise-free task
    plain = make_task(tmp_path, obs_noise=0.0, ensemble=4).reference(4 * 48, seed=0)
    torch.testing.assert_close(plain.cond, clean[..., :8].repeat_interleave(4, dim=0))


def test_training_contexts_are_noisy_and_futures_clean(tmp_path):
    task = make_task(tmp_path, obs_noise=0.3)
    torch.manual_seed(0)
    b = task.batch(128)
    noise = []
    for cond, x in zip(b.cond, b.x):
        i = find_window(task.train_windows, x, 8, 24)                  # the future is an exact training future
        assert i is not None
        noise.append(cond - all_windows(task.train_windows)[i, :, :8])
    noise = torch.stack(noise)
    assert noise.std().item() == pytest.approx(0.3, rel=0.1)
    # obs_noise 0 draws no noise: the same training RNG stream as the noise-free task
    plain = make_task(tmp_path, obs_noise=0.0)
    torch.manual_seed(0)
    b0 = plain.batch(5)
    torch.manual_seed(0)
    w = plain.train_windows.random(5)
    torch.testing.assert_close(b0.cond, w[..., :8])
    torch.testing.assert_close(b0.x, w[..., 8:])


def test_persistence_repeats_the_last_noisy_context_value(tmp_path):
    task = make_task(tmp_path, obs_noise=0.2)
    ref = task.reference(32, seed=0)
    p = task.persistence(ref)
    assert p.shape == ref.x.shape
    torch.testing.assert_close(p, ref.cond[..., -1:].expand_as(ref.x))
    clean_last = task.clean_reference_windows(32)[..., 7:8].repeat_interleave(8, dim=0)
    assert not torch.allclose(p[..., :1], clean_last)                   # the noisy value, not the clean one
    out = task.evaluate(p, ref)
    assert out["spread"] == 0.0


def test_climatology_members_are_training_futures(tmp_path):
    task = make_task(tmp_path)
    ref = task.reference(32, seed=0)
    c = task.climatology(ref, seed=3)
    assert c.shape == ref.x.shape
    for member in c:
        assert find_window(task.train_windows, member, 8, 24) is not None
    assert not torch.allclose(c[0], c[1])                               # random windows, not one
    torch.testing.assert_close(task.climatology(ref, seed=3), c)        # seeded
    assert not torch.allclose(task.climatology(ref, seed=4), c)


def test_analogue_of_a_training_context_starts_with_its_own_continuation(tmp_path):
    task = make_task(tmp_path)
    windows = all_windows(task.train_windows)[[5, 60, 150]]            # three training windows
    m = task.cfg.task.ensemble
    ref = Batch(windows[..., 8:].repeat_interleave(m, 0), cond=windows[..., :8].repeat_interleave(m, 0))
    a = task.analogue(ref).reshape(3, m, 3, 16)
    torch.testing.assert_close(a[:, 0], windows[..., 8:])               # nearest member = its true continuation
    assert not torch.allclose(a[:, 1], windows[..., 8:])
    # members come nearest first
    lib = R.training_contexts(task.train_windows, 8)
    idx = R.analogue_indices(windows[..., :8], lib, m)
    d = (lib[idx] - windows[..., :8].reshape(3, 1, -1).double()).norm(dim=-1)
    assert (d[:, 1:] >= d[:, :-1]).all() and (d[:, 0] == 0).all()


def test_true_system_collapses_without_noise_and_worsens_with_it(tmp_path, monkeypatch):
    monkeypatch.setattr(R, "PARTICLES", 256)
    crps = {}
    for sigma in (0.0, 1e-4, 0.02, 0.2):
        task = make_task(tmp_path, obs_noise=sigma)
        ref = task.reference(32, seed=0)
        f = task.true_system(ref, seed=1)
        assert f.shape == ref.x.shape
        crps[sigma] = task.evaluate(f, ref)["crps"]
        if sigma == 0.0:   # the true continuation, up to float32 data and the integrator's tolerance
            assert (f - ref.x).abs().max().item() < 1e-3
    assert crps[0.0] < 1e-5
    assert crps[1e-4] < 1e-3
    assert crps[0.0] < crps[1e-4] < crps[0.02] < crps[0.2], crps


def test_reference_rows_shapes_and_scores(tmp_path, monkeypatch):
    monkeypatch.setattr(R, "PARTICLES", 128)
    task = make_task(tmp_path)
    ref = task.reference(32, seed=0)
    rows = task.reference_rows(ref, seed=20_000)
    assert list(rows) == ["data (truth against itself)", "persistence (last noisy context value)",
                          "climatology (random training windows)", "analogue (8 nearest training contexts)",
                          "true system (Bayes ensemble, obs noise 0.1)"]
    scores = {k: task.evaluate(x, ref) for k, x in rows.items()}
    assert all(x.shape == ref.x.shape for x in rows.values())
    assert scores["data (truth against itself)"]["crps"] == pytest.approx(0.0, abs=1e-7)
    assert all(np.isfinite(s["crps"]) for s in scores.values())
    # unconditional: a second draw of held-out windows and random training windows
    un = make_task(tmp_path, mode="unconditional")
    ref_u = un.reference(16, seed=0)
    rows_u = un.reference_rows(ref_u, seed=1)
    assert list(rows_u) == ["data (second draw)", "climatology (random training windows)"]
    torch.testing.assert_close(rows_u["data (second draw)"], un.reference(16, seed=1).x)


def test_true_system_with_a_lead_on_fhn(tmp_path, monkeypatch):
    """FitzHugh–Nagumo: the attractor prior sits LEAD steps before the context (the path with lead > 0)."""
    monkeypatch.setattr(R, "PARTICLES", 64)
    monkeypatch.setattr(R, "STAGES", 2)
    task = make_task(tmp_path, system="fhn", dt=2.0, transient=100.0, ensemble=4)
    ref = task.reference(8, seed=0)
    f = task.true_system(ref, seed=0, lead=4)
    assert f.shape == ref.x.shape and torch.isfinite(f).all()
    assert task.last_ess.shape == (2,) and (task.last_ess >= 1).all()
    with pytest.raises(ValueError, match="lead > 0 needs"):
        R.true_system_forecast(task.system, 2.0, task.data.mean, task.data.std, ref.cond[:1], 16, 4, 0.1,
                               np.random.default_rng(0), lead=2)


def test_command_line_prints_the_rows(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(R, "PARTICLES", 64)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(f"task: {{name: dynamics, system: lorenz, train_traj: 2, valid_traj: 0, test_traj: 1, "
                   f"traj_len: 120, window_len: 24, context_len: 8, ensemble: 4, transient: 2.0, "
                   f"cache_dir: '{tmp_path}'}}\nmodel: {{width: 8, mults: [1, 2], attention: false}}\n"
                   f"eval: {{num_samples: 8}}\n")
    from rmflow.tools.dyn_references import main
    main([str(cfg), "task.obs_noise=0.05"])
    out = capsys.readouterr().out
    assert "| reference | true system (Bayes ensemble, obs noise 0.05) | 0 |" in out
    assert "persistence (last noisy context value)" in out and "analogue (4 nearest training contexts)" in out

"""The vectors task: its config, its data in the standardised space, the standardisation kept in the checkpoint,
and a tiny run through the command line (train, sample, evaluate) mapped back to the units of the file."""
import json
import warnings

import numpy as np
import pytest
import torch

from rmflow.cli import main
from rmflow.config import ConfigError, load_config
from rmflow.tasks.vectors.prepare import split_rows

MEAN, STD = np.array([1000.0, -5.0, 0.01]), np.array([50.0, 2.0, 0.001])


def write_csv(path, n=120, seed=0, shift=0.0):
    v = np.random.default_rng(seed).normal(size=(n, 3)) * STD + MEAN + shift
    lines = ["id,height,depth,tiny"] + [f"r{i},{a!r},{b!r},{c!r}" for i, (a, b, c) in enumerate(v.tolist())]
    path.write_text("\n".join(lines) + "\n")
    return v


@pytest.fixture
def csv_path(tmp_path):
    path = tmp_path / "points.csv"
    write_csv(path)
    return path


@pytest.mark.parametrize("override,key", [
    (["task.path="], r"task\.path.*required"),
    (['task.path=""'], r"task\.path.*required"),
    (["task.path=7"], r"task\.path.*required"),
    (["task.format=xlsx"], r"task\.format"),
    (["task.nonfinite=keep"], r"task\.nonfinite"),
    (["task.heldout=1.5"], r"task\.heldout"),
    (["task.columns=[true]"], r"task\.columns\[0\]"),
    (["task.columns=[a, a]"], r"task\.columns"),
    (["model.time_embed=fourier"], r"model\.time_embed"),
])
def test_bad_settings_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config("vectors-example", override)


def test_cli_error_for_a_missing_file(tmp_path, capsys):
    assert main(["train", "vectors-example", f"task.path={tmp_path / 'nope.npy'}", f"out_dir={tmp_path}"]) == 2
    assert "task.path" in capsys.readouterr().err and not (tmp_path / "vectors-example").exists()


@pytest.fixture
def task(csv_path, tmp_path):
    from rmflow.train.build import build_task
    cfg = load_config("vectors-example", [f"task.path={csv_path}", "task.heldout=0.25", "model.hidden=16",
                                          "model.depth=1", "task.num_eval=60"])
    with pytest.warns(UserWarning, match="'id'"):
        return build_task(cfg)


def test_task_data_reference_and_metrics(task, tmp_path):
    assert task.dim == 3 and task.names == ["height", "depth", "tiny"]
    assert len(task.data.train) == 90 and len(task.data.heldout) == 30
    assert torch.allclose(task.data.train.mean(0), torch.zeros(3), atol=1e-5)
    assert task.batch(16).x.shape == (16, 3)
    ref = task.reference(70, seed=1)
    assert ref.x.shape == (70, 3)
    counts = [int((ref.x == row).all(1).sum()) for row in task.data.heldout]
    assert sorted(set(counts)) == [2, 3]                        # each held-out row 2 or 3 times
    assert torch.equal(task.reference(10, seed=1).x, task.reference(10, seed=1).x)
    rows = task.evaluate(torch.randn(200, 3), ref)
    assert set(rows) == set(task.metric_format) and all(np.isfinite(v) for v in rows.values())
    copies = task.evaluate(task.data_baseline(ref, 0), ref)
    assert copies["memo_share"] == 1.0 and copies["memo_ratio"] == 0.0
    task.plot({"noise": torch.randn(100, 3)}, ref, tmp_path / "fig.png")
    assert (tmp_path / "fig.png").stat().st_size > 1000


def test_the_model_carries_the_standardisation(task):
    model = task.build_model()
    sd = model.state_dict()
    assert torch.equal(sd["units.mean"], task.data.mean) and torch.equal(sd["units.std"], task.data.std)
    assert not any(n.startswith("units.") for n, _ in model.named_parameters())
    z = task.data.heldout
    x = task.to_data_units(z, model)
    assert x.dtype == torch.float64 and abs(float(x[:, 0].mean()) - 1000) < 50
    assert torch.allclose(task.from_data_units(x), z.double(), atol=1e-5)


def test_the_teacher_filter_works_on_a_small_table_drawn_with_replacement():
    """20 000 reference draws from 90 rows repeat rows almost always; counting each row once keeps the threshold at
    the rows' own spacing, so partners on the data pass and partners far from it do not."""
    from rmflow.flow.pairing import data_support_mask
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(90, 3, generator=g)
    ref = rows[torch.randint(90, (20_000,), generator=g)]
    near = rows + 0.01 * torch.randn(90, 3, generator=g)
    far = rows + 10.0
    keep = data_support_mask(torch.cat([near, far]), ref, 0.99)
    assert keep[:90].all() and not keep[90:].any()
    assert torch.equal(keep, data_support_mask(torch.cat([near, far]), torch.unique(ref, dim=0), 0.99))


def test_train_sample_evaluate_through_the_cli(csv_path, tmp_path):
    """`rmflow train` on a csv, `rmflow sample` (which writes samples in the units of the file, through the task's
    to_data_units hook); the (mean, std) come from the checkpoint even after the file changed."""
    from rmflow.train.build import load_run
    args = ["train", "vectors-example", f"task.path={csv_path}", f"out_dir={tmp_path}", "name=v", "train.steps=6",
            "model.hidden=16", "model.depth=1", "train.batch_size=32", "rmflow.nll_start_step=3",
            "rmflow.teacher_bank=64", "rmflow.teacher_steps=2", "rmflow.mixture_hidden=8", "train.progress=false",
            "train.ckpt_every=3", "task.columns=[height, depth, tiny]", "eval.num_samples=100"]
    assert main(args) == 0
    run = tmp_path / "v"
    out = tmp_path / "samples.npy"
    assert main(["sample", str(run), "--out", str(out), "--num-samples", "200"]) == 0
    z = torch.from_numpy(np.load(out))
    assert z.shape == (200, 3)

    model, task, cfg = load_run(run)
    values = np.loadtxt(csv_path, delimiter=",", skiprows=1, usecols=(1, 2, 3))
    train_rows, _ = split_rows(len(values), cfg.task.heldout, cfg.task.split_seed)
    assert np.allclose(model.units.mean.numpy(), values[train_rows].mean(0), rtol=1e-12)
    assert np.allclose(model.units.std.numpy(), values[train_rows].std(0), rtol=1e-12)
    x = z                                                        # the samples, in data units
    s = task.from_data_units(x, model)                           # ... and in the model's standardised units
    assert (abs(x.mean(0).numpy() - MEAN) < 3 * STD).all()      # data units (6 steps: not yet a good model)
    assert abs(float(x[:, 0].mean()) - 1000) < 150 and float(s[:, 0].abs().mean()) < 20

    write_csv(csv_path, seed=1, shift=500.0)                    # the file changes after training
    model2, task2, _ = load_run(run)
    assert torch.equal(model2.units.mean, model.units.mean)     # the checkpoint's, not the file's
    with pytest.warns(UserWarning, match="differs"):
        assert torch.allclose(task2.to_data_units(s, model2), x.double())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["evaluate", str(run), "--samplers", "rmflow", "--num-samples", "50"]) == 0
    assert "sw2" in json.loads((run / "eval.json").read_text())[0]

"""Series from a user's file (task.system "file"): .npy (N, T, C) / (T, C) / (T,) and CSV, splits, normalisation,
end-to-end training in both modes, and the ConfigErrors for bad files."""
import numpy as np
import pytest

pytest.importorskip("scoringrules")
from rmflow.config import ConfigError, build_config, load_config  # noqa: E402
from rmflow.evaluate import evaluate_samplers  # noqa: E402
from rmflow.tasks.dynamics import data as D  # noqa: E402
from rmflow.train import Trainer  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


def config(tmp_path, **task):
    t = {"name": "dynamics", "system": "file", "window_len": 16, "context_len": 4, "ensemble": 4}
    t.update(task)
    return build_config({
        "out_dir": str(tmp_path / "runs"),
        "task": t, "model": {"width": 8, "mults": [1, 2], "attention": False},
        "rmflow": {"lambda_nll": 0.1, "pairing": "teacher", "teacher_steps": 2, "nll_start_step": 2,
                   "sigma_min": 0.05, "sigma_c": 0.5, "lambda_enc": 1e-3},
        "train": {"steps": 3, "batch_size": 8, "progress": False, "warmup_steps": 1, "num_threads": 1},
        "eval": {"num_samples": 16}})


def signal(t: int, c: int = 2, seed: int = 0) -> np.ndarray:
    """(T, C) noisy oscillations."""
    s = 0.2 * np.arange(t)[:, None] * (1 + 0.3 * np.arange(c))[None]
    return np.sin(s) + 0.05 * np.random.default_rng(seed).standard_normal((t, c))


@pytest.fixture
def many_npy(tmp_path):
    """(N, T, C) = (6, 40, 2); series n is offset by 10·n so that splits can be told apart."""
    x = np.stack([signal(40, 2, n) + 10 * n for n in range(6)])
    path = tmp_path / "many.npy"
    np.save(path, x)
    return path, x


@pytest.fixture
def long_csv(tmp_path):
    """A (T, C) CSV with a text date column (left out) and two channels a, b."""
    x = signal(120, 2)
    path = tmp_path / "long.csv"
    rows = ["date,a,b"] + [f"2024-01-{i:03d},{r[0]:.6f},{r[1]:.6f}" for i, r in enumerate(x)]
    path.write_text("\n".join(rows) + "\n")
    return path, x


def run_and_score(cfg):
    trainer = Trainer(cfg)
    losses = trainer.train()
    assert len(losses) == cfg.train.steps and all(np.isfinite(losses))
    ref = trainer.task.reference(16, seed=0)
    rows, _ = evaluate_samplers(trainer.task, trainer.ema.shadow, ref, ["rmflow", "meanflow@2"], 0)
    for r in rows:
        for key in trainer.task.metric_format:
            assert np.isfinite(r[key]), key
    return trainer


# ------------------------------------------------------------------------------------------------------- reading
def test_many_series_are_split_by_series(many_npy):
    path, x = many_npy
    s = D.file_series(path, [], "auto", window_len=16, overlap=4, fractions=(0.7, 0.1, 0.2), seed=0)
    assert s.channels == ("c0", "c1") and s.projection == (0, 1)
    sizes = {k: getattr(s, k).shape[0] for k in D.SPLITS}
    assert sum(sizes.values()) == 6 and sizes["train"] >= 1 and sizes["test"] >= 1
    assert s.train.shape[1:] == (2, 40)                                 # (n, C, T): whole series, not windows
    ids = {k: set(np.round(getattr(s, k)[:, 0].mean(axis=1) / 10).astype(int)) for k in D.SPLITS}
    assert set.union(*ids.values()) == set(range(6)) and not ids["train"] & ids["test"]
    # standardised with the training series' statistics
    tr = s.normalised("train").double()
    np.testing.assert_allclose(tr.mean(dim=(0, 2)).numpy(), 0.0, atol=1e-5)
    np.testing.assert_allclose(s.denormalise(s.normalised("test")).numpy(), s.test, rtol=1e-5, atol=1e-4)
    # the same data seed, the same assignment of series
    again = D.file_series(path, [], "npy", 16, 4, seed=0)
    np.testing.assert_array_equal(again.test, s.test)


def test_long_csv_is_split_in_contiguous_blocks(long_csv):
    path, x = long_csv
    s = D.file_series(path, [], "auto", window_len=16, overlap=4)
    assert s.channels == ("a", "b")                                     # the date column is left out
    assert s.train.shape == (1, 2, 84)                                  # 70 % of 120 steps
    np.testing.assert_allclose(s.train[0].T, x[:84], atol=1e-5)
    np.testing.assert_allclose(s.test[0].T, x[96 - 4:], atol=1e-5)      # starts `overlap` steps early
    picked = D.file_series(path, ["b", 1], "csv", window_len=16, overlap=0)
    assert picked.channels == ("b", "a") and picked.projection == (0, 1)


def test_single_channel_and_1d_arrays(tmp_path):
    np.save(tmp_path / "one.npy", signal(100, 1)[:, 0])
    s = D.file_series(tmp_path / "one.npy", [], "auto", window_len=16, overlap=4)
    assert s.train.shape == (1, 1, 70) and s.projection == (0, 0)
    np.save(tmp_path / "three.npy", signal(100, 3))
    s = D.file_series(tmp_path / "three.npy", [2, 0], "auto", window_len=16, overlap=4)
    assert s.channels == ("c2", "c0") and s.train.shape == (1, 2, 70)


# ------------------------------------------------------------------------------------------------ end to end
def test_npy_many_series_conditional_end_to_end(tmp_path, many_npy):
    trainer = run_and_score(config(tmp_path, path=str(many_npy[0])))
    assert trainer.task.channels == 2 and trainer.task.conditional
    b = trainer.task.batch(3)
    assert b.x.shape == (3, 2, 12) and b.cond.shape == (3, 2, 4)
    plot = tmp_path / "fans.png"
    ref = trainer.task.reference(16, 0)
    trainer.task.plot({"x": ref.x}, ref, plot)
    assert plot.stat().st_size > 0


def test_csv_long_series_unconditional_end_to_end(tmp_path, long_csv):
    trainer = run_and_score(config(tmp_path, path=str(long_csv[0]), mode="unconditional"))
    assert trainer.task.batch(3).x.shape == (3, 2, 16)
    assert set(trainer.task.metric_format) == {"w1_marginal", "acf_dist", "psd_dist", "max_w1", "tail_q99",
                                                    "flat_q05"}


def test_preset_loads_with_overrides(tmp_path, long_csv):
    cfg = load_config("series-file", [f"task.path={long_csv[0]}", f"out_dir={tmp_path}"])
    assert cfg.task.system == "file" and cfg.task.mode == "conditional"
    assert cfg.rmflow.lambda_nll > 0 and "rmflow" in cfg.compare         # the top level is the headline RMFlow


# ------------------------------------------------------------------------------------------------- bad input
def _bad(tmp_path, match, **task):
    with pytest.raises(ConfigError, match=match):
        Trainer(config(tmp_path, **task))


def test_config_validation(tmp_path):
    with pytest.raises(ConfigError, match="task.path"):
        config(tmp_path)                                                # no path
    with pytest.raises(ConfigError, match="task.format"):
        config(tmp_path, path="x.npy", format="parquet")
    with pytest.raises(ConfigError, match="task.split"):
        config(tmp_path, path="x.npy", split=[0.5, 0.5, 0.0])
    with pytest.raises(ConfigError, match=r"task.columns\[0\]"):
        config(tmp_path, path="x.npy", columns=[[1]])


def test_missing_and_unreadable_files(tmp_path):
    _bad(tmp_path, "task.path': no such file", path=str(tmp_path / "nope.npy"))
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    _bad(tmp_path, "task.format", path=str(tmp_path / "x.parquet"))
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    _bad(tmp_path, "task.path.*cannot be read", path=str(tmp_path / "junk.npy"))
    np.save(tmp_path / "words.npy", np.array(["a", "b"]))
    _bad(tmp_path, "not real numbers", path=str(tmp_path / "words.npy"))


def test_wrong_shape_and_too_short(tmp_path):
    np.save(tmp_path / "4d.npy", np.zeros((2, 3, 40, 2)))
    _bad(tmp_path, r"task.path.*shape \(2, 3, 40, 2\)", path=str(tmp_path / "4d.npy"))
    np.save(tmp_path / "short.npy", np.zeros((3, 10, 2)))
    _bad(tmp_path, "task.window_len.*10 steps", path=str(tmp_path / "short.npy"))
    np.save(tmp_path / "transposed.npy", signal(300, 2).T)            # (C, T) by mistake
    _bad(tmp_path, "task.window_len.*transpose", path=str(tmp_path / "transposed.npy"))
    np.save(tmp_path / "long.npy", signal(30, 2))                     # test block 6 + 4 steps < 16
    _bad(tmp_path, "task.window_len.*test steps", path=str(tmp_path / "long.npy"))


def test_nan_inf_and_missing_values_are_counted(tmp_path):
    x = signal(100, 2)
    x[5, 1], x[7, 0] = np.nan, np.inf
    np.save(tmp_path / "nan.npy", x)
    _bad(tmp_path, "2 NaN/inf/missing values \\(first at step 5, channel 'c1'\\)", path=str(tmp_path / "nan.npy"))
    (tmp_path / "gap.csv").write_text("a,b\n" + "\n".join(f"{i},{'' if i == 3 else i}" for i in range(60)))
    _bad(tmp_path, "1 NaN/inf/missing values.*channel 'b'", path=str(tmp_path / "gap.csv"))


def test_non_numeric_columns(tmp_path, long_csv):
    path = str(long_csv[0])
    _bad(tmp_path, r"task.columns.*'date' .*not numbers", path=path, columns=["date"])
    _bad(tmp_path, r"task.columns.*no column 'c'", path=path, columns=["a", "c"])
    _bad(tmp_path, r"task.columns.*out of range", path=path, columns=[7])
    (tmp_path / "typo.csv").write_text("a,b\n" + "\n".join(f"{i},{'x1' if i == 9 else i}" for i in range(60)))
    _bad(tmp_path, "mixing numbers and text: 'b' .*line 11: 'x1'; 1 of 60", path=str(tmp_path / "typo.csv"))
    (tmp_path / "text.csv").write_text("name,city\n" + "\n".join(f"n{i},c{i}" for i in range(60)))
    _bad(tmp_path, "no numeric column", path=str(tmp_path / "text.csv"))
    np.save(tmp_path / "ok.npy", signal(100, 2))
    _bad(tmp_path, "no column named 'a'.*no header", path=str(tmp_path / "ok.npy"), columns=["a"])

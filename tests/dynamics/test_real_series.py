"""The second real series (monthly El Niño SST): its loader, the flattening of statsmodels' wide table, the
chronological split, the preset and the reference rows without a true system."""
import numpy as np
import pandas as pd
import pytest
import torch

from rmflow.tasks.dynamics import data as D

pytest.importorskip("statsmodels")
from statsmodels.datasets import elnino  # noqa: E402

OVERLAP = 24
MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]


@pytest.fixture(scope="module")
def table():
    return elnino.load_pandas().data


def test_elnino_values_length_order_and_finite(table):
    v = D.elnino_values()
    assert v.shape == (732,) and v.dtype == np.float64     # 61 years × 12 months, Jan 1950 – Dec 2010
    assert np.isfinite(v).all()
    # known rows, looked up by label in the raw table: month m of year y sits at 12·(y − 1950) + m
    by_year = table.set_index(table["YEAR"].astype(int))
    for year, month in [(1950, "JAN"), (1950, "DEC"), (1951, "JAN"), (1983, "MAY"), (1998, "FEB"), (2010, "DEC")]:
        assert v[12 * (year - 1950) + MONTHS.index(month)] == by_year.loc[year, month]
    assert v[0] == pytest.approx(23.11) and v[-1] == pytest.approx(22.07)   # the table's first and last cells
    # time order, not column order: the seasonal cycle peaks in Feb–Apr and bottoms out in Aug–Oct every decade
    cycle = v.reshape(-1, 12).mean(axis=0)
    assert np.argmax(cycle) in (1, 2, 3) and np.argmin(cycle) in (7, 8, 9)


def test_flatten_monthly_table_sorts_months_and_years_and_refuses_gaps():
    years = [2001, 2000, 2002]                              # rows out of order
    cells = {m: [100 * y + i for y in years] for i, m in enumerate(MONTHS)}
    t = pd.DataFrame({"YEAR": years, **{m: cells[m] for m in reversed(MONTHS)}})   # columns Dec … Jan
    v = D.flatten_monthly_table(t)
    np.testing.assert_array_equal(v, [100 * y + i for y in (2000, 2001, 2002) for i in range(12)])
    with pytest.raises(ValueError, match="consecutive"):
        D.flatten_monthly_table(t[t["YEAR"] != 2001])
    with pytest.raises(ValueError, match="missing"):
        D.flatten_monthly_table(t.drop(columns=["JUL"]))
    bad = t.copy()
    bad.loc[bad["YEAR"] == 2001, "MAR"] = np.nan
    with pytest.raises(ValueError, match=r"1 missing/non-finite values \(first: MAR 2001\)"):
        D.flatten_monthly_table(bad)


def test_elnino_split_is_chronological_with_only_the_context_overlap():
    v = D.elnino_values()
    s = D.real_series("elnino", overlap=OVERLAP)
    b1, b2 = D.block_bounds(len(v))
    assert (b1, b2) == (512, 586)
    assert s.train.shape == (1, 1, 512) and s.valid.shape == (1, 1, 74 + OVERLAP)
    assert s.test.shape == (1, 1, 146 + OVERLAP)
    assert s.channels == ("sst_nino12",)
    # no transform: the splits are the °C values (float32), in order
    np.testing.assert_allclose(s.train[0, 0], v[:b1], rtol=1e-6)
    np.testing.assert_allclose(s.valid[0, 0], v[b1 - OVERLAP:b2], rtol=1e-6)
    np.testing.assert_allclose(s.test[0, 0], v[b2 - OVERLAP:], rtol=1e-6)
    # each month is a forecast target of exactly one split: train, then valid and test past their contexts
    targets = np.concatenate([s.train[0, 0], s.valid[0, 0, OVERLAP:], s.test[0, 0, OVERLAP:]])
    np.testing.assert_allclose(targets, v, rtol=1e-6)
    # the normalisation uses the training split only
    np.testing.assert_allclose(s.mean, [v[:b1].mean()], rtol=1e-5)
    np.testing.assert_allclose(s.std, [v[:b1].std()], rtol=1e-5)


def test_real_series_dispatch():
    assert D.REAL == ("sunspots", "elnino")
    np.testing.assert_array_equal(D.real_series("sunspots", 32).test, D.sunspots_series(32).test)
    with pytest.raises(ValueError, match="unknown real series 'co2'"):
        D.real_series("co2", 12)


def test_elnino_preset_loads():
    from rmflow.config import load_config
    cfg = load_config("elnino")
    t = cfg.task
    assert (t.system, t.mode, t.window_len, t.context_len, t.ensemble) == ("elnino", "conditional", 36, 24, 32)
    assert t.obs_noise_std == 0.0                            # a measured series: clean contexts
    assert cfg.train.num_threads == 1
    assert list(cfg.compare) == ["meanflow", "meanflow_long", "flow_matching", "rmflow"]
    lorenz = load_config("lorenz")
    for key in ("teacher_sampler", "cmfm_velocity", "refine", "lambda_nll", "pairing", "teacher_steps"):
        assert getattr(cfg.rmflow, key) == getattr(lorenz.rmflow, key), key   # the base's pinned settings
    assert cfg.rmflow.nll_start_step == 750 < cfg.train.steps


def test_elnino_task_reference_rows_without_true_system():
    pytest.importorskip("scoringrules")
    from rmflow.config import load_config
    from rmflow.tasks.dynamics import DynamicsTask
    cfg = load_config("elnino", ["task.ensemble=4"])
    task = DynamicsTask(cfg)
    assert len(task.train_windows) == 512 - 36 + 1 and len(task.test_windows) == 146 + OVERLAP - 36 + 1
    ref = task.reference(40, seed=0)                        # 10 contexts × 4 members
    assert ref.x.shape == (40, 1, 12) and ref.cond.shape == (40, 1, 24)
    rows = task.reference_rows(ref, seed=1)
    assert list(rows) == ["data (truth against itself)", "persistence (last context value)",
                          "climatology (random training windows)", "analogue (4 nearest training contexts)"]
    assert all(x.shape == ref.x.shape for x in rows.values())
    torch.testing.assert_close(rows["persistence (last context value)"][:, :, 0], ref.cond[:, :, -1])
    scores = {k: task.evaluate(x, ref)["crps"] for k, x in rows.items()}
    assert scores["data (truth against itself)"] == pytest.approx(0.0, abs=1e-7)
    assert all(np.isfinite(c) and c > 0 for k, c in scores.items() if not k.startswith("data"))
    with pytest.raises(ValueError, match="needs a simulated system"):
        task.true_system(ref, seed=0)

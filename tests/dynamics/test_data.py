"""Data pipeline: seeded splits, the on-disk cache, normalisation, windows, the real data set."""
import numpy as np
import pytest
import torch

from rmflow.tasks.dynamics import data as D

COUNTS = {"train": 3, "valid": 1, "test": 2}


def make(tmp_path, **kw):
    args = dict(system_name="lorenz", dt=0.05, transient=2.0, traj_len=80, counts=COUNTS, seed=0,
                cache_dir=tmp_path)
    args.update(kw)
    return D.simulated_series(**args)


def test_splits_shapes_and_independence(tmp_path):
    s = make(tmp_path)
    assert s.train.shape == (3, 3, 80) and s.valid.shape == (1, 3, 80) and s.test.shape == (2, 3, 80)
    assert s.channels == ("x", "y", "z")
    # the test split does not depend on how many training trajectories were asked for
    other = make(tmp_path, counts={"train": 5, "valid": 1, "test": 2})
    np.testing.assert_array_equal(s.test, other.test)
    assert not np.allclose(s.train[0], s.test[0])


def test_cache_is_written_reused_and_keyed(tmp_path, monkeypatch):
    first = make(tmp_path)
    files = list(tmp_path.glob("lorenz-*.npz"))
    assert len(files) == 1

    def boom(*a, **k):
        raise AssertionError("simulated although cached")

    monkeypatch.setattr(D, "simulate_many", boom)
    again = make(tmp_path)                            # read from the cache, no simulation
    np.testing.assert_array_equal(first.train, again.train)
    with pytest.raises(AssertionError, match="simulated although cached"):
        make(tmp_path, dt=0.1)                        # another key: needs a new simulation
    with pytest.raises(AssertionError):
        make(tmp_path, use_cache=False)
    assert len(list(tmp_path.glob("*.tmp*"))) == 0


def test_normalisation_uses_train_statistics(tmp_path):
    s = make(tmp_path)
    tr = s.normalised("train").double()
    np.testing.assert_allclose(tr.mean(dim=(0, 2)).numpy(), 0.0, atol=1e-5)
    np.testing.assert_allclose(tr.std(dim=(0, 2), unbiased=False).numpy(), 1.0, atol=1e-5)
    te = s.normalised("test")
    np.testing.assert_allclose(s.denormalise(te).numpy(), s.test, rtol=1e-5, atol=1e-4)


def test_windows_take_the_right_slices():
    series = torch.arange(2 * 3 * 10, dtype=torch.float32).reshape(2, 3, 10)
    w = D.Windows(series, 4)
    assert len(w) == 2 * 7
    out = w.take(torch.tensor([0, 6, 7, 13]))
    torch.testing.assert_close(out[0], series[0, :, 0:4])
    torch.testing.assert_close(out[1], series[0, :, 6:10])
    torch.testing.assert_close(out[2], series[1, :, 0:4])
    torch.testing.assert_close(out[3], series[1, :, 6:10])
    even = w.evenly_spaced(2)
    torch.testing.assert_close(even[1], series[1, :, 6:10])
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    torch.testing.assert_close(w.random(5, g1), w.random(5, g2))
    with pytest.raises(ValueError, match="shorter than the window"):
        D.Windows(series, 11, "x")


def test_split_series_overlap():
    values = np.arange(100.0)
    s = D.split_series(values, overlap=5)
    assert s.train.shape == (1, 1, 70)
    np.testing.assert_array_equal(s.valid[0, 0], np.arange(65, 80))
    np.testing.assert_array_equal(s.test[0, 0], np.arange(75, 100))


def test_sunspots_real_data():
    pytest.importorskip("statsmodels")
    s = D.sunspots_series(overlap=32)
    n = s.train.shape[-1] + s.valid.shape[-1] + s.test.shape[-1] - 2 * 32
    assert n == 309                                   # yearly 1700-2008
    assert s.train.shape == (1, 1, 216)
    assert s.test.shape == (1, 1, 62 + 32)
    assert np.all(s.train >= 0)                       # sqrt of counts
    from statsmodels.datasets import sunspots
    raw = sunspots.load_pandas().data["SUNACTIVITY"].to_numpy()
    np.testing.assert_allclose(s.train[0, 0] ** 2, raw[:216], rtol=1e-5)

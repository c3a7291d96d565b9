"""Reading a user's file: every format, and a clear ConfigError (naming the key and the problem) for bad input."""
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from rmflow.errors import ConfigError
from rmflow.tasks.tables import load_table, resolve_format
from rmflow.tasks.vectors.prepare import DataUnits, prepare, split_rows

X = np.arange(24, dtype=np.float64).reshape(8, 3) * 0.5 - 1.0


def write_text(path, rows, sep=","):
    path.write_text("\n".join(sep.join(map(str, r)) for r in rows) + "\n")
    return str(path)


def test_npy_table_and_column(tmp_path):
    np.save(tmp_path / "a.npy", X.astype(np.float32))
    t = load_table(str(tmp_path / "a.npy"))
    assert t.values.dtype == np.float64 and np.array_equal(t.values, X) and t.names == ["0", "1", "2"]
    np.save(tmp_path / "b.npy", X[:, 1])
    assert load_table(str(tmp_path / "b.npy")).values.shape == (8, 1)
    assert np.array_equal(load_table(str(tmp_path / "a.npy"), columns=[2, "0"], max_rows=5).values, X[:5][:, [2, 0]])


def test_csv_with_header_tsv_and_headerless(tmp_path):
    rows = [["x", "y", "label", "z"]] + [[a, b, "cat" if i % 2 else "dog", c] for i, (a, b, c) in enumerate(X)]
    with pytest.warns(UserWarning, match="'label'"):           # a text column is skipped, by name
        t = load_table(write_text(tmp_path / "a.csv", rows))
    assert t.names == ["x", "y", "z"] and np.allclose(t.values, X)
    t = load_table(write_text(tmp_path / "a.tsv", rows, "\t"), columns=["z", "x"])
    assert t.names == ["z", "x"] and np.allclose(t.values, X[:, [2, 0]])
    t = load_table(write_text(tmp_path / "plain.txt", X.tolist()), fmt="csv")
    assert t.names == ["0", "1", "2"] and np.allclose(t.values, X)
    t = load_table(write_text(tmp_path / "gaps.csv", [["x", "y"], [1, ""], [2, "NA"], [3, 4]]))
    assert np.isnan(t.values[:2, 1]).all() and t.values[2, 1] == 4    # missing values -> NaN (then cleaned)


def test_safetensors_one_tensor_or_by_key(tmp_path):
    save_file({"points": torch.tensor(X)}, str(tmp_path / "one.safetensors"))
    assert np.allclose(load_table(str(tmp_path / "one.safetensors")).values, X)
    save_file({"a": torch.tensor(X, dtype=torch.bfloat16), "b": torch.zeros(4, 2)}, str(tmp_path / "two.safetensors"))
    assert load_table(str(tmp_path / "two.safetensors"), key="b").values.shape == (4, 2)
    assert np.allclose(load_table(str(tmp_path / "two.safetensors"), key="a").values, X, atol=0.1)
    with pytest.raises(ConfigError, match=r"task\.key.*2 tensors \(a, b\)"):
        load_table(str(tmp_path / "two.safetensors"))
    with pytest.raises(ConfigError, match=r"task\.key.*no tensor 'c'"):
        load_table(str(tmp_path / "two.safetensors"), key="c")


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"x": X[:, 0], "n": pa.array(np.arange(8), pa.int32()), "s": ["a"] * 8}),
                   str(tmp_path / "a.parquet"))
    with pytest.warns(UserWarning, match="'s'"):
        t = load_table(str(tmp_path / "a.parquet"))
    assert t.names == ["x", "n"] and np.allclose(t.values, np.stack([X[:, 0], np.arange(8)], 1))
    with pytest.raises(ConfigError, match=r"task\.columns.*'s'"):
        load_table(str(tmp_path / "a.parquet"), columns=["s"])


def test_parquet_without_pyarrow_names_the_package(tmp_path, monkeypatch):
    (tmp_path / "a.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)           # import pyarrow -> ImportError
    with pytest.raises(ConfigError, match=r"task\.path.*pip install pyarrow"):
        load_table(str(tmp_path / "a.parquet"))


@pytest.mark.parametrize("name,content,kwargs,pattern", [
    ("missing.csv", None, {}, r"task\.path.*no such file"),
    ("a.xyz", "1,2\n", {}, r"task\.format.*'\.xyz'"),
    ("bad.npy", b"not an array", {}, r"task\.path.*not a readable \.npy"),
    ("cube.npy", np.zeros((12, 2, 2)), {}, r"task\.path.*shape \(12, 2, 2\)"),
    ("text.npy", np.array(["a", "b"]), {}, r"task\.path.*dtype"),
    ("mixed.csv", "x,y\n1,2\n3,oops\n5,6\n", {}, r"task\.path.*mixing numbers and text: 'y' \(line 3: 'oops'; 1 of 3"),
    ("pick.csv", "x,y\n1,a\n3,b\n", {"columns": ["y"]}, r"task\.columns.*non-numeric column\(s\) 'y'"),
    ("pick.csv", "x,y\n1,a\n3,b\n", {"columns": ["w"]}, r"task\.columns.*no column 'w'; its columns are 'x', 'y'"),
    ("pick.csv", "x,y\n1,a\n3,b\n", {"columns": [5]}, r"task\.columns.*index 5 is out of range.*2 columns"),
    ("ragged.csv", "x,y\n1,2\n3\n", {}, r"task\.path.*line 3 has 1 fields"),
    ("empty.csv", "x,y\n", {}, r"task\.path.*no data rows"),
    ("words.csv", "x,y\na,b\nc,d\n", {}, r"task\.path.*no numeric column"),
    ("latin.csv", "x\n\xe9\n".encode("latin-1"), {}, r"task\.path.*not a UTF-8"),
])
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_bad_files_name_the_key_and_the_problem(tmp_path, name, content, kwargs, pattern):
    path = tmp_path / name
    if isinstance(content, np.ndarray):
        np.save(path, content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=pattern):
        load_table(str(path), **kwargs)


def test_format_from_extension():
    assert [resolve_format(p) for p in ("a.NPY", "b.csv", "c.tsv", "d.parquet", "e.safetensors")] == [
        "npy", "csv", "tsv", "parquet", "safetensors"]
    assert resolve_format("a.dat", "csv") == "csv"


def rows_with_nan(n=30):
    v = np.random.default_rng(0).normal(size=(n, 2))
    v[[3, 7], 0] = np.nan
    v[11, 1] = np.inf
    return v


def test_nonfinite_rows_are_refused_with_a_count_or_dropped():
    with pytest.raises(ConfigError, match=r"task\.path.*3 of 30 rows contain NaN.*data row 4.*task\.nonfinite=drop"):
        prepare(rows_with_nan(), ["a", "b"], "f.csv")
    with pytest.warns(UserWarning, match="3 of 30 rows"):
        p = prepare(rows_with_nan(), ["a", "b"], "f.csv", nonfinite="drop", heldout=0.1)
    assert p.dropped == 3 and len(p.train) + len(p.heldout) == 27 and len(p.heldout) == 3


def test_too_few_rows_says_how_many():
    v = np.random.default_rng(0).normal(size=(12, 2))
    with pytest.raises(ConfigError, match=r"11 usable rows give 1 held-out .* 10 training rows; at least 2 held-out"):
        prepare(v[:11], ["a", "b"], "f.csv", heldout=0.1)
    with pytest.raises(ConfigError, match=r"11 usable rows give 2 held-out .* 9 training rows"):
        prepare(v[:11], ["a", "b"], "f.csv", heldout=0.2)
    p = prepare(v, ["a", "b"], "f.csv", heldout=0.2)
    assert (len(p.train), len(p.heldout)) == (10, 2)


@pytest.mark.filterwarnings("ignore:constant column")
def test_standardisation_uses_the_training_split_and_round_trips():
    v = np.random.default_rng(1).normal(size=(200, 3)) * [1.0, 50.0, 1e-3] + [0.0, 1000.0, -7.0]
    v[:, 0] = 4.0                                              # a constant column: std taken as 1
    with pytest.warns(UserWarning, match="constant column.*: 'c';"):
        p = prepare(v, ["c", "big", "small"], "f.csv", heldout=0.25, split_seed=3)
    assert len(p.heldout) == 50
    assert torch.allclose(p.train[:, 1:].mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(p.train[:, 1:].std(0, unbiased=False), torch.ones(2), atol=1e-5)
    assert p.std[0] == 1.0 and torch.all(p.train[:, 0] == 0)
    units = DataUnits(p.mean, p.std)
    back = units.to_data(torch.cat([p.train, p.heldout]))
    tr, ho = split_rows(200, 0.25, 3)
    assert back.dtype == torch.float64
    assert np.allclose(back.numpy(), v[np.concatenate([tr, ho])], rtol=0, atol=1e-5 * np.array([1, 50, 1e-3]))
    assert torch.allclose(units.to_model(back), torch.cat([p.train, p.heldout]).double(), atol=1e-5)
    same = prepare(v, ["c", "big", "small"], "f.csv", heldout=0.25, split_seed=3)
    assert torch.equal(same.heldout, p.heldout)                  # the split is seeded
    raw = prepare(v, ["c", "big", "small"], "f.csv", standardize=False)
    assert torch.equal(raw.std, torch.ones(3, dtype=torch.float64)) and raw.train[:, 1].mean() > 900

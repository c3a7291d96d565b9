"""The example table of the vectors-example preset: written by one command, read back by the task's loader."""
import numpy as np
import pytest

from rmflow.tasks.tables import load_table


def test_example_writes_a_table_the_task_reads(tmp_path, capsys):
    pytest.importorskip("sklearn")
    from rmflow.tasks.vectors.example import example_table, main
    out = tmp_path / "breast_cancer.csv"
    assert main([str(out)]) == 0
    assert "rmflow train vectors-example" in capsys.readouterr().out
    t = load_table(str(out))
    values, names = example_table("breast_cancer")
    assert t.values.shape == (569, 30) and t.names == names and np.array_equal(t.values, values)
    assert main([str(tmp_path / "no" / "x.csv")]) == 2

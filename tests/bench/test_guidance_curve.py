"""benchmarks/guidance_curve.py: guided rows of eval.json become ordered sweep points, a table and a figure."""
from __future__ import annotations

import json

import pytest



def test_sweep_rows_table_and_figure(curve, tmp_path):
    run = tmp_path / "meanflow-s0"
    run.mkdir()
    rows = [{"sampler": s, "acc": a, "cfd": f} for s, a, f in
            [("meanflow@8:w=3", 0.9, 2.0), ("meanflow@8", 0.5, 1.0), ("meanflow@8:w=1", 0.6, 1.5),
             ("meanflow@1:w=2", 0.7, 3.0)]]
    (run / "eval.json").write_text(json.dumps(rows))
    got = curve.sweep_rows([run])
    assert [(r["sampler"], r["w"]) for r in got] == [("meanflow@1", 2.0), ("meanflow@8", 1.0), ("meanflow@8", 3.0)]
    text = curve.table(got)
    assert "| meanflow-s0 | meanflow@8 | 3 | 0.900 | 2.000 |" in text and "acc_heldout" not in text
    assert "| meanflow-s0 | meanflow@8 | 1 | 1.5 | 0.600 | – | 3 | 0.900 | 2.0 | – |" in curve.best(got)
    curve.main([str(run), "--md", str(tmp_path / "t.md"), "--figure", str(tmp_path / "c.png")])
    assert (tmp_path / "c.png").stat().st_size > 0
    assert (tmp_path / "t.md").read_text() == text + "\n\n" + curve.best(got) + "\n"
    with pytest.raises(SystemExit, match="eval.json is missing"):
        curve.sweep_rows([tmp_path / "nothing"])

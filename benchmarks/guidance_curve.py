#!/usr/bin/env python
"""The guidance sweep of text-to-image runs: a table and the FD–accuracy curve (as papers plot FID against CLIP score).

    rmflow evaluate RUN_DIR --samplers rmflow:w=1 rmflow:w=2 rmflow:w=3 ...      # writes RUN_DIR/eval.json
    python benchmarks/guidance_curve.py RUN_DIR [RUN_DIR ...] --md table.md --figure curve.png

Every row of each run's eval.json with a guidance suffix (`NAME@K:w=ω`) becomes a point; the points of one
(run, sampler) pair form a curve ordered by ω. x: the classifier-feature Fréchet distance `cfd` (lower is better),
y: prompt accuracy `acc` (every attribute right; higher is better). The table lists every metric of the rows, then
the best ω of each curve for FD and for accuracy.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rmflow.config import parse_sampler_spec

COLUMNS = ("acc", "acc_seen", "acc_heldout", "acc_digit", "cfd", "diversity")


def sweep_rows(run_dirs: list[Path]) -> list[dict]:
    """Rows {run, sampler, w, metrics...} of the guided evaluations in the runs' eval.json, sorted by run, sampler, ω."""
    out = []
    for run in run_dirs:
        path = run / "eval.json"
        if not path.exists():
            raise SystemExit(f"{path} is missing: run `rmflow evaluate {run} --samplers NAME:w=ω ...` first")
        for row in json.loads(path.read_text()):
            name, steps, w = parse_sampler_spec(row["sampler"])
            if w is not None:
                out.append(row | {"run": run.name, "sampler": f"{name}@{steps}", "w": w})
    return sorted(out, key=lambda r: (r["run"], r["sampler"], r["w"]))


def table(rows: list[dict]) -> str:
    keys = [k for k in COLUMNS if any(k in r for r in rows)]
    lines = ["| run | sampler | ω | " + " | ".join(keys) + " |", "|---|---|---|" + "---|" * len(keys)]
    for r in rows:
        lines.append(f"| {r['run']} | {r['sampler']} | {r['w']:g} | "
                     + " | ".join(f"{r[k]:.3f}" if k in r else "–" for k in keys) + " |")
    return "\n".join(lines)


def curves(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """(run, sampler) -> its rows, in the order of `rows` (sweep_rows sorts them by ω)."""
    out: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        out.setdefault((r["run"], r["sampler"]), []).append(r)
    return out


def best(rows: list[dict]) -> str:
    """Per (run, sampler): the ω with the lowest `cfd` and the ω with the highest `acc`, with both metrics at each."""
    lines = ["| run | sampler | best FD: ω | cfd | acc | held-out acc | best acc: ω | acc | cfd | held-out acc |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (run, sampler), pts in curves(rows).items():
        f, a = min(pts, key=lambda p: p["cfd"]), max(pts, key=lambda p: p["acc"])
        held = lambda p: f"{p['acc_heldout']:.3f}" if "acc_heldout" in p else "–"   # noqa: E731
        lines.append(f"| {run} | {sampler} | {f['w']:g} | {f['cfd']:.1f} | {f['acc']:.3f} | {held(f)} | {a['w']:g} | "
                     f"{a['acc']:.3f} | {a['cfd']:.1f} | {held(a)} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.2, 4.0))
    for (run, sampler), pts in curves(rows).items():
        line, = ax.plot([p["cfd"] for p in pts], [p["acc"] for p in pts], marker="o", ms=3, label=f"{run}: {sampler}")
        for p in pts:
            ax.annotate(f"{p['w']:g}", (p["cfd"], p["acc"]), fontsize=6, color=line.get_color(),
                        xytext=(2, 2), textcoords="offset points")
    ax.set_xlabel("classifier-feature Fréchet distance (lower is better)")
    ax.set_ylabel("prompt accuracy, all attributes")
    ax.set_title("guidance sweep (labels: ω)", fontsize=9)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dirs", nargs="+", type=Path)
    p.add_argument("--md", type=Path)
    p.add_argument("--figure", type=Path)
    a = p.parse_args(argv)
    rows = sweep_rows(a.run_dirs)
    if not rows:
        raise SystemExit("no guided rows (sampler NAME:w=ω) in the runs' eval.json")
    text = table(rows) + "\n\n" + best(rows)
    print(text)
    if a.md:
        a.md.write_text(text + "\n")
    if a.figure:
        plot(rows, a.figure)


if __name__ == "__main__":
    sys.exit(main())

"""Write a small real table as CSV (with a header) for the `vectors-example` preset:

    python -m rmflow.tasks.vectors.example breast_cancer.csv                   # 569 rows × 30 columns
    python -m rmflow.tasks.vectors.example wine.csv --dataset wine             # 178 × 13

The tables ship inside scikit-learn (no download): breast_cancer (Wisconsin diagnostic), wine, diabetes (the raw
10 features), iris. Only the features are written, not the class or target.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

DATASETS = {"breast_cancer": ("load_breast_cancer", {}), "wine": ("load_wine", {}),
            "diabetes": ("load_diabetes", {"scaled": False}), "iris": ("load_iris", {})}


def example_table(dataset: str = "breast_cancer") -> tuple[np.ndarray, list[str]]:
    """(features (N, D) float64, D column names) of one of scikit-learn's bundled tables."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    try:
        from sklearn import datasets
    except ImportError:
        raise ImportError("the example tables come with scikit-learn, which is not installed: pip install "
                          "scikit-learn (or the extra: pip install 'rmflow[text2image]')") from None
    loader, kwargs = DATASETS[dataset]
    bunch = getattr(datasets, loader)(**kwargs)
    return np.asarray(bunch.data, dtype=np.float64), [str(n).replace(",", " ") for n in bunch.feature_names]


def write_csv(path: str | Path, values: np.ndarray, names: list[str]) -> None:
    """values (N, D) under a header of D names, numbers written exactly (repr of float)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(names)
        w.writerows([[repr(float(v)) for v in row] for row in values])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rmflow.tasks.vectors.example", description=__doc__.split("\n")[0])
    p.add_argument("out", help="the CSV file to write")
    p.add_argument("--dataset", default="breast_cancer", choices=sorted(DATASETS))
    args = p.parse_args(argv)
    out = Path(args.out)
    if not out.parent.is_dir():
        print(f"error: the folder {out.parent} does not exist", file=sys.stderr)
        return 2
    try:
        values, names = example_table(args.dataset)
    except ImportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_csv(out, values, names)
    print(f"wrote {out}: {values.shape[0]} rows × {values.shape[1]} columns ({args.dataset}); train on it with\n"
          f"  rmflow train vectors-example task.path={out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

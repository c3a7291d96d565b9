"""Where a QM9 model loses stability: EDM's metrics with per-type stability, valence errors and bond-length spread.

    python benchmarks/qm9_geometry.py RUN_DIR [--samplers fm@100 fm_heun@100 fm@300] [--num-samples 300] [--json F]
                                             [--memorisation]

Draws `--num-samples` molecules per sampler for the task's reference atom counts (seed 0, the EMA weights of the
newest checkpoint) and prints, per sampler and for the reference molecules themselves ("data"), the EDM metrics
(atom / molecule stability, validity) and `metrics.geometry_report` (stable share per atom type, under- / over-valent
atoms, quantiles of hydrogen–heavy-atom and heavy–heavy nearest-neighbour distances). Used for docs/results/qm9.md
§7 ("Where the stability is lost"). `--memorisation` adds uniqueness, novelty and `copied` (the share of all
samples that are exact copies of a training molecule) against the run's training part, and novelty against all of
QM9 (`novel_qm9`; its SMILES are computed once and cached, a few CPU minutes).
"""
from __future__ import annotations

import argparse
import json

import torch

import rmflow
from rmflow.evaluate import draw_samples
from rmflow.tasks.qm9.metrics import decode, evaluate_molecules, geometry_report

KEEP = ("atom_stable", "mol_stable", "valid")
MEMORISATION = ("unique", "novel", "copied", "novel_qm9")


def report(x: torch.Tensor, mask: torch.Tensor, task=None) -> dict:
    """x (B, N, 3 + 5) model-space samples, mask (B, N, 1) -> the printed row; with the QM9 `task`, also the
    memorisation columns against its training SMILES and all of QM9's."""
    pos, types, m = decode(x, mask)
    if task is None:
        metrics, keep = evaluate_molecules(pos, types, m), KEEP
    else:
        metrics = evaluate_molecules(pos, types, m, task.training_smiles(),
                                     known_sets={"novel_qm9": task.qm9_smiles()})
        keep = KEEP + MEMORISATION
    return geometry_report(pos, types, m) | {k: metrics[k] for k in keep}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--samplers", nargs="+", default=["fm@100"])
    p.add_argument("--num-samples", type=int, default=300)
    p.add_argument("--json", default="", help="also write the rows here")
    p.add_argument("--memorisation", action="store_true", help="add uniqueness, novelty and copies (see above)")
    args = p.parse_args(argv)
    pipe = rmflow.load(args.run_dir)
    task = pipe.task if args.memorisation else None
    reference = pipe.task.reference(args.num_samples, seed=10_000)
    rows = {"data": report(reference.x, reference.mask, task)}
    print("data", json.dumps(rows["data"]), flush=True)
    for sampler in args.samplers:
        x = draw_samples(pipe.model, reference, sampler, 0, pipe.cfg.eval.batch_size)[0]
        rows[sampler] = report(x, reference.mask, task)
        print(sampler, json.dumps(rows[sampler]), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return rows


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""The density suite: RMFlow 1-NFE against MeanFlow and flow matching on many targets, with one default.

    python benchmarks/suite.py run --targets ring8 checkerboard moons --seeds 0 1 2 --out runs/suite [key=value ...]
    python benchmarks/suite.py stage2 runs/suite [--targets ...] [--seeds ...]   # after a change to stage 2 only
    python benchmarks/suite.py mf-one runs/suite [--targets ...] [--seeds ...]   # add the one-run MeanFlow baseline
    python benchmarks/suite.py report runs/suite --md docs/results/suite.md --figures docs/figures
    python benchmarks/suite.py diff docs/results/S10k runs/suite-candidate   # a candidate default against the default

Every (target, seed) trains from the library's code defaults; only the data (`task.dataset`) differs between
targets, and `key=value` overrides (the same for every target) exist to explore candidate defaults on the
development subset. Three runs share the seed:

- `rmflow`:  stage 1 (MeanFlow) to rmflow.nll_start_step = S, then the likelihood stage to train.steps = S + T;
- `control`: the same stage-1 model continued as MeanFlow (λ1 = 0) for the same T steps: the equal-steps control,
  and the MeanFlow baseline at the same budget (MF-1, MF-8, MF-32);
- `fm`:      flow matching (flow.time.ratio_neq = 0, λ1 = 0) for S + T steps: the 100-step ODE baseline (FM-100);
- `mf_one`:  MeanFlow in one run of S + T steps with a single cosine decay of the learning rate (λ1 = 0,
  train.lr_schedule = cosine): the MeanFlow baseline at its best for the budget ("MF-8 (one run)"). The control's
  warm restart at S can cost MeanFlow quality (ring8: MF-8 TV½ 0.191 at S, 0.282 after the control), so the
  control measures what T more steps of L_CMFM alone give the stage-1 model, and `mf_one` is the baseline to beat.

Learning curves: held-out metrics at `--points` evenly spaced steps of stage 1 (MF-1 / MF-8 / the stage-1 model's
own ODE, and FM-100 of the `fm` run) and at two steps of stage 2 (RMF-1; control MF-1 / MF-8). Held-out
log-likelihood at the end, on the first `--ll-points` reference points: RMF-1 and the control's MF-1 under the same
Gaussian channel s = σ_min (one_step_log_likelihood, inverse proposal), FM-100 by the ODE's change of variables
(exact divergence up to D = 16, Hutchinson above), and the true density's own mean log p(y) (the ceiling).

Writes <out>/<target>/s<seed>.json; the run folders (checkpoints) live beside it and are not results.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from rmflow.config import apply_overrides, build_config, to_dict
from rmflow.evaluate import evaluate_samplers
from rmflow.flow.likelihood import flow_matching_log_likelihood, one_step_log_likelihood
from rmflow.train import Trainer
from rmflow.train.build import build_task

DEV = ("ring8", "checkerboard", "moons")
HELD_OUT = ("grid25", "six", "spirals", "pinwheel", "mog1d", "subspace16", "subspace64", "moons16")
NETWORK = {"hidden": 256, "depth": 3}          # one size for every target
METHODS = {"control": {"rmflow.lambda_nll": 0.0},
           "fm": {"rmflow.lambda_nll": 0.0, "flow.time.ratio_neq": 0.0},
           "imf": {"rmflow.lambda_nll": 0.0, "flow.objective": "imf"},
           "mf_one": {"rmflow.lambda_nll": 0.0, "train.lr_schedule": "cosine"}}
KEYS = ("tv_half", "w2", "sliced_w2", "energy", "mmd", "log_density", "off_mode", "mode_err")


def target_config(target: str, seed: int, out: Path, overrides: list[str], method: str = "rmflow"):
    data = {"name": f"{target}/s{seed}/{method}", "seed": seed, "out_dir": str(out),
            "task": {"name": "synthetic", "dataset": target}, "model": dict(NETWORK),
            "train": {"progress": False, "num_threads": 1}}
    apply_overrides(data, list(overrides))
    apply_overrides(data, [f"{k}={json.dumps(v)}" for k, v in METHODS.get(method, {}).items()])
    return build_config(data)


def _rows(trainer, reference, samplers, seed):
    model = trainer.ema.shadow
    rows, _ = evaluate_samplers(trainer.task, model, reference, samplers, seed)
    keep = ("sampler", "nfe", *KEYS)
    return [{k: r[k] for k in keep if k in r} | {"step": trainer.step} for r in rows]


def run_one(target: str, seed: int, out: Path, overrides: list[str], points: int, ll_points: int, log,
            variants: list[tuple[str, list[str]]] = (), with_imf: bool = False) -> dict:
    cfg = target_config(target, seed, out, overrides)
    S, total = cfg.rmflow.nll_start_step, cfg.train.steps
    if not (0 < S < total and cfg.rmflow.lambda_nll > 0):
        raise SystemExit("the suite needs a two-stage default: 0 < rmflow.nll_start_step < train.steps, λ1 > 0")
    torch.manual_seed(seed)
    rm = Trainer(cfg, cfg.run_dir)
    reference = rm.task.reference(cfg.eval.num_samples, seed=10_000 + seed)
    stage1 = [round(S * (i + 1) / points) for i in range(points)]
    curves, seconds, t0 = [], {}, time.perf_counter()
    for step in stage1:
        rm.train(step)
        curves += [r | {"method": "meanflow"} for r in _rows(rm, reference, ["meanflow@1", "meanflow@8", "fm@100"],
                                                             seed)]
        log(f"[{target} s{seed}] stage 1 step {step}: " + _brief(curves[-3:]))
    seconds["stage1"] = time.perf_counter() - t0
    rm.save(tag="stage1")   # kept whatever the retention of step checkpoints: stage 2 and its variants start here
    fm_cfg = target_config(target, seed, out, overrides, "fm")
    fm = Trainer(fm_cfg, fm_cfg.run_dir, task=rm.task)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    for step in stage1:
        fm.train(step)
        curves += [r | {"method": "fm"} for r in _rows(fm, reference, ["fm@100"], seed)]
    fm.save(tag="stage1")
    seconds["fm_stage1"] = time.perf_counter() - t0
    if with_imf:   # improved MeanFlow (arXiv 2512.02012), trained as long as the others
        imf_cfg = target_config(target, seed, out, overrides, "imf")
        imf = Trainer(imf_cfg, imf_cfg.run_dir, task=rm.task)
        torch.manual_seed(seed)
        imf.train(S)
        imf.save(tag="stage1")
    t0 = time.perf_counter()
    curves += one_run_meanflow(target, seed, out, overrides, [S, total], rm.task, reference, log)
    seconds["mf_one"] = time.perf_counter() - t0
    result = {"target": target, "seed": seed, "S": S, "steps": total, "overrides": list(overrides),
              "config": to_dict(cfg), "curves": curves, "seconds": seconds, "ll_points": ll_points}
    return finish(result, out, log, variants, rm.task, reference)


def one_run_meanflow(target, seed, out, overrides, steps, task, reference, log) -> list[dict]:
    """The `mf_one` baseline (module docstring): held-out MF-1 / MF-8 / MF-32 rows at each of `steps`."""
    cfg = target_config(target, seed, out, overrides, "mf_one")
    torch.manual_seed(seed)
    tr = Trainer(cfg, cfg.run_dir, task=task)
    rows = []
    for step in steps:
        tr.train(step)
        rows += [r | {"method": "mf_one"} for r in _rows(tr, reference, ["meanflow@1", "meanflow@8", "meanflow@32"],
                                                         seed)]
        log(f"[{target} s{seed}] one-run MeanFlow step {step}: " + _brief(rows[-3:]))
    return rows


def checkpoint_step_of(path: Path) -> int:
    """The training step stored in a checkpoint (stage1.json carries no step in its name)."""
    return json.loads(path.read_text())["state"]["step"]


def _stage1_checkpoint(run: Path, S: int) -> Path:
    ckpt = run / "checkpoints"
    return ckpt / "stage1.json" if (ckpt / "stage1.json").exists() else ckpt / f"step_{S:08d}.json"


def finish(result: dict, out: Path, log, variants=(), task=None, reference=None) -> dict:
    """Everything after the stage boundary S, from the stage-1 checkpoints of the `rmflow`, `fm` (and `imf`) runs:
    the likelihood stage and the equal-steps control from the same MeanFlow checkpoint, flow matching and iMF
    continued, their stage-2 curve points, the final rows and the held-out likelihoods. `run` calls it; `stage2`
    calls it again on finished results after a change that only touches stage 2 (it replaces every stage-2 entry)."""
    target, seed, S, total, overrides = (result[k] for k in ("target", "seed", "S", "steps", "overrides"))
    cfg = target_config(target, seed, out, overrides)
    stage2 = [S + (total - S) // 2, total]
    run = out / target / f"s{seed}"
    start = _stage1_checkpoint(run / "rmflow", S)
    curves = [c for c in result["curves"] if (c["step"] <= S and not c["method"].startswith("rmflow"))
              or c["method"] == "mf_one"]   # the one-run baseline does not start from stage 1: kept whole
    seconds = {k: v for k, v in result["seconds"].items() if k in ("stage1", "fm_stage1", "mf_one")}

    def continued(method: str, path: Path, warm_start: bool) -> Trainer:
        c = target_config(target, seed, out, overrides, method)
        tr = Trainer(c, c.run_dir, task=task)
        tr.load(path, warm_start=warm_start)
        if path.stem != "stage1" and not warm_start:   # a step checkpoint that retention would delete: keep it
            tr.save(tag="stage1")
        return tr

    ctl = continued("control", start, True)
    task = ctl.task
    reference = reference if reference is not None else task.reference(cfg.eval.num_samples, seed=10_000 + seed)
    t0 = time.perf_counter()
    for step in stage2:
        ctl.train(step)
        curves += [r | {"method": "control"} for r in _rows(ctl, reference, ["meanflow@1", "meanflow@8"], seed)]
    seconds["control"] = time.perf_counter() - t0
    rm = continued("rmflow", start, True)
    t0 = time.perf_counter()
    for step in stage2:
        rm.train(step)
        curves += [r | {"method": "rmflow"} for r in _rows(rm, reference, ["rmflow"], seed)]
        log(f"[{target} s{seed}] stage 2 step {step}: " + _brief(curves[-1:]))
    seconds["stage2"] = time.perf_counter() - t0
    for name, extra in variants:
        curves += run_variant(target, seed, out, overrides, name, extra, start, task, reference, log)[0]
    fm = continued("fm", _stage1_checkpoint(run / "fm", S), False)
    t0 = time.perf_counter()
    for step in stage2:
        fm.train(step)
        curves += [r | {"method": "fm"} for r in _rows(fm, reference, ["fm@100"], seed)]
    seconds["fm_stage2"] = time.perf_counter() - t0
    log(f"[{target} s{seed}] fm: " + _brief(curves[-1:]))
    imf = None
    if (run / "imf" / "checkpoints").exists():
        imf = continued("imf", _stage1_checkpoint(run / "imf", S), False)
        imf.train()

    final = ([r | {"method": "rmflow"} for r in _rows(rm, reference, ["rmflow"], seed)]
             + [r | {"method": "control"} for r in _rows(ctl, reference, ["meanflow@1", "meanflow@8", "meanflow@32"],
                                                         seed)]
             + [r | {"method": "stage1"} for r in curves if r["method"] == "meanflow" and r["step"] == S
                and r["sampler"] == "meanflow@1"]
             + [r | {"method": "fm"} for r in _rows(fm, reference, ["fm@100"], seed)]
             + ([r | {"method": "imf"} for r in _rows(imf, reference, ["meanflow@1", "meanflow@2", "meanflow@8"],
                                                      seed)] if imf else []))
    second = task.reference(cfg.eval.num_samples, seed=20_000 + seed).x
    data = {"method": "data", "sampler": "data", **{k: v for k, v in task.evaluate(second, reference).items()
                                                    if k in KEYS}}
    t0 = time.perf_counter()
    ll = likelihoods(rm, ctl, fm, reference.x[:result.get("ll_points", 1000)], cfg, seed)
    seconds["likelihood"] = time.perf_counter() - t0
    log(f"[{target} s{seed}] log-lik " + " ".join(f"{k}={v[0]:.3f}±{v[1]:.3f}" for k, v in ll.items()))
    return {**{k: v for k, v in result.items() if k not in ("default_rerun",)}, "config": to_dict(cfg),
            "curves": curves, "final": final, "data": data, "likelihood": ll, "seconds": seconds}


def run_variant(target, seed, out, overrides, name, extra, start, task, reference, log) -> list[dict]:
    """Another likelihood stage (`extra` config keys) from the stage-1 checkpoint `start`: its final rows.
    The pseudo-key `start=fm` in `extra` starts it from the `fm` run's stage-1 checkpoint instead (flow matching
    for S steps; its EMA becomes the frozen teacher), at the same total budget."""
    if "start=fm" in extra:
        extra = [e for e in extra if e != "start=fm"]
        start = _stage1_checkpoint(out / target / f"s{seed}" / "fm", checkpoint_step_of(start))
    cfg = target_config(target, seed, out, [*overrides, *extra], f"rmflow-{name}")
    v = Trainer(cfg, cfg.run_dir, task=task)
    v.load(start, warm_start=True)
    v.train()
    rows = [r | {"method": f"rmflow:{name}"} for r in _rows(v, reference, ["rmflow"], seed)]
    log(f"[{target} s{seed}] variant {name}: " + _brief(rows))
    return rows, v


def finished(root: Path, targets, seeds):
    """(target, seed, path, result) of every finished result <root>/<target>/s<seed>.json among targets × seeds."""
    torch.set_num_threads(1)
    for target in targets:
        for seed in seeds:
            path = root / target / f"s{seed}.json"
            if path.exists():
                yield target, seed, path, json.loads(path.read_text())


def add_variants(root: Path, targets, seeds, variants, log) -> None:
    """Run likelihood-stage variants on finished results (their stage-1 checkpoints) and add them to the JSON."""
    for target, seed, path, result in finished(root, targets, seeds):
        base = [o for o in result["overrides"]]
        start = _stage1_checkpoint(root / target / f"s{seed}" / "rmflow", result["S"])
        cfg = target_config(target, seed, root, base)
        trainer = Trainer(cfg)
        reference = trainer.task.reference(cfg.eval.num_samples, seed=10_000 + seed)
        for name, extra in variants:
            result["curves"] = [c for c in result["curves"] if c["method"] != f"rmflow:{name}"]
            rows, _ = run_variant(target, seed, root, base, name, extra, start, trainer.task, reference, log)
            result["curves"] += rows
            _write(path, result)


def add_one_run_meanflow(root: Path, targets, seeds, log) -> None:
    """Train the `mf_one` baseline for finished results that lack it and add its rows to their JSON."""
    for target, seed, path, result in finished(root, targets, seeds):
        if any(c["method"] == "mf_one" for c in result["curves"]):
            log(f"[{target} s{seed}] has the one-run MeanFlow already")
            continue
        cfg = target_config(target, seed, root, result["overrides"])
        task = build_task(cfg)   # the task alone: one_run_meanflow builds and seeds its own trainer
        reference = task.reference(cfg.eval.num_samples, seed=10_000 + seed)
        t0 = time.perf_counter()
        result["curves"] += one_run_meanflow(target, seed, root, result["overrides"], [result["S"], result["steps"]],
                                             task, reference, log)
        result["seconds"]["mf_one"] = time.perf_counter() - t0
        _write(path, result)


def rerun_stage2(root: Path, targets, seeds, log) -> None:
    """`finish` again on finished results: every stage-2 entry under the current code, stage 1 kept."""
    for _, _, path, result in finished(root, targets, seeds):
        _write(path, finish(result, root, log))


def _write(path: Path, result: dict) -> None:
    """Atomic: a killed rerun leaves the previous result whole."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)


@torch.no_grad()
def likelihoods(rm, ctl, fm, y, cfg, seed) -> dict[str, tuple[float, float]]:
    """Mean held-out log-likelihood ± its standard error per model (see the module docstring)."""
    gen = lambda: torch.Generator().manual_seed(30_000 + seed)   # noqa: E731
    s = math.sqrt(cfg.rmflow.sigma_min ** 2 - cfg.flow.sigma ** 2)
    out = {}
    r = one_step_log_likelihood(rm.ema.shadow.eval(), y, num_draws=512, generator=gen(), proposal="inverse")
    out["rmf1"] = (r.mean, r.stderr)
    r = one_step_log_likelihood(ctl.ema.shadow.eval(), y, num_draws=512, generator=gen(), proposal="inverse",
                                scale=s)
    out["mf1"] = (r.mean, r.stderr)
    d = y.shape[1]
    with torch.enable_grad():
        lp = flow_matching_log_likelihood(fm.ema.shadow.eval(), y, steps=32,
                                          divergence="exact" if d <= 16 else "hutchinson", probes=4,
                                          generator=gen())
    out["fm100"] = (float(lp.mean()), float(lp.std() / math.sqrt(len(lp))))
    true = rm.task.density.log_prob(y)
    out["true"] = (float(true.mean()), float(true.std() / math.sqrt(len(true))))
    return out


def _brief(rows) -> str:
    return "  ".join(f"{r['sampler']}: tv½ {r.get('tv_half', float('nan')):.3f} w2 {r.get('w2', float('nan')):.3f}"
                     f" off {r.get('off_mode', float('nan')):.3f}" for r in rows)


# ---------------------------------------------------------------------------------------------------- report
ROWS = {"RMF-1": ("rmflow", "rmflow"), "MF-1 (stage 1)": ("stage1", "meanflow@1"),
        "control MF-1": ("control", "meanflow@1"), "MF-8": ("control", "meanflow@8"),
        "MF-8 (stage 1)": ("stage1", "meanflow@8"),
        "MF-32": ("control", "meanflow@32"), "MF-1 (one run)": ("mf_one", "meanflow@1"),
        "MF-8 (one run)": ("mf_one", "meanflow@8"), "MF-32 (one run)": ("mf_one", "meanflow@32"),
        "FM-100": ("fm", "fm@100"), "iMF-1": ("imf", "meanflow@1"),
        "iMF-2": ("imf", "meanflow@2"), "iMF-8": ("imf", "meanflow@8")}
LOWER_IS_BETTER = {"tv_half": True, "w2": True, "sliced_w2": True, "energy": True, "mmd": True,
                   "log_density": False, "off_mode": True, "mode_err": True}


def load_results(root: Path) -> dict[str, list[dict]]:
    by_target: dict[str, list[dict]] = {}
    for f in sorted(root.glob("*/s*.json")):
        if not re.fullmatch(r"s\d+\.json", f.name):   # e.g. probe/six-s0-<tag>.json: not a suite result
            continue
        r = json.loads(f.read_text())
        by_target.setdefault(r["target"], []).append(r)
    return by_target


def _final_rows(r: dict) -> list[dict]:
    """A result's end-of-training rows: `final`, the stage-1 model's MF-8 at the stage boundary (the frozen
    teacher's network; the control continues it), the variants' and the one-run MeanFlow's last rows (these live in
    `curves`)."""
    return (r["final"]
            + [c | {"method": "stage1"} for c in r["curves"]
               if c["method"] == "meanflow" and c["step"] == r["S"] and c["sampler"] == "meanflow@8"]
            + [c for c in r["curves"] if (c["method"].startswith("rmflow:") or c["method"] == "mf_one")
               and c["step"] == r["steps"]])


def _variant_labels(results) -> list[str]:
    """'RMF-1 [name]' for every likelihood-stage variant in the results, in first-seen order."""
    names = dict.fromkeys(row["method"][len("rmflow:"):] for r in results for row in _final_rows(r)
                          if row["method"].startswith("rmflow:"))
    return [f"RMF-1 [{n}]" for n in names]


def _values(results, label, key):
    method, sampler = ROWS[label] if label in ROWS else (f"rmflow:{label[7:-1]}", "rmflow")
    vals = [row[key] for r in results for row in _final_rows(r)
            if row["method"] == method and row["sampler"] == sampler and key in row]
    return np.array([v for v in vals if v is not None and math.isfinite(v)])


def verdict(a: np.ndarray, b: np.ndarray, lower: bool) -> str:
    """'win' / 'tie' / 'loss' of a against b: a tie when the mean difference is within two standard errors of
    the difference (sample stds over seeds)."""
    if len(a) == 0 or len(b) == 0:
        return "–"
    diff = a.mean() - b.mean()
    se = math.sqrt((a.var(ddof=1) / len(a) if len(a) > 1 else 0) + (b.var(ddof=1) / len(b) if len(b) > 1 else 0))
    if abs(diff) <= 2 * se:
        return "tie"
    return "win" if (diff < 0) == lower else "loss"


def report(root: Path, md: Path | None, figures: Path | None) -> str:
    res = load_results(root)
    lines = []
    metrics = KEYS
    for target, results in res.items():
        seeds = sorted(r["seed"] for r in results)
        lines += [f"### {target} ({len(seeds)} seeds; stage 1 {results[0]['S']} + stage 2 "
                  f"{results[0]['steps'] - results[0]['S']} steps)", "",
                  "| sampler | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
        for label in ["RMF-1", *_variant_labels(results), *list(ROWS)[1:]]:
            cells = []
            for k in metrics:
                v = _values(results, label, k)
                cells.append(f"{v.mean():.4g} ± {v.std(ddof=1) if len(v) > 1 else 0:.2g}" if len(v) else "–")
            if any(c != "–" for c in cells):   # rows a run did not train (iMF without --imf) are left out
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
        data = [r["data"] for r in results]
        lines.append("| data floor | " + " | ".join(
            f"{np.mean([d[k] for d in data if k in d]):.4g}" if any(k in d for d in data) else "–" for k in metrics)
            + " |")
        ll = {k: np.array([r["likelihood"][k][0] for r in results]) for k in results[0]["likelihood"]}
        lines += ["", "held-out log-likelihood (mean over seeds ± std): " + ", ".join(
            f"{k} {v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0:.3f}" for k, v in ll.items()), ""]
    summary = summary_table(res)
    command = f"python benchmarks/suite.py report {root}" + (f" --md {md}" if md else "") + (
        f" --figures {figures}" if figures else "")
    head = [f"# The density suite, every target (written by `{command}`)", "",
            "How the runs were made and what the columns mean: docs/RESULTS.md §1. Per-target rows: mean ± sample "
            "std over the seeds (± 0 with one seed); iMF rows where the run had `--imf`; `RMF-1 [name]` rows are "
            "likelihood-stage variants (`--variant name:key=value,...`) from the same stage-1 checkpoints.", ""]
    text = "\n".join([*head, "## Summary: RMF-1 against each baseline (win / tie / loss per metric)", "", summary, "",
                      "## TV½ and sliced W2, means over seeds", "", means_table(res, ("tv_half", "sliced_w2")), "",
                      "## Per target", "", *lines])
    if md:
        md.write_text(text + "\n")
    if figures:
        figures.mkdir(parents=True, exist_ok=True)
        plot_curves(res, figures / "suite-curves.png")
        plot_samples(root, list(res), figures / "suite-samples.png")
    return text


def summary_table(res) -> str:
    """Rows = targets. Per baseline (MF-8 three times: the control's at the end, the stage-1 model's at the stage
    boundary, and the one-run MeanFlow's), RMF-1's wins / ties / losses over the metrics on the seeds that have the
    baseline (a tie: within two standard errors of the difference over seeds; with one seed the point estimates
    decide); RMF-1's TV½ and W2 as
    multiples of FM-100's; held-out log-likelihood of RMF-1 minus MF-1's (same channel); and the baselines'
    plateau check: FM-100's TV½ as a multiple of the data floor and its largest mode-share error."""
    against = ["control MF-1", "MF-8", "MF-8 (stage 1)", "MF-8 (one run)", "FM-100"]   # MF-8 (stage 1): where
    # the control's own continuation made MeanFlow worse; MF-8 (one run): MeanFlow trained for the whole budget
    head = ("| target | seeds | " + " | ".join(f"vs {a} (w/t/l)" for a in against)
            + " | TV½ ÷ FM | W2 ÷ FM | Δ log-lik (RMF-1 − MF-1) | FM TV½ ÷ floor | FM mode err |")
    lines = [head, "|---|---|" + "---|" * (len(against) + 5)]
    for target, results in res.items():
        cells = [str(len(results))]
        for a in against:   # on the seeds that have the baseline (the one-run MeanFlow may be missing on some)
            rs = [r for r in results if len(_values([r], a, "tv_half"))]
            v = [verdict(_values(rs, "RMF-1", k), _values(rs, a, k), LOWER_IS_BETTER[k]) for k in KEYS]
            v = [x for x in v if x != "–"]
            cells.append(f"{v.count('win')}/{v.count('tie')}/{v.count('loss')}" if v else "–")
        for k in ("tv_half", "w2"):
            cells.append(f"{_values(results, 'RMF-1', k).mean() / _values(results, 'FM-100', k).mean():.2f}")
        d = np.array([r["likelihood"]["rmf1"][0] - r["likelihood"]["mf1"][0] for r in results])
        cells.append(f"{d.mean():+.2f}")
        floor = np.mean([r["data"]["tv_half"] for r in results])
        cells.append(f"{_values(results, 'FM-100', 'tv_half').mean() / floor:.2f}")
        cells.append(f"{_values(results, 'FM-100', 'mode_err').mean():.3f}")
        lines.append(f"| {target} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def means_table(res, keys, labels=("RMF-1", "control MF-1", "MF-8", "MF-8 (one run)", "MF-32 (one run)",
                                   "FM-100")) -> str:
    """Rows = targets; per metric the data floor, then each label's mean over seeds ('–' where it did not run)."""
    head = ["target", "seeds"] + [f"{k} {name}" for k in keys for name in ("floor", *labels)]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for target, results in res.items():
        cells = [target, str(len(results))]
        for k in keys:
            cells.append(f"{np.mean([r['data'][k] for r in results]):.3f}")
            for label in labels:
                v = _values(results, label, k)
                cells.append(f"{v.mean():.3f}" if len(v) else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


DIFF_LABELS = ("RMF-1", "control MF-1", "MF-8", "MF-8 (one run)", "FM-100")
DIFF_KEYS = ("tv_half", "sliced_w2", "off_mode", "mode_err")


def diff(base: Path, candidate: Path, labels=DIFF_LABELS) -> str:
    """Paired comparison of two suite roots trained with different settings (the code default against a candidate
    default): for every (target, seed) that both hold and every sampler row, each of DIFF_KEYS as `base → candidate`
    and how many of the eight metrics (KEYS) the candidate improved; then per sampler the totals over all pairs.
    The table that decides a new default on the development subset (docs/RESULTS.md §1)."""
    A, B = load_results(base), load_results(candidate)
    head = ["target", "seed", "sampler", *DIFF_KEYS, "improved"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    totals = {label: [0, 0] for label in labels}
    per_target: dict[str, dict[str, list[int]]] = {}
    for target, results in B.items():
        for rb in sorted(results, key=lambda r: r["seed"]):
            ra = next((r for r in A.get(target, []) if r["seed"] == rb["seed"]), None)
            if ra is None:
                continue
            for label in labels:
                pairs = {k: (_values([ra], label, k), _values([rb], label, k)) for k in KEYS}
                pairs = {k: (a[0], b[0]) for k, (a, b) in pairs.items() if len(a) and len(b)}
                if not pairs:
                    continue
                better = sum((b < a) == LOWER_IS_BETTER[k] and b != a for k, (a, b) in pairs.items())
                for tally in (totals[label], per_target.setdefault(target, {}).setdefault(label, [0, 0])):
                    tally[0] += better
                    tally[1] += len(pairs)
                cells = [f"{pairs[k][0]:.3f} → {pairs[k][1]:.3f}" if k in pairs else "–" for k in DIFF_KEYS]
                lines.append(f"| {target} | {rb['seed']} | {label} | " + " | ".join(cells)
                             + f" | {better}/{len(pairs)} |")
    lines += ["", "Per target (metrics improved / compared, summed over its paired seeds):", "",
              "| target | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    lines += [f"| {target} | " + " | ".join(f"{row[label][0]}/{row[label][1]}" if label in row else "–"
                                           for label in labels) + " |" for target, row in sorted(per_target.items())]
    lines += ["", "Totals (metrics improved / compared, all pairs): " + ", ".join(
        f"{label} {b}/{n}" for label, (b, n) in totals.items() if n)]
    return "\n".join(lines)


def plot_curves(res, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    targets = list(res)
    fig, axes = plt.subplots(len(targets), 2, figsize=(8.0, 2.4 * len(targets)), squeeze=False)
    series = {"MF-1": ("meanflow", "meanflow@1"), "MF-8": ("meanflow", "meanflow@8"),
              "ODE of MF model": ("meanflow", "fm@100"), "FM-100": ("fm", "fm@100"), "RMF-1": ("rmflow", "rmflow"),
              "control MF-1": ("control", "meanflow@1"), "control MF-8": ("control", "meanflow@8"),
              "one-run MF-8": ("mf_one", "meanflow@8")}
    for j, target in enumerate(targets):
        r0 = min(res[target], key=lambda r: r["seed"])
        for i, key in enumerate(("sliced_w2", "off_mode")):
            ax = axes[j, i]
            for name, (m, s) in series.items():
                pts = sorted((c["step"], c[key]) for c in r0["curves"] if c["method"] == m and c["sampler"] == s
                             and key in c)
                if pts:
                    ax.plot(*zip(*pts), marker="o", ms=3, label=name)
            ax.axhline(r0["data"].get(key, float("nan")), color="k", ls=":", lw=1, label="data floor")
            ax.axvline(r0["S"], color="grey", lw=0.5)
            ax.set_yscale("log")
            ax.set_title(f"{target}: {key}", fontsize=9)
            ax.set_xlabel("step", fontsize=8)
    axes[0, 0].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _parse_variants(specs) -> list[tuple[str, list[str]]]:
    return [(v.partition(":")[0], [k for k in v.partition(":")[2].split(",") if k]) for v in specs]


@torch.no_grad()
def plot_samples(root: Path, targets: list[str], path: Path, n: int = 5000, seed: int = 0) -> None:
    """One row per target (seed 0; 2-D projections for D > 2): the data, then RMF-1, the control's MF-1 and MF-8,
    and FM-100, as 2-D histograms on a log colour scale (1-D: density histograms)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rmflow.evaluate import draw_samples
    from rmflow.tasks.synthetic.plots import draw_panel
    from rmflow.train import load_run
    columns = {"data": None, "RMF-1": ("rmflow", "rmflow"), "MF-1": ("control", "meanflow@1"),
               "MF-8": ("control", "meanflow@8"), "FM-100": ("fm", "fm@100")}
    fig, axes = plt.subplots(len(targets), len(columns), figsize=(2.2 * len(columns), 2.2 * len(targets)),
                             squeeze=False)
    for i, target in enumerate(targets):
        run = root / target / f"s{seed}"
        for j, (title, spec) in enumerate(columns.items()):
            ax = axes[i, j]
            if spec is None:
                model, task, _ = load_run(run / "fm")
                reference = task.reference(n, seed=10_000 + seed)
                x = reference.x
            else:
                model, task, _ = load_run(run / spec[0])
                x = draw_samples(model, reference, spec[1], seed)[0]
            draw_panel(ax, task.density.project(x).numpy(), bins=100)
            ax.set_xticks([])
            if i == 0:
                ax.set_title(title, fontsize=9)
            if j == 0:
                ax.set_ylabel(target, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


PROBE_SAMPLERS = {"control": ["meanflow@1", "meanflow@8", "fm@100"], "fm": ["fm@100"], "imf": ["meanflow@1", "meanflow@8"]}


def probe(target: str, seed: int, method: str, out: Path, tag: str, overrides: list[str], points: int, log) -> dict:
    """One baseline alone ('control' = MeanFlow, 'fm' = flow matching, 'imf'), with `overrides` (e.g. more steps,
    another optimiser setting): held-out rows at `points` evenly spaced steps and the training log's trace (L_CMFM,
    pre-clip gradient norm, max ‖du/dt‖). The diagnostics behind RESULTS §1's plateau notes and METHOD §9."""
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    cfg = target_config(target, seed, out / "probe" / tag, overrides, method)
    tr = Trainer(cfg, cfg.run_dir)
    reference = tr.task.reference(cfg.eval.num_samples, seed=10_000 + seed)
    rows, t0 = [], time.perf_counter()
    for i in range(points):
        tr.train(round(cfg.train.steps * (i + 1) / points))
        rows += _rows(tr, reference, PROBE_SAMPLERS[method], seed)
        log(f"[{target} s{seed} {tag}] " + _brief(rows[-len(PROBE_SAMPLERS[method]):]))
    trace = [{k: v for k, v in json.loads(line).items() if k in ("step", "cmfm", "grad_norm", "dudt_norm_max")}
             for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    result = {"target": target, "seed": seed, "method": method, "tag": tag, "overrides": list(overrides),
              "rows": rows, "trace": trace, "seconds": time.perf_counter() - t0}
    _write(out / "probe" / f"{target}-s{seed}-{tag}.json", result)
    return result


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--targets", nargs="+", default=list(DEV + HELD_OUT))
    r.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    r.add_argument("--out", type=Path, default=Path("runs/suite"))
    r.add_argument("--points", type=int, default=4,
                   help="evaluations in stage 1 for --curve-seed (stage 2 adds two); other seeds: stage ends only")
    r.add_argument("--curve-seed", type=int, default=0)
    r.add_argument("--ll-points", type=int, default=1000)
    r.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                   help="another likelihood stage from the same stage-1 checkpoint (choosing the default)")
    r.add_argument("--imf", action="store_true", help="also train the improved-MeanFlow baseline (iMF 1/2/8-NFE)")
    r.add_argument("overrides", nargs="*", help="key=value, applied to every target (exploration only)")
    v = sub.add_parser("variants", help="add likelihood-stage variants to finished results")
    v.add_argument("root", type=Path)
    v.add_argument("--targets", nargs="+", default=list(DEV + HELD_OUT))
    v.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    v.add_argument("--variant", action="append", required=True, metavar="NAME:KEY=VALUE,...")
    b = sub.add_parser("mf-one", help="add the one-run MeanFlow baseline to finished results that lack it")
    b.add_argument("root", type=Path)
    b.add_argument("--targets", nargs="+", default=list(DEV + HELD_OUT))
    b.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    s2 = sub.add_parser("stage2", help="redo everything after the stage boundary on finished results (after a "
                        "change that only touches stage 2)")
    s2.add_argument("root", type=Path)
    s2.add_argument("--targets", nargs="+", default=list(DEV + HELD_OUT))
    s2.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    pr = sub.add_parser("probe", help="one baseline alone with overrides: held-out rows at --points steps and the "
                        "loss / gradient trace (diagnostics)")
    pr.add_argument("--target", required=True)
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--method", choices=sorted(PROBE_SAMPLERS), default="control")
    pr.add_argument("--tag", required=True, help="names the result: <out>/probe/<target>-s<seed>-<tag>.json")
    pr.add_argument("--out", type=Path, default=Path("runs/suite"))
    pr.add_argument("--points", type=int, default=8)
    pr.add_argument("overrides", nargs="*")
    d = sub.add_parser("diff", help="base → candidate per (target, seed) and sampler: which settings are better")
    d.add_argument("base", type=Path)
    d.add_argument("candidate", type=Path)
    q = sub.add_parser("report")
    q.add_argument("root", type=Path)
    q.add_argument("--md", type=Path)
    q.add_argument("--figures", type=Path)
    a = p.parse_args(argv)
    if a.cmd == "diff":
        print(diff(a.base, a.candidate))
        return
    if a.cmd == "report":
        print(report(a.root, a.md, a.figures))
        return
    if a.cmd == "stage2":
        rerun_stage2(a.root, a.targets, a.seeds, lambda m: print(m, flush=True))
        return
    if a.cmd == "probe":
        probe(a.target, a.seed, a.method, a.out, a.tag, a.overrides, a.points, lambda m: print(m, flush=True))
        return
    if a.cmd == "mf-one":
        add_one_run_meanflow(a.root, a.targets, a.seeds, lambda m: print(m, flush=True))
        return
    if a.cmd == "variants":
        add_variants(a.root, a.targets, a.seeds, _parse_variants(a.variant), lambda m: print(m, flush=True))
        return
    torch.set_num_threads(1)
    for target in a.targets:
        for seed in a.seeds:
            path = a.out / target / f"s{seed}.json"
            if path.exists():
                print(f"[{target} s{seed}] done already: {path}", flush=True)
                continue
            variants = _parse_variants(a.variant)
            points = a.points if seed == a.curve_seed else 1
            result = run_one(target, seed, a.out, a.overrides, points, a.ll_points,
                             lambda m: print(m, flush=True), variants, a.imf)
            path.parent.mkdir(parents=True, exist_ok=True)
            _write(path, result)


if __name__ == "__main__":
    sys.exit(main())

"""`rmflow compare` (alias `rmflow compare`): train every method of a config's `compare` section for every seed at the same budget,
evaluate each with its samplers, and write results.json, results.md (mean ± std over seeds) and a figure.

    compare:
      meanflow: {set: {rmflow.lambda_nll: 0, train.steps: 5000}, samplers: [meanflow@1, meanflow@8]}
      rmflow:   {from: meanflow, set: {}, samplers: [rmflow]}

`from: M` starts a method from method M's final checkpoint (same seed) instead of from scratch. When M's run is
the same training up to that step (as stage 1 of the two-stage RMFlow is MeanFlow), this is exactly the
uninterrupted run, at a fraction of the cost. Runs that already finished are not retrained (their last
checkpoint is loaded), so an interrupted comparison continues where it stopped.

Evaluations are cached: each run folder keeps `evals.json` (and the comparison folder `data_evals.json` for the
data row), keyed by sampler, number of samples, seed, checkpoint step and the task's settings, so rerunning a
comparison only scores what is new. With `train_only` the methods are trained and nothing is scored; with several
processes on disjoint `methods` followed by one over all methods, the last one only collects the cached rows
(and draws the first seed's samples again for the figure).

Learning curves (`curve` = N > 0, `rmflow compare --curve N`): every method is also scored with its samplers at N
evenly spaced steps of its own training (from step 0, or from its `from` method's last step, to its budget),
through the same cache, so that an interrupted comparison keeps the points it scored. These points are scored
while training (also with `train_only`: a past step cannot be scored later); curve.json, curve.md and curve.png
in the comparison folder show every metric against the step, for the methods of that call (a later call over
all methods collects every cached point).
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np

from .config import ConfigError, MethodSpec, apply_overrides, build_config, to_dict
from .evaluate import draw_samples, evaluate_samplers, log_to_tensorboard
# Table columns: metric key -> (header, format). A task may set its own `metric_format` attribute in this form;
# without one, the synthetic task's columns.
from .tasks.synthetic.metrics import METRIC_FORMAT as METRIC_COLUMNS
from .train import latest_checkpoint
from .train.checkpoint import checkpoint_step
from .train.lora import trainer_class
from .train.rundir import RunLock


def task_columns(task) -> dict:
    """The task's table columns (its `metric_format` attribute) or the synthetic ones."""
    return getattr(task, "metric_format", None) or METRIC_COLUMNS


def method_config(base: dict, method: str, spec: MethodSpec, seed: int, overrides: list[str] = ()):
    """The config of one (method, seed): the top level, then the method's `set` keys, then `overrides` (the
    command line's key=value, which win over the method's settings; `compare.*` overrides define methods and are
    already in `spec`, so they are not applied again)."""
    data = copy.deepcopy(base)
    data.pop("compare", None)
    apply_overrides(data, [f"{k}={json.dumps(v)}" for k, v in spec.set.items()])
    apply_overrides(data, [o for o in overrides if o.split("=", 1)[0].split(".", 1)[0] != "compare"])
    data["seed"] = seed
    data["name"] = f"{data.get('name', 'run')}/{method}-s{seed}"
    if spec.samplers:
        data.setdefault("eval", {})["samplers"] = list(spec.samplers)
    return build_config(data)


def eval_key(cfg, sampler: str, num_samples: int, seed: int, step: int) -> str:
    """The cache key of one evaluation: sampler, sample count, seed, checkpoint step and a hash of the task
    settings (data, metrics, classifier paths)."""
    task = hashlib.sha1(json.dumps(to_dict(cfg.task), sort_keys=True).encode()).hexdigest()[:12]
    return f"{sampler}|n={num_samples}|seed={seed}|step={step}|task={task}"


def _read_cache(path: Path) -> dict:
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def _write_cache(path: Path, key: str, row: dict) -> None:
    """Add one row to a cache file; atomic, and merged with what another process may have written meanwhile."""
    cache = _read_cache(path)
    cache[key] = row
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(cache, indent=1))
    os.replace(tmp, path)


def compare(base: dict, methods: list[str] | None = None, log=print, train_only: bool = False,
            overrides: list[str] = (), curve: int = 0) -> dict:
    """Train and evaluate every (method, seed) of `base` (a config dict with a `compare` section), or only
    `methods`; `overrides` (key=value) apply to every method after its own settings; `curve` > 0 also scores
    that many points of each method's training (module docstring). Returns {"rows", "table", "dir", "curve"}
    ({"rows": [], "table": "", ...} with `train_only`).

    Restricting to a few methods lets several processes train disjoint parts of one comparison in parallel;
    a final run over all methods then only loads the finished runs, evaluates them and writes the table.
    """
    if curve < 0:
        raise ConfigError(f"--curve {curve}: the number of learning-curve points must be >= 0")
    root_cfg = build_config(apply_overrides(copy.deepcopy(base), list(overrides)))
    if not root_cfg.compare:
        raise ConfigError("config has no 'compare' section: nothing for `rmflow compare` to compare")
    unknown = sorted(set(methods or []) - set(root_cfg.compare))
    if unknown:
        raise ConfigError(f"unknown method(s) {unknown}; this config compares {list(root_cfg.compare)}")
    root = root_cfg.run_dir
    root.mkdir(parents=True, exist_ok=True)
    rows, figure_panels, reference, task, curve_runs = [], {}, None, None, []
    for seed in root_cfg.seeds:
        for method, spec in root_cfg.compare.items():
            if methods and method not in methods:
                continue
            cfg = method_config(base, method, spec, seed, overrides)
            # methods with the same task config share one task (its data, caches, evaluation classifiers);
            # a task reads the model/method settings from its cfg, which follows the method
            if task is not None and task.cfg.task == cfg.task:
                task.cfg = cfg
            else:
                task = None
            trainer = trainer_class(cfg)(cfg, cfg.run_dir, task=task)  # LoRATrainer where the config has LoRA
            task = trainer.task
            with RunLock(cfg.run_dir):
                points = _train_method(trainer, cfg, method, spec, seed, base, root_cfg, overrides, log, curve)
            curve_runs.append((cfg, method, seed, points))
            if train_only:
                continue
            model = trainer.ema.shadow if cfg.eval.use_ema else trainer.model
            reference = trainer.task.reference(cfg.eval.num_samples, seed=10_000 + seed)
            first = seed == root_cfg.seeds[0]
            board = cfg.train.tensorboard and cfg.run_dir.exists()   # the run's own board gets its samples too
            own_rows, own_panels = [], {}
            for sampler in cfg.eval.samplers:
                row, x = _sampler_row(trainer.task, cfg, model, reference, sampler, seed, trainer.step,
                                      first or board)
                row.update(method=method, seed=seed)
                own_rows.append(row)
                own_panels[row["label"]] = x
                log(f"  {row['label']:<22} " + "  ".join(f"{k}={row[k]:{f}}" for k, (_, f)
                                                           in task_columns(trainer.task).items() if k in row))
                rows.append(row)
                if first:  # variants carry their method's name
                    label = row["label"]
                    plain = method in ("meanflow", "rmflow", "flow_matching") and label not in figure_panels
                    figure_panels[label if plain else f"{label} ({method})"] = x
            if board:
                log_to_tensorboard(cfg.run_dir, trainer.step, own_rows, own_panels, trainer.task, reference)
        if train_only:
            continue
        rows.extend(_data_rows(trainer.task, cfg, reference, seed, root / "data_evals.json"))
    curve_rows = _curve_rows(curve_runs) if curve else []
    if curve_rows:
        columns = task_columns(trainer.task)
        (root / "curve.json").write_text(json.dumps(curve_rows, indent=1))
        (root / "curve.md").write_text(markdown_table([r | {"method": f"{r['method']} @ {r['step']}"}
                                                       for r in curve_rows], columns) + "\n")
        try:
            plot_curve(curve_rows, columns, root / "curve.png")
        except (ImportError, OSError) as err:
            log(f"figure {root / 'curve.png'} not drawn: {err}")
    if train_only:
        return {"rows": [], "table": "", "dir": str(root), "curve": curve_rows}
    table = markdown_table(rows, task_columns(trainer.task))
    (root / "results.json").write_text(json.dumps(rows, indent=1))
    (root / "results.md").write_text(table + "\n")
    try:
        trainer.task.plot(figure_panels, reference, root / "samples.png")
    except (ImportError, OSError) as err:  # e.g. RDKit's drawing code without its X libraries: keep the results
        log(f"figure {root / 'samples.png'} not drawn: {err}")
    log(table)
    return {"rows": rows, "table": table, "dir": str(root), "curve": curve_rows}


def curve_steps(start: int, end: int, n: int) -> list[int]:
    """n evenly spaced steps after `start`, the last one `end` (fewer where steps coincide); [end] for n = 0."""
    return sorted({start + round((end - start) * (i + 1) / n) for i in range(n)} - {start}) if n else [end]


def _train_method(trainer, cfg, method, spec, seed, base, root_cfg, overrides, log, curve: int = 0) -> list[int]:
    """Resume one (method, seed) run, or start it from its `from` method's final checkpoint, and train it to its
    step budget (`train` writes the run folder's config.yaml once the checkpoint is known to fit). With `curve`
    points, training stops at each to score the method's samplers (cached in the run's evals.json); returns the
    curve's steps ([] without a curve)."""
    root = root_cfg.run_dir
    src_steps = 0
    if spec.start_from:
        src = spec.start_from
        src_steps = method_config(base, src, root_cfg.compare[src], seed, overrides).train.steps
    if not trainer.resume() and spec.start_from:
        start = latest_checkpoint(root / f"{src}-s{seed}" / "checkpoints")
        if start is None or checkpoint_step(start) != src_steps:
            raise ConfigError(f"compare.{method}.from: method {src!r} (seed {seed}) has not finished "
                              f"its {src_steps} steps; train it first (list it before {method!r})")
        if src_steps >= cfg.train.steps:
            raise ConfigError(f"compare.{method}.from: {src!r} ends at step {src_steps}, but {method!r} "
                              f"trains only to step {cfg.train.steps}")
        trainer.load(start, warm_start=True)
    points = curve_steps(src_steps, cfg.train.steps, curve)
    if trainer.step < cfg.train.steps:
        log(f"[{method} seed {seed}] training {cfg.train.steps - trainer.step} steps")
    reference = None
    for step in points:
        if trainer.step >= step:   # resumed past this point: its rows are in the cache, or lost
            continue
        trainer.train(step)
        if curve:
            model = trainer.ema.shadow if cfg.eval.use_ema else trainer.model
            if reference is None:   # the held-out reference of this seed, built once for all points
                reference = trainer.task.reference(cfg.eval.num_samples, seed=10_000 + seed)
            scored = [_sampler_row(trainer.task, cfg, model, reference, sampler, seed, trainer.step, False)[0]
                      for sampler in cfg.eval.samplers]
            log(f"  [{method} seed {seed}] step {trainer.step}: " + "  ".join(
                f"{r['label']} " + " ".join(f"{k}={r[k]:{f}}" for k, (_, f) in
                                            list(task_columns(trainer.task).items())[:3] if k in r) for r in scored))
    return points if curve else []


def _curve_rows(runs) -> list[dict]:
    """The learning-curve rows of (cfg, method, seed, steps) runs, read from each run's evaluation cache (a point
    that was never scored, e.g. one passed while resuming an older comparison without a curve, is missing)."""
    out = []
    for cfg, method, seed, steps in runs:
        cache = _read_cache(cfg.run_dir / "evals.json")
        for step in steps:
            for sampler in cfg.eval.samplers:
                row = cache.get(eval_key(cfg, sampler, cfg.eval.num_samples, seed, step))
                if row is not None:
                    out.append(dict(row) | {"method": method, "seed": seed, "step": step})
    return out


def plot_curve(rows: list[dict], columns: dict, path: Path) -> None:
    """Every metric of `columns` (one panel each) against the training step, one line per (method, sampler),
    mean over seeds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = [k for k in columns if any(k in r and r[k] is not None for r in rows)]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.2), squeeze=False)
    lines: dict[tuple, dict[int, list[dict]]] = {}
    for r in rows:
        line = lines.setdefault((r["method"], r["label"]), {})
        line.setdefault(r["step"], []).append(r)
    for ax, k in zip(axes[0], keys):
        for (method, label), by_step in lines.items():
            steps = sorted(by_step)
            means = [np.mean([r[k] for r in by_step[s] if r.get(k) is not None] or [np.nan]) for s in steps]
            ax.plot(steps, means, marker="o", ms=3, label=f"{label} ({method})")
        ax.set_title(columns[k][0])
        ax.set_xlabel("training step")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _sampler_row(task, cfg, model, reference, spec: str, seed: int, step: int, want_samples: bool):
    """One sampler's row, from the run folder's cache or scored now (and cached), and its samples if wanted
    (drawn again when the row came from the cache): (row, samples or None)."""
    path = cfg.run_dir / "evals.json"
    key = eval_key(cfg, spec, cfg.eval.num_samples, seed, step)
    cached = _read_cache(path).get(key)
    if cached is not None:
        x = draw_samples(model, reference, spec, seed, cfg.eval.batch_size)[0] if want_samples else None
        return dict(cached), x
    (row,), panels = evaluate_samplers(task, model, reference, [spec], seed, cfg.eval.batch_size)
    _write_cache(path, key, row)
    return row, panels[row["label"]]


def _data_rows(task, cfg, reference, seed: int, cache_path: Path) -> list[dict]:
    """The task's reference rows (`reference_rows(reference, seed)`: label -> samples, each scored like samples,
    method "reference"; e.g. persistence, climatology and analogue forecasts), or else the single "data" row;
    cached like the samplers' rows."""
    make = getattr(task, "reference_rows", None)
    if make is None:
        return [_data_row(task, cfg, reference, seed, cache_path)]
    key = eval_key(cfg, "references", cfg.eval.num_samples, seed, 0)
    cached = _read_cache(cache_path).get(key)
    if cached is not None:
        return cached
    rows = [{"method": "reference", "sampler": label, "nfe": 0, "label": label, "seed": seed,
             **task.evaluate(x, reference)} for label, x in make(reference, 20_000 + seed).items()]
    _write_cache(cache_path, key, rows)
    return rows


def _data_row(task, cfg, reference, seed: int, cache_path: Path) -> dict:
    """The "data" row of one seed: a second draw of the data (or, for conditional tasks, data answering the same
    conditions) scored like the samples; cached like the samplers' rows."""
    key = eval_key(cfg, "data", cfg.eval.num_samples, seed, 0)
    cache = _read_cache(cache_path)
    if key in cache:
        return cache[key]
    baseline = getattr(task, "data_baseline", None)
    data_x = (baseline(reference, 20_000 + seed) if baseline is not None
              else task.reference(cfg.eval.num_samples, seed=20_000 + seed).x)
    row = {"method": "data", "sampler": "data", "nfe": 0,
           "label": getattr(task, "data_label", None) or ("data (same conditions)" if baseline is not None
                                                          else "data (second draw)"),
           "seed": seed, **task.evaluate(data_x, reference)}
    _write_cache(cache_path, key, row)
    return row


def aggregate(rows: list[dict], columns: dict | None = None) -> list[dict]:
    """Group rows by (method, sampler) in first-seen order; mean and std over seeds for every metric."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["sampler"]), []).append(r)
    out = []
    for (method, sampler), rs in groups.items():
        agg = {"method": method, "sampler": sampler, "label": rs[0]["label"], "nfe": rs[0]["nfe"],
               "seeds": len(rs)}
        for k in (columns or METRIC_COLUMNS):
            vals = [r[k] for r in rs if k in r and r[k] is not None and math.isfinite(r[k])]
            if vals:
                agg[k] = (float(np.mean(vals)), float(np.std(vals)))
        out.append(agg)
    return out


def markdown_table(rows: list[dict], columns: dict | None = None) -> str:
    """Mean ± std over seeds; columns: metric key -> (header, format), default the synthetic metrics."""
    columns = columns or METRIC_COLUMNS
    head = "| method | sampler | NFE | " + " | ".join(h for h, _ in columns.values()) + " | seeds |"
    lines = [head, "|" + "---|" * (len(columns) + 4)]
    for a in aggregate(rows, columns):
        cells = []
        for k, (_, f) in columns.items():
            cells.append(f"{a[k][0]:{f}} ± {a[k][1]:{f}}" if k in a else "–")
        lines.append(f"| {a['method']} | {a['label']} | {a['nfe']} | " + " | ".join(cells) + f" | {a['seeds']} |")
    return "\n".join(lines)

"""One command for the text-to-image comparison: both stages of every method, evaluation, table and grid.

    python -m rmflow.tasks.text2image.run digits [key.sub=value ...]

Like `rmflow run`, it trains every method of the config's `compare` section for every seed at the same step
budget (methods with model.lora.rank > 0 run stage 1 with L_CMFM and stage 2 as LoRA fine-tuning, see
rmflow.train.lora), evaluates each with its samplers, and writes results.json, results.md (mean ± std over
seeds, the text2image metric columns) and samples.png (a grid with captions) under runs/<name>/. Finished runs
are loaded, not retrained. `from: M` in a method starts it from method M's final checkpoint (same seed), as in
`rmflow run`: stage 2 of the LoRA methods continues the L_CMFM run M instead of repeating stage 1.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import time

import numpy as np

from ...config import ConfigError, apply_overrides, build_config, read_yaml
from ...evaluate import evaluate_samplers
from ...experiment import method_config
from ...train import latest_checkpoint
from ...train.lora import trainer_class
from .task import METRIC_FORMAT


def run_text2image(base: dict, log=print) -> dict:
    root_cfg = build_config(copy.deepcopy(base))
    root = root_cfg.run_dir
    root.mkdir(parents=True, exist_ok=True)
    rows, panels_seed0, reference, task = [], {}, None, None
    for seed in root_cfg.seeds:
        for method, spec in root_cfg.compare.items():
            cfg = method_config(base, method, spec, seed)
            if task is not None and task.cfg.task == cfg.task:
                task.cfg = cfg        # share data, caption cache and classifier; the model follows this method
            else:
                task = None
            trainer = trainer_class(cfg)(cfg, cfg.run_dir, task=task)
            task = trainer.task
            if not trainer.resume() and spec.get("from"):      # start from another method's final checkpoint
                start = latest_checkpoint(root / f"{spec['from']}-s{seed}" / "checkpoints")
                if start is None:
                    raise ConfigError(f"compare.{method}.from: method {spec['from']!r} has no checkpoint "
                                      f"(list it before {method!r})")
                trainer.load(start)
            t0 = time.perf_counter()
            if trainer.step < cfg.train.steps:
                log(f"[{method} seed {seed}] training {cfg.train.steps - trainer.step} steps ({type(trainer).__name__})")
                trainer.train()
            train_s = time.perf_counter() - t0
            model = trainer.ema.shadow if cfg.eval.use_ema else trainer.model
            reference = task.reference(cfg.eval.num_samples, seed=10_000 + seed)
            method_rows, panels = evaluate_samplers(task, model, reference, cfg.eval.samplers, seed)
            for r in method_rows:
                r.update(method=method, seed=seed, train_s=train_s)
                log(f"  {method:<14} {r['label']:<18} " + "  ".join(
                    f"{k}={r[k]:{f}}" for k, (_, f) in METRIC_FORMAT.items() if k in r))
            rows += method_rows
            if seed == root_cfg.seeds[0]:
                panels_seed0.update({f"{method}: {k}": v for k, v in panels.items()})
        data = task.evaluate(task.data_baseline(reference, seed=20_000 + seed), reference)
        rows.append({"method": "data", "label": "test images, same prompts", "sampler": "data", "nfe": 0,
                     "seed": seed, **data})
        if seed == root_cfg.seeds[0]:
            task.plot(panels_seed0, reference, root / "samples.png")
    table = markdown_table(rows)
    (root / "results.json").write_text(json.dumps(rows, indent=1))
    (root / "results.md").write_text(table + "\n")
    log(table)
    return {"rows": rows, "table": table, "dir": str(root)}


def markdown_table(rows: list[dict]) -> str:
    """Mean ± std over seeds per (method, sampler), text2image metric columns."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["sampler"]), []).append(r)
    keys = [k for k in METRIC_FORMAT if any(k in r for r in rows)]
    head = "| method | sampler | NFE | " + " | ".join(METRIC_FORMAT[k][0] for k in keys) + " | seeds |"
    lines = [head, "|" + "---|" * (len(keys) + 4)]
    for (method, _), rs in groups.items():
        cells = []
        for k in keys:
            vals = [r[k] for r in rs if k in r and r[k] is not None and math.isfinite(r[k])]
            f = METRIC_FORMAT[k][1]
            cells.append(f"{np.mean(vals):{f}} ± {np.std(vals):{f}}" if vals else "–")
        lines.append(f"| {method} | {rs[0]['label']} | {rs[0]['nfe']} | " + " | ".join(cells) + f" | {len(rs)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="preset name (digits, shapes, ...) or YAML path")
    p.add_argument("overrides", nargs="*", help="key.sub=value")
    args = p.parse_args(argv)
    base = apply_overrides(read_yaml(args.config), args.overrides)
    run_text2image(base)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

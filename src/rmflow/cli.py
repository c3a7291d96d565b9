"""The `rmflow` command.

    rmflow compare CONFIG [key=value ...]         train + evaluate every method of the config's `compare` section
                                                  (--methods a,b: a subset; --train-only: no scoring); alias `run`
    rmflow train CONFIG [key=value ...]           train one model (resumes if the run folder has checkpoints)
    rmflow evaluate RUN_DIR [--samplers ...]       evaluate a trained run
    rmflow sample RUN_DIR --out FILE.npy [...]     draw samples from a trained run
    rmflow presets                                 list the bundled configs
    rmflow bench CONFIG [key=value ...] [--steps N]  step time, memory and sampling speed of FM/MeanFlow/RMFlow

Multi-process training: `torchrun --nproc-per-node N -m rmflow train CONFIG ...` (DDP; train.batch_size is
per process; rank 0 logs and writes checkpoints).

CONFIG is a YAML path or a preset name (see `rmflow presets`).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def _load_run(run_dir: str):
    from .train.build import load_run
    try:
        return load_run(run_dir)
    except FileNotFoundError as e:
        raise SystemExit(f"error: {e}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rmflow", description="Refined Mean Flow: one-step generation")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("compare", aliases=["run"], help="train and compare the methods of a config")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="key.sub=value")
    p.add_argument("--methods", default=None, help="comma-separated subset of the config's methods")
    p.add_argument("--train-only", action="store_true",
                   help="train the methods, score nothing (a later `rmflow compare` evaluates them)")
    p = sub.add_parser("train", help="train one model")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p = sub.add_parser("evaluate", help="evaluate a trained run")
    p.add_argument("run_dir")
    p.add_argument("--samplers", nargs="+", default=None, help="e.g. rmflow meanflow@8 fm@100")
    p.add_argument("--num-samples", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("sample", help="draw samples from a trained run")
    p.add_argument("run_dir")
    p.add_argument("--out", required=True, help="output .npy file")
    p.add_argument("--sampler", default="rmflow")
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    sub.add_parser("presets", help="list bundled configs")
    from .bench import add_bench_arguments
    add_bench_arguments(sub.add_parser("bench", help="benchmark training steps and samplers of a config"))
    args, extra = parser.parse_known_args(argv)
    if extra and (not hasattr(args, "overrides") or any(e.startswith("-") or "=" not in e for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:  # overrides given after an option, e.g. `rmflow compare ring --methods a key=value`
        args.overrides = list(args.overrides) + extra

    from .config import ConfigError, PRESET_DIR, load_config, read_yaml
    try:
        if args.command == "presets":
            for path in sorted(PRESET_DIR.glob("*.yaml")):
                first = path.read_text().splitlines()[0].lstrip("# ")
                print(f"{path.stem:<24} {first}")
        elif args.command in ("compare", "run"):
            from .compare import compare
            methods = args.methods.split(",") if args.methods else None
            compare(read_yaml(args.config), methods, train_only=args.train_only, overrides=args.overrides)
        elif args.command == "train":
            from .train import Trainer
            from .train.distributed import init_distributed, shutdown_distributed
            cfg = load_config(args.config, args.overrides)
            ctx = init_distributed(cfg.train.device)   # a single process unless started by torchrun
            try:
                trainer = Trainer(cfg, cfg.run_dir, dist=ctx)
                if trainer.resume() and ctx.is_main:
                    print(f"resumed {cfg.run_dir} at step {trainer.step}")
                trainer.train()
                if ctx.is_main:
                    print(f"trained {cfg.run_dir} to step {trainer.step}"
                          + (f" on {ctx.world_size} processes" if ctx.distributed else ""))
            finally:
                shutdown_distributed()
        elif args.command == "bench":
            from .bench import run_bench
            run_bench(args)
        elif args.command == "evaluate":
            from .evaluate import evaluate_samplers
            model, task, cfg = _load_run(args.run_dir)
            reference = task.reference(args.num_samples or cfg.eval.num_samples, seed=10_000 + args.seed)
            rows, _ = evaluate_samplers(task, model, reference, args.samplers or cfg.eval.samplers, args.seed,
                                        cfg.eval.batch_size)
            (Path(args.run_dir) / "eval.json").write_text(json.dumps(rows, indent=1))
            print(json.dumps(rows, indent=1))
        elif args.command == "sample":
            from .evaluate import draw_samples
            model, task, cfg = _load_run(args.run_dir)
            reference = task.reference(args.num_samples, seed=10_000 + args.seed)
            x, nfe, _ = draw_samples(model, reference, args.sampler, args.seed, cfg.eval.batch_size)
            np.save(args.out, x.cpu().numpy())
            print(f"wrote {len(x)} samples ({nfe} NFE each) to {args.out}")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"\n{e}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The `rmflow` command.

    rmflow compare CONFIG [key=value ...]         train + evaluate every method of the config's `compare` section
                                                  (--methods a,b: a subset; --train-only: no scoring); alias `run`
    rmflow train CONFIG [key=value ...]           train one model (resumes if the run folder has checkpoints)
    rmflow evaluate RUN_DIR [--samplers ...]       evaluate a trained run (samplers: rmflow, meanflow@K, fm@K,
                                                  fm_heun@K; ':w=SCALE' adds classifier-free guidance)
    rmflow sample RUN_DIR --out FILE.npy [...]     draw samples from a trained run (--guidance SCALE: CFG)
    rmflow export RUN_DIR OUT_DIR                  a self-contained folder for rmflow.load (config + weights)
    rmflow presets                                 list the bundled configs
    rmflow bench CONFIG [key=value ...] [--steps N]  step time, memory and sampling speed of FM/MeanFlow/RMFlow

Multi-process training: `torchrun --nproc-per-node N -m rmflow train CONFIG ...` (DDP; train.batch_size is
per process; rank 0 logs and writes checkpoints).

CONFIG is a YAML path or a preset name (see `rmflow presets`). Every command that takes CONFIG also takes
overrides `key.sub=value` (e.g. `train.steps=2000 model.hidden=128`); `name=NAME` picks the run folder
out_dir/NAME (relative, inside out_dir). `--import MODULE` imports a module that registers your own task first.
Bad input ends with one line `error: ...` and exit code 2 (1 for file-system and checkpoint problems, 130 after
Ctrl-C); a failed command leaves an existing run folder as it was.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
from pathlib import Path

TRAIN_HELP = """\
Overrides: key.sub=value pairs after CONFIG (e.g. train.steps=2000 rmflow.lambda_nll=0); any config key.
Run folder: out_dir/name (name=my-run; default: the preset's name). A second command on the same folder is
refused while the first runs.
Resume: running the same command again continues from the newest checkpoint that verifies (exactly, as if never
interrupted); Ctrl-C finishes the running step and writes a checkpoint first. A checkpoint of a different model
(e.g. another model.hidden) is refused before anything is written.
Progress: a bar on a terminal, log lines otherwise; train.progress=false silences both."""


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="rmflow", description="Refined Mean Flow: one-step generation",
                                     formatter_class=fmt, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import MODULE first (a module that registers your own task); repeatable")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("compare", aliases=["run"], help="train and compare the methods of a config",
                       formatter_class=fmt, epilog=TRAIN_HELP + "\nOverrides apply to every method, after the "
                       "method's own `set` keys.")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="key.sub=value")
    p.add_argument("--methods", default=None, help="comma-separated subset of the config's methods")
    p.add_argument("--train-only", action="store_true",
                   help="train the methods, score nothing (a later `rmflow compare` evaluates them)")
    p.add_argument("--curve", type=int, default=0, metavar="N",
                   help="learning curves: also score every method at N evenly spaced steps of its training "
                        "(curve.json, curve.md, curve.png; scored while training, also with --train-only)")
    p = sub.add_parser("train", help="train one model: the RMFlow of the preset's top level (the library's "
                       "defaults for synthetic and vector data)", formatter_class=fmt,
                       epilog=TRAIN_HELP)
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="key.sub=value")
    p = sub.add_parser("evaluate", help="evaluate a trained run or exported folder (writes RUN_DIR/eval.json)")
    p.add_argument("run_dir")
    p.add_argument("--samplers", nargs="+", default=None,
                   help="e.g. rmflow meanflow@8 fm@100; a suffix :w=SCALE samples with classifier-free guidance "
                        "at that scale (meanflow@8:w=2.5; a list of them sweeps ω)")
    p.add_argument("--num-samples", type=_positive, default=None)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("sample", help="draw samples from a trained run or exported folder")
    p.add_argument("run_dir")
    p.add_argument("--out", required=True, help="output .npy file")
    p.add_argument("--sampler", default="rmflow", help="rmflow, meanflow@K, fm@K or fm_heun@K (optionally "
                   "with :w=SCALE, the same as --guidance)")
    p.add_argument("--guidance", type=float, default=None, metavar="SCALE",
                   help="classifier-free guidance scale ω >= 0 (conditional runs): the network's own ω input if it "
                        "was trained with one (1 NFE per step), else standard CFG (2 NFE per step); 1 = none")
    p.add_argument("--num-samples", type=_positive, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("export", help="write a self-contained folder (config.yaml + model.safetensors) of a run")
    p.add_argument("run_dir")
    p.add_argument("out_dir")
    sub.add_parser("presets", help="list bundled configs: what each is and its measured CPU time")
    from .bench import add_bench_arguments
    add_bench_arguments(sub.add_parser("bench", help="benchmark training steps and samplers of a config"))
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:   # Ctrl-C while starting up (imports), before any command ran
        print("\ninterrupted", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and (not hasattr(args, "overrides") or any(e.startswith("-") or "=" not in e for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:  # overrides given after an option, e.g. `rmflow compare ring --methods a key=value`
        args.overrides = list(args.overrides) + extra
    from .config import ConfigError
    from .train.checkpoint import CheckpointError
    from .train.rundir import RunLocked
    try:
        for module in args.imports:
            try:
                importlib.import_module(module)
            except ImportError as e:
                raise ConfigError(f"--import {module}: {e}") from None
        COMMANDS[args.command](args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (CheckpointError, RunLocked) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:   # output piped into `head`: stop quietly
        sys.stderr.close()
        return 141
    except OSError as e:   # a read-only folder, a full disk, ...
        message = e.strerror or str(e)
        if e.filename and str(e.filename) not in message:
            message = f"{e.filename}: {message}"
        print(f"error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(f"\ninterrupted{': ' + str(e) if str(e) else ''}", file=sys.stderr)
        return 130
    return 0


def _presets(args) -> None:
    from .config import PRESET_DIR
    for path in sorted(PRESET_DIR.glob("*.yaml")):
        lines = path.read_text().splitlines()
        first = lines[0].lstrip("# ") if lines else ""
        cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("# cpu-time:")), "not measured")
        print(f"{path.stem:<16} {first}\n{'':<16} CPU time: {cpu}")


def _compare(args) -> None:
    from .compare import compare
    from .config import read_yaml
    methods = args.methods.split(",") if args.methods else None
    compare(read_yaml(args.config), methods, train_only=args.train_only, overrides=args.overrides,
            curve=args.curve)


def _train(args) -> None:
    from .config import load_config
    from .train import Trainer
    from .train.distributed import init_distributed, shutdown_distributed
    from .train.rundir import RunLock
    cfg = load_config(args.config, args.overrides)
    ctx = init_distributed(cfg.train.device)   # a single process unless started by torchrun
    try:
        trainer = Trainer(cfg, cfg.run_dir, dist=ctx)
        with RunLock(cfg.run_dir) if ctx.is_main else contextlib.nullcontext():
            if trainer.resume() and ctx.is_main:
                print(f"resumed {cfg.run_dir} at step {trainer.step}")
            trainer.train()
        if ctx.is_main:
            print(f"trained {cfg.run_dir} to step {trainer.step}"
                  + (f" on {ctx.world_size} processes" if ctx.distributed else ""))
    finally:
        shutdown_distributed()


def _load_run(run_dir: str):
    """(model, task, cfg) of a run folder or an exported folder; a clear error for anything else."""
    from .pipeline import load
    pipe = load(run_dir)
    return pipe.model, pipe.task, pipe.cfg


def _evaluate(args) -> None:
    from .config import check_samplers
    from .evaluate import evaluate_samplers, log_to_tensorboard
    from .train.checkpoint import checkpoint_step, latest_checkpoint
    from .train.rundir import atomic_write_text
    check_samplers(args.samplers or [])
    model, task, cfg = _load_run(args.run_dir)
    reference = task.reference(args.num_samples or cfg.eval.num_samples, seed=10_000 + args.seed)
    rows, panels = evaluate_samplers(task, model, reference, args.samplers or cfg.eval.samplers, args.seed,
                                     cfg.eval.batch_size)
    text = json.dumps(rows, indent=1)
    print(text)    # first: a read-only run folder must not cost the results
    atomic_write_text(Path(args.run_dir) / "eval.json", text)
    newest = latest_checkpoint(Path(args.run_dir) / "checkpoints")
    if cfg.train.tensorboard and newest is not None:   # a run folder that logs to TensorBoard: the samples too
        log_to_tensorboard(args.run_dir, checkpoint_step(newest), rows, panels, task, reference)


def _sample(args) -> None:
    import numpy as np

    from .config import ConfigError, check_samplers
    if args.guidance is not None:
        if ":" in args.sampler:
            raise ConfigError(f"--guidance {args.guidance:g} and a sampler with its own scale ({args.sampler}): "
                              "give the scale once")
        args.sampler = f"{args.sampler}:w={args.guidance!r}"
    check_samplers([args.sampler])
    out = Path(args.out)
    if not out.parent.is_dir():
        raise ConfigError(f"--out {args.out}: the folder {out.parent} does not exist")
    from .pipeline import load
    x = load(args.run_dir).sample(args.num_samples, args.sampler, args.seed)   # in the data's own units
    tmp = out.with_name(out.name + ".tmp.npy")
    try:
        np.save(tmp, x.cpu().numpy())
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"wrote {len(x)} samples ({args.sampler}) to {args.out}")


def _export(args) -> None:
    from .pipeline import load
    out = Path(args.out_dir)
    if out.exists() and any(out.iterdir()):
        from .config import ConfigError
        raise ConfigError(f"{out} exists and is not empty: choose a new folder")
    load(args.run_dir).export(out)
    print(f"exported {args.run_dir} to {out} (config.yaml, model.safetensors); load it with rmflow.load({str(out)!r})")


def _bench(args) -> None:
    from .bench import run_bench
    run_bench(args)


COMMANDS = {"presets": _presets, "compare": _compare, "run": _compare, "train": _train, "evaluate": _evaluate,
            "sample": _sample, "bench": _bench, "export": _export}


if __name__ == "__main__":
    sys.exit(main())

"""Measure what `rmflow compare <preset>` (and `rmflow train <preset>`) costs in training time on ONE CPU thread.

For every bundled preset (or the ones named), every method of its `compare` section (its top level when it has
none) is built exactly as `rmflow compare` builds it: `rmflow.compare.method_config(base, method, spec, seed,
overrides)` with the overrides `train.num_threads=1 train.progress=false out_dir=<tmp>`, then
`rmflow.train.lora.trainer_class(cfg)(cfg)` (the plain Trainer, or the LoRATrainer where the config has a LoRA
stage; no run dir, nothing written). A few training steps are timed in each stage the method trains:

- stage 1 (step < rmflow.nll_start_step): the first step is timed on its own (its overhead over a normal step is
  counted as a one-off), then `--warmup` untimed steps, then the median of `--steps` steps;
- the likelihood stage (step >= nll_start_step): `trainer.step` is set to nll_start_step; the first step there
  (stage boundary: frozen teacher copy, LoRA injection, teacher bank/filter/stored errors) is timed on its own as
  a one-off cost, then warm-up and the median of `--steps` steps as above.

Times are CPU time of this process (`time.process_time`; with one compute thread that is the time the steps take
on an otherwise idle core, however loaded the machine is); `--clock wall` uses wall time instead.

A method with `from:` trains only from its source's final step to its own `train.steps`, as `rmflow compare`
does. The estimate of a preset is

    Σ_seeds Σ_methods  (stage-1 steps × stage-1 step time + stage-2 steps × stage-2 step time
                         + trainer construction + first-step one-offs)
    + task construction (data loading/simulation/parsing, text embeddings, a text2image autoencoder: built with
      cold caches in a fresh folder, and once more wherever `rmflow compare` rebuilds the task)

Evaluation (sampling and metrics, the text2image evaluation classifier, checkpoint writes) is NOT included.
Step times are measured for the first seed and reused for the others (a seed changes no shapes); configs that
are identical in what a stage computes share one measurement. Presets whose `train.device` is not the CPU are
GPU-sized: they are measured on the CPU with `train.device=cpu` at batch `--gpu-batch` (default 32), each stage
with one timed step after the first (`--gpu-steps`), and the step time is scaled linearly to the preset's batch;
their estimate is an order of magnitude for one CPU thread, meant to say "use a GPU".

Presets that read the user's own data (a relative `task.path`: vectors-example, series-file, images-folder) read
it from the folder the script is started in (linked into the temporary folder): make the example files there
first, as the preset's header says, or the preset is reported as "not measured".

Run it niced, one measurement at a time (shared machine), from a folder holding those example files:

    nice -n 10 /work/main/.venv/bin/python /work/main/benchmarks/preset_times.py [PRESET ...] --steps 5 \\
        [--warmup 1] [--json /tmp/preset_times.jsonl]

(all 30 presets: about 50 minutes on this machine, 17 of them training the shapes autoencoder on a cold cache).

It prints one Markdown table per preset and, per preset, a suggested `# cpu-time:` header line.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

OVERRIDES = ["train.num_threads=1", "train.progress=false"]
# CPU time of this process (one compute thread): unlike wall time it does not grow when other processes share the
# cores; `--clock wall` measures wall time instead
CLOCK = time.process_time
# keys that do not change what one training step computes in stage 1 (λ1·L_NLL is off before nll_start_step and
# the LoRA adapters are injected at it) or in either stage (budget, logging, evaluation, names)
STAGE1_IGNORED = ("name", "seed", "seeds", "out_dir", "eval", "compare", "rmflow", "model.lora", "train.steps",
                  "train.lr", "train.warmup_steps", "train.lr_schedule", "train.lr_decay_start", "train.log_every",
                  "train.ckpt_every", "train.progress")
STAGE2_IGNORED = ("name", "seed", "seeds", "out_dir", "eval", "compare", "train.steps", "train.log_every",
                  "train.ckpt_every", "train.progress")


def _drop(d: dict, dotted: str) -> None:
    *path, last = dotted.split(".")
    for k in path:
        d = d.get(k) if isinstance(d.get(k), dict) else {}
    d.pop(last, None)


def stage_key(cfg, ignored) -> str:
    """The part of a config that decides what a training step computes (values of λ1 > 0 and of σ_min only
    scale terms, so they share a measurement)."""
    from rmflow.config import to_dict
    d = to_dict(cfg)
    rm = d.get("rmflow", {})
    if "lambda_nll" in rm:
        rm["lambda_nll"] = rm["lambda_nll"] > 0
    rm.pop("sigma_min", None)
    for k in ignored:
        _drop(d, k)
    return json.dumps(d, sort_keys=True, default=str)


def _sig2(x: float) -> str:
    """x rounded to two significant digits, with thousands separators."""
    from math import floor, log10
    return f"{round(x, -int(floor(log10(abs(x)))) + 1):,.0f}" if x >= 100 else f"{x:.0f}"


def fmt_s(s: float) -> str:
    """Seconds as a short human duration."""
    if s < 90:
        return f"{s:.0f} s"
    if s < 90 * 60:
        return f"{s / 60:.0f} min"
    h = s / 3600
    if h < 10:
        return f"{h:.1f} h"
    if h < 48:
        return f"{h:.0f} h"
    days = h / 24
    return f"{_sig2(h)} h (~{days / 365:.0f} years)" if days >= 730 else f"{_sig2(h)} h (~{days:.0f} days)"


def fmt_ms(s: float, unit: bool = True) -> str:
    """A step time: ms below a second, else seconds."""
    if s >= 1:
        v = f"{s:.0f}" if s >= 10 else f"{s:.1f}"
        return v + (" s" if unit else "")
    ms = 1e3 * s
    return (f"{ms:.0f}" if ms >= 10 else f"{ms:.1f}") + (" ms" if unit else "")


@contextlib.contextmanager
def cold_cache_dir(tmp: Path, data_path: str = ""):
    """Run with RMFLOW_CACHE and the working directory (text2image's runs/_cache) inside `tmp`; a relative
    `data_path` (a preset's task.path: the user's file or folder) is linked there from the starting folder."""
    old_env, old_cwd = os.environ.get("RMFLOW_CACHE"), os.getcwd()
    if data_path and not Path(data_path).is_absolute() and Path(data_path).exists():
        (tmp / data_path).parent.mkdir(parents=True, exist_ok=True)
        (tmp / data_path).symlink_to(Path(data_path).resolve())
    os.environ["RMFLOW_CACHE"] = str(tmp / "cache")
    os.chdir(tmp)
    try:
        yield
    finally:
        os.chdir(old_cwd)
        if old_env is None:
            os.environ.pop("RMFLOW_CACHE", None)
        else:
            os.environ["RMFLOW_CACHE"] = old_env


class Timer:
    """Measures the stages of configs, sharing measurements between configs with the same stage key."""

    def __init__(self, steps: int, warmup: int, log=print):
        self.steps, self.warmup, self.log = steps, warmup, log
        self.tasks: dict[str, tuple[object, float]] = {}      # task config -> (task, build seconds)
        self.stage1: dict[str, dict] = {}
        self.stage2: dict[str, dict] = {}

    def task_for(self, cfg):
        from rmflow.config import to_dict
        from rmflow.train import build_task
        key = json.dumps(to_dict(cfg.task), sort_keys=True, default=str)
        if key not in self.tasks:
            t0 = CLOCK()
            task = build_task(cfg)
            self.tasks[key] = (task, CLOCK() - t0)
            self.log(f"    task {cfg.task.name} built in {self.tasks[key][1]:.1f} s")
        task, secs = self.tasks[key]
        task.cfg = cfg
        return task, secs, key

    def _steps(self, trainer, n_timed: int) -> tuple[float, float]:
        """(first step seconds, median of n_timed steps after the warm-up)."""
        t0 = CLOCK()
        trainer.train_step()
        first = CLOCK() - t0
        for _ in range(self.warmup if n_timed > 1 else 0):
            trainer.train_step()
        times = []
        for _ in range(n_timed):
            t0 = CLOCK()
            trainer.train_step()
            times.append(CLOCK() - t0)
        return first, statistics.median(times)

    def measure(self, cfg, need1: bool, need2: bool, n_timed: int) -> dict:
        """{'construct': s, 'stage1': {...} or None, 'stage2': {...} or None} for one config."""
        from rmflow.train.lora import trainer_class
        k1, k2 = stage_key(cfg, STAGE1_IGNORED), stage_key(cfg, STAGE2_IGNORED)
        want1 = need1 and k1 not in self.stage1
        want2 = need2 and k2 not in self.stage2
        construct = None
        if want1 or want2:
            task, _, _ = self.task_for(cfg)
            t0 = CLOCK()
            trainer = trainer_class(cfg)(cfg, None, task=task)
            construct = CLOCK() - t0
            if want1:
                first, med = self._steps(trainer, n_timed)
                self.stage1[k1] = {"step_s": med, "first_extra_s": max(first - med, 0.0), "construct_s": construct}
            if want2:
                trainer.step = cfg.rmflow.nll_start_step
                first, med = self._steps(trainer, n_timed)
                self.stage2[k2] = {"step_s": med, "one_off_s": max(first - med, 0.0), "construct_s": construct}
            del trainer
            gc.collect()
        s1 = self.stage1.get(k1) if need1 else None
        s2 = self.stage2.get(k2) if need2 else None
        if construct is None:
            construct = (s2 or s1 or {}).get("construct_s", 0.0)
        return {"construct_s": construct, "stage1": s1, "stage2": s2}


def method_plan(base: dict, overrides: list[str]):
    """[(method, spec, cfg_seed0, start_step)] in `rmflow compare`'s order, and the root config."""
    from rmflow.compare import method_config
    from rmflow.config import MethodSpec, apply_overrides, build_config
    root = build_config(apply_overrides(copy.deepcopy(base), list(overrides)))
    if not root.compare:
        cfg = build_config(apply_overrides(copy.deepcopy(base), list(overrides)))
        return [("(top level)", MethodSpec(), cfg, 0)], root
    plan = []
    seed = root.seeds[0]
    for method, spec in root.compare.items():
        cfg = method_config(base, method, spec, seed, overrides)
        start = 0
        if spec.start_from:
            start = method_config(base, spec.start_from, root.compare[spec.start_from], seed, overrides).train.steps
        plan.append((method, spec, cfg, start))
    return plan, root


def measure_preset(name: str, args, log=print) -> dict:
    from rmflow.compare import method_config
    from rmflow.config import apply_overrides, build_config, read_yaml, to_dict
    out: dict = {"preset": name}
    base = read_yaml(name)
    root0 = build_config(copy.deepcopy(base))
    gpu_sized = root0.train.device != "cpu"
    with tempfile.TemporaryDirectory(prefix=f"preset_times_{name}_") as tmp:
        tmp = Path(tmp)
        overrides = OVERRIDES + [f"out_dir={tmp / 'runs'}"]
        batch_scale = 1.0
        if gpu_sized:
            overrides += ["train.device=cpu", f"train.batch_size={args.gpu_batch}"]
        n_timed = args.gpu_steps if gpu_sized else args.steps
        out.update(gpu_sized=gpu_sized, device=root0.train.device, seeds=list(root0.seeds))
        timer = Timer(n_timed, args.warmup, log)
        t_start = time.perf_counter()
        with cold_cache_dir(tmp, str(getattr(root0.task, "path", "") or "")):
            try:
                plan, root = method_plan(base, overrides)
                rows = []
                for method, spec, cfg, start in plan:
                    steps, nll = cfg.train.steps, cfg.rmflow.nll_start_step
                    orig_batch = method_config(base, method, spec, root.seeds[0], OVERRIDES).train.batch_size \
                        if root0.compare else root0.train.batch_size
                    scale = orig_batch / cfg.train.batch_size if gpu_sized else 1.0
                    batch_scale = scale
                    n1 = max(0, min(steps, nll) - start)
                    n2 = max(0, steps - max(start, nll))
                    log(f"  {name}/{method}: {n1} stage-1 + {n2} likelihood-stage steps")
                    m = timer.measure(cfg, n1 > 0, n2 > 0, n_timed)
                    s1 = m["stage1"]["step_s"] * scale if n1 else 0.0
                    s2 = m["stage2"]["step_s"] * scale if n2 else 0.0
                    one_off = m["construct_s"] + (m["stage1"]["first_extra_s"] if n1 else 0.0) \
                        + (m["stage2"]["one_off_s"] * (scale if gpu_sized else 1.0) if n2 else 0.0)
                    train_s = n1 * s1 + n2 * s2
                    rows.append({"method": method, "from": spec.start_from, "stage1_steps": n1, "stage2_steps": n2,
                                 "stage1_step_s": s1, "stage2_step_s": s2, "one_off_s": one_off,
                                 "train_s": train_s, "task_key": json.dumps(to_dict(cfg.task), sort_keys=True,
                                                                            default=str)})
                    log(f"    stage 1 {fmt_ms(s1) if n1 else '-'}/step, stage 2 {fmt_ms(s2) if n2 else '-'}/step, "
                        f"one-off {one_off:.1f} s -> {fmt_s(train_s + one_off)} per seed")
                # task builds as `rmflow compare` does them: rebuilt whenever the task config changes between runs
                builds, prev = 0.0, None
                for _seed in root.seeds:
                    for r in rows:
                        if r["task_key"] != prev:
                            builds += timer.tasks[r["task_key"]][1]
                        prev = r["task_key"]
                n_seeds = len(root.seeds)
                train_total = n_seeds * sum(r["train_s"] for r in rows)
                one_offs = n_seeds * sum(r["one_off_s"] for r in rows) + builds
                out.update(rows=rows, n_seeds=n_seeds, methods=len(rows), steps_total=n_seeds * sum(
                    r["stage1_steps"] + r["stage2_steps"] for r in rows), train_s=train_total,
                    one_off_s=one_offs, task_build_s=builds, total_s=train_total + one_offs,
                    measure_wall_s=time.perf_counter() - t_start)
                # `rmflow train <preset>`: the top level from step 0
                top = build_config(apply_overrides(copy.deepcopy(base), overrides))
                if not args.no_train_estimate:
                    nll, steps = top.rmflow.nll_start_step, top.train.steps
                    n1, n2 = min(steps, nll), max(0, steps - nll)
                    m = timer.measure(top, n1 > 0, n2 > 0, n_timed)
                    _, build_s, _ = timer.task_for(top)
                    tr = n1 * (m["stage1"]["step_s"] * batch_scale if n1 else 0) \
                        + n2 * (m["stage2"]["step_s"] * batch_scale if n2 else 0)
                    tr += build_s + m["construct_s"] + (m["stage2"]["one_off_s"] if n2 else 0)
                    out["train_top_s"] = tr
                    out["train_top_steps"] = steps
            except Exception as e:  # a task that cannot build here (missing data or package)
                traceback.print_exc(file=sys.stderr)
                out["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:200]
    out["cpu_time_line"] = cpu_time_line(out, args)
    return out


def _span(xs: list[float]) -> str:
    """'23 ms' or '23–53 ms' (the unit once where both ends share it)."""
    lo, hi = min(xs), max(xs)
    if hi < 1.15 * lo:
        return fmt_ms(lo)
    same = (lo >= 1) == (hi >= 1)
    return f"{fmt_ms(lo, unit=not same)}–{fmt_ms(hi)}"


def cpu_time_line(r: dict, args) -> str:
    """The suggested `# cpu-time:` header line of a preset."""
    if "error" in r:
        return f"# cpu-time: not measured: {r['error']}"
    rows = r["rows"]
    s1 = [x["stage1_step_s"] for x in rows if x["stage1_steps"]]
    s2 = [x["stage2_step_s"] for x in rows if x["stage2_steps"] and x["stage2_step_s"] > 0]
    steps = []
    if s1:
        steps.append(f"{_span(s1)}/step")
    if s2:
        steps.append(f"{_span(s2)}/step in the likelihood stage")
    n = r["n_seeds"]
    what = f"{n} seed{'s' if n > 1 else ''} × {r['methods']} methods at {', '.join(steps)}"
    if r["gpu_sized"]:
        what += f", measured at batch {args.gpu_batch} and scaled"
    if r["task_build_s"] >= 30:
        what += f"; incl. {fmt_s(r['task_build_s'])} building the task on a cold cache"
    elif r["one_off_s"] - r["task_build_s"] >= 0.1 * r["total_s"]:
        what += f"; incl. {fmt_s(r['one_off_s'] - r['task_build_s'])} building teacher banks"
    train = f"; `rmflow train` ~{fmt_s(r['train_top_s'])}" if r.get("train_top_s") else ""
    gpu = "; meant for a GPU" if r["gpu_sized"] else ""
    return (f"# cpu-time: ~{fmt_s(r['total_s'])} for `rmflow compare` on 1 CPU thread, training only, evaluation "
            f"excluded ({what}){train}{gpu}")


def report(r: dict) -> str:
    lines = [f"### {r['preset']}"]
    if "error" in r:
        return "\n".join(lines + [r["cpu_time_line"], ""])
    lines += ["", "| method | from | stage-1 steps | step | likelihood steps | step | one-offs | per seed |",
              "|---|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        lines.append(f"| {x['method']} | {x['from'] or '-'} | {x['stage1_steps']} | "
                     f"{fmt_ms(x['stage1_step_s']) if x['stage1_steps'] else '-'} | {x['stage2_steps']} | "
                     f"{fmt_ms(x['stage2_step_s']) if x['stage2_steps'] else '-'} | {x['one_off_s']:.1f} s | "
                     f"{fmt_s(x['train_s'] + x['one_off_s'])} |")
    lines += ["", f"seeds {r['n_seeds']}, {r['steps_total']} steps; training {fmt_s(r['train_s'])} + one-offs "
              f"{fmt_s(r['one_off_s'])} (task builds {r['task_build_s']:.1f} s) = {fmt_s(r['total_s'])}"
              + (f"; rmflow train ~{fmt_s(r['train_top_s'])}" if r.get("train_top_s") else "")
              + f" (measured in {r['measure_wall_s']:.0f} s)", "", r["cpu_time_line"], ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("presets", nargs="*", help="preset names (default: all bundled presets)")
    p.add_argument("--steps", type=int, default=4, help="timed steps per stage (median)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps after the first, per stage")
    p.add_argument("--gpu-batch", type=int, default=32, help="batch at which GPU-sized presets are measured")
    p.add_argument("--gpu-steps", type=int, default=1, help="timed steps per stage of GPU-sized presets")
    p.add_argument("--no-train-estimate", action="store_true", help="skip the `rmflow train` estimate")
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                   help="process CPU time (default; robust to other load) or wall time")
    p.add_argument("--json", default=None, help="append each preset's result (one JSON object a line)")
    args = p.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    import torch
    torch.set_num_threads(1)   # as the Trainer does (train.num_threads=1); tasks are built before it here
    from rmflow.config import PRESET_DIR
    names = args.presets or sorted(q.stem for q in PRESET_DIR.glob("*.yaml"))
    for name in names:
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        r = measure_preset(name, args)
        print(report(r), flush=True)
        print(f"   ({time.perf_counter() - t0:.0f} s wall)", flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps({k: v for k, v in r.items()}, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

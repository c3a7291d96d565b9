"""The training loop: AdamW with linear warm-up, EMA, gradient clipping, a NaN/inf guard, atomic checkpoints,
exact resume, Ctrl-C checkpointing, JSONL metrics and a progress bar (log lines when output is not a terminal).

Everything random in a step draws from torch's global RNG, whose state is checkpointed, and the learning rate
is a pure function of the step; so resuming from a checkpoint reproduces the uninterrupted run's losses. Ctrl-C
does not cut a step in half: the running step finishes, then a checkpoint is written (a second Ctrl-C stops at
once). The logging window in progress is checkpointed too, and metrics.jsonl is cut back to the checkpoint's step
on resume, so every logged step appears once, with the row the uninterrupted run would have written.

Nothing is written to the run folder before `resume()` has checked that its newest good checkpoint fits this
config (`train` then records the config in config.yaml).
"""
from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import Config, ConfigError, config_to_yaml
from ..flow import to_device
from .build import build_ema, build_objective, build_optimizer, build_task, load_weights
from .checkpoint import latest_good_checkpoint, load_checkpoint, save_checkpoint
from .distributed import DistContext, all_reduce_mean, gather_rng_states, prepare_loss_module, rank_seed
from .ema import warmup_decay
from .rundir import atomic_write_text, is_interactive, rollback_metrics


class TrainingDiverged(RuntimeError):
    pass


class Trainer:
    """Trains one config. `run_dir=None` keeps everything in memory (no files).

    `dist` (train/distributed.py: init_distributed) makes this one rank of a DDP job: the loss module is wrapped
    in DDP, each rank draws its own data and noise (rank_seed), and only rank 0 logs and writes files.
    """

    def __init__(self, cfg: Config, run_dir: str | Path | None = None, task=None, dist: DistContext | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir) if run_dir is not None else None
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        torch.manual_seed(cfg.seed)
        self.dist = dist or DistContext(device=torch.device(cfg.train.device))
        self.is_main = self.dist.is_main
        self.device = self.dist.device
        self.task = task or build_task(cfg)
        self.model = self.task.build_model().to(self.device)
        self.objective = build_objective(cfg, self.model, self.task, self.device)
        self.loss_module = prepare_loss_module(self.objective, self.device, self.dist, cfg.train.precision,
                                               cfg.train.compile)  # [autocast ->] [DDP ->] [compile]
        self.ema = build_ema(cfg, self.model)
        self.optimizer = build_optimizer(cfg, self.model)
        self.step = 0
        self.history: list[float] = []
        self._window: dict = {"sums": {}, "steps": 0}   # the logging window in progress (checkpointed)
        if self.dist.rank > 0:  # same initial weights (DDP broadcasts rank 0's), different data and noise
            torch.manual_seed(rank_seed(cfg.seed, self.dist.rank))

    def write_config(self) -> None:
        """Record the config in run_dir/config.yaml (atomically; rank 0); `train` does it before the first step."""
        if self.run_dir is not None and self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "config.yaml", config_to_yaml(self.cfg))

    # ------------------------------------------------------------------------------------------ checkpoints
    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def _tensors(self, rng_states: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        out = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        out.update({f"ema.{k}": v for k, v in self.ema.shadow.state_dict().items()})
        if self.objective.pairing is not None:
            out.update(self.objective.pairing.checkpoint_tensors())
        for i, st in self.optimizer.state_dict()["state"].items():
            out.update({f"optim.{i}.{k}": v for k, v in st.items() if torch.is_tensor(v)})
        rng_states = rng_states or [torch.get_rng_state()]
        out["rng.torch"] = rng_states[0]
        out.update({f"rng.torch.rank{r}": st for r, st in enumerate(rng_states) if r > 0})
        return out

    def save(self, tag: str | None = None, gather: bool = True) -> Path | None:
        """Write a checkpoint (rank 0). In a DDP job every rank must call it (their RNG states are gathered)
        unless gather=False (then ranks > 0 reseed from (seed, rank, step) on resume)."""
        if self.run_dir is None:
            return None
        rng_states = gather_rng_states(self.dist) if gather else None
        if not self.is_main:
            return None
        groups = self.optimizer.state_dict()["param_groups"]
        state = {"step": self.step, "history": self.history, "log_window": self._window,
                 "param_groups": json.loads(json.dumps(groups, default=list))}
        path = save_checkpoint(self.ckpt_dir / (tag or f"step_{self.step:08d}"), self._tensors(rng_states), state)
        steps = sorted(p for p in self.ckpt_dir.glob("step_*.json") if p.stem[5:].isdigit())
        for old in steps[:-3]:   # keep the last three
            old.unlink()
            old.with_suffix(".safetensors").unlink(missing_ok=True)
        return path

    def load(self, path: str | Path, warm_start: bool = False) -> None:
        """Load a checkpoint of this run. `warm_start=True` loads another run's checkpoint (a stage-1 model) whose
        refiner may differ (fixed vs learned scale): the refiner then keeps its initial value, and new parameters
        (registered after the network's) start with fresh optimiser moments."""
        tensors, state = load_checkpoint(path)
        self._load(tensors, state, warm_start, path)

    def _load(self, tensors: dict, state: dict, warm_start: bool, path) -> None:
        try:
            for module, prefix in ((self.model, "model."), (self.ema.shadow, "ema.")):
                load_weights(module, tensors, prefix, warm_start)
        except RuntimeError as e:   # missing/unexpected keys or a size mismatch: another model's checkpoint
            first = next((ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()), str(e))
            first = first if len(first) < 160 else first[:157] + "..."
            raise ConfigError(f"checkpoint {path} belongs to a different model than this config ({first}); "
                              "use the settings it was trained with (its run folder's config.yaml) or another "
                              "name=") from None
        if self.objective.pairing is not None:   # a warm start keeps no stored errors of another run
            self.objective.pairing.load_checkpoint_tensors(
                {k: v.to(self.device) for k, v in tensors.items()
                 if k.startswith("teacher.") or (k == "focus_errors" and not warm_start)})
        optim_state: dict[int, dict] = {}
        for k, v in tensors.items():
            if not k.startswith("optim."):
                continue
            i, name = k[len("optim."):].split(".", 1)
            optim_state.setdefault(int(i), {})[name] = v
        groups = state["param_groups"]
        if warm_start:  # same hyper-parameters, this run's parameter list
            groups = [{**g, "params": cur["params"]} for g, cur in
                      zip(groups, self.optimizer.state_dict()["param_groups"])]
        self.optimizer.load_state_dict({"state": optim_state, "param_groups": groups})
        torch.set_rng_state(tensors["rng.torch"])
        self.step, self.history = int(state["step"]), list(state["history"])
        self._window = state.get("log_window", {"sums": {}, "steps": 0}) if not warm_start else {"sums": {},
                                                                                                 "steps": 0}
        if self.dist.rank > 0:
            own = tensors.get(f"rng.torch.rank{self.dist.rank}")
            if own is not None:
                torch.set_rng_state(own)
            else:
                torch.manual_seed(rank_seed(self.cfg.seed, self.dist.rank, self.step))

    def resume(self) -> bool:
        """Load the newest checkpoint of this run that verifies (warning about corrupt newer ones), if any, cut
        metrics.jsonl back to its step and remove temporary files of checkpoint writes that a kill cut short. Returns whether one was loaded. Raises ConfigError when the checkpoint
        belongs to another model; nothing in the run folder has changed then."""
        if self.run_dir is None:
            return False
        found = latest_good_checkpoint(self.ckpt_dir)
        if found is None:
            return False
        path, tensors, state = found
        self._load(tensors, state, False, path)
        if self.is_main:
            for stale in [*self.ckpt_dir.glob(".tmp*"), *self.ckpt_dir.glob("*.tmp")]:   # writes cut by a kill
                stale.unlink(missing_ok=True)
            dropped = rollback_metrics(self.run_dir / "metrics.jsonl", self.step)
            if dropped:
                warnings.warn(f"metrics.jsonl: dropped {dropped} row(s) logged after step {self.step}, the step "
                              "this run resumes from")
        return True

    # ------------------------------------------------------------------------------------------------ loop
    def _lr(self, step: int) -> float:
        """The learning rate of `step`: linear warm-up over `warmup_steps`, then

        - 'constant': lr;
        - 'cosine': a half cosine lr·(1 + cos(π·(step - s)/(steps - s)))/2 from s = lr_decay_start to 0 at the end;
        - 'cosine_stages': the same per stage — warm-up and half cosine over [0, S), then again over [S, steps),
          S = rmflow.nll_start_step (one cycle when S is 0 or >= steps). Stage 1 ends annealed, so the teacher
          frozen at S is the stage's best, and the likelihood stage starts with a full learning rate. The restart
          does not depend on λ1, so a MeanFlow run continued as the equal-steps control sees the same rates."""
        tc = self.cfg.train
        start, end = 0, tc.steps
        stage = self._restart_step()
        if stage is not None:
            start, end = (0, stage) if step < stage else (stage, tc.steps)
        k = step - start
        lr = tc.lr * min(1.0, (k + 1) / tc.warmup_steps) if tc.warmup_steps else tc.lr
        if tc.lr_schedule == "cosine" and step >= tc.lr_decay_start:
            lr *= 0.5 * (1 + math.cos(math.pi * (step - tc.lr_decay_start) / (tc.steps - tc.lr_decay_start)))
        elif tc.lr_schedule == "cosine_stages":
            lr *= 0.5 * (1 + math.cos(math.pi * k / (end - start)))
        return lr

    def _restart_step(self) -> int | None:
        """S = rmflow.nll_start_step where 'cosine_stages' restarts the stage (0 < S < steps), else None."""
        tc, stage = self.cfg.train, self.cfg.rmflow.nll_start_step
        return stage if tc.lr_schedule == "cosine_stages" and 0 < stage < tc.steps else None

    def _ema_decay(self, step: int) -> float:
        """The EMA decay of `step`'s update. With 'cosine_stages' the EMA restarts with the second stage (from the
        model's weights, at S) and warms up again (train.ema.warmup_decay): an average that straddled the change
        of objective would keep e^(-(steps - S)(1 - decay)) of stage-1 weights — 13.5 % after 2 000 steps at
        0.999 — and blur the one-step map that stage 2 trains (docs/METHOD.md §8)."""
        stage = self._restart_step()
        if stage is None or step < stage:
            return self.cfg.train.ema_decay
        return warmup_decay(self.cfg.train.ema_decay, step - stage)

    def start_likelihood_stage(self) -> None:
        """The stage boundary (step rmflow.nll_start_step): the pairing freezes its teacher from the EMA or the
        model (rmflow.teacher_source). The LoRA trainer extends it."""
        self.objective.start_likelihood_stage(self.ema.shadow if self.cfg.rmflow.teacher_source == "ema"
                                              else self.model)

    def train_step(self) -> dict[str, float]:
        cfg = self.cfg
        if self.step == cfg.rmflow.nll_start_step:
            self.start_likelihood_stage()
            if self._restart_step() is not None:   # after the teacher took the stage-1 average
                self.ema.reset(self.model)
        self.objective.set_step(self.step)
        for g in self.optimizer.param_groups:
            g["lr"] = self._lr(self.step)
        batch = self.task.batch(cfg.train.batch_size)
        x = batch.x.to(self.device)
        out = self.loss_module(x, to_device(batch.cond, self.device), to_device(batch.mask, self.device))
        loss = out.loss.mean()
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"loss became {loss.item()} at step {self.step} (max ‖du/dt‖ = "
                f"{out.stats['dudt_norm_max'].item():.3g}); the last good checkpoint is kept"
                + (f" in {self.ckpt_dir}" if self.run_dir else "") + ". Try a lower train.lr or flow.adaptive_p.")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), cfg.train.grad_clip if cfg.train.grad_clip > 0 else math.inf)
        self.optimizer.step()
        self.ema.update(self.model, self._ema_decay(self.step))
        self.step += 1
        self.history.append(float(loss.detach()))
        stats = {k: float(v) for k, v in out.stats.items()}
        stats.update(loss=float(loss.detach()), grad_norm=float(grad_norm), lr=self._lr(self.step - 1))
        return stats

    def train(self, steps: int | None = None, is_main: bool | None = None) -> list[float]:
        """Train until `steps` total steps (default cfg.train.steps); returns the per-step losses. Writes the run
        folder's config.yaml first (call `resume()` before, so that an incompatible checkpoint is caught first).
        is_main (default: rank 0 of the job) decides who logs and writes checkpoints."""
        total = steps if steps is not None else self.cfg.train.steps
        tc = self.cfg.train
        is_main = self.is_main if is_main is None else is_main
        if is_main:
            self.write_config()
        saving = is_main or self.dist.distributed  # in DDP every rank joins save() (RNG gather); rank 0 writes
        log_path = self.run_dir / "metrics.jsonl" if (self.run_dir and is_main) else None
        show = tc.progress and is_main
        bar = tqdm(total=total, initial=self.step, desc=self.cfg.name, disable=not (show and is_interactive()),
                   dynamic_ncols=True, leave=False)
        board = tensorboard_writer(self.run_dir) if (tc.tensorboard and log_path) else None
        t0 = time.perf_counter()
        with _DeferredInterrupt() as interrupt, board or contextlib.nullcontext():
            while self.step < total:
                stats = self.train_step()
                w = self._window
                for k, v in stats.items():
                    w["sums"][k] = w["sums"].get(k, 0.0) + v
                w["steps"] += 1
                bar.update(1)
                if self.step % tc.log_every == 0 or self.step == tc.steps:
                    row = {"step": self.step,
                           **all_reduce_mean({k: v / w["steps"] for k, v in w["sums"].items()}, self.dist),
                           "steps_per_s": w["steps"] / (time.perf_counter() - t0)}
                    bar.set_postfix(loss=f"{row['loss']:.4g}")
                    if show and bar.disable:   # not a terminal: a log line instead of a bar
                        print(f"{self.cfg.name}: step {self.step}/{total} loss {row['loss']:.4g} "
                              f"({row['steps_per_s']:.1f} steps/s)", file=sys.stderr, flush=True)
                    if log_path:
                        with open(log_path, "a") as f:
                            f.write(json.dumps(row) + "\n")
                    if board is not None:   # metrics.jsonl stays the source of truth
                        for k, v in row.items():
                            if k != "step":
                                board.add_scalar(k, v, self.step)
                    self._window, t0 = {"sums": {}, "steps": 0}, time.perf_counter()
                if saving and self.step % tc.ckpt_every == 0:
                    self.save()
                if interrupt.requested:
                    path = self.save(gather=False) if is_main else None
                    bar.close()
                    raise KeyboardInterrupt(f"interrupted at step {self.step}; checkpoint saved to {path}")
        bar.close()
        if saving:
            self.save()
        return self.history


def tensorboard_writer(run_dir: Path):
    """A SummaryWriter on run_dir/tensorboard (a ConfigError naming train.tensorboard without the package)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("config key 'train.tensorboard': needs the tensorboard package "
                          "(pip install 'rmflow[tensorboard]')") from None
    return SummaryWriter(str(run_dir / "tensorboard"))


class _DeferredInterrupt:
    """Within the block, the first SIGINT (Ctrl-C) only sets `requested`, so the running step completes and the
    loop checkpoints a consistent state; a second SIGINT interrupts at once. Only in the main thread."""

    def __enter__(self):
        self.requested, self._previous = False, None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt("interrupted twice: stopped without a checkpoint")
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False

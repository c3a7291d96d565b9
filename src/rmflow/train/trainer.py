"""The training loop: AdamW with linear warm-up, EMA, gradient clipping, a NaN/inf guard, atomic checkpoints,
exact resume, Ctrl-C checkpointing, JSONL metrics and a progress bar.

Everything random in a step draws from torch's global RNG, whose state is checkpointed, and the learning rate
is a pure function of the step; so resuming from a checkpoint reproduces the uninterrupted run's losses.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import Config, config_to_yaml
from ..flow import to_device
from .build import build_ema, build_objective, build_optimizer, build_task, load_weights
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .distributed import DistContext, all_reduce_mean, gather_rng_states, prepare_loss_module, rank_seed


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
        if self.dist.rank > 0:  # same initial weights (DDP broadcasts rank 0's), different data and noise
            torch.manual_seed(rank_seed(cfg.seed, self.dist.rank))
        if self.run_dir is not None and self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(config_to_yaml(cfg))

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
        state = {"step": self.step, "history": self.history,
                 "param_groups": json.loads(json.dumps(groups, default=list))}
        path = save_checkpoint(self.ckpt_dir / (tag or f"step_{self.step:08d}"), self._tensors(rng_states), state)
        for old in sorted(self.ckpt_dir.glob("step_*.json"))[:-3]:   # keep the last three
            old.unlink()
            old.with_suffix(".safetensors").unlink(missing_ok=True)
        return path

    def load(self, path: str | Path, warm_start: bool = False) -> None:
        """Load a checkpoint of this run. `warm_start=True` loads another run's checkpoint (a stage-1 model) whose
        refiner may differ (fixed vs learned scale): the refiner then keeps its initial value, and new parameters
        (registered after the network's) start with fresh optimiser moments."""
        tensors, state = load_checkpoint(path)
        for module, prefix in ((self.model, "model."), (self.ema.shadow, "ema.")):
            load_weights(module, tensors, prefix, warm_start)
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
        if self.dist.rank > 0:
            own = tensors.get(f"rng.torch.rank{self.dist.rank}")
            if own is not None:
                torch.set_rng_state(own)
            else:
                torch.manual_seed(rank_seed(self.cfg.seed, self.dist.rank, self.step))

    def resume(self) -> bool:
        """Load the newest checkpoint of this run, if any. Returns whether one was loaded."""
        if self.run_dir is None:
            return False
        path = latest_checkpoint(self.ckpt_dir)
        if path is not None:
            self.load(path)
        return path is not None

    # ------------------------------------------------------------------------------------------------ loop
    def _lr(self, step: int) -> float:
        """Linear warm-up over `warmup_steps`, then constant or, with lr_schedule 'cosine', a half cosine
        lr·(1 + cos(π·(step - s)/(steps - s)))/2 from s = lr_decay_start down to 0 at the last step."""
        tc = self.cfg.train
        lr = tc.lr * min(1.0, (step + 1) / tc.warmup_steps) if tc.warmup_steps else tc.lr
        if tc.lr_schedule == "cosine" and step >= tc.lr_decay_start:
            lr *= 0.5 * (1 + math.cos(math.pi * (step - tc.lr_decay_start) / (tc.steps - tc.lr_decay_start)))
        return lr

    def start_likelihood_stage(self) -> None:
        """The stage boundary (step rmflow.nll_start_step): the pairing freezes its teacher from the EMA or the
        model (rmflow.teacher_source). The LoRA trainer extends it."""
        self.objective.start_likelihood_stage(self.ema.shadow if self.cfg.rmflow.teacher_source == "ema"
                                              else self.model)

    def train_step(self) -> dict[str, float]:
        cfg = self.cfg
        if self.step == cfg.rmflow.nll_start_step:
            self.start_likelihood_stage()
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
        self.ema.update(self.model)
        self.step += 1
        self.history.append(float(loss.detach()))
        stats = {k: float(v) for k, v in out.stats.items()}
        stats.update(loss=float(loss.detach()), grad_norm=float(grad_norm), lr=self._lr(self.step - 1))
        return stats

    def train(self, steps: int | None = None, is_main: bool | None = None) -> list[float]:
        """Train until `steps` total steps (default cfg.train.steps); returns the per-step losses.
        is_main (default: rank 0 of the job) decides who logs and writes checkpoints."""
        total = steps if steps is not None else self.cfg.train.steps
        tc = self.cfg.train
        is_main = self.is_main if is_main is None else is_main
        saving = is_main or self.dist.distributed  # in DDP every rank joins save() (RNG gather); rank 0 writes
        log_path = self.run_dir / "metrics.jsonl" if (self.run_dir and is_main) else None
        bar = tqdm(total=total, initial=self.step, desc=self.cfg.name, disable=not (tc.progress and is_main),
                   dynamic_ncols=True, leave=False)
        acc: dict[str, float] = {}
        n_acc, t0 = 0, time.perf_counter()
        try:
            while self.step < total:
                stats = self.train_step()
                for k, v in stats.items():
                    acc[k] = acc.get(k, 0.0) + v
                n_acc += 1
                bar.update(1)
                if self.step % tc.log_every == 0 or self.step == total:
                    row = {"step": self.step, **all_reduce_mean({k: v / n_acc for k, v in acc.items()}, self.dist),
                           "steps_per_s": n_acc / (time.perf_counter() - t0)}
                    bar.set_postfix(loss=f"{row['loss']:.4g}")
                    if log_path:
                        with open(log_path, "a") as f:
                            f.write(json.dumps(row) + "\n")
                    acc, n_acc, t0 = {}, 0, time.perf_counter()
                if saving and self.step % tc.ckpt_every == 0:
                    self.save()
        except KeyboardInterrupt:
            if is_main:
                path = self.save(gather=False)
                bar.close()
                raise KeyboardInterrupt(f"interrupted at step {self.step}; checkpoint saved to {path}") from None
            raise
        bar.close()
        if saving:
            self.save()
        return self.history

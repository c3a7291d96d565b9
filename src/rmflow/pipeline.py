"""Inference without training code: load a finished run (or an exported folder) and draw samples.

    import rmflow
    pipe = rmflow.load("runs/ring/rmflow-s0")          # config.yaml + the newest good checkpoint's EMA weights
    x = pipe.sample(1000, sampler="rmflow", seed=0)    # (1000, *D) in the task's data space
    pipe.export("exported/ring")                       # config.yaml + model.safetensors, nothing else
    rmflow.load("exported/ring").sample(1000, seed=0)  # the same samples

`rmflow export RUN_DIR OUT_DIR` is the same export from the command line. Loading reads only YAML and safetensors.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .config import Config, ConfigError, config_to_yaml, load_config, parse_sampler
from .evaluate import draw_samples
from .tasks import Batch, Task

WEIGHTS = "model.safetensors"


class Pipeline:
    """A trained model with its task and config. `sample` draws samples for n conditions of the task's held-out
    reference (or for the given condition rows)."""

    def __init__(self, model, task: Task, cfg: Config):
        self.model, self.task, self.cfg = model.eval(), task, cfg

    def sample(self, n: int, sampler: str = "rmflow", seed: int = 0, cond=None, mask=None,
               batch_size: int | None = None) -> torch.Tensor:
        """n samples (n, *D) in the data's own units (a task that trains in standardised units maps them back:
        `to_data_units`). sampler: rmflow | meanflow@K | fm@K | fm_heun@K. Unconditional tasks ignore cond; a
        conditional task samples for `cond` (n rows) or, without it, for the conditions of n held-out rows."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        parse_sampler(sampler)
        reference = self.task.reference(n, seed=10_000 + seed)
        if cond is not None or mask is not None:
            reference = Batch(reference.x, cond if cond is not None else reference.cond,
                              mask if mask is not None else reference.mask)
        x = draw_samples(self.model, reference, sampler, seed, batch_size or self.cfg.eval.batch_size)[0]
        to_data = getattr(self.task, "to_data_units", None)
        return to_data(x, self.model) if to_data is not None else x

    def export(self, directory: str | Path) -> Path:
        """Write config.yaml and model.safetensors (the weights this pipeline samples with) into `directory`."""
        from safetensors.torch import save_file

        from .train.rundir import atomic_write_text
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f"{WEIGHTS}.tmp"
        save_file({k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}, str(tmp))
        tmp.replace(directory / WEIGHTS)
        atomic_write_text(directory / "config.yaml", config_to_yaml(self.cfg))
        return directory


def load(path: str | Path, use_ema: bool = True, device: str | torch.device = "cpu") -> Pipeline:
    """A Pipeline from a run folder (its EMA weights unless use_ema=False) or from a folder written by `export`."""
    path = Path(path)
    if (path / WEIGHTS).exists():
        from safetensors.torch import load_file

        from .train.build import model_with_weights
        cfg = load_config(str(path / "config.yaml"))
        weights = load_file(str(path / WEIGHTS))
        lora = any("lora_" in k for k in weights)   # exported after a LoRA stage: a step inside it
        model, task = model_with_weights(cfg, weights, "", cfg.rmflow.nll_start_step + 1 if lora else 0)
        return Pipeline(model.to(device), task, cfg)
    from .train.build import load_run
    try:
        model, task, cfg = load_run(path, use_ema, device)
    except FileNotFoundError as e:
        raise ConfigError(f"{e} (nor an exported folder with {WEIGHTS})") from None
    return Pipeline(model, task, cfg)

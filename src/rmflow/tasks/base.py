"""The contract between a task and the rest of rmflow, and the task registry."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..errors import ConfigError
from ..flow import FixedScale, GaussianSource, GuidedSource, LearnedScale, MixtureRefiner, RMFlow


@dataclass
class Batch:
    """x: (B, *D) data; cond: task-defined condition or None; mask: broadcastable to x (1 = real) or None."""

    x: torch.Tensor
    cond: Any = None
    mask: torch.Tensor | None = None


class Task:
    """What a task provides. Subclasses set `space` and implement the methods below."""

    space: Any

    def build_model(self) -> RMFlow:
        """The network, source and refiner for this task's config."""
        raise NotImplementedError

    def batch(self, batch_size: int) -> Batch:
        """A training batch, drawn with torch's global RNG (so that resume reproduces it)."""
        raise NotImplementedError

    def reference(self, num_samples: int, seed: int) -> Batch:
        """Held-out data for evaluation; its cond/mask are also the conditions to sample for."""
        raise NotImplementedError

    def evaluate(self, samples: torch.Tensor, reference: Batch) -> dict[str, float]:
        raise NotImplementedError

    def plot(self, panels: dict[str, torch.Tensor], reference: Batch, path) -> None:
        """A figure with one panel per sampler (and the data)."""


@dataclass
class TaskSpec:
    name: str
    data_config: type
    model_config: type
    factory: Callable[..., Task]   # factory(cfg: rmflow.config.Config) -> Task


_REGISTRY: dict[str, TaskSpec] = {}
_BUILTIN = {"synthetic": "rmflow.tasks.synthetic", "qm9": "rmflow.tasks.qm9", "dynamics": "rmflow.tasks.dynamics",
            "text2image": "rmflow.tasks.text2image"}


def register_task(spec: TaskSpec) -> TaskSpec:
    _REGISTRY[spec.name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    if name not in _REGISTRY and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
    if name not in _REGISTRY:
        known = ", ".join(sorted(set(_REGISTRY) | set(_BUILTIN)))
        raise ConfigError(f"config key 'task.name': unknown task {name!r}; known tasks: {known} (a task of your "
                          "own: import the module that registers it first, e.g. `rmflow --import mypkg.mytask`)")
    return _REGISTRY[name]


def build_rmflow(net: nn.Module, cfg, space, encoder: nn.Module | None = None,
                 scale_net: nn.Module | None = None, vector_dim: int | None = None) -> RMFlow:
    """Assemble RMFlow from a task's network (and optional condition encoder φ_ω) following cfg.rmflow.
    vector_dim: D of (B, D) data, for tasks that support the mixture refiner."""
    rm = cfg.rmflow
    source = GuidedSource(encoder, rm.sigma_c, space) if encoder is not None else GaussianSource(space)
    if rm.refine == "learned":
        refiner = LearnedScale((rm.sigma_min ** 2 - cfg.flow.sigma ** 2) ** 0.5, scale_net)
    elif rm.refine == "mixture":
        if vector_dim is None:
            raise ConfigError(f"config key 'rmflow.refine': 'mixture' needs vector data (B, D); task "
                              f"{cfg.task.name!r} does not support it")
        refiner = MixtureRefiner(vector_dim, rm.mixture_components, rm.sigma_min, cfg.flow.sigma, rm.mixture_hidden,
                                 rm.mixture_pick)
    else:
        refiner = FixedScale(rm.sigma_min, cfg.flow.sigma)
    return RMFlow(net, source, refiner, space)

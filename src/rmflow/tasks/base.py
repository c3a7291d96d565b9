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
            "text2image": "rmflow.tasks.text2image", "vectors": "rmflow.tasks.vectors"}


def register_task(spec: TaskSpec) -> TaskSpec:
    _REGISTRY[spec.name] = spec
    return spec


ENTRY_POINTS = "rmflow.tasks"   # packages declare their tasks here: [project.entry-points."rmflow.tasks"]


def get_task(name: str) -> TaskSpec:
    """The task called `name`: registered already, built in, declared by an installed package under the entry-point
    group "rmflow.tasks" (name = "module" or "module:attribute"; loading it registers the task, or returns its
    TaskSpec), or given as "module:attribute" itself (a TaskSpec there)."""
    if name not in _REGISTRY:
        if name in _BUILTIN:
            importlib.import_module(_BUILTIN[name])
        else:
            _load_outside_task(name)
    if name not in _REGISTRY:
        known = ", ".join(sorted(set(_REGISTRY) | set(_BUILTIN)))
        raise ConfigError(f"config key 'task.name': unknown task {name!r}; known tasks: {known} (a task of your "
                          "own: import the module that registers it first, e.g. `rmflow --import mypkg.mytask`, "
                          f"declare it under the entry-point group {ENTRY_POINTS!r}, or name it 'module:SPEC')")
    return _REGISTRY[name]


def _load_outside_task(name: str) -> None:
    from importlib.metadata import entry_points
    found = [ep for ep in entry_points(group=ENTRY_POINTS) if ep.name == name]
    target = found[0].value if found else (name if ":" in name else None)
    if target is None:
        return
    spec = _import_target(target, "task.name")      # importing the module may register the task itself
    if isinstance(spec, TaskSpec) and name not in _REGISTRY:
        _REGISTRY[name] = spec


def _import_target(target: str, key: str):
    """Import "package.module" or "package.module:attribute"; the attribute (None without one). A ConfigError names
    `key` when the module or the attribute is missing."""
    module, _, attr = target.partition(":")
    try:
        loaded = importlib.import_module(module)
        return getattr(loaded, attr) if attr else None
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"config key '{key}': cannot load {target!r} ({e}); expected 'package.module' or "
                          "'package.module:Name'") from None


def user_network(target: str, **options) -> nn.Module:
    """A network of one's own, named "package.module:Class" in a config (`model.target`), built as
    Class(**options). Its forward(x, t, r, cond=None[, mask=None]) returns u (B, *D) like x (B, *D)."""
    cls = _import_target(target, "model.target")
    if cls is None:
        raise ConfigError(f"config key 'model.target': {target!r} names no class; expected 'package.module:Class'")
    try:
        return cls(**options)
    except TypeError as e:
        raise ConfigError(f"config key 'model.options': {target}(**{options}) failed: {e}") from None


def build_rmflow(net: nn.Module, cfg, space, encoder: nn.Module | None = None,
                 scale_net: nn.Module | None = None, vector_dim: int | None = None) -> RMFlow:
    """Assemble RMFlow from a task's network (and optional condition encoder φ_ω) following cfg.rmflow.
    vector_dim: D of (B, D) data, for tasks that support the mixture refiner. rmflow.refine 'auto' is the mixture
    refiner for such data and the fixed scale for any other (molecules, series, images)."""
    rm = cfg.rmflow
    source = GuidedSource(encoder, rm.sigma_c, space) if encoder is not None else GaussianSource(space)
    if rm.refine == "learned":
        refiner = LearnedScale((rm.sigma_min ** 2 - cfg.flow.sigma ** 2) ** 0.5, scale_net)
    elif rm.refine == "mixture" or (rm.refine == "auto" and vector_dim is not None):
        if vector_dim is None:
            raise ConfigError(f"config key 'rmflow.refine': 'mixture' needs vector data (B, D); task "
                              f"{cfg.task.name!r} does not support it")
        refiner = MixtureRefiner(vector_dim, rm.mixture_components, rm.sigma_min, cfg.flow.sigma, rm.mixture_hidden,
                                 rm.mixture_pick)
    else:
        refiner = FixedScale(rm.sigma_min, cfg.flow.sigma)
    return RMFlow(net, source, refiner, space)

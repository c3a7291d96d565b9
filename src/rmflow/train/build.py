"""The one place where a config becomes the objects of a run: the task, the model (network, source, refiner), the
objective with its pairing, the optimiser and the EMA; and the weights of a finished run, loaded for sampling
without building a trainer. The trainer, the LoRA stage, DDP, `rmflow bench` and `rmflow sample/evaluate` all
build through here."""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from ..config import Config, ConfigError, load_config
from ..flow import (CMFMLoss, IndependentPairing, InversePairing, LikelihoodSchedule, MinibatchOTPairing, Pairing,
                    RMFlowObjective, SelfPairing, TeacherPairing, TimeSampler, to_device)
from ..flow.cmfm import ClassifierFreeGuidance
from ..flow.samplers import takes_guidance
from ..tasks import Task, get_task
from .checkpoint import latest_good_checkpoint
from .ema import EMA

# offsets of the fixed data samples' own random streams (the filter's reference, the bank, the guidance probe)
FILTER_SEED, BANK_SEED, PROBE_SEED = 1_000_003, 2_000_003, 3_000_003


def build_task(cfg: Config) -> Task:
    return get_task(cfg.task.name).factory(cfg)


def build_pairing(cfg: Config, model: nn.Module, task: Task, device: torch.device) -> Pairing | None:
    """The pairing of L_NLL named by rmflow.pairing, or None when λ1 = 0 (plain MeanFlow)."""
    rm = cfg.rmflow
    if rm.lambda_nll <= 0:
        return None
    if rm.pairing == "independent":
        return IndependentPairing()
    if rm.pairing == "minibatch_ot":
        return MinibatchOTPairing()
    if rm.pairing == "inverse":
        return InversePairing()
    if rm.pairing == "self":
        return SelfPairing(rm.teacher_steps)
    reference = conditions = None
    bank = bank_size(cfg)
    if bank > 0:   # fixed data samples, each from its own random stream: resume rebuilds the same
        sample = _fixed_sample(task, bank, cfg.seed + BANK_SEED)
        if sample.cond is not None or sample.mask is not None:
            conditions = (to_device(sample.cond, device), to_device(sample.mask, device))
    if rm.teacher_filter > 0 and conditions is None:   # the filter compares with unconditional data only
        reference = _fixed_sample(task, rm.filter_reference, cfg.seed + FILTER_SEED).x.to(device)
    return TeacherPairing(model, rm.teacher_steps, rm.teacher_sampler, bank=bank, bank_seed=cfg.seed,
                          focus=rm.nll_focus, stored_errors=rm.stored_focus_errors,
                          filter_q=rm.teacher_filter if reference is not None else 0.0,
                          filter_reference=reference, bank_conditions=conditions)


def bank_size(cfg: Config) -> int:
    """Teacher pairs to precompute: rmflow.teacher_bank, capped at the L_NLL rows that the likelihood stage reads,
    (train.steps − rmflow.nll_start_step) · ⌈nll_batch · train.batch_size⌉ (at least one step's rows). A larger bank
    would hold pairs that no step reads; with the cap the bank never costs more teacher evaluations than drawing
    fresh pairs at every step would. 0 when the bank is off."""
    rm = cfg.rmflow
    if rm.teacher_bank <= 0:
        return 0
    rows = math.ceil(rm.nll_batch * cfg.train.batch_size)
    return min(rm.teacher_bank, max(cfg.train.steps - rm.nll_start_step, 1) * rows)


def _fixed_sample(task: Task, n: int, seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return task.batch(n)


def build_guidance(cfg: Config, model: nn.Module, task: Task) -> ClassifierFreeGuidance | None:
    """Classifier-free guidance of L_CMFM (flow.guidance), None when off. Raises ConfigError, naming the key, for an
    unconditional task, a range of ω for a network that does not take ω, or ω as an input without a dict
    condition."""
    g = cfg.flow.guidance
    if not g.enabled:
        return None
    probe = _fixed_sample(task, 2, cfg.seed + PROBE_SEED).cond   # its own random stream: training is unchanged
    key = "flow.guidance.p_drop" if g.p_drop > 0 else "flow.guidance.w_max"
    if probe is None:
        raise ConfigError(f"config key '{key}': classifier-free guidance needs a conditional task; task "
                          f"{cfg.task.name!r} (as configured) has no condition")
    as_input = takes_guidance(model)
    if g.w_min < g.w_max and not as_input:
        raise ConfigError(f"config key 'flow.guidance.w_max': a range of guidance scales [{g.w_min}, {g.w_max}] "
                          "needs a network that takes ω as an input (e.g. the U-Net built with guidance_embed); "
                          "this network does not: set w_min = w_max to bake one scale in")
    if as_input and not isinstance(probe, dict):
        raise ConfigError(f"config key '{key}': the network takes ω as cond['guidance'], which needs a dict "
                          f"condition; task {cfg.task.name!r} gives a {type(probe).__name__}")
    return ClassifierFreeGuidance(g.p_drop, g.w_min, g.w_max, as_input)


def build_objective(cfg: Config, model: nn.Module, task: Task, device: torch.device) -> RMFlowObjective:
    f, rm, t = cfg.flow, cfg.rmflow, cfg.flow.time
    times = TimeSampler(t.dist, t.mean, t.std, t.ratio_neq, t.ratio_one_step, t.fm_warmup, t.pair_dist)
    cmfm = CMFMLoss(times, f.adaptive_p, f.adaptive_c, f.jvp, f.jvp_subset, f.objective)
    schedule = LikelihoodSchedule(rm.nll_start_step, rm.nll_batch, rm.batch_split)
    pairing = build_pairing(cfg, model, task, device)
    velocity = rm.cmfm_velocity
    if velocity == "auto":
        velocity = "teacher" if isinstance(pairing, TeacherPairing) else "data"
    guidance = build_guidance(cfg, model, task)
    return RMFlowObjective(model, cmfm, pairing, f.sigma, rm.sigma_min, rm.lambda_nll, rm.lambda_enc, schedule,
                           f.path_coupling, velocity, guidance).to(device)


def build_ema(cfg: Config, model: nn.Module) -> EMA:
    """The EMA of the trainable model; a refiner with `ema = False` is copied instead of averaged."""
    return EMA(model, cfg.train.ema_decay, () if model.refiner.ema else ("refiner.",))


def build_optimizer(cfg: Config, model: nn.Module, lr: float | None = None) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr or cfg.train.lr, betas=(0.9, cfg.train.adam_beta2),
                             weight_decay=cfg.train.weight_decay)


def load_weights(module: nn.Module, tensors: dict[str, torch.Tensor], prefix: str, warm_start: bool = False) -> None:
    """Load the `prefix`-ed entries of a checkpoint into module. Refiner entries the module does not have are
    ignored (a fixed scale saved by older versions); with warm_start the module's own refiner entries that the
    checkpoint lacks keep their values (a stage-1 model continued with another refiner)."""
    own = module.state_dict()
    sd = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    sd = {k: v for k, v in sd.items() if not k.startswith("refiner.") or k in own}
    if warm_start:
        sd.update({k: v for k, v in own.items() if k.startswith("refiner.") and k not in sd})
    module.load_state_dict(sd)


def load_run(run_dir: str | Path, use_ema: bool = True, device: str | torch.device = "cpu"):
    """(model, task, cfg) of a trained run folder: its config.yaml and the newest checkpoint that verifies, the
    EMA weights unless use_ema=False; the model in eval mode. Raises FileNotFoundError for a folder that is not
    a run or has no checkpoint."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.yaml)")
    cfg = load_config(str(run_dir / "config.yaml"))
    found = latest_good_checkpoint(run_dir / "checkpoints")
    if found is None:
        raise FileNotFoundError(f"{run_dir} has no checkpoint")
    _, tensors, state = found
    model, task = model_with_weights(cfg, tensors, "ema." if use_ema else "model.", int(state["step"]))
    return model.to(device).eval(), task, cfg


def model_with_weights(cfg: Config, tensors: dict[str, torch.Tensor], prefix: str, step: int):
    """(model, task) of `cfg` holding the `prefix`-ed weights of a checkpoint written at `step` (LoRA adapters are
    added first when the checkpoint comes from a LoRA stage)."""
    from .lora import adapt_for_checkpoint
    task = build_task(cfg)
    model = task.build_model()
    adapt_for_checkpoint(cfg, model, step)
    load_weights(model, tensors, prefix)
    return model, task

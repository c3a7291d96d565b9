"""Stage 2 of the paper's two-stage protocol: LoRA fine-tuning (through `peft`) with the full RMFlow objective.

    stage 1 (steps < rmflow.nll_start_step):  every weight trains with the objective as configured (L_CMFM
                                              while λ1·L_NLL is still off)
    stage 2 (from rmflow.nll_start_step):     the network u_θ gets LoRA adapters  W x + (α/rank)·B A x  on the
                                              layers named in `target_modules`; only A, B (and φ_ω when
                                              `train_encoder`, and a learned refinement scale) train, with
                                              L = L_CMFM + λ1·L_NLL + λ2·‖φ_ω(c)‖²
                                              (`model.lora.full`: every weight of u_θ trains instead of adapters,
                                              all else the same: full fine-tuning, the control for LoRA)

At the stage boundary the frozen teacher (pairing "teacher") is copied from the stage-1 EMA, the model starts
from the stage-1 EMA weights (`from_ema`), the EMA and the optimiser are rebuilt over the trainable weights.
`LoRATrainer` does this inside the ordinary training loop, so checkpoints, resume and samplers work unchanged
(the adapted network is still called as net(x, t, r, cond, mask)). Adapters are saved on their own with
`save_adapter` (peft's adapter_config.json + adapter_model.safetensors, plus φ_ω in encoder.safetensors) and
re-applied to a stage-1 model with `load_adapter`.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from ..errors import check
from ..tasks.lora import LoRAConfig
from .build import build_ema, build_optimizer
from .trainer import Trainer

def lora_config_of(cfg) -> LoRAConfig | None:
    """The LoRA section of a config (cfg.model.lora) when it asks for a stage 2 (adapters, or `full`), else None."""
    lora = getattr(cfg.model, "lora", None)
    return lora if lora is not None and (lora.rank > 0 or lora.full) else None


def is_adapted(model: nn.Module) -> bool:
    from peft import PeftModel
    return isinstance(model.net, PeftModel)


def enter_stage2(model: nn.Module, lora: LoRAConfig) -> nn.Module:
    """Wrap model.net (an RMFlow's network) in a peft LoRA model and freeze everything but the adapters
    (φ_ω too unless `train_encoder`; a learned refinement scale stays trainable). With `lora.full` no adapters:
    every weight of model.net trains, the rest is frozen alike. Returns model (in place)."""
    model.requires_grad_(False)
    if lora.full:
        model.net.requires_grad_(True)
    else:
        from peft import LoraConfig, get_peft_model
        config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                            target_modules=list(lora.target_modules), bias="none")
        model.net = get_peft_model(model.net, config)      # freezes the base net, adapters trainable
    encoder = getattr(model.source, "encoder", None)
    if encoder is not None and lora.train_encoder:
        encoder.requires_grad_(True)
    model.refiner.requires_grad_(True)     # a learned refinement (if any) keeps training
    return model


def adapter_parameter_names(model: nn.Module) -> set[str]:
    return {n for n, _ in model.named_parameters() if "lora_" in n}


def save_adapter(model: nn.Module, directory: str | Path) -> Path:
    """Write the adapters (peft format) and, for a guided source, φ_ω's weights; returns the directory."""
    from safetensors.torch import save_file
    directory = Path(directory)
    if not is_adapted(model):
        raise ValueError("save_adapter: the model has no LoRA adapters (stage 2 has not started)")
    model.net.save_pretrained(str(directory))
    encoder = getattr(model.source, "encoder", None)
    if encoder is not None:
        save_file({k: v.detach().contiguous() for k, v in encoder.state_dict().items()},
                  str(directory / "encoder.safetensors"))
    return directory


def load_adapter(model: nn.Module, directory: str | Path) -> nn.Module:
    """Apply adapters saved by `save_adapter` to a stage-1 model (in place, frozen); returns it."""
    from peft import PeftModel
    from safetensors.torch import load_file
    directory = Path(directory)
    if not (directory / "adapter_config.json").exists():
        raise FileNotFoundError(f"no adapter_config.json in {directory}")
    model.net = PeftModel.from_pretrained(model.net, str(directory))
    enc_file = directory / "encoder.safetensors"
    encoder = getattr(model.source, "encoder", None)
    if encoder is not None and enc_file.exists():
        encoder.load_state_dict(load_file(str(enc_file)))
    return model.requires_grad_(False).eval()


def adapt_for_checkpoint(cfg, model: nn.Module, step: int) -> nn.Module:
    """Give `model` the structure of a checkpoint written at `step`: LoRA adapters once the LoRA stage began
    (after rmflow.nll_start_step), so that the checkpoint's weights load into it. Full fine-tuning (`lora.full`)
    keeps the network's structure, so there is nothing to do (and the loaded model stays frozen)."""
    lora = lora_config_of(cfg)
    if lora is not None and not lora.full and step > cfg.rmflow.nll_start_step and not is_adapted(model):
        enter_stage2(model, lora)
    return model


class LoRATrainer(Trainer):
    """The Trainer with the stage boundary at rmflow.nll_start_step (see the module docstring)."""

    def __init__(self, cfg, run_dir=None, task=None, **kwargs):
        super().__init__(cfg, run_dir, task, **kwargs)
        self.lora = lora_config_of(cfg)
        if self.lora is None:
            raise ValueError("config key 'model.lora.rank': LoRATrainer needs rank >= 1 (or model.lora.full)")
        self.in_stage2 = False
        self.stage2_step = cfg.rmflow.nll_start_step
        check(0 < self.stage2_step < cfg.train.steps, "rmflow.nll_start_step",
              f"is the LoRA stage boundary and must lie in (0, train.steps={cfg.train.steps})")

    def start_likelihood_stage(self) -> None:
        """The stage boundary: the teacher freezes the stage-1 weights, then the model (from the stage-1 EMA when
        `from_ema`) gets its adapters, and the EMA and the optimiser are rebuilt over the trainable weights."""
        super().start_likelihood_stage()
        if self.lora.from_ema:
            self.model.load_state_dict(self.ema.shadow.state_dict())
        enter_stage2(self.model, self.lora)
        self.in_stage2 = True
        self.ema = build_ema(self.cfg, self.model)
        self.optimizer = build_optimizer(self.cfg, self.model, self.lora.lr or None)

    def _lr(self, step: int) -> float:
        if step >= self.stage2_step and self.lora.lr:
            return self.lora.lr
        return super()._lr(step)

    def _load(self, tensors, state, warm_start, path) -> None:
        if int(state["step"]) > self.stage2_step and not self.in_stage2:
            self.start_likelihood_stage()     # rebuild the stage-2 structure, then load its weights
        super()._load(tensors, state, warm_start, path)

    def save_adapter(self, directory: str | Path | None = None) -> Path:
        """Save the adapters of the evaluated weights (the EMA's when eval.use_ema) to run_dir/adapter."""
        directory = directory or (self.run_dir / "adapter")
        return save_adapter(self.ema.shadow if self.cfg.eval.use_ema else self.model, directory)

    def train(self, steps=None, is_main=None):
        history = super().train(steps, is_main)
        if self.run_dir is not None and (self.is_main if is_main is None else is_main) and is_adapted(self.model):
            self.save_adapter()
        return history


def trainer_class(cfg) -> type[Trainer]:
    """LoRATrainer for configs with a LoRA stage, the plain Trainer otherwise."""
    return LoRATrainer if lora_config_of(cfg) is not None else Trainer

"""The `model.lora` section of tasks that offer the paper's two-stage protocol with LoRA fine-tuning in stage 2
(rmflow.train.lora runs it); `full: true` makes the same stage 2 train every weight of u_θ instead (the control that
measures what LoRA itself changes)."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import check

DEFAULT_TARGETS = ["to_q", "to_k", "to_v", "to_out", "conv1", "conv2", "emb_proj"]


@dataclass
class LoRAConfig:
    rank: int = 0                   # 0: no adapters (one-stage training, unless `full`)
    alpha: float = 8.0              # LoRA scaling α (the update is (α/rank)·B A)
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    train_encoder: bool = False     # φ_ω keeps training in stage 2 (with pairing "teacher" it drifts: see
                                    # docs/results/text2image.md)
    from_ema: bool = True           # stage 2 starts from the stage-1 EMA weights
    lr: float = 0.0                 # stage-2 learning rate; 0 = train.lr
    full: bool = False              # stage 2 fine-tunes every weight of u_θ, no adapters (needs rank 0); the rest
                                    # of the stage (from_ema, lr, frozen φ_ω, fresh EMA and optimiser) is the same

    def validate(self, key: str) -> None:
        check(self.rank >= 0, f"{key}.rank", "must be >= 0")
        check(self.alpha > 0, f"{key}.alpha", "must be > 0")
        check(0 <= self.dropout < 1, f"{key}.dropout", "must be in [0, 1)")
        check(len(self.target_modules) > 0, f"{key}.target_modules", "must name at least one layer")
        check(self.lr >= 0, f"{key}.lr", "must be >= 0")
        check(not (self.full and self.rank > 0), f"{key}.full",
              "full fine-tuning trains every weight and has no adapters; set the rank to 0")

"""Training: the run builder, the loop, EMA, checkpoints and resume."""
from .build import build_objective, build_task, load_run
from .checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from .ema import EMA
from .trainer import Trainer, TrainingDiverged

__all__ = ["build_objective", "build_task", "load_run", "CheckpointError", "latest_checkpoint", "load_checkpoint",
           "save_checkpoint", "EMA", "Trainer", "TrainingDiverged"]

"""Training: the loop, EMA, checkpoints and resume."""
from .checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from .ema import EMA
from .trainer import Trainer, TrainingDiverged, build_objective

__all__ = ["CheckpointError", "latest_checkpoint", "load_checkpoint", "save_checkpoint", "EMA", "Trainer",
           "TrainingDiverged", "build_objective"]

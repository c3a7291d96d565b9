"""Backbones u(x, t, r, cond, mask) and their time/condition embeddings."""
from .embeddings import SinusoidalEmbedding, TimePairEmbedding
from .egnn import EGNN
from .mlp import MLP
from .temporal import SequenceFlowNet, UNet1d
from .unet import UNet

__all__ = ["SinusoidalEmbedding", "TimePairEmbedding", "EGNN", "MLP", "UNet", "UNet1d", "SequenceFlowNet"]

"""Backbones u(x, t, r, cond, mask) and their time/condition embeddings."""
from .embeddings import SinusoidalEmbedding, TimePairEmbedding
from .mlp import MLP

__all__ = ["SinusoidalEmbedding", "TimePairEmbedding", "MLP"]

"""The evaluation classifier: a small CNN trained on the task's images, one softmax head per attribute.

Its penultimate features (`features(x)`, (B, feature_dim)) define the "classifier Fréchet distance" (a Fréchet
distance like FID, in the features of this classifier instead of Inception's; the two are not comparable), and its
predictions give prompt accuracy (does the generated image show what the caption says?).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .fitting import fit


class AttributeClassifier(nn.Module):
    """x: (B, C, H, W) in [-1, 1] -> list of logits, one (B, n_k) per attribute. The last convolution's maps are
    average-pooled to pool × pool cells (2: coarse position; 4 resolves the spread of ink on 28×28 images)."""

    def __init__(self, in_channels: int, num_classes: tuple[int, ...], width: int = 32, feature_dim: int = 64,
                 pool: int = 2):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.SiLU(), nn.AdaptiveAvgPool2d(pool),
            nn.Flatten(), nn.Linear(2 * pool * pool * width, feature_dim), nn.SiLU())
        self.heads = nn.ModuleList([nn.Linear(feature_dim, n) for n in num_classes])
        self.num_classes = tuple(num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f = self.features(x)
        return [h(f) for h in self.heads]

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """(B, A) predicted class per attribute."""
        self.eval()
        out = []
        for i in range(0, len(x), batch_size):
            out.append(torch.stack([lg.argmax(-1) for lg in self(x[i:i + batch_size])], dim=1))
        return torch.cat(out)


class FeatureExtractor(nn.Module):
    """The classifier's penultimate features as a torchmetrics feature module: (B, C, H, W) -> (B, num_features)."""

    def __init__(self, classifier: AttributeClassifier):
        super().__init__()
        self.classifier = classifier
        self.num_features = classifier.heads[0].in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(x.float())


def train_classifier(clf: AttributeClassifier, images: torch.Tensor, labels: torch.Tensor, steps: int = 1500,
                     batch_size: int = 128, lr: float = 2e-3, noise: float = 0.05, seed: int = 0,
                     log=None) -> list[float]:
    """Cross-entropy summed over attributes; inputs get N(0, noise²) pixel noise (robustness to sample noise)."""
    def batch_loss(idx, gen):
        x = images[idx] + noise * torch.randn(images[idx].shape, generator=gen)
        return sum(F.cross_entropy(lg, labels[idx, k]) for k, lg in enumerate(clf(x)))

    return fit(clf, len(images), batch_loss, steps, batch_size, lr, seed, "classifier", log)

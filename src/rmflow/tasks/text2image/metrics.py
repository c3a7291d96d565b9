"""Metrics for generated images, all computed with the task's own evaluation classifier.

- classifier Fréchet distance:  ‖μ_g - μ_r‖² + tr(Σ_g + Σ_r - 2 (Σ_g Σ_r)^½)  in the classifier's penultimate
  features (torchmetrics' FrechetInceptionDistance with a custom feature module). Not FID: the features are not
  Inception's, so the numbers are only comparable with each other.
- prompt accuracy:  share of samples whose predicted attributes all equal the caption's (per attribute as well).
- held-out accuracy:  the same on prompts whose attribute combination never appeared in training.
- diversity:  mean over prompts of the mean pairwise distance between the classifier features of samples that
  share a prompt, divided by the same quantity for real images (1 = as diverse as the data; 0 = collapsed).
"""
from __future__ import annotations

import torch

from .classifier import AttributeClassifier, FeatureExtractor


@torch.no_grad()
def classifier_frechet_distance(classifier: AttributeClassifier, real: torch.Tensor, fake: torch.Tensor,
                                batch_size: int = 512) -> float:
    """Fréchet distance between Gaussians fitted to the classifier features of real and fake (N, C, H, W)."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    fd = FrechetInceptionDistance(feature=FeatureExtractor(classifier), normalize=True)
    for imgs, is_real in ((real, True), (fake, False)):
        for i in range(0, len(imgs), batch_size):
            fd.update(imgs[i:i + batch_size].float(), real=is_real)
    return float(fd.compute())


def prompt_accuracy(pred: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """pred, labels: (N, A). 'all' = every attribute right; one entry per attribute column."""
    right = pred == labels
    out = {"all": float(right.all(1).double().mean())}
    for k in range(labels.shape[1]):
        out[str(k)] = float(right[:, k].double().mean())
    return out


@torch.no_grad()
def per_prompt_spread(features: torch.Tensor, prompt_ids: torch.Tensor) -> float:
    """Mean over prompts (with >= 2 samples) of the mean pairwise L2 distance of their features (N, F)."""
    vals = []
    for p in prompt_ids.unique():
        f = features[prompt_ids == p]
        if len(f) < 2:
            continue
        d = torch.cdist(f.double(), f.double())
        n = len(f)
        vals.append(d.sum() / (n * (n - 1)))
    return float(torch.stack(vals).mean()) if vals else float("nan")

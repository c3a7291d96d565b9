"""The minibatch loop that fits this task's auxiliary networks (the latent autoencoder, the attribute classifier)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def fit(module: nn.Module, num_items: int, batch_loss: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
        steps: int, batch_size: int, lr: float, seed: int, name: str, log=None) -> list[float]:
    """Adam with cosine decay over `steps`; each step draws batch_size indices into the training set (seeded) and
    minimises batch_loss(indices, generator). Leaves the module in eval mode; returns the per-step losses."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    losses = []
    module.train()
    for step in range(steps):
        loss = batch_loss(torch.randint(0, num_items, (batch_size,), generator=gen), gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if log and (step + 1) % 500 == 0:
            log(f"{name} step {step + 1}/{steps}: loss {sum(losses[-100:]) / 100:.4f}")
    module.eval()
    return losses

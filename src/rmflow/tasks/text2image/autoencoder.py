"""A small convolutional autoencoder that provides the latent space (the paper's VAE latent, at CPU scale).

    encoder: (B, C, H, W) in [-1, 1] -> z: (B, latent_channels, H/2^k, W/2^k),  k = `downsample`
    decoder: z -> tanh(...) in [-1, 1]
    loss:    ‖D(E(x)) - x‖² + β·‖E(x)‖²   (mean over entries; the small β keeps the latent scale bounded)

After training, latents are divided by their standard deviation over the training set (`scale`), so the flow
sees a latent space with unit variance, like Stable Diffusion's latent scaling factor.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .fitting import fit


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(min(8, cout), cout),
                         nn.SiLU())


class ConvAutoencoder(nn.Module):
    def __init__(self, in_channels: int = 3, latent_channels: int = 4, downsample: int = 2, width: int = 32):
        super().__init__()
        ch = 2 * width if downsample else width
        enc = [_block(in_channels, width)] + [_block(width if i == 0 else ch, ch, 2) for i in range(downsample)]
        self.encoder = nn.Sequential(*enc, nn.Conv2d(ch, latent_channels, 1))
        dec = [nn.Conv2d(latent_channels, ch, 3, padding=1), nn.SiLU()]
        for _ in range(downsample):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), _block(ch, ch)]
        dec += [_block(ch, width), nn.Conv2d(width, in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)
        self.register_buffer("scale", torch.ones(()))
        self.factor = 2 ** downsample
        self.latent_channels = latent_channels

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> scaled latent (B, latent_channels, H/f, W/f)."""
        return self.encoder(x) / self.scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """scaled latent -> image in [-1, 1]."""
        return torch.tanh(self.decoder(z * self.scale))

    def loss(self, x: torch.Tensor, beta: float = 1e-4) -> torch.Tensor:
        z = self.encoder(x)
        return F.mse_loss(torch.tanh(self.decoder(z)), x) + beta * z.pow(2).mean()


def train_autoencoder(ae: ConvAutoencoder, images: torch.Tensor, steps: int = 1500, batch_size: int = 64,
                      lr: float = 2e-3, seed: int = 0, log=None) -> list[float]:
    """Fit the autoencoder on images (N, C, H, W), then set `scale` to the latents' standard deviation."""
    losses = fit(ae, len(images), lambda idx, gen: ae.loss(images[idx]), steps, batch_size, lr, seed,
                 "autoencoder", log)
    with torch.no_grad():
        z = torch.cat([ae.encoder(images[i:i + 512]) for i in range(0, len(images), 512)])
        ae.scale.fill_(float(z.std()))
    return losses

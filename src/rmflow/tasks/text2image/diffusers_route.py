"""The real-scale route: a diffusers AutoencoderKL + UNet2DConditionModel and a transformers text encoder, loaded
from a local directory laid out like a Stable Diffusion checkpoint (vae/, unet/, text_encoder/, tokenizer/), never
from the hub (local_files_only=True, HF_HUB_OFFLINE=1).

The UNet becomes an average-velocity network u(x, t, r, cond, mask) with the two times entering as (t, r - t):
t·1000 is the diffusers `timestep` and (r - t)·1000 goes in through `class_labels`, which needs
`class_embed_type="timestep"` in the UNet config (a second sinusoidal time embedding added to the first; a UNet
trained without it starts that embedding from scratch). Attention runs through diffusers' classic `AttnProcessor`
(softmax(QKᵀ)V with plain ops), not the fused SDPA kernel, so torch.func.jvp goes through it.

    cond = {"tokens": (B, L, D) text-encoder hidden states, "token_mask": (B, L), "text": (B, D) pooled}
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn


def _offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


class DiffusersVelocityNet(nn.Module):
    """u(x, t, r, cond, mask) from a diffusers UNet2DConditionModel; x: (B, C, H, W) latents."""

    def __init__(self, unet, time_scale: float = 1000.0):
        super().__init__()
        from diffusers.models.attention_processor import AttnProcessor
        if getattr(unet.config, "class_embed_type", None) != "timestep":
            raise ValueError("the UNet needs class_embed_type='timestep' to take the second time input r - t "
                             "(set it in unet/config.json; that embedding then trains from scratch)")
        unet.set_attn_processor(AttnProcessor())
        self.unet, self.time_scale = unet, float(time_scale)

    def forward(self, x, t, r, cond=None, mask=None):
        tokens = cond["tokens"] if isinstance(cond, dict) else cond
        token_mask = cond.get("token_mask") if isinstance(cond, dict) else None
        u = self.unet(x, t * self.time_scale, encoder_hidden_states=tokens, class_labels=(r - t) * self.time_scale,
                      encoder_attention_mask=token_mask).sample
        return u if mask is None else u * mask


class DiffusersTextEncoder:
    """A transformers text encoder and its tokenizer from local directories; frozen.
    encode(list of N captions) -> {"tokens": (N, L, D), "token_mask": (N, L), "text": (N, D) masked mean}."""

    def __init__(self, encoder_dir: str | Path, tokenizer_dir: str | Path, max_length: int = 77):
        _offline()
        from transformers import AutoModel, AutoTokenizer
        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(encoder_dir), local_files_only=True).eval().requires_grad_(False)
        self.max_length = max_length

    @torch.no_grad()
    def encode(self, captions: list[str]) -> dict[str, torch.Tensor]:
        tok = self.tokenizer(list(captions), padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        hidden = self.model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]).last_hidden_state
        m = tok["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return {"tokens": hidden, "token_mask": tok["attention_mask"],
                "text": (hidden * m).sum(1) / m.sum(1).clamp_min(1)}


class DiffusersLatentSpace:
    """AutoencoderKL as the latent space: encode = posterior mean × scaling_factor, decode = the inverse."""

    def __init__(self, vae):
        self.vae = vae.eval().requires_grad_(False)
        self.scaling = float(getattr(vae.config, "scaling_factor", 1.0))

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(images).latent_dist.mean * self.scaling

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z / self.scaling).sample.clamp(-1, 1)


def load_local_pipeline(directory: str | Path, time_scale: float = 1000.0):
    """(velocity net, latent space, text encoder) from a Stable-Diffusion-style local directory."""
    _offline()
    from diffusers import AutoencoderKL, UNet2DConditionModel
    d = Path(directory)
    missing = [s for s in ("vae", "unet", "text_encoder", "tokenizer") if not (d / s).is_dir()]
    if missing:
        raise FileNotFoundError(f"{d} lacks the sub-directories {missing} (expected a Stable Diffusion layout)")
    unet = UNet2DConditionModel.from_pretrained(str(d / "unet"), local_files_only=True)
    vae = AutoencoderKL.from_pretrained(str(d / "vae"), local_files_only=True)
    text = DiffusersTextEncoder(d / "text_encoder", d / "tokenizer")
    return DiffusersVelocityNet(unet, time_scale), DiffusersLatentSpace(vae), text

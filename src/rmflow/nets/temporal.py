"""A 1-D convolutional U-Net for sequences, usable under forward-mode AD (torch.func.jvp).

    u = UNet1d(x, t, r): x (B, C_in, L) -> (B, C_out, L)

Time inputs enter as (t, r − t) through TimePairEmbedding and modulate every residual block (FiLM: scale and
shift after the first normalisation). The sinusoids see `time_scale`·t (default 1, not the 1000 of image
diffusion models): measured on Lorenz-63 windows, with 1000 the MeanFlow target's ∂u/∂t term grows without bound
within 150 steps (‖du/dt‖ ≈ 700, the L_CMFM error rising from 380 to 7900), with 1 it stays small and training
converges (docs/results/dynamics.md). The optional self-attention at the bottleneck is written out as
softmax(QKᵀ/√d)·V, so it never dispatches to fused SDPA kernels that have no forward-mode derivative.
Lengths that are not a multiple of 2^(levels−1) are padded on the right (replicating the last step) and the
output is cropped back.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .embeddings import TimePairEmbedding
from .norms import GroupNorm


def _groups(channels: int) -> int:
    for g in (8, 4, 2, 1):
        if channels % g == 0:
            return g
    return 1


class ResBlock1d(nn.Module):
    """GroupNorm → SiLU → Conv → FiLM(emb) → GroupNorm → SiLU → Conv, plus a 1×1 skip when widths differ."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, kernel: int = 3):
        super().__init__()
        self.norm1 = GroupNorm(_groups(c_in), c_in)
        self.conv1 = nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2)
        self.film = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = GroupNorm(_groups(c_out), c_out)
        self.conv2 = nn.Conv1d(c_out, c_out, kernel, padding=kernel // 2)
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """h: (B, c_in, L), emb: (B, emb_dim) -> (B, c_out, L)."""
        out = self.conv1(F.silu(self.norm1(h)))
        scale, shift = self.film(emb).unsqueeze(-1).chunk(2, dim=1)
        out = self.norm2(out) * (1 + scale) + shift
        out = self.conv2(F.silu(out))
        return out + self.skip(h)


class SelfAttention1d(nn.Module):
    """Multi-head self-attention over the length axis, softmax(QKᵀ/√d)·V written out (forward-mode AD safe)."""

    def __init__(self, channels: int, heads: int = 4):
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention: channels ({channels}) must be divisible by heads ({heads})")
        self.heads = heads
        self.norm = GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.out = nn.Conv1d(channels, channels, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h: (B, C, L) -> (B, C, L)."""
        b, c, length = h.shape
        q, k, v = self.qkv(self.norm(h)).reshape(b, 3, self.heads, c // self.heads, length).unbind(1)
        logits = torch.einsum("bhdi,bhdj->bhij", q, k) / math.sqrt(c // self.heads)
        attn = torch.softmax(logits, dim=-1)
        out = torch.einsum("bhij,bhdj->bhdi", attn, v).reshape(b, c, length)
        return h + self.out(out)


class UNet1d(nn.Module):
    """Sequence U-Net u(x, t, r) with (t, r − t) embeddings.

    in_channels, out_channels: C_in, C_out; width: channels of the first level; mults: width multipliers per
    level (len(mults) levels, a 2× down-sampling between consecutive levels); blocks: residual blocks per
    level; attention: self-attention at the bottleneck; time_scale: multiplies t and r − t inside the
    sinusoidal embeddings. The last convolution starts at zero, so an untrained
    network predicts u = 0.
    """

    def __init__(self, in_channels: int, out_channels: int, width: int = 64, mults=(1, 2), blocks: int = 1,
                 time_dim: int = 64, attention: bool = True, heads: int = 4, time_scale: float = 1.0):
        super().__init__()
        if not mults or width < 1 or blocks < 1:
            raise ValueError("UNet1d needs at least one level, width >= 1 and blocks >= 1")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.factor = 2 ** (len(mults) - 1)
        emb_dim = 4 * width
        self.time = TimePairEmbedding(emb_dim, time_dim)
        self.time.t_emb.scale = self.time.h_emb.scale = float(time_scale)
        self.inp = nn.Conv1d(in_channels, width, 3, padding=1)
        widths = [width * m for m in mults]
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        c = width
        for i, w in enumerate(widths):
            level = nn.ModuleList()
            for _ in range(blocks):
                level.append(ResBlock1d(c, w, emb_dim))
                c = w
            self.down.append(level)
            self.downsample.append(nn.Conv1d(c, c, 3, stride=2, padding=1) if i < len(widths) - 1 else None)
        self.mid1 = ResBlock1d(c, c, emb_dim)
        self.attn = SelfAttention1d(c, heads) if attention else None
        self.mid2 = ResBlock1d(c, c, emb_dim)
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            level = nn.ModuleList()
            for j in range(blocks):
                level.append(ResBlock1d(c + w if j == 0 else c, w, emb_dim))
                c = w
            self.up.append(level)
            self.upsample.append(nn.Conv1d(c, widths[i - 1], 3, padding=1) if i > 0 else None)
            if i > 0:
                c = widths[i - 1]
        self.out_norm = GroupNorm(_groups(c), c)
        self.out = nn.Conv1d(c, out_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """x: (B, C_in, L); t, r: (B,) -> (B, C_out, L)."""
        if x.dim() != 3 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNet1d expects x of shape (B, {self.in_channels}, L), got {tuple(x.shape)}")
        length = x.shape[-1]
        pad = (-length) % self.factor
        if pad:
            x = F.pad(x, (0, pad), mode="replicate")
        emb = self.time(t, r)
        h = self.inp(x)
        skips = []
        for level, down in zip(self.down, self.downsample):
            for block in level:
                h = block(h, emb)
            skips.append(h)
            if down is not None:
                h = down(h)
        h = self.mid1(h, emb)
        if self.attn is not None:
            h = self.attn(h)
        h = self.mid2(h, emb)
        for level, up in zip(self.up, self.upsample):
            h = torch.cat([h, skips.pop()], dim=1)
            for block in level:
                h = block(h, emb)
            if up is not None:
                h = up(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.out(F.silu(self.out_norm(h)))[..., :length]


class SequenceFlowNet(nn.Module):
    """The network contract u(x, t, r, cond, mask) for sequences x: (B, C, H), around a UNet1d.

    context_len = 0: unconditional (cond ignored). context_len = k > 0 with context_input: the context
    cond (B, C, k) is put in front of x along time with an indicator channel (1 on context steps), the U-Net
    sees the (B, C + 1, k + H) sequence and only the last H outputs are returned. mask (broadcastable to x,
    1 = real step) zeroes the output on padded steps.
    """

    def __init__(self, data_channels: int, context_len: int = 0, context_input: bool = True, **unet_kwargs):
        super().__init__()
        channels = data_channels
        self.channels, self.context_len = channels, context_len
        self.context_input = bool(context_len and context_input)
        extra = 1 if self.context_input else 0
        self.unet = UNet1d(channels + extra, channels, **unet_kwargs)

    def forward(self, x: torch.Tensor, t: torch.Tensor, r: torch.Tensor, cond=None, mask=None) -> torch.Tensor:
        """x: (B, C, H); t, r: (B,); cond: (B, C, k) context when context_input. Returns u: (B, C, H)."""
        if self.context_input:
            if cond is None:
                raise ValueError("SequenceFlowNet was built with a context input and needs cond (B, C, k)")
            if cond.shape[0] != x.shape[0] or cond.shape[1] != self.channels or cond.shape[2] != self.context_len:
                raise ValueError(f"context must have shape (B, {self.channels}, {self.context_len}), "
                                 f"got {tuple(cond.shape)}")
            seq = torch.cat([cond.to(x.dtype), x], dim=-1)
            flag = torch.zeros_like(seq[:, :1])
            flag[..., : self.context_len] = 1.0
            u = self.unet(torch.cat([seq, flag], dim=1), t, r)[..., self.context_len:]
        else:
            u = self.unet(x, t, r)
        return u if mask is None else u * mask

"""A small text-conditioned U-Net for average velocities u(x, t, r, c), safe for forward-mode AD.

    x: (B, C, H, W) image or latent; t, r: (B,); cond: (B, cond_dim) caption embedding, or a dict holding it
    under "text" (or None for an unconditional net)  ->  u: (B, C, H, W)

Times enter as (t, r - t) through TimePairEmbedding. The caption embedding is added to the time embedding
(FiLM of every residual block) and is also expanded into `num_tokens` context tokens that the attention blocks
attend to (cross-attention). Attention is written out as softmax(Q Kᵀ/√d) V with ordinary tensor operations (no
fused scaled_dot_product_attention kernel), so torch.func.jvp runs through it. Layer names (to_q, to_k, to_v,
to_out, conv1, conv2, emb_proj, cond_proj) are stable so that LoRA can target them by name.

Guidance scale as an input (`guidance_embed=True`, improved MeanFlow's CFG conditioning, flow/cmfm.py): the scale ω
of cond["guidance"] (B,) enters as sinusoidal features of ω (frequencies 1 down to 1/100 radian per unit of ω)
through a small MLP, added to the time embedding; a condition without "guidance" means ω = 1. Built without it
(the default: no extra parameters, the same initial weights), the net refuses a condition that carries "guidance".
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .embeddings import SinusoidalEmbedding, TimePairEmbedding
from .norms import GroupNorm, LayerNorm


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ / √d) v for q: (B, h, Lq, d), k, v: (B, h, Lk, d) -> (B, h, Lq, d). Plain ops (JVP-safe)."""
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def _groups(channels: int) -> int:
    for g in (8, 4, 2, 1):
        if channels % g == 0:
            return g
    return 1


class MultiHeadAttention(nn.Module):
    """Attention of query tokens (B, Lq, dim) over context tokens (B, Lk, context_dim) -> (B, Lq, dim)."""

    def __init__(self, dim: int, context_dim: int | None = None, heads: int = 4):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} must be divisible by heads={heads}")
        context_dim = context_dim or dim
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        b, lq, dim = x.shape

        def split(z):
            return z.reshape(b, z.shape[1], self.heads, dim // self.heads).transpose(1, 2)

        out = attention(split(self.to_q(x)), split(self.to_k(context)), split(self.to_v(context)))
        return self.to_out(out.transpose(1, 2).reshape(b, lq, dim))


class AttentionBlock(nn.Module):
    """Self-attention over the H·W positions, then cross-attention to the text tokens (if any); residual."""

    def __init__(self, channels: int, context_dim: int | None, heads: int = 4):
        super().__init__()
        self.norm = GroupNorm(_groups(channels), channels)
        self.self_attn = MultiHeadAttention(channels, None, heads)
        self.cross_norm = LayerNorm(channels) if context_dim else None
        self.cross_attn = MultiHeadAttention(channels, context_dim, heads) if context_dim else None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).reshape(b, c, h * w).transpose(1, 2)          # (B, HW, C)
        tokens = tokens + self.self_attn(tokens)
        if self.cross_attn is not None and context is not None:
            tokens = tokens + self.cross_attn(self.cross_norm(tokens), context)
        return x + tokens.transpose(1, 2).reshape(b, c, h, w)


class ResBlock(nn.Module):
    """GN-SiLU-conv, FiLM by the embedding (scale, shift), GN-SiLU-conv, plus a (1×1) skip."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int):
        super().__init__()
        self.norm1 = GroupNorm(_groups(in_ch), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = GroupNorm(_groups(out_ch), out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


class GuidanceEmbedding(nn.Module):
    """ω: (B,) -> (B, out_dim): an MLP over sinusoidal features of ω."""

    def __init__(self, out_dim: int, freq_dim: int = 64):
        super().__init__()
        self.features = SinusoidalEmbedding(freq_dim, scale=1.0, max_period=100.0)
        self.mlp = nn.Sequential(nn.Linear(freq_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, scale: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.features(scale))


class UNet(nn.Module):
    """u(x, t, r, cond, mask) on (B, C, H, W); H and W divisible by 2^(len(channel_mult) - 1).

    channel_mult gives the width of each resolution level (× channels); attention runs at the levels listed in
    attn_levels (0 = full resolution) and in the middle block. cond_dim = 0 builds an unconditional net.
    time_scale multiplies t and r - t before the sinusoidal features (1000 as in DDPM-style nets; a smaller scale
    gives smaller ∂u/∂t and so a tamer MeanFlow target v + (r - t)·du/dt). guidance_embed: take the guidance scale
    ω as cond["guidance"] (module docstring).
    """

    takes_guidance = False

    def __init__(self, in_channels: int, channels: int = 32, channel_mult=(1, 2), num_res_blocks: int = 1,
                 attn_levels=(1,), cond_dim: int = 384, num_tokens: int = 4, heads: int = 4,
                 time_freq_dim: int = 64, time_scale: float = 1000.0, guidance_embed: bool = False):
        super().__init__()
        self.in_channels, self.levels = in_channels, len(channel_mult)
        emb_dim = 4 * channels
        self.time_emb = TimePairEmbedding(emb_dim, time_freq_dim)
        self.time_emb.t_emb.scale = self.time_emb.h_emb.scale = float(time_scale)   # frequencies × time_scale
        self.cond_dim, self.num_tokens = cond_dim, num_tokens
        ctx_dim = channels * channel_mult[-1] if cond_dim else None
        if cond_dim:
            self.cond_proj = nn.Sequential(nn.Linear(cond_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            self.token_proj = nn.Linear(cond_dim, num_tokens * ctx_dim)
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.down = nn.ModuleList()
        skips, ch = [channels], channels
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                out = channels * mult
                self.down.append(nn.ModuleList([ResBlock(ch, out, emb_dim),
                                                AttentionBlock(out, ctx_dim, heads) if level in attn_levels
                                                else nn.Identity()]))
                ch = out
                skips.append(ch)
            if level < len(channel_mult) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
        self.mid1 = ResBlock(ch, ch, emb_dim)
        self.mid_attn = AttentionBlock(ch, ctx_dim, heads)
        self.mid2 = ResBlock(ch, ch, emb_dim)
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks + 1):
                out = channels * mult
                self.up.append(nn.ModuleList([ResBlock(ch + skips.pop(), out, emb_dim),
                                              AttentionBlock(out, ctx_dim, heads) if level in attn_levels
                                              else nn.Identity()]))
                ch = out
            if level > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                             nn.Conv2d(ch, ch, 3, padding=1)))
        self.norm_out = GroupNorm(_groups(ch), ch)
        self.conv_out = nn.Conv2d(ch, in_channels, 3, padding=1)
        if guidance_embed:   # created last: the other layers draw the same initial weights as without it
            self.takes_guidance = True
            self.guidance_emb = GuidanceEmbedding(emb_dim, time_freq_dim)

    @staticmethod
    def text_of(cond) -> torch.Tensor | None:
        if isinstance(cond, dict):
            return cond.get("text")
        return cond

    def forward(self, x, t, r, cond=None, mask=None):
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNet expects x of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        emb = self.time_emb(t, r)
        scale = cond.get("guidance") if isinstance(cond, dict) else None
        if self.takes_guidance:
            scale = torch.ones_like(t) if scale is None else scale.reshape(-1).expand(x.shape[0]).to(t.dtype)
            emb = emb + self.guidance_emb(scale)
        elif scale is not None:
            raise ValueError("this UNet was built without guidance_embed and cannot take the guidance scale "
                             "cond['guidance']: build it with guidance_embed=True, or sample it with standard CFG")
        context = None
        text = self.text_of(cond) if self.cond_dim else None
        if text is not None:
            emb = emb + self.cond_proj(text)
            context = self.token_proj(text).reshape(x.shape[0], self.num_tokens, -1)
        h = self.conv_in(x)
        hs = [h]
        for block in self.down:
            if isinstance(block, nn.ModuleList):
                h = block[0](h, emb)
                h = block[1](h, context) if isinstance(block[1], AttentionBlock) else h
            else:
                h = block(h)
            hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb), context), emb)
        for block in self.up:
            if isinstance(block, nn.ModuleList):
                h = block[0](torch.cat([h, hs.pop()], dim=1), emb)
                h = block[1](h, context) if isinstance(block[1], AttentionBlock) else h
            else:
                h = block(h)
        u = self.conv_out(F.silu(self.norm_out(h)))
        return u if mask is None else u * mask

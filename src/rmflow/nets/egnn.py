"""A dense, masked E(n)-equivariant graph network (Satorras et al. 2021, as EDM uses it) for u(x, t, r, cond, mask).

x: (B, N, 3 + F) per atom [position | features], mask: (B, N, 1). Fully connected graph over real atoms. Layer l:

    d²_ij = ‖p_i - p_j‖²,   d_ij = sqrt(d²_ij + eps)                          (finite gradient at d = 0)
    m_ij  = φ_e(h_i, h_j, d²_ij, d²_ij(input)[, ρ(d_ij)]) · sigmoid(w·m_ij)   (gated messages, i ≠ j, both real)
    h_i  ← h_i + φ_h(h_i, Σ_j m_ij / Z)                                        (invariant node update)
    p_i  ← p_i + Σ_j (p_i - p_j) / (d_ij + c) · tanh(φ_p(m_ij)) · R / Z       (equivariant, bounded by R/Z per edge)

ρ(d) (optional, `distance_rbf` = K > 0): K Gaussian radial basis functions exp(-((d - μ_k)/Δ)²), centres μ_k evenly
on [0, rbf_max], width Δ their spacing, so that messages resolve distances on the scale Δ instead of through one
linear function of d².

The first layer of φ_e is split as A h_i + B h_j + … so that its cost grows with N·H² instead of N²·H². Time enters
as the embedding of (t, r - t) (MeanFlow's convention), added to h before every layer; an optional
context (B, C) is concatenated to every atom's input features. Outputs: the position velocity p_L - p_0 with its
centre of mass removed over real atoms, and a feature velocity from a linear read-out of h_L; both zero on
padding. The network has no attention kernels, so torch.func.jvp (forward-mode AD) runs through it.

Equivariance: rotating/reflecting/translating the positions rotates/reflects the position output (translations
cancel) and leaves the feature output unchanged; permuting atoms permutes the outputs.

Padding is dropped by selection (torch.where), never by multiplying with the mask: 0 · inf is NaN, so a padded row
holding inf/NaN would otherwise poison every sum over atoms. Whatever padded rows hold, real atoms' outputs equal
those of zero padding; for finite inputs selection and multiplication give the same numbers.
"""
from __future__ import annotations

import torch
from torch import nn

from .embeddings import SinusoidalEmbedding, TimePairEmbedding


def _keep(mask: torch.Tensor) -> torch.Tensor:
    """A mask (float 0/1 or bool, any shape) as bool: True where the entry is real."""
    return mask if mask.dtype == torch.bool else mask != 0


def _remove_mean(pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """pos (B, N, 3) minus its mean over real atoms, zero on padding; mask (B, N, 1) float 0/1 or bool.

    Padded rows of pos are ignored whatever they hold (inf and NaN included)."""
    keep = _keep(mask)
    n = mask.to(pos.dtype).sum(1, keepdim=True).clamp(min=1.0)
    return torch.where(keep, pos - torch.where(keep, pos, 0).sum(1, keepdim=True) / n, 0)


class EGNNLayer(nn.Module):
    """One message-passing step updating invariant features h (B, N, H) and positions p (B, N, 3)."""

    def __init__(self, hidden: int, coords_range: float, norm_constant: float, eps: float, norm_factor: float,
                 edge_mlp: bool = True, distance_rbf: int = 0, rbf_max: float = 5.0):
        super().__init__()
        self.src, self.dst = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden, bias=False)
        self.dist = nn.Linear(2 + distance_rbf, hidden, bias=False)
        if distance_rbf:
            self.register_buffer("rbf_centres", torch.linspace(0.0, rbf_max, distance_rbf), persistent=False)
            self.rbf_width = rbf_max / max(distance_rbf - 1, 1)
        else:
            self.rbf_centres = None
        # edge_mlp=False drops the per-edge H×H layers (messages and coordinate weights become one-layer
        # functions of A h_i + B h_j + distances): about 5x cheaper on CPU, less expressive
        self.edge_out = (nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU()) if edge_mlp else nn.SiLU())
        self.gate = nn.Linear(hidden, 1)
        self.node = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.coord = (nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1, bias=False))
                      if edge_mlp else nn.Sequential(nn.Linear(hidden, 1, bias=False)))
        nn.init.xavier_uniform_(self.coord[-1].weight, gain=1e-3)
        self.coords_range, self.norm_constant, self.eps, self.norm_factor = coords_range, norm_constant, eps, norm_factor

    def forward(self, h, p, d2_init, node_mask, edge_mask):
        """h (B, N, H), p (B, N, 3), d2_init (B, N, N, 1); node_mask (B, N, 1) and edge_mask (B, N, N, 1), float 0/1
        or bool. Returns the new (h, p), zero on padding; messages of masked edges are dropped by selection."""
        node_keep, edge_keep = _keep(node_mask), _keep(edge_mask)
        diff = p[:, :, None, :] - p[:, None, :, :]                       # (B, N, N, 3)
        d2 = diff.pow(2).sum(-1, keepdim=True)                            # (B, N, N, 1)
        dist = torch.sqrt(d2 + self.eps)
        edge = [d2, d2_init]
        if self.rbf_centres is not None:
            edge.append(torch.exp(-((dist - self.rbf_centres) / self.rbf_width) ** 2))   # (B, N, N, K)
        pre = self.src(h)[:, :, None, :] + self.dst(h)[:, None, :, :] + self.dist(torch.cat(edge, -1))
        m = self.edge_out(pre)                                            # (B, N, N, H)
        m = torch.where(edge_keep, m * torch.sigmoid(self.gate(m)), 0)
        agg = m.sum(2) / self.norm_factor                                 # (B, N, H)
        h = torch.where(node_keep, h + self.node(torch.cat([h, agg], -1)), 0)
        step = diff / (dist + self.norm_constant) * torch.tanh(self.coord(m)) * self.coords_range
        p = torch.where(node_keep, p + torch.where(edge_keep, step, 0).sum(2) / self.norm_factor, 0)
        return h, p


class EGNN(nn.Module):
    """u(x, t, r, cond, mask) for x (B, N, num_pos + num_features); see the module docstring.

    cond: None or a (B, cond_dim) tensor of context features given to every atom (cond_dim > 0 needs it).
    """

    def __init__(self, num_features: int, hidden: int = 128, layers: int = 4, time_dim: int = 64,
                 cond_dim: int = 0, num_pos: int = 3, coords_range: float = 15.0, norm_constant: float = 1.0,
                 eps: float = 1e-8, norm_factor: float = 1.0, edge_mlp: bool = True,
                 time_scale: float | None = None, time_max_period: float | None = None, distance_rbf: int = 0,
                 rbf_max: float = 5.0):
        super().__init__()
        if num_features < 1 or hidden < 1 or layers < 1:
            raise ValueError("num_features, hidden and layers must be >= 1")
        self.num_pos, self.num_features, self.cond_dim = num_pos, num_features, cond_dim
        self.embed = nn.Linear(num_features + cond_dim, hidden)
        self.time = TimePairEmbedding(hidden, time_dim)
        if time_scale is not None or time_max_period is not None:
            # explicit sinusoid frequencies (scale down to scale/max_period); None keeps the core's default.
            # Lower frequencies give a smoother u in t, hence a smaller du/dt in the MeanFlow target.
            kw = {k: v for k, v in (("scale", time_scale), ("max_period", time_max_period)) if v is not None}
            self.time.t_emb = SinusoidalEmbedding(time_dim, **kw)
            self.time.h_emb = SinusoidalEmbedding(time_dim, **kw)
        self.time_proj = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers))
        self.layers = nn.ModuleList(EGNNLayer(hidden, coords_range / layers, norm_constant, eps, norm_factor, edge_mlp,
                                              distance_rbf, rbf_max) for _ in range(layers))
        self.readout = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, num_features))

    def forward(self, x: torch.Tensor, t: torch.Tensor, r: torch.Tensor, cond=None, mask=None) -> torch.Tensor:
        b, n, d = x.shape
        if d != self.num_pos + self.num_features:
            raise ValueError(f"EGNN expects x of shape (B, N, {self.num_pos + self.num_features}), got {tuple(x.shape)}")
        node_mask = torch.ones(b, n, 1, device=x.device, dtype=x.dtype) if mask is None else mask.to(x.dtype)
        keep = _keep(node_mask)                                           # (B, N, 1) bool
        eye = torch.eye(n, device=x.device, dtype=torch.bool)
        edge_keep = keep[:, :, None, :] & keep[:, None, :, :] & ~eye[None, :, :, None]   # (B, N, N, 1)
        p0 = _remove_mean(torch.where(keep, x[..., :self.num_pos], 0), keep)   # padding -> 0, whatever it held
        feats = torch.where(keep, x[..., self.num_pos:], 0)
        if self.cond_dim:
            if cond is None:
                raise ValueError("this EGNN was built with cond_dim > 0 and needs a context tensor (B, cond_dim)")
            feats = torch.cat([feats, cond.reshape(b, 1, self.cond_dim).expand(b, n, self.cond_dim).to(x.dtype)], -1)
        temb = self.time(t, r)                                            # (B, H)
        h = torch.where(keep, self.embed(feats), 0)
        d2_init = (p0[:, :, None, :] - p0[:, None, :, :]).pow(2).sum(-1, keepdim=True)
        p = p0
        for layer, proj in zip(self.layers, self.time_proj):
            h = h + torch.where(keep, proj(temb)[:, None, :], 0)
            h, p = layer(h, p, d2_init, keep, edge_keep)
        vel_pos = _remove_mean(p - p0, node_mask)
        vel_feat = torch.where(keep, self.readout(h), 0)
        return torch.cat([vel_pos, vel_feat], dim=-1)

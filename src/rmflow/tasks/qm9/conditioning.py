"""Context-to-molecule conditioning: a property value c (normalised as (p - mean)/MAD) and the atom count n.

Two routes, selectable with `task.condition_route` (encoder | node | both):

- "encoder" (guided encoding, the paper's route): φ_ω(c, n) -> a source mean shaped like one molecule,
  x0 = φ_ω(c, n) + σ_c·ε0 (flow/sources.GuidedSource). φ_ω is trained jointly with the flow, penalised by
  λ2·‖φ_ω‖². By default φ_ω only moves the atom-type channels; its position channels are zero, so the source
  (and hence the sample distribution) stays E(3)-invariant. `encode_positions: true` lets it place atoms too
  (one learned layout per (c, n), which ties samples to a fixed frame).
- "node": c is concatenated to every atom's input features inside the EGNN (EDM's route).

The condition travels as a dict: {"props": (B, P) normalised properties, "num_atoms": (B,) atom counts}.
"""
from __future__ import annotations

import torch
from torch import nn

ROUTES = ("encoder", "node", "both")


class PropertyEncoder(nn.Module):
    """φ_ω: {"props": (B, P), "num_atoms": (B,)} -> (B, max_atoms, num_pos + num_features).

    z = MLP([props, onehot(num_atoms)]);  out_{b,i} = W · SiLU(z_b + e_i)  with a learned slot embedding e_i;
    W starts at zero, so φ_ω starts as the unconditional source. Slots beyond num_atoms are zero."""

    def __init__(self, num_props: int, num_features: int, max_atoms: int = 29, hidden: int = 64, num_pos: int = 3,
                 encode_positions: bool = False):
        super().__init__()
        self.max_atoms, self.num_pos, self.num_features = max_atoms, num_pos, num_features
        self.encode_positions = encode_positions
        self.context = nn.Sequential(nn.Linear(num_props + max_atoms + 1, hidden), nn.SiLU(),
                                     nn.Linear(hidden, hidden))
        self.slots = nn.Parameter(torch.randn(max_atoms, hidden) * 0.1)
        out_dim = num_pos + num_features if encode_positions else num_features
        self.out = nn.Linear(hidden, out_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, cond: dict) -> torch.Tensor:
        if not isinstance(cond, dict) or "props" not in cond or "num_atoms" not in cond:
            raise ValueError("PropertyEncoder needs cond = {'props': (B, P), 'num_atoms': (B,)}")
        props = cond["props"].float()
        n = cond["num_atoms"].long().clamp(0, self.max_atoms)
        onehot = torch.nn.functional.one_hot(n, self.max_atoms + 1).to(props.dtype)
        z = self.context(torch.cat([props, onehot], dim=-1))                      # (B, H)
        out = self.out(torch.nn.functional.silu(z[:, None, :] + self.slots[None]))  # (B, N, out)
        if not self.encode_positions:
            out = torch.cat([out.new_zeros(*out.shape[:2], self.num_pos), out], dim=-1)
        slot_mask = (torch.arange(self.max_atoms, device=n.device)[None] < n[:, None]).to(out.dtype)
        return out * slot_mask[..., None]


class MoleculeNet(nn.Module):
    """Adapts the EGNN to the task's condition dict: passes cond["props"] as node context when `node_context`."""

    def __init__(self, egnn: nn.Module, node_context: bool):
        super().__init__()
        self.egnn, self.node_context = egnn, node_context

    def forward(self, x, t, r, cond=None, mask=None):
        ctx = None
        if self.node_context:
            if not isinstance(cond, dict) or "props" not in cond:
                raise ValueError("node-feature conditioning needs cond = {'props': (B, P), ...}")
            ctx = cond["props"]
        return self.egnn(x, t, r, ctx, mask)

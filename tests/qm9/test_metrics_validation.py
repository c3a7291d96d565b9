"""Input checks of the QM9 metrics (atom types outside 0..4 and mismatched shapes are errors, not silently clipped
or broadcast) and of the molecule network's padding (inf/NaN in padded rows must not reach real atoms)."""
import importlib.util
import math

import numpy as np
import pytest
import torch

from rmflow.nets.egnn import EGNN
from rmflow.tasks.qm9 import metrics as M

H, C, N, O, F = range(5)
needs_rdkit = pytest.mark.skipif(importlib.util.find_spec("rdkit") is None, reason="needs rdkit")


def water_batch(n=6):
    """Two water molecules padded to n atoms: positions (2, n, 3) Å, types (2, n) with -1 padding, mask (2, n)."""
    a = math.radians(104.5) / 2
    p = [[0, 0, 0], [0.96 * math.sin(a), 0.96 * math.cos(a), 0], [-0.96 * math.sin(a), 0.96 * math.cos(a), 0]]
    pos, typ, mask = np.zeros((2, n, 3)), np.full((2, n), -1), np.zeros((2, n), bool)
    for b in range(2):
        pos[b, :3], typ[b, :3], mask[b, :3] = p, [O, H, H], True
    return pos, typ, mask


BATCHED = {"bond_orders": M.bond_orders, "stability": M.stability, "evaluate_molecules": M.evaluate_molecules,
           "smiles_list": M.smiles_list}
SINGLE = {"build_rdkit": M.build_rdkit, "molecule_smiles": M.molecule_smiles}


def _call(name, pos, typ, mask):
    if name in SINGLE:
        return SINGLE[name](pos[0], typ[0], mask[0])
    return BATCHED[name](pos, typ, mask)


# ------------------------------------------------------------------------------------------------ atom types

@pytest.mark.parametrize("name", list(BATCHED) + list(SINGLE))
@pytest.mark.parametrize("bad", [5, -1, 7, 1.5, np.nan])
def test_out_of_range_types_of_real_atoms_are_refused(name, bad):
    pos, typ, mask = water_batch()
    typ = typ.astype(float)
    typ[0, 1] = bad
    with pytest.raises(ValueError, match=r"atom types must be indices 0\.\.4 \(H, C, N, O, F\); got values .*"
                                         r"first at (molecule 0, )?atom 1"):
        _call(name, pos, typ, mask)


def test_the_message_lists_the_bad_values_and_counts_them():
    pos, typ, mask = water_batch()
    typ[0, 0], typ[1, 2] = 9, -3
    with pytest.raises(ValueError, match=r"got values \[-3, 9\] at 2 real atom\(s\), first at molecule 0, atom 0"):
        M.bond_orders(pos, typ, mask)


def test_padding_types_are_ignored():
    pos, typ, mask = water_batch()
    zero_padded = np.where(mask, typ, 0)
    junk_padded = np.where(mask, typ, 99)
    assert np.array_equal(M.bond_orders(pos, typ, mask), M.bond_orders(pos, zero_padded, mask))
    atom_ok, mol_ok = M.stability(pos, junk_padded, mask)
    assert mol_ok.all() and np.array_equal(atom_ok, mask)


def test_integral_floats_and_tensors_are_accepted():
    pos, typ, mask = water_batch()
    want = M.bond_orders(pos, typ, mask)
    assert np.array_equal(M.bond_orders(pos, typ.astype(float), mask), want)
    assert np.array_equal(M.bond_orders(torch.tensor(pos), torch.tensor(typ), torch.tensor(mask)), want)


@needs_rdkit
def test_decoded_model_samples_always_pass():
    """decode's argmax gives indices 0..4 whatever the samples hold, so the normal path never trips the check."""
    torch.manual_seed(0)
    x = torch.randn(5, 9, 8) * 10
    x[0, 0, 3:] = float("nan")
    mask = (torch.arange(9)[None, :, None] < torch.tensor([9, 5, 1, 0, 3])[:, None, None]).float()
    pos, typ, m = M.decode(x, mask)
    assert typ.min() >= 0 and typ.max() <= 4
    out = M.evaluate_molecules(pos, typ, m)
    assert out["num_molecules"] == 5.0


# ---------------------------------------------------------------------------------------------------- shapes

@pytest.mark.parametrize("name", list(BATCHED))
@pytest.mark.parametrize("which", ["mask3d", "short_types", "positions2d", "batch"])
def test_mismatched_shapes_name_the_expected_shapes(name, which):
    pos, typ, mask = water_batch()
    pos, typ, mask = {"mask3d": (pos, typ, mask[..., None]), "short_types": (pos, typ[:, :-1], mask),
                      "positions2d": (pos[..., :2], typ, mask), "batch": (pos[:1], typ, mask)}[which]
    with pytest.raises(ValueError, match=r"must have shapes \(B, N, 3\), \(B, N\), \(B, N\); got "):
        BATCHED[name](pos, typ, mask)


@pytest.mark.parametrize("name", list(SINGLE))
def test_single_molecule_shapes_are_checked(name):
    pos, typ, mask = water_batch()
    with pytest.raises(ValueError, match=r"must have shapes \(N, 3\), \(N,\), \(N,\)"):
        SINGLE[name](pos[0], typ[0, :4], mask[0])
    with pytest.raises(ValueError, match=r"orders must have shape \(N, N\)"):
        SINGLE[name](pos[0], typ[0], mask[0], orders=np.zeros((3, 3), int))


def test_decode_checks_its_shapes():
    with pytest.raises(ValueError, match=r"decode expects x \(B, N, 3 \+ 5\)"):
        M.decode(torch.zeros(2, 4, 7), torch.ones(2, 4, 1))
    with pytest.raises(ValueError, match=r"mask \(B, N, 1\) or \(B, N\)"):
        M.decode(torch.zeros(2, 4, 8), torch.ones(2, 5, 1))
    assert M.decode(torch.zeros(2, 4, 8), torch.ones(2, 4))[2].all()


# ------------------------------------------------------------------------------ the network's padding (EGNN)

def _egnn_inputs(mask_dtype):
    torch.manual_seed(0)
    net = EGNN(5, hidden=16, layers=3, time_dim=8, cond_dim=1).double()
    counts = torch.tensor([6, 4, 1, 0])
    real = torch.arange(6)[None, :, None] < counts[:, None, None]                 # (4, 6, 1)
    x = torch.randn(4, 6, 8, dtype=torch.float64) * real
    t, r, cond = torch.rand(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64), torch.randn(4, 1).double()
    return net, x, t, r, cond, real.to(mask_dtype), real


@pytest.mark.parametrize("mask_dtype", [torch.float64, torch.bool])
@pytest.mark.parametrize("fill", [float("inf"), float("-inf"), float("nan"), 1e308])
def test_non_finite_padding_gives_the_zero_padding_outputs(mask_dtype, fill):
    net, x, t, r, cond, mask, real = _egnn_inputs(mask_dtype)
    dirty = torch.where(real, x, torch.full_like(x, fill))
    want = net(x, t, r, cond, mask)
    got = net(dirty, t, r, cond, mask)
    assert torch.isfinite(got).all() and torch.equal(got, want)
    # gradients too: the loss's backward pass must not pick up NaN from padding
    grads = []
    for inp in (x, dirty):
        net.zero_grad()
        inp = inp.clone().requires_grad_(True)
        net(inp, t, r, cond, mask).square().sum().backward()
        grads.append([inp.grad] + [p.grad.clone() for p in net.parameters()])
    assert all(torch.isfinite(g).all() and torch.equal(g, h) for g, h in zip(*grads))
    # and forward-mode AD (MeanFlow's jvp), with a tangent that is non-finite on padding as well
    tangent = torch.where(real, torch.ones_like(x), torch.full_like(x, fill))
    _, jv_clean = torch.func.jvp(lambda z: net(z, t, r, cond, mask), (x,), (torch.where(real, tangent, 0),))
    _, jv_dirty = torch.func.jvp(lambda z: net(z, t, r, cond, mask), (dirty,), (tangent,))
    assert torch.isfinite(jv_dirty).all() and torch.equal(jv_dirty, jv_clean)

"""EDM's stability / validity / uniqueness / novelty on hand-built and broken molecules, and the bond rule
against a scalar re-statement of it."""
import math

import numpy as np
import pytest

pytest.importorskip("rdkit")
from rmflow.tasks.qm9 import metrics as M  # noqa: E402

H, C, N, O, F = range(5)


def heavy(smiles):
    """SMILES without the explicit hydrogens (EDM's SMILES keep H atoms as graph nodes: '[H]C([H])([H])[H]')."""
    from rdkit import Chem
    return Chem.MolToSmiles(Chem.RemoveHs(Chem.MolFromSmiles(smiles)))


def pack(mols):
    """[(types, positions Å)] -> padded arrays (B, 29, 3), (B, 29), (B, 29)."""
    b = len(mols)
    pos, typ, mask = np.zeros((b, 29, 3)), np.zeros((b, 29), int), np.zeros((b, 29), bool)
    for i, (t, p) in enumerate(mols):
        n = len(t)
        typ[i, :n], pos[i, :n], mask[i, :n] = t, p, True
    return pos, typ, mask


def methane():
    d = 1.09 / math.sqrt(3)
    return [C, H, H, H, H], [[0, 0, 0], [d, d, d], [d, -d, -d], [-d, d, -d], [-d, -d, d]]


def water():
    a = math.radians(104.5) / 2
    return [O, H, H], [[0, 0, 0], [0.96 * math.sin(a), 0.96 * math.cos(a), 0], [-0.96 * math.sin(a), 0.96 * math.cos(a), 0]]


def hcn():
    return [H, C, N], [[-1.07, 0, 0], [0, 0, 0], [1.16, 0, 0]]


def acetylene():
    return [C, C, H, H], [[-0.60, 0, 0], [0.60, 0, 0], [-1.66, 0, 0], [1.66, 0, 0]]


def edm_bond_order_scalar(a, b, d_angstrom):
    """EDM's rule, written as the nested ifs of the reference (independent of the vectorised table code)."""
    names = "HCNOF"
    single = {frozenset("HH"): 74, frozenset("HC"): 109, frozenset("HN"): 101, frozenset("HO"): 96,
              frozenset("HF"): 92, frozenset("C"): 154, frozenset("CN"): 147, frozenset("CO"): 143,
              frozenset("CF"): 135, frozenset("N"): 145, frozenset("NO"): 140, frozenset("NF"): 136,
              frozenset("O"): 148, frozenset("OF"): 142, frozenset("F"): 142}
    double = {frozenset("C"): 134, frozenset("CN"): 129, frozenset("CO"): 120, frozenset("N"): 125,
              frozenset("NO"): 121, frozenset("O"): 121}
    triple = {frozenset("C"): 120, frozenset("CN"): 116, frozenset("CO"): 113, frozenset("N"): 110}
    key = frozenset(names[a] + names[b])
    d = 100 * d_angstrom
    if d < single[key] + 10:
        if key in double and d < double[key] + 5:
            if key in triple and d < triple[key] + 3:
                return 3
            return 2
        return 1
    return 0


def test_bond_orders_match_scalar_rule():
    rng = np.random.default_rng(0)
    pos = rng.uniform(0, 2.2, size=(40, 6, 3))
    typ = rng.integers(0, 5, size=(40, 6))
    mask = np.ones((40, 6), bool)
    orders = M.bond_orders(pos, typ, mask)
    hits = set()
    for b in range(40):
        for i in range(6):
            for j in range(6):
                want = 0 if i == j else edm_bond_order_scalar(typ[b, i], typ[b, j], np.linalg.norm(pos[b, i] - pos[b, j]))
                assert orders[b, i, j] == want
                hits.add(want)
    assert hits == {0, 1, 2, 3}


@pytest.mark.parametrize("mol,smiles", [(methane, "C"), (water, "O"), (hcn, "C#N"), (acetylene, "C#C")])
def test_hand_built_molecules_stable_and_valid(mol, smiles):
    pos, typ, mask = pack([mol()])
    atom_ok, mol_ok = M.stability(pos, typ, mask)
    assert mol_ok.all() and atom_ok[mask].all()
    assert heavy(M.molecule_smiles(pos[0], typ[0], mask[0])) == smiles
    r = M.evaluate_molecules(pos, typ, mask)
    assert r["atom_stable"] == r["mol_stable"] == r["valid"] == r["unique"] == 1.0


def test_rotation_translation_do_not_change_verdicts():
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    t, p = acetylene()
    pos, typ, mask = pack([(t, np.asarray(p) @ q.T + 5.0)])
    assert M.stability(pos, typ, mask)[1].all()


def test_missing_hydrogen():
    t, p = methane()
    pos, typ, mask = pack([(t[:4], p[:4])])          # CH3: carbon has 3 bonds
    atom_ok, mol_ok = M.stability(pos, typ, mask)
    assert not mol_ok[0] and atom_ok[0].tolist()[:4] == [False, True, True, True]
    r = M.evaluate_molecules(pos, typ, mask)
    assert r["atom_stable"] == 0.75 and r["mol_stable"] == 0.0
    # EDM's validity lets RDKit fill the open valence with an implicit H: CH3 sanitises (to methane)
    assert r["valid"] == 1.0 and M.molecule_smiles(pos[0], typ[0], mask[0]) == "[H]C([H])[H]"


def test_overlapping_atoms_invalid():
    t, p = methane()
    shifted = [list(np.asarray(x) + 0.02) for x in p]
    pos, typ, mask = pack([(t + t, p + shifted)])      # two methanes on top of each other
    atom_ok, mol_ok = M.stability(pos, typ, mask)
    assert not mol_ok[0] and not atom_ok[0, :10].any()
    r = M.evaluate_molecules(pos, typ, mask)
    assert r["valid"] == 0.0 and math.isnan(r["unique"])


def test_lone_fragment_keeps_largest():
    t, p = methane()
    pos, typ, mask = pack([(t + [H], p + [[8.0, 0, 0]])])   # a stray H atom far away
    atom_ok, mol_ok = M.stability(pos, typ, mask)
    assert not mol_ok[0] and atom_ok[0, :5].all() and not atom_ok[0, 5]
    # the stray H sanitises (as H·); the largest fragment is methane
    assert M.molecule_smiles(pos[0], typ[0], mask[0]) == "[H]C([H])([H])[H]"


def test_nan_and_empty_inputs_do_not_crash():
    t, p = water()
    pos, typ, mask = pack([(t, p), (t, p)])
    pos[1, 0] = np.nan
    atom_ok, mol_ok = M.stability(pos, typ, mask)
    assert mol_ok.tolist() == [True, False]
    r = M.evaluate_molecules(pos, typ, mask)
    assert r["mol_stable"] == 0.5
    empty = M.evaluate_molecules(np.zeros((0, 29, 3)), np.zeros((0, 29), int), np.zeros((0, 29), bool))
    assert all(math.isnan(empty[k]) for k in ("atom_stable", "mol_stable", "valid", "unique"))
    no_atoms = M.evaluate_molecules(np.zeros((1, 29, 3)), np.zeros((1, 29), int), np.zeros((1, 29), bool))
    assert no_atoms["mol_stable"] == 0.0 and no_atoms["valid"] == 0.0 and math.isnan(no_atoms["atom_stable"])


def test_uniqueness_and_novelty():
    pos, typ, mask = pack([methane(), methane(), water(), hcn()])
    r = M.evaluate_molecules(pos, typ, mask, training_smiles={"[H]C([H])([H])[H]", "CC"})
    assert r["valid"] == 1.0
    assert r["unique"] == pytest.approx(3 / 4)          # {C, O, C#N} of 4 valid
    assert r["novel"] == pytest.approx(2 / 3)           # O and C#N are not in the training set
    assert r["copied"] == pytest.approx(2 / 4)          # both methanes are copies, repeats counted
    assert "copied" not in M.evaluate_molecules(pos, typ, mask)


def test_decode_argmax_and_mask():
    import torch
    x = torch.zeros(1, 4, 8)
    x[0, :, 3:] = torch.tensor([[0.25, 0, 0, 0, 0], [0, 0.2, 0.3, 0, 0], [0, 0, 0, 0, 0.1], [0, 0, 0, 0.9, 0]])
    mask = torch.tensor([[[1.0], [1.0], [1.0], [0.0]]])
    pos, typ, m = M.decode(x, mask)
    assert typ.tolist() == [[0, 2, 4, 3]] and m.tolist() == [[True, True, True, False]]


def test_molecule_grid_falls_back_to_a_projection_without_rdkit_drawing(tmp_path, monkeypatch):
    """Without RDKit's drawing module the grid still shows each molecule: its atoms and EDM's bonds (HCN: one
    single and one triple bond, so two lines, the triple one three times as thick), titled with stability."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from rmflow.tasks.qm9 import plots
    fig, ax = plt.subplots()
    t, p = hcn()
    plots._projection(ax, np.asarray(p), np.asarray(t), np.ones(3, bool))
    assert sorted(line.get_linewidth() for line in ax.lines) == pytest.approx([0.8, 2.4])
    assert len(ax.collections[0].get_offsets()) == 3
    plt.close(fig)
    monkeypatch.setattr(plots, "_depiction", lambda *a, **k: None)
    pos, typ, mask = pack([methane(), hcn(), water()])
    panels = {"data": (torch.tensor(pos), torch.tensor(typ), torch.tensor(mask))}
    plots.molecule_grid(panels, tmp_path / "grid.png", per_row=3)
    assert (tmp_path / "grid.png").stat().st_size > 5000


def test_geometry_report_on_hand_built_molecules():
    # methane (C–H 1.09 Å), water (O–H 0.96 Å), and CH3 (a carbon one bond short)
    t, p = methane()
    pos, typ, mask = pack([methane(), water(), (t[:4], p[:4])])
    r = M.geometry_report(pos, typ, mask)
    assert r["stable_H"] == 1.0 and r["stable_O"] == 1.0 and r["stable_C"] == 0.5      # the CH3 carbon fails
    assert math.isnan(r["stable_N"]) and math.isnan(r["stable_F"])
    assert r["under_valent"] == pytest.approx(1 / 12) and r["over_valent"] == 0.0
    # 9 hydrogens: 2 at 0.96 Å, 7 at 1.09 Å -> quantiles by numpy's linear rule on the sorted distances
    expect = np.quantile([0.96] * 2 + [1.09] * 7, M.QUANTILES)
    assert np.allclose(r["h_bond_q"], expect)
    # heavy atoms' nearest heavy neighbour: none in these molecules (one heavy atom each)
    assert all(math.isnan(q) for q in r["heavy_nn_q"])
    # two carbons 1.54 Å apart (ethane's C–C): every heavy atom's nearest heavy neighbour is at 1.54
    pos2, typ2, mask2 = pack([([C, C], [[0, 0, 0], [1.54, 0, 0]])])
    r2 = M.geometry_report(pos2, typ2, mask2)
    assert np.allclose(r2["heavy_nn_q"], 1.54) and r2["under_valent"] == 1.0

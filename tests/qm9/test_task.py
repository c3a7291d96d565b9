"""The QM9 task end to end at toy size: batches, references, both conditioning routes, the two-stage RMFlow
objective, evaluation and the molecule grid."""
import pytest
import torch

pytest.importorskip("rdkit")

from rmflow.config import build_config, load_config  # noqa: E402
from rmflow.evaluate import evaluate_samplers  # noqa: E402
from rmflow.train import Trainer  # noqa: E402


def make_cfg(cache, **task):
    data = {"name": "t", "task": {"name": "qm9", "max_train": 300, "cache": str(cache), **task},
            "model": {"hidden": 8, "layers": 2, "time_dim": 8, "edge_mlp": False, "encoder_hidden": 8},
            "rmflow": {"lambda_nll": 0.02, "sigma_min": 0.01, "pairing": "teacher", "teacher_steps": 2,
                       "nll_start_step": 2, "sigma_c": 1.0, "lambda_enc": 1e-3, "teacher_bank": 64},
            "train": {"steps": 4, "batch_size": 4, "progress": False, "warmup_steps": 0},
            "eval": {"num_samples": 6, "samplers": ["rmflow", "meanflow@2"]}}
    return build_config(data)


def make_task(cfg, arrays):
    from rmflow.tasks.qm9 import QM9Task
    return QM9Task(cfg, arrays=arrays)


def test_presets_load():
    for name in ("qm9", "qm9-cpu"):
        cfg = load_config(name)
        assert cfg.task.name == "qm9" and cfg.rmflow.pairing == "teacher"
        assert {"meanflow", "flow_matching", "rmflow"} <= set(cfg.compare)
        assert (cfg.model.time_scale, cfg.model.time_max_period) == (10.0, 10000.0)   # as measured
    with pytest.raises(ValueError, match="task.condition"):
        load_config("qm9-cpu", ["task.condition=weight"])
    with pytest.raises(ValueError, match="model.distance_rbf"):
        load_config("qm9-cpu", ["model.distance_rbf=-1"])
    with pytest.raises(ValueError, match="model.rbf_max"):
        load_config("qm9-cpu", ["model.rbf_max=0"])


def test_batch_and_reference(qm9_arrays, tmp_path):
    cfg = make_cfg(tmp_path)
    task = make_task(cfg, qm9_arrays)
    b = task.batch(5)
    assert b.x.shape == (5, 29, 8) and b.mask.shape == (5, 29, 1) and b.cond is None
    onehot = b.x[..., 3:] / cfg.task.type_scale
    assert torch.allclose(onehot.sum(-1, keepdim=True), b.mask)
    assert ((b.x[..., :3] * b.mask).sum(1)).abs().max() < 1e-4
    ref = task.reference(2000, seed=1)
    counts = ref.mask.sum((1, 2)).long()
    want = task.node_probs * 2000
    got = torch.bincount(counts, minlength=30).double()
    assert (got - want).abs().max() <= 1.0                       # quantiles of the histogram: exact to ±1
    ref2 = task.reference(2000, seed=2)
    assert torch.equal(ref.mask, ref2.mask) and not torch.equal(ref.x, ref2.x)
    assert torch.allclose(ref.x[..., 3:].sum(-1, keepdim=True) / cfg.task.type_scale, ref.mask)


@pytest.mark.parametrize("route", ["encoder", "node", "both"])
def test_conditional_training_and_sampling(qm9_arrays, tmp_path, route):
    cfg = make_cfg(tmp_path, condition="alpha", condition_route=route, novelty=False)
    task = make_task(cfg, qm9_arrays)
    assert task.split_name == "second_half"
    b = task.batch(4)
    assert set(b.cond) == {"props", "num_atoms"} and b.cond["props"].shape == (4, 1)
    assert torch.equal(b.cond["num_atoms"], b.mask.sum((1, 2)))
    trainer = Trainer(cfg, None, task=task)
    losses = trainer.train()
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    model = trainer.model
    assert model.source.guided == (route != "node")
    ref = task.reference(6, seed=0)
    rows, panels = evaluate_samplers(task, model, ref, cfg.eval.samplers, seed=0)
    assert {"atom_stable", "mol_stable", "valid", "unique"} <= set(rows[0])
    x = panels["RMFlow 1-NFE"]
    assert (x * (1 - ref.mask)).abs().max() == 0 and ((x[..., :3] * ref.mask).sum(1)).abs().max() < 1e-4


def test_conditional_teacher_bank_with_masks(qm9_arrays, tmp_path):
    """A teacher bank on molecules: dict conditions and atom masks travel with the bank pairs."""
    from rmflow.config import apply_overrides, to_dict
    cfg = make_cfg(tmp_path, condition="alpha", novelty=False)
    cfg = build_config(apply_overrides(to_dict(cfg), ["rmflow.teacher_bank=32", "rmflow.nll_batch=0.5",
                                                      "rmflow.batch_split=true"]))
    trainer = Trainer(cfg, None, task=make_task(cfg, qm9_arrays))
    losses = trainer.train()
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    bank = trainer.objective.pairing.bank
    from rmflow.train.build import bank_size
    assert bank_size(cfg) == 4   # capped: 2 stage-2 steps × ⌈0.5 · 4⌉ rows, not the 32 asked for
    assert set(bank.cond) == {"props", "num_atoms"} and bank.mask.shape[0] == 4
    assert torch.equal(bank.cond["num_atoms"], bank.mask.sum((1, 2)))
    assert (bank.y * (1 - bank.mask)).abs().max() == 0             # partners live on each pair's own atoms


def test_encoder_is_invariant_source_and_depends_on_property():
    from rmflow.tasks.qm9.conditioning import PropertyEncoder
    enc = PropertyEncoder(1, 5, 29, hidden=8)
    torch.nn.init.normal_(enc.out.weight)
    cond = {"props": torch.tensor([[0.0], [2.0]]), "num_atoms": torch.tensor([5.0, 5.0])}
    out = enc(cond)
    assert out.shape == (2, 29, 8)
    assert out[..., :3].abs().max() == 0                        # positions untouched: E(3)-invariant source
    assert out[:, 5:].abs().max() == 0                          # nothing beyond the atom count
    assert not torch.allclose(out[0], out[1])                   # depends on the property
    with pytest.raises(ValueError, match="PropertyEncoder"):
        enc(torch.zeros(2, 1))


def test_unconditional_evaluate_data_and_plot(qm9_arrays, tmp_path):
    cfg = make_cfg(tmp_path)
    task = make_task(cfg, qm9_arrays)
    ref = task.reference(40, seed=0)
    r = task.evaluate(ref.x, ref)                              # real molecules scored as "samples"
    assert r["atom_stable"] > 0.9 and r["novel"] == 0.0        # all are training molecules
    assert list(tmp_path.glob("qm9_smiles_train_first300_v1.json"))
    noise = ref.x + torch.randn_like(ref.x) * ref.mask
    assert task.evaluate(noise, ref)["mol_stable"] < r["mol_stable"]
    task.plot({"data": ref.x[:6], "noise": noise[:6]}, ref, tmp_path / "grid.png")
    assert (tmp_path / "grid.png").stat().st_size > 1000

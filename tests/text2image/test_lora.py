"""Stage 2: LoRA through peft changes only adapter (and φ_ω) weights; saved adapters reload to the same outputs;
the adapted model still serves rmflow's samplers; a resumed two-stage run reproduces the uninterrupted one."""
import torch

from rmflow.flow import sample
from rmflow.train.lora import LoRATrainer, adapter_parameter_names, is_adapted, load_adapter, trainer_class

FULL = {"model.lora.rank": 0, "model.lora.full": "true"}


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_lora_stage_trains_only_adapters_and_reloads(tmp_path, text_encoder, tiny_config):
    cfg = tiny_config(tmp_path)
    assert trainer_class(cfg) is LoRATrainer
    tr = LoRATrainer(cfg, tmp_path / "run")
    tr.train(2)                                   # stage 1: plain weights
    assert not is_adapted(tr.model)
    stage1 = tr.ema.shadow.state_dict()
    tr.train_step()                               # the boundary: adapters injected, teacher frozen
    assert is_adapted(tr.model)
    before = _snapshot(tr.model)
    tr.train(cfg.train.steps)
    after = _snapshot(tr.model)
    adapters = adapter_parameter_names(tr.model)
    assert adapters and all("lora_A" in n or "lora_B" in n for n in adapters)
    changed = {n for n in after if not torch.equal(before[n], after[n])}
    encoder = {n for n in after if n.startswith("source.encoder.")}
    assert changed and changed <= adapters        # φ_ω is frozen too (lora.train_encoder defaults to false)
    assert encoder and not changed & encoder
    assert changed & adapters                     # the adapters did move
    # the frozen teacher still holds the stage-1 EMA weights
    for k, v in tr.objective.pairing.teacher.state_dict().items():
        assert torch.equal(v, stage1[k])
    # the adapters (of the EMA, which is evaluated) are saved on their own and reload to identical outputs
    adapter_dir = tmp_path / "run" / "adapter"
    assert (adapter_dir / "adapter_model.safetensors").exists() and (adapter_dir / "encoder.safetensors").exists()
    fresh = tr.task.build_model()
    fresh.load_state_dict(stage1)
    load_adapter(fresh, adapter_dir)
    b = tr.task.batch(6)
    t, r = torch.rand(6), torch.rand(6)
    with torch.no_grad():
        torch.testing.assert_close(fresh(b.x, t, r, b.cond), tr.ema.shadow(b.x, t, r, b.cond), rtol=0, atol=1e-6)
        torch.testing.assert_close(fresh.source.encode(b.cond, b.x), tr.ema.shadow.source.encode(b.cond, b.x))
        x0 = fresh.draw_source(b.x, b.cond)
        out = sample(fresh, x0, "rmflow", 1, b.cond)        # samplers call net(x, t, r, cond, mask)
    assert out.x.shape == b.x.shape and out.nfe == 1


def test_resume_across_the_stage_boundary(tmp_path, text_encoder, tiny_config):
    cfg = tiny_config(tmp_path)
    full = LoRATrainer(cfg, tmp_path / "a")
    full.train()
    part = LoRATrainer(cfg, tmp_path / "b", task=full.task)
    part.train(3)                               # checkpoint at step 2 (stage 1) and 3 (stage 2)
    resumed = LoRATrainer(cfg, tmp_path / "b", task=full.task)
    assert resumed.resume() and resumed.step == 3 and is_adapted(resumed.model)
    resumed.train()
    assert resumed.history == full.history


def test_full_fine_tuning_trains_every_net_weight_and_resumes(tmp_path, text_encoder, tiny_config):
    """model.lora.full: the same stage 2 without adapters. Every weight of u_θ may move, φ_ω stays frozen, the
    teacher holds the stage-1 EMA, stage 2 starts from that EMA, no adapter folder is written, and a run resumed
    inside stage 2 reproduces the uninterrupted one."""
    import pytest

    from rmflow.errors import ConfigError
    cfg = tiny_config(tmp_path, **FULL)
    assert trainer_class(cfg) is LoRATrainer
    tr = LoRATrainer(cfg, tmp_path / "run")
    tr.train(2)
    stage1 = {k: v.clone() for k, v in tr.ema.shadow.state_dict().items()}
    tr.train_step()                               # the boundary: the model restarts from the stage-1 EMA
    assert tr.in_stage2 and not is_adapted(tr.model) and not adapter_parameter_names(tr.model)
    trainable = {n for n, p in tr.model.named_parameters() if p.requires_grad}
    net = {n for n, _ in tr.model.named_parameters() if n.startswith("net.")}
    assert net and net <= trainable and not {n for n in trainable if n.startswith("source.encoder.")}
    tr.train(cfg.train.steps)
    after = _snapshot(tr.model)
    moved = {n for n in net if not torch.equal(after[n], stage1[n])}
    assert len(moved) > len(net) // 2             # not only the layers LoRA would adapt
    assert all(torch.equal(after[n], stage1[n]) for n in after if n.startswith("source.encoder."))
    for k, v in tr.objective.pairing.teacher.state_dict().items():
        assert torch.equal(v, stage1[k])
    assert not (tmp_path / "run" / "adapter").exists()
    part = LoRATrainer(cfg, tmp_path / "b", task=tr.task)
    part.train(3)
    resumed = LoRATrainer(cfg, tmp_path / "b", task=tr.task)
    assert resumed.resume() and resumed.step == 3 and resumed.in_stage2
    resumed.train()
    assert resumed.history == tr.history
    with pytest.raises(ConfigError, match="full"):
        tiny_config(tmp_path, **{"model.lora.full": "true"})     # rank 2 from the tiny config: ambiguous


def test_guidance_as_an_input_through_both_stages(tmp_path, text_encoder, tiny_config):
    """flow.guidance with ω as the U-Net's input: both stages train, one network answers every ω in one step, and
    its output at ω = 2 differs from ω = 1 (the scale reaches the network); a plain U-Net refuses the range."""
    import pytest

    from rmflow.errors import ConfigError
    cfg = tiny_config(tmp_path, **{"model.guidance_embed": "true", "flow.guidance.p_drop": 0.2,
                                   "flow.guidance.w_min": 1.0, "flow.guidance.w_max": 3.0})
    tr = LoRATrainer(cfg, tmp_path / "run")
    tr.train(cfg.train.steps)
    model, b = tr.ema.shadow, tr.task.batch(6)
    with torch.no_grad():
        x0 = model.draw_source(b.x, b.cond, generator=torch.Generator().manual_seed(0))
        one, two = (sample(model, x0, "rmflow", 1, b.cond, guidance=w) for w in (1.0, 2.0))
    assert one.nfe == two.nfe == 1 and torch.isfinite(two.x).all() and not torch.equal(one.x, two.x)
    with pytest.raises(ConfigError, match="guidance"):
        LoRATrainer(tiny_config(tmp_path, **{"flow.guidance.p_drop": 0.2, "flow.guidance.w_max": 3.0}),
                    tmp_path / "plain")

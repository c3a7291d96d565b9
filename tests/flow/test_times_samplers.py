import pytest
import torch
from torch import nn

from rmflow.flow import (FixedScale, GaussianSource, RMFlow, TimeSampler, flow_matching_ode, meanflow, one_step,
                         sample)


def test_time_sampler_statistics():
    ts = TimeSampler("uniform", ratio_neq=0.3, ratio_one_step=0.1)
    t, r = ts.sample(200_000, torch.Generator().manual_seed(0))
    assert (t <= r).all() and (t >= 0).all() and (r <= 1).all()
    neq = (r != t).float().mean().item()
    assert abs(neq - 0.3) < 0.01
    one = ((t == 0) & (r == 1)).float().mean().item()
    assert abs(one - 0.1) < 0.01
    # among the plain pairs t is the min of two uniforms: mean 1/3
    plain = r == t
    assert abs(t[plain].mean().item() - 1 / 3) < 0.01


def test_fm_warmup_draws_plain_pairs_until_its_step():
    ts = TimeSampler("uniform", ratio_neq=0.5, ratio_one_step=0.2, fm_warmup=100)
    g = torch.Generator().manual_seed(0)
    for step, expect_neq in [(0, 0.0), (99, 0.0), (100, 0.5), (5000, 0.5), (3, 0.0)]:   # resuming goes back too
        ts.set_step(step)
        t, r = ts.sample(50_000, g)
        assert abs((r != t).float().mean().item() - expect_neq) < 0.01, step
        assert abs(((t == 0) & (r == 1)).float().mean().item() - 0.4 * expect_neq) < 0.01, step


def test_fm_warmup_is_switched_by_the_training_step():
    from rmflow.config import load_config
    from rmflow.train import Trainer
    cfg = load_config("ring", ["flow.time.fm_warmup=10", "flow.time.ratio_neq=0.5", "train.steps=12",
                               "train.progress=false", "train.compile=false"])
    tr = Trainer(cfg, None)
    times = tr.objective.cmfm.times
    assert times.fm_warmup == 10 and times._warming
    tr.train(10)      # steps 0..9 ran: the last one was set to step 9
    assert times._warming
    tr.train(12)
    assert not times._warming


def test_logit_normal_times():
    ts = TimeSampler("logit_normal", mean=-0.4, std=1.0, ratio_neq=1.0)
    t, r = ts.sample(200_000, torch.Generator().manual_seed(1))
    logits = torch.logit(torch.cat([t, r]))
    assert abs(logits.mean().item() + 0.4) < 0.02 and abs(logits.std().item() - 1.0) < 0.02


def test_pair_dist_uniform_draws_only_the_mean_flow_pairs_uniformly():
    g = torch.Generator().manual_seed(2)
    ts = TimeSampler("logit_normal", mean=2.0, std=1.0, ratio_neq=0.5, pair_dist="uniform")
    t, r = ts.sample(400_000, g)
    assert (t <= r).all()
    pairs, plain = r != t, r == t
    assert abs(pairs.float().mean().item() - 0.5) < 0.01
    # the pairs: min / max of two uniforms, means 1/3 and 2/3, and P(t < 0.2) = 1 - 0.8² = 0.36
    assert abs(t[pairs].mean().item() - 1 / 3) < 0.005 and abs(r[pairs].mean().item() - 2 / 3) < 0.005
    assert abs((t[pairs] < 0.2).float().mean().item() - 0.36) < 0.005
    # the r = t rows keep the logit-normal draw: the min of two sigmoid(N(2, 1)), P(t < 0.5) = 1 - (1 - Φ(-2))²
    p_below = 1 - (1 - 0.5 * (1 + torch.erf(torch.tensor(-2.0) / 2 ** 0.5)).item()) ** 2
    assert abs((t[plain] < 0.5).float().mean().item() - p_below) < 0.003
    # "same" (the default) draws the pairs like the plain rows: P(t < 0.2) among them is ≈ 0.0007
    t, r = TimeSampler("logit_normal", mean=2.0, std=1.0, ratio_neq=0.5).sample(400_000, g)
    assert (t[r != t] < 0.2).float().mean().item() < 0.002


def test_time_settings_are_refused_where_the_config_loads():
    from rmflow.config import ConfigError, load_config
    with pytest.raises(ConfigError, match="flow.time.ratio_neq"):
        load_config("ring", ["flow.time.ratio_neq=1.5"])
    with pytest.raises(ConfigError, match="flow.time.dist"):
        load_config("ring", ["flow.time.dist=beta"])
    with pytest.raises(ConfigError, match="flow.time.fm_warmup"):
        load_config("ring", ["flow.time.fm_warmup=-1"])
    with pytest.raises(ConfigError, match="flow.time.pair_dist"):
        load_config("ring", ["flow.time.pair_dist=logit_normal"])


class Counting(nn.Module):
    """u(x, t, r) = c (constant velocity) and counts its calls."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x, t, r, cond=None, mask=None):
        self.calls += 1
        return torch.ones_like(x) * 2.0


@pytest.mark.parametrize("fn,kwargs,nfe", [(meanflow, {"steps": 8}, 8), (meanflow, {"steps": 1}, 1),
                                           (flow_matching_ode, {"steps": 100}, 100),
                                           (flow_matching_ode, {"steps": 10, "method": "heun"}, 19)])
def test_sampler_nfe_counts_and_constant_velocity(fn, kwargs, nfe):
    net = Counting()
    model = RMFlow(net, GaussianSource(), FixedScale(0.1, 0.0))
    x0 = torch.zeros(5, 2)
    res = fn(model, x0, **kwargs)
    assert res.nfe == nfe and net.calls == nfe
    torch.testing.assert_close(res.x, torch.full((5, 2), 2.0))


def test_one_step_refinement_variance():
    """x̂_tgt = x̂1 + sqrt(σ_min² - σ²)·ε2: the added noise has exactly that variance."""
    net = Counting()
    model = RMFlow(net, GaussianSource(), FixedScale(sigma_min=0.3, sigma=0.1))
    x0 = torch.zeros(400_000, 1)
    res = one_step(model, x0, generator=torch.Generator().manual_seed(0))
    assert res.nfe == 1 and net.calls == 1
    assert abs(res.x.mean().item() - 2.0) < 2e-3
    assert abs(res.x.var().item() - (0.3 ** 2 - 0.1 ** 2)) < 1e-3
    no_noise = one_step(model, x0[:10], refine=False)
    torch.testing.assert_close(no_noise.x, torch.full((10, 1), 2.0))


def test_fixed_scale_rejects_sigma_not_below_sigma_min():
    with pytest.raises(ValueError, match="sigma_min"):
        FixedScale(sigma_min=0.1, sigma=0.1)


def test_sample_dispatch_rejects_unknown():
    model = RMFlow(Counting())
    with pytest.raises(ValueError, match="unknown sampler"):
        sample(model, torch.zeros(2, 2), "ddim")

"""Classifier-free guidance: the null condition, the CFG combination, the guided CMFM target (against float64 finite
differences and against the closed-form fixed point on 1-D Gaussian classes), the samplers, config and sampler-spec
checks, and the U-Net's guidance input."""
import pytest
import torch
from torch import nn

from rmflow.config import ConfigError, check_samplers, load_config, parse_sampler, parse_sampler_spec
from rmflow.flow import CMFMLoss, FixedScale, GaussianSource, RMFlow, RMFlowObjective, TimeSampler, sample
from rmflow.flow.cmfm import ClassifierFreeGuidance, GuidanceDraw
from rmflow.flow.rows import null_condition, with_guidance
from rmflow.flow.samplers import GuidedField, cfg_combine, flow_matching_ode, meanflow, one_step, takes_guidance


# ------------------------------------------------------------------------------------------------ null condition
def test_null_condition_zeroes_exactly_the_dropped_rows_of_every_tensor():
    g = torch.Generator().manual_seed(0)
    cond = {"text": torch.randn(5, 3, generator=g) + 1, "meta": {"ids": torch.arange(1, 6),
                                                               "flag": torch.ones(5, dtype=torch.bool),
                                                               "img": torch.rand(5, 2, 2, generator=g) + 1},
            "name": "caption"}
    drop = torch.tensor([True, False, True, False, False])
    out = null_condition(cond, drop)
    assert out["name"] == "caption"
    for got, orig in ((out["text"], cond["text"]), (out["meta"]["ids"], cond["meta"]["ids"]),
                      (out["meta"]["flag"], cond["meta"]["flag"]), (out["meta"]["img"], cond["meta"]["img"])):
        assert got.shape == orig.shape and got.dtype == orig.dtype
        assert not got[drop].any()                   # dropped rows: all zero
        assert torch.equal(got[~drop], orig[~drop])  # kept rows: untouched
    assert cond["text"][0].abs().min() > 0                # the input is not modified in place
    every = null_condition(cond)                         # drop=None: every row
    assert not every["text"].any() and not every["meta"]["ids"].any()
    assert null_condition(None, drop) is None
    with pytest.raises(ValueError, match="row per sample"):
        null_condition({"w": torch.ones(3)}, drop)


class Recorder(nn.Module):
    """u = x·0.5 + mean of cond["text"]; records every (cond, mask) it is called with."""

    def __init__(self):
        super().__init__()
        self.calls = []
        self.p = nn.Parameter(torch.tensor(0.5))

    def forward(self, x, t, r, cond=None, mask=None):
        self.calls.append((cond, mask))
        return self.p * x + cond["text"].mean(1, keepdim=True)[:, :, None].expand_as(x)


def test_dropout_in_the_objective_nulls_conditions_and_never_masks():
    torch.manual_seed(0)
    net = Recorder()
    model = RMFlow(net, GaussianSource(), FixedScale(0.1, 0.0))
    obj = RMFlowObjective(model, CMFMLoss(TimeSampler(ratio_neq=0.0)),
                          guidance=ClassifierFreeGuidance(p_drop=0.5))
    cond = {"text": torch.rand(64, 4) + 1}
    mask = (torch.rand(64, 3, 1) > 0.3).float()
    obj(torch.randn(64, 3, 1), cond, mask)
    (seen, seen_mask), = net.calls
    assert seen_mask is mask                       # masks pass through untouched
    dropped = ~seen["text"].any(1)
    assert 10 < dropped.sum() < 54                 # about half the rows are ∅ ...
    assert torch.equal(seen["text"][~dropped], cond["text"][~dropped])   # ... the others keep their condition
    assert "guidance" not in seen                  # a net without ω input never sees a scale
    off = RMFlowObjective(model, CMFMLoss(TimeSampler()), guidance=ClassifierFreeGuidance())
    assert off.guidance is None                    # the defaults switch guidance off entirely


# ------------------------------------------------------------------------------------------------ CFG combination
class LinearInCond(nn.Module):
    """u = x·W + t·a + cond["text"]·B: linear in the condition."""

    def __init__(self, dim=3, cdim=2):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.W = nn.Parameter(torch.randn(dim, dim, generator=g))
        self.B = nn.Parameter(torch.randn(cdim, dim, generator=g))
        self.a = nn.Parameter(torch.randn(dim, generator=g))

    def forward(self, x, t, r, cond=None, mask=None):
        return x @ self.W + t[:, None] * self.a + cond["text"] @ self.B


def test_cfg_combination_at_one_zero_and_a_linear_net():
    net = LinearInCond().double()
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.rand(4, generator=g, dtype=torch.float64)
    cond = {"text": torch.randn(4, 2, generator=g, dtype=torch.float64)}
    conditional = net(x, t, t, cond)
    unconditional = net(x, t, t, {"text": torch.zeros(4, 2, dtype=torch.float64)})
    assert torch.equal(GuidedField(net, cond, None, 1.0)(x, t, t), conditional)
    assert torch.equal(GuidedField(net, cond, None, 0.0)(x, t, t), unconditional)
    field = GuidedField(net, cond, None, 2.5)
    assert field.evals == 2
    with torch.no_grad():   # by hand: u(∅) + 2.5·(u(c) − u(∅)) = x·W + t·a + 2.5·c·B
        expected = x @ net.W + t[:, None] * net.a + 2.5 * (cond["text"] @ net.B)
    torch.testing.assert_close(field(x, t, t), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cfg_combine(conditional, unconditional, 2.5), expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=">= 0"):
        GuidedField(net, cond, None, -1.0)
    with pytest.raises(ValueError, match="conditional"):
        GuidedField(net, None, None, 2.0)


# ------------------------------------------------------------------------------------------ the guided CMFM target
class Tiny(nn.Module):
    """A small nonlinear u(x, t, r | c[, ω]) on (B, 3) with cond {"text": (B, 2)[, "guidance": (B,)]}."""

    def __init__(self, takes=False):
        super().__init__()
        torch.manual_seed(5)
        self.takes_guidance = takes
        self.lin = nn.Linear(3 + 2 + 2 + int(takes), 16)
        self.out = nn.Linear(16, 3)

    def forward(self, x, t, r, cond=None, mask=None):
        parts = [x, cond["text"], t[:, None], r[:, None]]
        if self.takes_guidance:
            parts.append(cond["guidance"][:, None])
        elif "guidance" in cond:
            raise ValueError("no guidance input")
        return self.out(torch.tanh(self.lin(torch.cat(parts, -1))))


class TargetSpy(CMFMLoss):
    """Records the target that __call__ regresses."""

    def target(self, *args, **kwargs):
        out = super().target(*args, **kwargs)
        self.seen = out[0]
        return out


@pytest.mark.parametrize("as_input", [False, True])
def test_guided_target_matches_float64_finite_differences(as_input):
    net = Tiny(as_input).double()
    g = torch.Generator().manual_seed(2)
    n = 6
    x0, x1 = torch.randn(n, 3, generator=g, dtype=torch.float64), torch.randn(n, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([0.1, 0.3, 0.5, 0.2, 0.6, 0.4], dtype=torch.float64)
    r = torch.tensor([0.9, 0.7, 0.5, 0.8, 0.95, 1.0], dtype=torch.float64)
    dropped = torch.tensor([False, True, False, False, True, False])
    scale = torch.tensor([2.5, 1.0, 3.0, 0.5, 1.0, 1.0], dtype=torch.float64)   # 1 on dropped rows, and one kept row
    cond = null_condition({"text": torch.randn(n, 2, generator=g, dtype=torch.float64)}, dropped)
    loss = TargetSpy(TimeSampler())
    loss(net, x0, x1, cond, times=(t, r), guidance=GuidanceDraw(scale, dropped, as_input))

    def u(x, tt, rr, c, w):
        return net(x, tt, rr, with_guidance(c, w) if as_input else c)

    with torch.no_grad():
        tt = t[:, None]
        x_t, v = (1 - tt) * x0 + tt * x1, x1 - x0
        ones = torch.ones(n, dtype=torch.float64)
        u_null = u(x_t, t, t, {"text": torch.zeros(n, 2, dtype=torch.float64)}, ones)
        w = scale[:, None]
        v_tilde = torch.where(dropped[:, None], v, w * v + (1 - w) * u_null)
        h = 1e-6
        dudt = (u(x_t + h * v_tilde, t + h, r, cond, scale) - u(x_t - h * v_tilde, t - h, r, cond, scale)) / (2 * h)
        expected = v_tilde + (r - t)[:, None] * dudt
    assert (v_tilde[0] - v[0]).abs().max() > 1e-2      # the guidance changes the target on kept rows
    torch.testing.assert_close(loss.seen, expected, rtol=1e-7, atol=1e-8)
    unguided = TargetSpy(TimeSampler())
    unguided(net, x0, x1, cond if not as_input else with_guidance(cond, ones), times=(t, r))
    torch.testing.assert_close(loss.seen[dropped], unguided.seen[dropped], rtol=0, atol=0)   # dropped rows: as today


# ---------------------------------------------------------------------- the fixed point on 1-D Gaussian classes
MU, S, T = (-1.5, 1.5), 0.5, 0.4


def _class_velocity(x, t, mu):
    """E[x1 − x0 | x_t = x, c] for x1 ~ N(mu, S²), x0 ~ N(0, 1), and the density of x_t (up to a constant)."""
    var = (1 - t) ** 2 + t ** 2 * S ** 2
    mean = mu + (t * S ** 2 - (1 - t)) / var * (x - t * mu)
    return mean, torch.exp(-0.5 * (x - t * mu) ** 2 / var)


class ClosedForm(nn.Module):
    """The exact instantaneous velocity fields as "the network": cond {"text": one-hot (B, 2)} for class 0 or 1,
    zeros for ∅ (the two-class mixture with equal weights)."""

    def forward(self, x, t, r, cond=None, mask=None):
        c = cond["text"]
        (m0, p0), (m1, p1) = (_class_velocity(x[:, 0], t, mu) for mu in MU)
        uncond = (p0 * m0 + p1 * m1) / (p0 + p1)
        out = torch.where(c[:, 0] > 0, m0, torch.where(c[:, 1] > 0, m1, uncond))
        return out[:, None]


def _pairs_at(x_t, cls, n=40001):
    """Exact enumeration of the pairs (x0, x1) with (1 − T)·x0 + T·x1 = x_t: x0 on a fine grid, weighted by the
    density p0(x0)·p1(x1 | c) (the Jacobian is constant at fixed x_t); cls: the class of each half of the grid."""
    x0 = torch.linspace(-9, 9, n, dtype=torch.float64)
    x1 = (x_t - (1 - T) * x0) / T
    weight = torch.exp(-0.5 * x0 ** 2) * torch.exp(-0.5 * (x1 - MU[cls]) ** 2 / S ** 2)
    return x0[:, None], x1[:, None], weight


@pytest.mark.parametrize("x_t", [-1.0, 0.0, 0.3, 1.2])
def test_guided_target_has_the_cfg_velocity_as_its_fixed_point(x_t):
    """At r = t the regression target's mean given (x_t, c, ω) is ω·E[v | x_t, c] + (1 − ω)·E[v | x_t], and on
    dropped rows E[v | x_t]: plugging the closed-form fields into the guided target, with exact enumeration."""
    net, w, cls = ClosedForm(), 2.5, 1
    loss = TargetSpy(TimeSampler())
    x0, x1, weight = _pairs_at(x_t, cls)
    n = len(x0)
    onehot = torch.zeros(n, 2, dtype=torch.float64)
    onehot[:, cls] = 1
    t = torch.full((n,), T, dtype=torch.float64)
    loss(net, x0, x1, {"text": onehot}, times=(t, t),
         guidance=GuidanceDraw(torch.full((n,), w, dtype=torch.float64), torch.zeros(n, dtype=torch.bool)))
    mean_target = (weight * loss.seen[:, 0]).sum() / weight.sum()
    xt = torch.tensor([x_t], dtype=torch.float64)
    (m0, p0), (m1, p1) = (_class_velocity(xt, T, mu) for mu in MU)
    cond_v, uncond_v = (m0, m1)[cls], (p0 * m0 + p1 * m1) / (p0 + p1)
    assert abs(float(mean_target - (w * cond_v + (1 - w) * uncond_v))) < 1e-7
    assert abs(float(cond_v - uncond_v)) > 0.1              # the check can tell the fields apart

    # dropped rows (∅, ω = 1): both classes' pairs, equal weights: the target's mean is the unconditional field
    halves = [_pairs_at(x_t, c) for c in (0, 1)]
    x0 = torch.cat([h[0] for h in halves])
    x1 = torch.cat([h[1] for h in halves])
    weight = torch.cat([h[2] for h in halves])
    m = len(x0)
    t = torch.full((m,), T, dtype=torch.float64)
    loss(net, x0, x1, {"text": torch.zeros(m, 2, dtype=torch.float64)}, times=(t, t),
         guidance=GuidanceDraw(torch.ones(m, dtype=torch.float64), torch.ones(m, dtype=torch.bool)))
    mean_target = (weight * loss.seen[:, 0]).sum() / weight.sum()
    assert abs(float(mean_target - uncond_v)) < 1e-7


def test_draw_gives_uniform_scales_and_one_on_dropped_rows():
    torch.manual_seed(0)
    cfg = ClassifierFreeGuidance(p_drop=0.2, w_min=1.0, w_max=4.0)
    cond, draw = cfg.draw({"text": torch.ones(100_000, 1)}, 100_000, "cpu")
    assert abs(draw.dropped.float().mean().item() - 0.2) < 0.01
    assert torch.equal(~cond["text"][:, 0].bool(), draw.dropped)
    assert (draw.scale[draw.dropped] == 1).all()
    kept = draw.scale[~draw.dropped]
    assert kept.min() >= 1 and kept.max() <= 4 and abs(kept.mean().item() - 2.5) < 0.02
    assert abs(kept.var().item() - 9 / 12) < 0.02           # uniform on [1, 4]
    with pytest.raises(ValueError, match="conditional"):
        cfg.draw(None, 4, "cpu")


# ------------------------------------------------------------------------------------------------------ samplers
class Counting(nn.Module):
    """u = cond["text"] broadcast (constant in x); counts calls and records the conditions."""

    def __init__(self, takes=False):
        super().__init__()
        self.takes_guidance = takes
        self.calls = []
        self.p = nn.Parameter(torch.zeros(()))   # evaluate.draw_samples reads the device from a parameter

    def forward(self, x, t, r, cond=None, mask=None):
        self.calls.append(cond)
        return cond["text"].expand_as(x).clone()


@pytest.mark.parametrize("method,steps,nfe", [("meanflow", 4, 4), ("rmflow", 1, 1), ("fm", 5, 5), ("fm_heun", 5, 9)])
def test_samplers_give_a_guided_network_its_scale_and_count_nfe(method, steps, nfe):
    cond = {"text": torch.full((3, 1), 2.0)}
    x0 = torch.zeros(3, 2)
    net = Counting(takes=True)
    model = RMFlow(net, GaussianSource(), FixedScale(1e-3, 0.0))
    assert takes_guidance(model) and takes_guidance(net)
    res = sample(model, x0, method, steps, cond, guidance=3.5, generator=torch.Generator().manual_seed(0))
    assert res.nfe == nfe and len(net.calls) == nfe
    assert all(torch.equal(c["guidance"], torch.full((3,), 3.5)) for c in net.calls)
    assert "guidance" not in cond                      # the caller's condition is not modified
    plain = Counting()                                 # standard CFG: two evaluations per step, NFE counted
    model = RMFlow(plain, GaussianSource(), FixedScale(1e-3, 0.0))
    res = sample(model, x0, method, steps, cond, guidance=3.5, generator=torch.Generator().manual_seed(0))
    assert res.nfe == 2 * nfe and len(plain.calls) == 2 * nfe
    assert sum(not c["text"].any() for c in plain.calls) == nfe   # half of them at ∅
    if method in ("meanflow", "fm"):                   # constant velocities: x1 = ∅ + 3.5·(c − ∅) = 7
        torch.testing.assert_close(res.x, torch.full((3, 2), 7.0))


def test_unguided_network_at_scale_one_samples_bit_for_bit_as_before():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 2))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = net

        def forward(self, x, t, r, cond=None, mask=None):
            return self.body(torch.cat([x, t[:, None], r[:, None], cond["text"]], -1))

    model = RMFlow(Net(), GaussianSource(), FixedScale(0.05, 0.0))
    cond = {"text": torch.randn(50, 1)}
    x0 = torch.randn(50, 2)
    for fn, kw in ((meanflow, {"steps": 3}), (flow_matching_ode, {"steps": 7, "method": "heun"})):
        a, b = fn(model, x0, cond=cond, **kw), fn(model, x0, cond=cond, guidance=1.0, **kw)
        assert torch.equal(a.x, b.x) and a.nfe == b.nfe
    a = one_step(model, x0, cond, generator=torch.Generator().manual_seed(1))
    b = one_step(model, x0, cond, generator=torch.Generator().manual_seed(1), guidance=1.0)
    assert torch.equal(a.x, b.x) and a.nfe == b.nfe == 1
    c = meanflow(model, x0, 3, cond, guidance=2.0)
    assert c.nfe == 6 and not torch.equal(c.x, meanflow(model, x0, 3, cond).x)


def test_evaluate_draws_with_the_spec_scale():
    from rmflow.evaluate import draw_samples, sampler_label
    from rmflow.tasks import Batch
    net = Counting(takes=True)
    model = RMFlow(net, GaussianSource(), FixedScale(1e-3, 0.0))
    reference = Batch(torch.zeros(6, 2), {"text": torch.ones(6, 1)})
    x, nfe, _ = draw_samples(model, reference, "meanflow@2:w=1.5", seed=0)
    assert nfe == 2 and all(torch.equal(c["guidance"], torch.full((6,), 1.5)) for c in net.calls)
    assert sampler_label("meanflow@8:w=2.5") == "MeanFlow 8-step ω=2.5"
    assert sampler_label("meanflow@8") == "MeanFlow 8-NFE"
    with pytest.raises(ConfigError, match="meanflow@2:w=2"):
        draw_samples(model, Batch(torch.zeros(6, 2)), "meanflow@2:w=2", seed=0)   # no condition to guide


# ---------------------------------------------------------------------------------------- config and spec checks
@pytest.mark.parametrize("override,key", [
    (["flow.guidance.p_drop=1.0"], "flow.guidance.p_drop"),
    (["flow.guidance.p_drop=-0.1"], "flow.guidance.p_drop"),
    (["flow.guidance.p_drop=0.1", "flow.guidance.w_min=-1"], "flow.guidance.w_min"),
    (["flow.guidance.p_drop=0.1", "flow.guidance.w_min=3", "flow.guidance.w_max=2"], "flow.guidance.w_max"),
    (["flow.guidance.w_max=2"], "flow.guidance.p_drop"),                  # a guided target needs ∅ training
    (["flow.guidance.scale=2"], "flow.guidance.scale"),                   # unknown key
])
def test_guidance_config_errors_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("ring", override)


def test_guidance_defaults_are_off_and_build_refuses_what_cannot_work():
    from rmflow.tasks import Batch
    from rmflow.train.build import build_guidance, build_objective
    cfg = load_config("ring")
    assert not cfg.flow.guidance.enabled
    assert (cfg.flow.guidance.p_drop, cfg.flow.guidance.w_min, cfg.flow.guidance.w_max) == (0.0, 1.0, 1.0)

    class Stub:
        def __init__(self, cond):
            self.cond = cond

        def batch(self, n):
            return Batch(torch.zeros(n, 2), self.cond(n) if self.cond else None)

    plain = RMFlow(Counting(), GaussianSource())
    guided = RMFlow(Counting(takes=True), GaussianSource())
    on = load_config("ring", ["flow.guidance.p_drop=0.1", "flow.guidance.w_max=4", "rmflow.lambda_nll=0"])
    with pytest.raises(ConfigError, match="flow.guidance.p_drop.*conditional task"):
        build_objective(on, guided, Stub(None), torch.device("cpu"))
    with pytest.raises(ConfigError, match="flow.guidance.w_max.*takes ω"):
        build_guidance(on, plain, Stub(lambda n: {"text": torch.ones(n, 1)}))
    with pytest.raises(ConfigError, match="dict condition"):
        build_guidance(on, guided, Stub(lambda n: torch.ones(n, 1)))
    g = build_guidance(on, guided, Stub(lambda n: {"text": torch.ones(n, 1)}))
    assert g.as_input and (g.p_drop, g.w_min, g.w_max) == (0.1, 1.0, 4.0)
    fixed = load_config("ring", ["flow.guidance.p_drop=0.1", "flow.guidance.w_min=2", "flow.guidance.w_max=2"])
    g = build_guidance(fixed, plain, Stub(lambda n: torch.ones(n, 1)))   # one baked-in scale: any net, any cond
    assert not g.as_input and g.w_min == g.w_max == 2


def test_sampler_spec_guidance_suffix():
    assert parse_sampler_spec("meanflow@8:w=2.5") == ("meanflow", 8, 2.5)
    assert parse_sampler_spec("rmflow:w=0") == ("rmflow", 1, 0.0)
    assert parse_sampler_spec("fm:w=1.5") == ("fm", 100, 1.5)
    assert parse_sampler_spec("fm_heun@10") == ("fm_heun", 10, None)
    assert parse_sampler("meanflow@8:w=2.5") == ("meanflow", 8)
    for bad in ("meanflow@8:w=", "meanflow@8:x=2", "meanflow@8:w=abc", "meanflow@8:w=-1", "meanflow@8:w=nan",
                "meanflow@8:", "rmflow:w=inf"):
        with pytest.raises(ValueError, match="guidance suffix"):
            parse_sampler_spec(bad)
    with pytest.raises(ValueError, match="step count"):
        parse_sampler_spec("meanflow@x:w=2")
    with pytest.raises(ConfigError, match=r"eval\.samplers\[1\].*guidance suffix"):
        load_config("ring", ["eval.samplers=[rmflow, 'meanflow@8:w=two']"])
    cfg = load_config("ring", ["eval.samplers=[rmflow, meanflow@8:w=2.5]"])    # YAML keeps the suffix
    assert cfg.eval.samplers == ["rmflow", "meanflow@8:w=2.5"]
    check_samplers(["meanflow@1:w=1", "fm@10:w=3"])


# ----------------------------------------------------------------------------------------------------- the U-Net
def test_unet_guidance_input_changes_the_output_and_plain_unet_refuses_it():
    from rmflow.nets.unet import UNet
    torch.manual_seed(0)
    plain = UNet(1, channels=8, cond_dim=6, heads=2)
    torch.manual_seed(0)
    guided = UNet(1, channels=8, cond_dim=6, heads=2, guidance_embed=True)
    assert guided.takes_guidance and not plain.takes_guidance
    assert not hasattr(plain, "guidance_emb")
    for (name, p), (name2, q) in zip(plain.named_parameters(), guided.named_parameters()):
        assert name == name2 and torch.equal(p, q)           # the same initial weights for every shared layer
    assert sum(p.numel() for p in guided.parameters()) > sum(p.numel() for p in plain.parameters())
    x, t, r = torch.randn(2, 1, 8, 8), torch.rand(2), torch.rand(2)
    text = torch.randn(2, 6)
    a = guided(x, t, r, {"text": text, "guidance": torch.tensor([1.0, 1.0])})
    b = guided(x, t, r, {"text": text, "guidance": torch.tensor([3.0, 1.0])})
    assert (a[0] - b[0]).abs().max() > 1e-5                                # depends on ω ...
    torch.testing.assert_close(a[1], b[1])                                 # ... row by row
    assert torch.equal(guided(x, t, r, {"text": text}), a)                 # a missing scale means ω = 1
    with pytest.raises(ValueError, match="guidance_embed"):
        plain(x, t, r, {"text": text, "guidance": torch.ones(2)})

    def f(x_, t_):                                                         # the JVP runs through the ω input
        return guided(x_, t_, r, {"text": text, "guidance": torch.tensor([2.0, 0.5])})
    _, d = torch.func.jvp(f, (x, t), (torch.ones_like(x), torch.ones_like(t)))
    assert torch.isfinite(d).all()

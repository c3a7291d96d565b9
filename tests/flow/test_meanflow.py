"""The MeanFlow target and its JVP against independent computations; and improved MeanFlow (iMF, Geng et al.
2025, arXiv 2512.02012; flow.objective = imf):

    v̂ = sg(u(x_t, t, t)),  D = sg(J_x u(x_t, t, r) · v̂ + ∂_t u(x_t, t, r)),  V = u(x_t, t, r) - (r - t) D,
    L = w · ‖V - v‖².
"""
import math

import pytest
import torch
from torch import nn

from rmflow.config import ConfigError, load_config
from rmflow.flow import CMFMLoss, TimeSampler, mean_velocity_time_derivative
from rmflow.nets import MLP


def _central_difference_dudt(net, x, t, r, v, h=1e-6):
    """d/dh u(x + h v, t + h, r) at h = 0 by float64 central differences."""
    with torch.no_grad():
        up = net(x + h * v, t + h, r, None, None)
        dn = net(x - h * v, t - h, r, None, None)
    return (up - dn) / (2 * h)


@pytest.mark.parametrize("backend", ["func", "autograd"])
def test_jvp_matches_float64_central_differences(backend):
    net = MLP(3, hidden=32, depth=2, time_dim=16).double()
    x, v = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    t = torch.rand(5, dtype=torch.float64) * 0.5
    r = t + 0.3
    u, dudt = mean_velocity_time_derivative(net, x, t, r, v, backend=backend)
    torch.testing.assert_close(u, net(x, t, r, None, None).detach())
    torch.testing.assert_close(dudt, _central_difference_dudt(net, x, t, r, v), rtol=1e-6, atol=1e-7)


class GaussianAverageVelocity(nn.Module):
    """Exact average velocity for source N(0, I) -> data N(mu, s² I) on the linear path.

    x_t = t·mu + σ_t·z with σ_t = sqrt((1-t)² + t² s²); the ODE maps x_t to x_r = r·mu + (σ_r/σ_t)(x_t - t·mu),
    so u(x, t, r) = (x_r - x) / (r - t), and at r = t the instantaneous velocity mu + σ_t'/σ_t (x - t·mu).
    """

    def __init__(self, mu, s):
        super().__init__()
        self.mu, self.s = mu, s

    def sig(self, t):
        return torch.sqrt((1 - t) ** 2 + t ** 2 * self.s ** 2)

    def forward(self, x, t, r, cond=None, mask=None):
        t_, r_ = t[:, None], r[:, None]
        centred = x - t_ * self.mu
        dsig = (-(1 - t_) + t_ * self.s ** 2) / self.sig(t_)
        inst = self.mu + dsig / self.sig(t_) * centred
        h = r_ - t_
        safe = torch.where(h.abs() > 1e-12, h, torch.ones_like(h))
        avg = (r_ * self.mu + self.sig(r_) / self.sig(t_) * centred - x) / safe
        return torch.where(h.abs() > 1e-12, avg, inst)


def test_target_equals_the_exact_average_velocity():
    """With the true u and the marginal velocity as v, the MeanFlow target is u itself (its fixed point)."""
    mu = torch.tensor([2.0, -1.0], dtype=torch.float64)
    exact = GaussianAverageVelocity(mu, s=0.5)
    loss = CMFMLoss(TimeSampler())
    x = torch.randn(64, 2, dtype=torch.float64)
    t = torch.rand(64, dtype=torch.float64) * 0.9
    r = t + torch.rand(64, dtype=torch.float64) * (1 - t)
    v = exact(x, t, t)
    target, _ = loss.target(exact, x, t, r, v)
    torch.testing.assert_close(target, exact(x, t, r), rtol=1e-8, atol=1e-8)
    # and a wrong sign convention would not pass: target with -(r - t) differs
    wrong = v - (r - t)[:, None] * (target - v) / (r - t)[:, None]
    assert (wrong - exact(x, t, r)).abs().max() > 1e-2


def test_exact_average_velocity_transports_the_gaussian():
    """Sanity of the closed form: one jump from 0 to 1 maps N(0, I) to N(mu, s²)."""
    mu = torch.tensor([2.0, -1.0], dtype=torch.float64)
    exact = GaussianAverageVelocity(mu, s=0.5)
    x0 = torch.randn(200_000, 2, dtype=torch.float64)
    ones = torch.ones(len(x0), dtype=torch.float64)
    x1 = x0 + exact(x0, 0 * ones, ones)
    torch.testing.assert_close(x1.mean(0), mu, atol=1e-2, rtol=0)
    torch.testing.assert_close(x1.std(0), torch.full((2,), 0.5, dtype=torch.float64), atol=1e-2, rtol=0)


def test_cmfm_loss_is_zero_at_r_equals_t_for_the_true_conditional_velocity():
    """With r = t the target is v = x1 - x0, so a net that outputs exactly v has zero loss."""
    x0, x1 = torch.randn(16, 2), torch.randn(16, 2)
    v = x1 - x0

    class Oracle(nn.Module):
        def forward(self, x, t, r, cond=None, mask=None):
            return v

    loss = CMFMLoss(TimeSampler(ratio_neq=0.0), adaptive_p=0.0)
    t = torch.rand(16)
    out = loss(Oracle(), x0, x1, times=(t, t))
    assert out.loss.abs().max() < 1e-10


def test_adaptive_weight_formula():
    net = MLP(2, hidden=16, depth=1, time_dim=8)
    x0, x1 = torch.randn(8, 2), torch.randn(8, 2)
    t = torch.rand(8)
    plain = CMFMLoss(TimeSampler(), adaptive_p=0.0)(net, x0, x1, times=(t, t))
    weighted = CMFMLoss(TimeSampler(), adaptive_p=0.75, adaptive_c=1e-2)(net, x0, x1, times=(t, t))
    expected = plain.sq_error / (plain.sq_error + 1e-2) ** 0.75
    torch.testing.assert_close(weighted.loss, expected)


def test_loss_gradients_do_not_flow_through_the_target():
    """Stop-gradient: d loss / dθ equals 2 (u - target) du/dθ with the target held fixed."""
    net = MLP(2, hidden=8, depth=1, time_dim=8).double()
    x0, x1 = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    t = torch.full((4,), 0.2, dtype=torch.float64)
    r = torch.full((4,), 0.7, dtype=torch.float64)
    loss_fn = CMFMLoss(TimeSampler(), adaptive_p=0.0)
    out = loss_fn(net, x0, x1, times=(t, r))
    grads = torch.autograd.grad(out.loss.sum(), list(net.parameters()))
    xt = 0.8 * x0 + 0.2 * x1
    target, _ = loss_fn.target(net, xt, t, r, x1 - x0)
    manual = ((net(xt, t, r, None, None) - target) ** 2).sum()
    grads2 = torch.autograd.grad(manual, list(net.parameters()))
    for a, b in zip(grads, grads2):
        torch.testing.assert_close(a, b)
    assert math.isfinite(float(out.loss.detach().sum()))


# ---------------------------------------------------------------------------------------------------- iMF
def _central_difference_imf(net, x, t, r, h=1e-6):
    """d/dh u(x + h v̂, t + h, r) at h = 0 with v̂ = u(x, t, t), by float64 central differences."""
    with torch.no_grad():
        v_hat = net(x, t, t, None, None)
        up = net(x + h * v_hat, t + h, r, None, None)
        dn = net(x - h * v_hat, t - h, r, None, None)
    return (up - dn) / (2 * h)


def _double_mlp(seed=0, hidden=32, depth=2):
    torch.manual_seed(seed)
    return MLP(3, hidden=hidden, depth=depth, time_dim=16).double()


# -------------------------------------------------------------------------------------------- a. the JVP term D
@pytest.mark.parametrize("backend", ["func", "autograd"])
def test_imf_derivative_matches_float64_central_differences(backend):
    net = _double_mlp()
    x = torch.randn(6, 3, dtype=torch.float64)
    v = torch.randn(6, 3, dtype=torch.float64)    # the conditional velocity: must play no part in D
    t = torch.rand(6, dtype=torch.float64) * 0.5
    r = t + 0.3
    d = CMFMLoss(TimeSampler(), jvp_backend=backend, objective="imf").imf_derivative(net, x, t, r, v)
    fd = _central_difference_imf(net, x, t, r)
    torch.testing.assert_close(d, fd, rtol=1e-6, atol=1e-7)
    # the tangent is the model's velocity, not v: the MeanFlow du/dt along v is a different vector
    _, along_v = mean_velocity_time_derivative(net, x, t, r, v)
    assert (along_v - fd).abs().max() > 1e-3
    assert not d.requires_grad


def test_imf_derivative_on_the_r_neq_t_subset():
    """jvp_subset: D on the rows with r != t equals the full-batch D; the rows with r = t get 0."""
    net = _double_mlp(1)
    x, v = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)
    t = torch.rand(8, dtype=torch.float64) * 0.5
    r = t.clone()
    r[::2] += 0.4
    full = CMFMLoss(TimeSampler(), objective="imf").imf_derivative(net, x, t, r, v)
    sub = CMFMLoss(TimeSampler(), jvp_subset=True, objective="imf").imf_derivative(net, x, t, r, v)
    torch.testing.assert_close(sub[::2], full[::2], rtol=1e-10, atol=1e-12)
    assert torch.equal(sub[1::2], torch.zeros_like(sub[1::2]))
    torch.testing.assert_close(sub[::2], _central_difference_imf(net, x, t, r)[::2], rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------- b. the loss and θ
def test_imf_loss_gradient_is_that_of_the_equivalent_meanflow_form():
    """V_θ - v = u_θ - (v + (r - t) D) with D held fixed: the iMF loss and that regression have equal θ-gradients."""
    net = _double_mlp(2, hidden=16, depth=1)
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(8, 3, dtype=torch.float64, generator=g)
    x1 = torch.randn(8, 3, dtype=torch.float64, generator=g) * 2 + 1
    t = torch.rand(8, dtype=torch.float64, generator=g) * 0.6
    r = t + torch.rand(8, dtype=torch.float64, generator=g) * (1 - t)
    imf = CMFMLoss(TimeSampler(), adaptive_p=0.0, objective="imf")
    out = imf(net, x0, x1, times=(t, r))
    params = list(net.parameters())
    grads = torch.autograd.grad(out.loss.sum(), params)

    xt = (1 - t)[:, None] * x0 + t[:, None] * x1
    v = x1 - x0
    with torch.no_grad():
        v_hat = net(xt, t, t, None, None)
    _, d = mean_velocity_time_derivative(net, xt, t, r, v_hat)          # independent of imf_derivative
    manual = ((net(xt, t, r, None, None) - (v + (r - t)[:, None] * d)) ** 2).sum()
    grads2 = torch.autograd.grad(manual, params)
    for a, b in zip(grads, grads2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.sq_error.double(), ((net(xt, t, r, None, None) - (r - t)[:, None] * d - v) ** 2)
                               .sum(1).detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.dudt_norm.double(), d.norm(dim=1), rtol=1e-5, atol=1e-6)

    # it is not the MeanFlow loss (whose JVP runs along v), so the check above can tell them apart
    mf = CMFMLoss(TimeSampler(), adaptive_p=0.0)(net, x0, x1, times=(t, r))
    assert (mf.sq_error - out.sq_error).abs().max() > 1e-3


@pytest.mark.parametrize("adaptive_p", [0.0, 1.0])
def test_imf_equals_meanflow_at_r_equals_t(adaptive_p):
    net = MLP(3, hidden=16, depth=1, time_dim=8)
    x0, x1 = torch.randn(16, 3), torch.randn(16, 3)
    t = torch.rand(16)
    mf = CMFMLoss(TimeSampler(), adaptive_p=adaptive_p)(net, x0, x1, times=(t, t))
    imf = CMFMLoss(TimeSampler(), adaptive_p=adaptive_p, objective="imf")(net, x0, x1, times=(t, t))
    torch.testing.assert_close(imf.loss, mf.loss, rtol=0, atol=0)
    torch.testing.assert_close(imf.sq_error, mf.sq_error, rtol=0, atol=0)
    # with ratio_neq = 0 neither runs a JVP, and both are flow matching
    torch.manual_seed(5)
    mf0 = CMFMLoss(TimeSampler(ratio_neq=0.0), adaptive_p=adaptive_p)(net, x0, x1)
    torch.manual_seed(5)
    imf0 = CMFMLoss(TimeSampler(ratio_neq=0.0), adaptive_p=adaptive_p, objective="imf")(net, x0, x1)
    assert torch.equal(imf0.loss, mf0.loss) and torch.equal(imf0.dudt_norm, torch.zeros(16))


def test_unknown_objective_is_refused():
    with pytest.raises(ValueError, match="objective"):
        CMFMLoss(TimeSampler(), objective="meanflo")


# ------------------------------------------------------------------- c. the exact average velocity is stationary
def test_exact_average_velocity_gives_the_marginal_velocity():
    """u = the exact average velocity of N(0, I) -> N(mu, s²): V = u - (r - t) D is the marginal velocity E[v | x_t],
    so the iMF residual E[V - v | x_t] vanishes (a stationary point of L_iMF)."""
    mu = torch.tensor([2.0, -1.0], dtype=torch.float64)
    exact = GaussianAverageVelocity(mu, s=0.5)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, dtype=torch.float64, generator=g) * 2
    t = torch.rand(64, dtype=torch.float64, generator=g) * 0.9
    r = t + torch.rand(64, dtype=torch.float64, generator=g) * (1 - t)
    noise = torch.randn(64, 2, dtype=torch.float64, generator=g)   # a conditional v: only the masked-out tangent
    d = CMFMLoss(TimeSampler(), objective="imf").imf_derivative(exact, x, t, r, noise)
    compound = exact(x, t, r) - (r - t)[:, None] * d
    marginal = exact(x, t, t)
    torch.testing.assert_close(compound, marginal, rtol=1e-8, atol=1e-8)

    # a model whose average velocity is off is not stationary: the check can fail
    class Off(GaussianAverageVelocity):
        def forward(self, x, t, r, cond=None, mask=None):
            return super().forward(x, t, r) + 0.3 * (r - t)[:, None] * x

    off = Off(mu, s=0.5)
    d_off = CMFMLoss(TimeSampler(), objective="imf").imf_derivative(off, x, t, r, noise)
    assert (off(x, t, r) - (r - t)[:, None] * d_off - marginal).abs().max() > 1e-2


def test_exact_model_has_the_pure_noise_imf_loss():
    """Through the loss itself: with the exact model V - v = E[v | x_t] - v, so sq_error is ‖E[v | x_t] - v‖²
    (the irreducible noise of the conditional velocity), row by row for paired (x0, x1)."""
    mu = torch.tensor([2.0, -1.0], dtype=torch.float64)
    exact = GaussianAverageVelocity(mu, s=0.5)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(32, 2, dtype=torch.float64, generator=g)
    x1 = mu + 0.5 * torch.randn(32, 2, dtype=torch.float64, generator=g)
    t = torch.rand(32, dtype=torch.float64, generator=g) * 0.9
    r = t + torch.rand(32, dtype=torch.float64, generator=g) * (1 - t)
    out = CMFMLoss(TimeSampler(), adaptive_p=0.0, objective="imf")(exact, x0, x1, times=(t, r))
    xt = (1 - t)[:, None] * x0 + t[:, None] * x1
    expected = (exact(xt, t, t) - (x1 - x0)).pow(2).sum(1)
    torch.testing.assert_close(out.sq_error.double(), expected, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------- d. the config
def test_objective_config():
    assert load_config("ring").flow.objective == "meanflow"
    assert load_config("ring", ["flow.objective=imf"]).flow.objective == "imf"
    with pytest.raises(ConfigError, match=r"flow\.objective"):
        load_config("ring", ["flow.objective=improved"])


# ------------------------------------------------------------------------------------------ e. a training smoke
def test_imf_trains_the_ring():
    from rmflow.train.lora import trainer_class
    cfg = load_config("ring", ["flow.objective=imf", "flow.adaptive_p=0", "flow.time.ratio_neq=0.5",
                               "rmflow.lambda_nll=0", "rmflow.refine=fixed", "rmflow.teacher_bank=0",
                               "rmflow.teacher_filter=0", "rmflow.nll_focus=0", "model.hidden=32", "model.depth=2",
                               "train.batch_size=128", "train.steps=30", "train.warmup_steps=0",
                               "train.lr=3e-3", "train.progress=false"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = trainer_class(cfg)(cfg)
        assert trainer.objective.cmfm.objective == "imf"      # build_objective passes flow.objective on
        losses = trainer.train()
    finally:
        torch.set_num_threads(threads)
    assert len(losses) == 30 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-10:]) < sum(losses[:10])


class LinearFlowAverageVelocity(nn.Module):
    """The exact average velocity of the linear ODE dx/dt = a·x over [t, r]: x_r = x_t·e^{a(r−t)}, so
    u(x_t, t, r) = x_t·(e^{a(r−t)} − 1)/(r − t), and a·x_t at r = t."""

    def __init__(self, a: float):
        super().__init__()
        self.a = a

    def forward(self, x, t, r, cond=None, mask=None):
        h = (r - t).reshape(-1, *([1] * (x.dim() - 1)))
        safe = torch.where(h.abs() > 1e-6, h, torch.ones_like(h))
        ratio = torch.where(h.abs() > 1e-6, torch.expm1(self.a * safe) / safe, self.a + 0.5 * self.a ** 2 * h)
        return x * ratio


@pytest.mark.parametrize("objective", ["meanflow", "imf"])
def test_a_velocity_field_replaces_the_conditional_velocity(objective):
    """With `velocity` = the field a·x, the exact average velocity of its ODE is a zero of L_CMFM (and of L_iMF) on
    every (t, r) — and not a zero with the conditional velocity x1 − x0."""
    torch.manual_seed(0)
    a = -0.7
    net = LinearFlowAverageVelocity(a)
    x0, x1 = torch.randn(256, 3), torch.randn(256, 3) + 2.0
    times = TimeSampler(ratio_neq=1.0).sample(256)
    loss = CMFMLoss(TimeSampler(ratio_neq=1.0), objective=objective)
    field = loss(net, x0, x1, times=times, velocity=lambda x, t, c, m: a * x)
    assert field.sq_error.max() < 1e-8
    plain = loss(net, x0, x1, times=times)
    assert plain.sq_error.mean() > 1.0

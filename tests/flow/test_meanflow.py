"""The MeanFlow target and its JVP against independent computations."""
import math

import pytest
import torch
from torch import nn

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

import math

import pytest
import torch
from torch import distributions as D

from rmflow.flow import MixtureRefiner


def _mixture(dim=3, k=4, seed=0, pick="sample"):
    torch.manual_seed(seed)
    m = MixtureRefiner(dim, k, sigma_min=0.3, sigma=0.1, pick=pick).double()
    with torch.no_grad():  # spread the components so that the test sees real mixtures
        m.net[-1].weight.normal_()
        m.net[-1].bias.normal_()
    return m


def test_mixture_nll_matches_torch_distributions_in_float64():
    m = _mixture()
    x0, x_hat, y = (torch.randn(7, 3, dtype=torch.float64) for _ in range(3))
    means, log_w = m.mixture_params(x0, x_hat)
    s = math.sqrt(0.3 ** 2 - 0.1 ** 2)
    ref = D.MixtureSameFamily(D.Categorical(logits=log_w),
                              D.Independent(D.Normal(means, torch.full_like(means, s)), 1)).log_prob(y)
    const = 3 * math.log(s) + 1.5 * math.log(2 * math.pi)  # the constants `nll` leaves out
    torch.testing.assert_close(m.nll(x0, x_hat, y), -(s ** 2) * (ref + const))


def test_mixture_gradient_reaches_g_only_and_matches_finite_differences():
    m = _mixture(dim=2, k=3)
    x0, y = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    x_hat = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    m.nll(x0, x_hat, y).sum().backward()
    assert x_hat.grad is None  # the transport network's output is detached
    b = m.net[-1].bias
    for i in (0, 2, 8):  # an offset of component 0, one of component 1, the logit of component 2
        analytic = b.grad[i].item()
        with torch.no_grad():
            b[i] += 1e-6
            up = m.nll(x0, x_hat, y).sum().item()
            b[i] -= 2e-6
            down = m.nll(x0, x_hat, y).sum().item()
            b[i] += 1e-6
        assert analytic == pytest.approx((up - down) / 2e-6, rel=1e-5, abs=1e-8)


def test_mixture_samples_follow_the_weights_and_sit_at_the_chosen_component():
    m = _mixture(dim=2, k=3)
    x0 = torch.zeros(1, 2, dtype=torch.float64).expand(20000, 2)
    x_hat = torch.ones(1, 2, dtype=torch.float64).expand(20000, 2)
    means, log_w = m.mixture_params(x0[:1], x_hat[:1])
    x = m.refine(x0, x_hat, generator=torch.Generator().manual_seed(0))
    nearest = torch.cdist(x, means[0]).argmin(1)
    freq = torch.bincount(nearest, minlength=3).double() / len(x)
    assert torch.allclose(freq, log_w[0].exp(), atol=0.015)
    resid = x - means[0][nearest]
    assert resid.std().item() == pytest.approx(math.sqrt(0.3 ** 2 - 0.1 ** 2), rel=0.05)
    m.pick = "argmax"
    x = m.refine(x0, x_hat, generator=torch.Generator().manual_seed(0))
    assert (torch.cdist(x, means[0]).argmin(1) == log_w[0].argmax()).float().mean() > 0.99


def test_mixture_refiner_removes_the_bridge_of_a_smooth_map_across_a_jump():
    """Target y = sign(x0)·2 (a jump); the transport output is a smooth ramp, which puts mass between ±2.
    The fixed refinement keeps that mass there; the trained mixture sends each sample to one side."""
    torch.manual_seed(0)
    m = MixtureRefiner(1, 2, sigma_min=0.1, sigma=0.0, hidden=32, pick="sample")
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    ramp = lambda x0: 2 * torch.tanh(2 * x0)  # noqa: E731
    for _ in range(1500):
        x0 = torch.randn(256, 1)
        y = 2 * torch.sign(x0) + 0.1 * torch.randn_like(x0)
        loss = m.nll(x0, ramp(x0), y).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    x0 = torch.randn(20000, 1, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fixed = ramp(x0) + 0.1 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))
        mixed = m.refine(x0, ramp(x0), generator=torch.Generator().manual_seed(2))
    between = lambda x: ((x.abs() < 1.5).float().mean().item())  # noqa: E731
    assert between(fixed) > 0.2
    assert between(mixed) < 0.02
    assert abs((mixed > 0).float().mean().item() - 0.5) < 0.02  # the weights of the two sides survive
    m.pick = "argmax"
    with torch.no_grad():
        picked = m.refine(x0, ramp(x0), generator=torch.Generator().manual_seed(2))
    assert between(picked) < 0.01
    assert ((picked > 0) == (x0 > 0)).float().mean() > 0.98  # the most likely branch is the teacher's side

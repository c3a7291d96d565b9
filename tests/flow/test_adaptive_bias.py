"""The adaptive loss weight w = sg(1/(‖Δ‖² + c)^p) changes what the network learns (docs/METHOD.md §5).

Setting the gradient of E[w·‖u − v‖²] (w held fixed) to zero at a point gives u = E[w v] / E[w], with w evaluated
at u itself: a fixed point of iteratively reweighted least squares, not the conditional mean E[v]. For p = 1 it is
the stationary point of E log(‖u − v‖² + c), a Cauchy-type M-estimator that moves towards the most probable
velocity. So with p > 0 flow matching does not learn the marginal velocity field, and its ODE does not carry the
source to the data: small modes lose their mass to large ones. Only p = 0 gives the mean.
"""
import pytest
import torch
from scipy.optimize import brentq

from rmflow.flow import CMFMLoss, TimeSampler

VALUES = torch.tensor([-1.0, 3.0], dtype=torch.float64)    # two conditional velocities at one point
PROBS = torch.tensor([0.8, 0.2], dtype=torch.float64)     # their probabilities; the mean is -0.2


def irls_fixed_point(p: float, c: float) -> float:
    """The root of Σ π_i w_i (u − v_i) = 0, w_i = (‖u − v_i‖² + c)^-p, nearest the larger mass (float64)."""
    def g(u):
        w = ((u - VALUES) ** 2 + c) ** (-p)
        return float((PROBS * w * (u - VALUES)).sum())
    return brentq(g, -1.0, -0.2) if p > 0 else float((PROBS * VALUES).sum())


class Constant(torch.nn.Module):
    """u(x, t, r) = a for every input: the network at one point of the path."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))

    def forward(self, x, t, r, cond=None, mask=None):
        return self.a.expand_as(x)


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_the_weighted_loss_converges_to_the_irls_fixed_point_not_the_mean(p):
    torch.manual_seed(0)
    n = 1000
    k = torch.multinomial(PROBS, n, replacement=True)
    x0 = torch.zeros(n, 1, dtype=torch.float64)
    x1 = VALUES[k][:, None]                                  # v = x1 − x0 takes the two values
    loss_fn = CMFMLoss(TimeSampler(ratio_neq=0.0), adaptive_p=p, adaptive_c=1e-3)
    net = Constant()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)   # step ~lr: stable although w reaches 1/c near a mode
    for _ in range(1500):
        opt.zero_grad()
        loss_fn(net, x0, x1).loss.mean().backward()
        opt.step()
    learned = float(net.a.detach())
    empirical_mean = float(x1.mean())
    expected = empirical_mean if p == 0 else irls_fixed_point(p, 1e-3)
    assert learned == pytest.approx(expected, abs=0.02)
    if p > 0:   # the bias is large: at least halfway from the mean to the dominant velocity −1
        assert learned < empirical_mean - 0.4


def test_the_p1_fixed_point_sits_near_the_dominant_velocity():
    """Closed-form check of the helper: for small c the p = 1 fixed point is within O(√c) of −1, far from −0.2."""
    u = irls_fixed_point(1.0, 1e-3)
    assert -1.0 < u < -0.9

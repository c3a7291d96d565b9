"""Held-out likelihoods against closed forms (float64): the one-step model of an affine map is a Gaussian (or a
Gaussian mixture with a constant mixture refiner), and the flow-matching ODE of the Gaussian path's exact marginal
velocity carries N(0, I) onto the data Gaussian."""
import math

import pytest
import torch
from torch import distributions as D
from torch import nn

from rmflow.flow import FixedScale, GuidedSource, MixtureRefiner, RMFlow
from rmflow.flow.likelihood import flow_matching_log_likelihood, one_step_log_likelihood

DIM = 3


pytestmark = pytest.mark.usefixtures("one_thread")


def _check_against(est, ref, min_ess=20.0, z=5.0):
    """The estimate against the closed form, point by point with its own error bar: where ESS > min_ess,
    |log p̂ − log p| < z·sqrt(1/ESS) (the delta-method standard error of a log-mean of weights), and the mean error
    of those points within 4 of its standard errors plus the Jensen allowance mean(1/ESS)/2. Returns the errors."""
    err = est.per_point - ref
    ok = est.ess > min_ess
    inv = 1 / est.ess[ok]
    assert (err[ok].abs() < z * inv.sqrt()).all(), (err[ok].abs() * est.ess[ok].sqrt()).max()
    bound = 4 * math.sqrt(inv.mean().item() / ok.sum().item()) + 0.5 * inv.mean().item()
    assert abs(err[ok].mean().item()) < bound, (err[ok].mean().item(), bound)
    assert abs(est.mean - ref.mean().item()) < 3 * est.stderr   # the weak check: within the spread over points
    return err


def _affine(dim=DIM, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = 0.4 * torch.randn(dim, dim, generator=g, dtype=torch.float64)
    b = torch.randn(dim, generator=g, dtype=torch.float64)
    return a, b


class Affine(nn.Module):
    """u(x, t, r) = A x + b forwards (t < r). Backwards (t > r) either the same (time-independent, so the reverse
    map x − u(x, 1, 0) = (I − A) x − b is only an approximate inverse) or the exact inverse's velocity
    x − (I + A)⁻¹(x − b), so that x − u(x, 1, 0) = f⁻¹(x)."""

    def __init__(self, a, b, exact_inverse=True):
        super().__init__()
        self.register_buffer("a", a)
        self.register_buffer("b", b)
        self.register_buffer("inv", torch.linalg.inv(torch.eye(len(a), dtype=a.dtype) + a))
        self.exact_inverse = exact_inverse

    def forward(self, x, t, r, cond=None, mask=None):
        fwd = x @ self.a.T + self.b
        if not self.exact_inverse:
            return fwd
        back = x - (x - self.b) @ self.inv.T
        return torch.where((t > r)[:, None], back, fwd)


def _model(s, exact_inverse=True, refiner=None, seed=0):
    a, b = _affine(seed=seed)
    return RMFlow(Affine(a, b, exact_inverse), refiner=refiner or FixedScale(sigma_min=s, sigma=0.0)).double()


def _truth(s, seed=0):
    """y = (I + A) x0 + b + s ε: N(b, (I + A)(I + A)ᵀ + s² I)."""
    a, b = _affine(seed=seed)
    m = torch.eye(DIM, dtype=torch.float64) + a
    return D.MultivariateNormal(b, m @ m.T + s ** 2 * torch.eye(DIM, dtype=torch.float64))


def _held_out(dist, n, seed=1):
    torch.manual_seed(seed)
    return dist.sample((n,))


def test_prior_monte_carlo_matches_the_closed_form_of_an_affine_map():
    s = 0.5
    truth = _truth(s)
    y = _held_out(truth, 64)
    ref = truth.log_prob(y)
    # batch < num_draws: each point's draws go through the network in several chunks
    est = one_step_log_likelihood(_model(s), y, num_draws=8192, batch=3000,
                                  generator=torch.Generator().manual_seed(0))
    assert est.per_point.shape == (64,) and est.ess.shape == (64,)
    assert ((est.ess >= 1 - 1e-9) & (est.ess <= 8192 + 1e-6)).all()
    err = _check_against(est, ref)
    # the ESS flags the tail points: few prior draws land near f⁻¹(y) when y is improbable
    flagged = est.ess <= 20
    assert torch.corrcoef(torch.stack([est.ess.log(), ref]))[0, 1] > 0.5
    print(f"prior s={s}, M=8192: est {est.mean:.4f} ± {est.stderr:.4f}, closed form {ref.mean().item():.4f}; "
          f"max |err| {err[~flagged].abs().max().item():.3f} where ESS > 20 ({(~flagged).sum().item()}/64), "
          f"{err.abs().max().item():.3f} overall; median ESS {est.median_ess:.0f}")
    # the defensive mixture's density where the prior share dominates (alpha small): its weights p0/q must be right
    mostly_prior = one_step_log_likelihood(_model(s), y, num_draws=8192, generator=torch.Generator().manual_seed(1),
                                           proposal="inverse", alpha=0.2)
    assert mostly_prior.ess.min() > 50
    _check_against(mostly_prior, ref)


@pytest.mark.parametrize("proposal", ["inverse", "laplace"])
def test_importance_sampling_is_accurate_where_plain_monte_carlo_fails(proposal):
    s = 0.02
    truth = _truth(s)
    y = _held_out(truth, 200)
    ref = truth.log_prob(y)
    model = _model(s)
    est = one_step_log_likelihood(model, y, num_draws=256, generator=torch.Generator().manual_seed(0),
                                  proposal=proposal)
    prior = one_step_log_likelihood(model, y, num_draws=256, generator=torch.Generator().manual_seed(0))
    assert est.ess.min() > 10                   # no point rests on a few draws ...
    err = _check_against(est, ref)              # ... and each is within its error bar
    # plain MC at the same budget: one effective draw, hundreds of nats low (Jensen)
    err_prior = prior.per_point - ref
    assert est.median_ess > 40 * prior.median_ess and err_prior.mean().item() < -10.0
    print(f"s={s}, M=256: closed form {ref.mean().item():.3f}; {proposal} {est.mean:.3f} (mean err "
          f"{err.mean().item():+.4f}, max |err| {err.abs().max().item():.3f}, ESS median {est.median_ess:.1f} min "
          f"{est.ess.min().item():.1f}); prior MC {prior.mean:.3f} (mean err {err_prior.mean().item():.1f}, "
          f"median ESS {prior.median_ess:.2f})")


def test_an_inexact_inverse_shows_in_the_ess_and_gauss_newton_repairs_it():
    """u(x, t, r) = A x + b at every time: x0* = (I − A) y − b misses f⁻¹(y) by O(A²)·|y| ≫ s. The isotropic
    proposal around it then carries almost no weight: the defensive share keeps the estimate finite, the ESS
    says it cannot be trusted. The Laplace proposal's Gauss–Newton steps move to the posterior mode."""
    s = 0.02
    truth = _truth(s)
    y = _held_out(truth, 100)
    ref = truth.log_prob(y)
    model = _model(s, exact_inverse=False)
    iso = one_step_log_likelihood(model, y, num_draws=256, generator=torch.Generator().manual_seed(0),
                                  proposal="inverse")
    lap = one_step_log_likelihood(model, y, num_draws=256, generator=torch.Generator().manual_seed(0),
                                  proposal="laplace")
    assert torch.isfinite(iso.per_point).all()
    assert iso.median_ess < 3 and (iso.per_point - ref).mean().item() < -10.0
    assert lap.ess.min() > 100
    _check_against(lap, ref)
    print(f"inexact inverse: isotropic ESS {iso.median_ess:.2f}, err {(iso.per_point - ref).mean().item():.1f}; "
          f"laplace ESS {lap.median_ess:.1f}, err {(lap.per_point - ref).mean().item():+.4f}")


def test_few_draws_are_biased_low_as_jensen_says():
    s = 0.5
    truth = _truth(s)
    y = _held_out(truth, 2000)
    ref = truth.log_prob(y)
    model = _model(s)
    gaps = [(one_step_log_likelihood(model, y, num_draws=m, generator=torch.Generator().manual_seed(m)).per_point
             - ref) for m in (2, 32)]
    for gap in gaps:   # significantly below the truth on average
        assert gap.mean().item() + 3 * gap.std().item() / math.sqrt(len(gap)) < 0
    assert gaps[1].mean().item() > 0.5 * gaps[0].mean().item()   # and the gap closes as M grows
    print(f"Jensen gap: M=2 {gaps[0].mean().item():.3f}, M=32 {gaps[1].mean().item():.3f}")


def test_mixture_refiner_with_constant_offsets_is_a_gaussian_mixture():
    sigma_min, sigma = 0.35, 0.1
    s = math.sqrt(sigma_min ** 2 - sigma ** 2)
    offsets = torch.tensor([[0.0, 0.0, 0.0], [3.0, -1.0, 0.5], [-2.0, 2.0, 1.0]], dtype=torch.float64)
    logits = torch.tensor([0.0, -0.5, 0.7], dtype=torch.float64)
    refiner = MixtureRefiner(DIM, 3, sigma_min=sigma_min, sigma=sigma, hidden=8).double()
    with torch.no_grad():   # g ≡ its last bias: δ_k and π_k constant
        refiner.net[-1].weight.zero_()
        refiner.net[-1].bias.copy_(torch.cat([offsets, logits[:, None]], dim=1).flatten())
    model = _model(s, refiner=refiner)
    a, b = _affine()
    m = torch.eye(DIM, dtype=torch.float64) + a
    cov = m @ m.T + s ** 2 * torch.eye(DIM, dtype=torch.float64)
    truth = D.MixtureSameFamily(D.Categorical(logits=logits),
                                D.MultivariateNormal(b + offsets, cov.expand(3, DIM, DIM)))
    y = _held_out(truth, 100)
    ref = truth.log_prob(y)
    for kwargs in ({"num_draws": 8192}, {"num_draws": 1024, "proposal": "inverse"},
                   {"num_draws": 256, "proposal": "laplace"}):
        est = one_step_log_likelihood(model, y, generator=torch.Generator().manual_seed(0), **kwargs)
        err = _check_against(est, ref)
        print(f"mixture {kwargs}: est {est.mean:.4f}, closed form {ref.mean().item():.4f}, "
              f"max |err| {err.abs().max().item():.4f}, ESS median {est.median_ess:.0f} min {est.ess.min().item():.1f}")
    # laplace, one part per component: every point reliable; the uniform choice of part costs about a factor K
    assert est.ess.min() > 40
    # a single Gaussian channel with the same s instead (how MeanFlow 1-NFE is scored): another density
    single = one_step_log_likelihood(model, y, num_draws=8192, generator=torch.Generator().manual_seed(0), scale=s)
    assert single.mean < ref.mean().item() - 1.0


def test_scale_override_and_mask():
    """scale= replaces the model's channel; a masked coordinate drops out (source draws and differences)."""
    s = 0.5
    model = _model(0.05)                       # its own channel is narrower: scale= must win
    a, b = _affine()
    m = (torch.eye(DIM, dtype=torch.float64) + a)[:2, :2]
    truth = D.MultivariateNormal(b[:2], m @ m.T + s ** 2 * torch.eye(2, dtype=torch.float64))
    y2 = _held_out(truth, 50)
    y = torch.cat([y2, torch.full((50, 1), 7.0, dtype=torch.float64)], dim=1)   # padding: any value
    mask = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64).expand(50, DIM)
    for kwargs in ({"num_draws": 8192}, {"num_draws": 256, "proposal": "laplace"}):
        est = one_step_log_likelihood(model, y, generator=torch.Generator().manual_seed(0), mask=mask, scale=s,
                                      **kwargs)
        _check_against(est, truth.log_prob(y2))
    assert est.ess.min() > 100


class _Encoder(nn.Module):
    """φ(c) = c·v: each point has its own source mean."""

    def __init__(self, v):
        super().__init__()
        self.register_buffer("v", v)

    def forward(self, cond):
        return cond * self.v


def test_guided_source_with_a_condition_per_point():
    """x0 ~ N(c·v, σ_c² I): y ~ N((I + A) c v + b, σ_c² (I + A)(I + A)ᵀ + s² I), a different Gaussian per point,
    so the condition rows must follow their points through the chunks."""
    s, sigma_c = 0.1, 0.3
    a, b = _affine()
    v = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    model = RMFlow(Affine(a, b), source=GuidedSource(_Encoder(v), sigma_c),
                   refiner=FixedScale(sigma_min=s, sigma=0.0)).double()
    cond = torch.linspace(-2, 2, 40, dtype=torch.float64)[:, None]
    m = torch.eye(DIM, dtype=torch.float64) + a
    truth = D.MultivariateNormal((cond * v) @ m.T + b, sigma_c ** 2 * m @ m.T + s ** 2 * torch.eye(DIM,
                                                                                                   dtype=torch.float64))
    y = truth.sample()
    ref = truth.log_prob(y)
    prior = one_step_log_likelihood(model, y, num_draws=8192, cond=cond, generator=torch.Generator().manual_seed(0))
    assert prior.median_ess > 20
    _check_against(prior, ref)
    est = one_step_log_likelihood(model, y, num_draws=128, batch=1000, cond=cond, proposal="laplace",
                                  generator=torch.Generator().manual_seed(0))
    assert est.ess.min() > 80
    _check_against(est, ref)
    shuffled = one_step_log_likelihood(model, y, num_draws=128, batch=1000, cond=cond.flip(0), proposal="laplace",
                                       generator=torch.Generator().manual_seed(0))
    assert shuffled.mean < est.mean - 10


def test_arguments_are_checked():
    model, y = _model(0.1), torch.zeros(2, DIM, dtype=torch.float64)
    with pytest.raises(ValueError, match="proposal"):
        one_step_log_likelihood(model, y, proposal="posterior")
    with pytest.raises(ValueError, match="alpha"):
        one_step_log_likelihood(model, y, proposal="inverse", alpha=0.0)
    with pytest.raises(ValueError, match="divergence"):
        flow_matching_log_likelihood(model, y, divergence="trace")


# ------------------------------------------------------------------------------------------------ flow matching
class GaussianPathVelocity(nn.Module):
    """The marginal velocity of x_t = (1 − t) x0 + t x1, x0 ~ N(0, I), x1 ~ N(m, Σ) independent:

        x_t ~ N(t m, C_t),  C_t = (1 − t)² I + t² Σ,
        v(x, t) = E[x1 − x0 | x_t = x] = m + Cov(x1 − x0, x_t) C_t⁻¹ (x − t m) = m + (t Σ − (1 − t) I) C_t⁻¹ (x − t m)

    (t Σ − (1 − t) I = ½ dC_t/dt; for Σ = σ_d² I this is m + (d/dt log σ_t)(x − t m)). r is ignored."""

    def __init__(self, m, cov):
        super().__init__()
        self.register_buffer("m", m)
        self.register_buffer("cov", cov)

    def forward(self, x, t, r, cond=None, mask=None):
        tt = t[:, None, None]
        eye = torch.eye(len(self.m), dtype=x.dtype, device=x.device)
        c_t = (1 - tt) ** 2 * eye + tt ** 2 * self.cov
        gain = tt * self.cov - (1 - tt) * eye
        z = torch.linalg.solve(c_t, (x - t[:, None] * self.m).unsqueeze(-1))
        return self.m + (gain @ z).squeeze(-1)


def _gaussian_data(isotropic, dtype=torch.float64):
    g = torch.Generator().manual_seed(3)
    m = torch.randn(DIM, generator=g, dtype=torch.float64)
    if isotropic:
        cov = 0.3 ** 2 * torch.eye(DIM, dtype=torch.float64)
    else:
        l = torch.randn(DIM, DIM, generator=g, dtype=torch.float64)
        cov = 0.5 * l @ l.T + 0.05 * torch.eye(DIM, dtype=torch.float64)
    model = RMFlow(GaussianPathVelocity(m, cov)).to(dtype)
    return model, D.MultivariateNormal(m, cov)


@pytest.mark.parametrize("isotropic", [True, False])
def test_flow_matching_ode_likelihood_of_the_gaussian_path_is_the_data_density(isotropic):
    model, truth = _gaussian_data(isotropic)
    y = _held_out(truth, 64)
    ref = truth.log_prob(y)
    rk4 = flow_matching_log_likelihood(model, y, steps=48)
    heun = flow_matching_log_likelihood(model, y, steps=48, method="heun")
    assert rk4.dtype == torch.float64 and rk4.shape == (64,)
    err_rk4, err_heun = (rk4 - ref).abs().max().item(), (heun - ref).abs().max().item()
    assert err_rk4 < 1e-4 and err_heun < 2e-2 and err_rk4 < err_heun
    # the source density alone (no divergence term) is far off: the test sees the sign and size of ∫ div u
    x0_only = flow_matching_log_likelihood(RMFlow(_Zero()).double(), y, steps=4)
    assert (x0_only - ref).abs().mean().item() > 1.0
    print(f"ODE isotropic={isotropic}: max |err| rk4 {err_rk4:.2e}, heun {err_heun:.2e}; "
          f"mean log p {ref.mean().item():.4f}")


class _Zero(nn.Module):
    def forward(self, x, t, r, cond=None, mask=None):
        return torch.zeros_like(x)


def test_hutchinson_agrees_with_the_exact_divergence_within_monte_carlo_error():
    model, truth = _gaussian_data(isotropic=False)
    y = _held_out(truth, 400)
    exact = flow_matching_log_likelihood(model, y, steps=16)
    diffs = {}
    for probes in (1, 16):
        hutch = flow_matching_log_likelihood(model, y, steps=16, divergence="hutchinson", probes=probes,
                                             generator=torch.Generator().manual_seed(probes))
        diffs[probes] = hutch - exact
        d = diffs[probes]
        assert abs(d.mean().item()) < 4 * d.std().item() / math.sqrt(len(d))
    assert diffs[1].std().item() > 0.05                          # a full Jacobian: the estimator is noisy ...
    assert diffs[16].std().item() < 0.4 * diffs[1].std().item()   # ... and averages down like 1/sqrt(probes)
    print(f"Hutchinson - exact: 1 probe {diffs[1].mean().item():+.4f} ± {diffs[1].std().item():.3f} per point, "
          f"16 probes {diffs[16].mean().item():+.4f} ± {diffs[16].std().item():.3f}")


def test_flow_matching_in_float32_is_close_to_float64():
    model64, truth = _gaussian_data(isotropic=False)
    model32, _ = _gaussian_data(isotropic=False, dtype=torch.float32)
    y = _held_out(truth, 64)
    ll64 = flow_matching_log_likelihood(model64, y, steps=32)
    ll32 = flow_matching_log_likelihood(model32, y.float(), steps=32)
    assert ll32.dtype == torch.float64   # accumulated in float64 either way
    assert (ll32 - ll64).abs().max().item() < 1e-3
    assert (ll64 - truth.log_prob(y)).abs().max().item() < 1e-4

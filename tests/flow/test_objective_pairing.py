"""L_NLL, the couplings, the learned refinement scale and the encoder penalty."""
import copy

import pytest
import torch
from torch import nn

from rmflow.config import ConfigError, load_config
from rmflow.flow import (CMFMLoss, FixedScale, GaussianSource, GuidedSource, IndependentPairing, InversePairing,
                         LearnedScale, LikelihoodSchedule, MinibatchOTPairing, Pairs, RMFlow, RMFlowObjective,
                         SelfPairing, TeacherPairing, TimeSampler, flow_matching_ode,
                         minibatch_ot_permutation, scale_nll, transport_cost)
from rmflow.nets import MLP


def test_minibatch_ot_is_a_permutation_that_lowers_the_cost():
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(128, 2, generator=g), torch.randn(128, 2, generator=g) * 2 + 1
    perm = minibatch_ot_permutation(x0, x1)
    assert sorted(perm.tolist()) == list(range(128))          # a permutation: marginals preserved
    ot_cost = transport_cost(x0[perm], x1)
    random_cost = transport_cost(x0[torch.randperm(128, generator=g)], x1)
    assert ot_cost < 0.5 * random_cost
    # optimal: no pairwise swap improves it
    a, b = x0[perm], x1
    c_ii = (a - b).pow(2).sum(1)
    swap = (a[:, None] - b[None]).pow(2).sum(-1)
    saving = c_ii[:, None] + c_ii[None] - swap - swap.T   # what swapping partners i and j would save
    assert saving.max() < 1e-4


def test_minibatch_ot_recovers_a_known_matching():
    x1 = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x0 = x1[[2, 0, 1]] + 0.01
    perm = minibatch_ot_permutation(x0, x1)
    torch.testing.assert_close(x0[perm], x1 + 0.01)


class Affine(nn.Module):
    """u(x, t, r) = a·x + b, independent of time, so x̂1 = (1 + a) x0 + b."""

    def __init__(self, a=0.0, b=0.0):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(float(a)))
        self.b = nn.Parameter(torch.tensor(float(b)))

    def forward(self, x, t, r, cond=None, mask=None):
        return self.a * x + self.b


def make_pairing(model, pairing, teacher_steps=8, **teacher):
    """The pairing object of a name (the config's rmflow.pairing); `teacher`: TeacherPairing's options."""
    if pairing == "teacher":
        return TeacherPairing(model, teacher_steps, **teacher)
    if pairing == "self":
        return SelfPairing(teacher_steps)
    return {"independent": IndependentPairing, "minibatch_ot": MinibatchOTPairing, "inverse": InversePairing}[pairing]()


def _objective(net, sigma_min=0.1, lambda_nll=0.0, lambda_enc=0.0, pairing="independent", nll_start_step=0,
               nll_batch=1.0, batch_split=False, model=None, **pairing_kw):
    model = model or RMFlow(net, GaussianSource(), FixedScale(sigma_min, 0.0))
    return RMFlowObjective(model, CMFMLoss(TimeSampler(), adaptive_p=0.0),
                           make_pairing(model, pairing, **pairing_kw) if lambda_nll > 0 else None,
                           sigma_min=sigma_min, lambda_nll=lambda_nll, lambda_enc=lambda_enc,
                           schedule=LikelihoodSchedule(nll_start_step, nll_batch, batch_split))


def _pairs(obj, x, cond=None, mask=None):
    return obj.pairing.pairs(obj.model, x, cond, mask)


def test_nll_term_on_known_inputs():
    """With the 'self' pairing and k = 1, y = x̂1(x0) + σ_min ε, so L_NLL = σ_min²‖ε‖² exactly."""
    obj = _objective(Affine(0.5, 1.0), lambda_nll=1.0, sigma_min=0.2, pairing="self", teacher_steps=1)
    x = torch.randn(50_000, 3)
    out = obj(x)
    # E‖σ_min ε‖² = D σ_min² = 3 · 0.04
    assert abs(out.stats["nll"].item() - 3 * 0.04) < 2e-3


def test_nll_batch_uses_the_first_rows_and_adds_the_batch_mean():
    """nll_batch = 0.25: the pairs come from the first quarter of the batch, L_NLL keeps its expectation
    (σ_min²·D as above), and the reduced loss is L_CMFM + λ1·L_NLL."""
    obj = _objective(Affine(0.5, 1.0), lambda_nll=2.0, sigma_min=0.2, pairing="self", teacher_steps=1,
                     nll_batch=0.25)
    seen = []
    pairs = obj.pairing.pairs
    obj.pairing.pairs = lambda model, x, c, m: seen.append(x) or pairs(model, x, c, m)
    x = torch.randn(40_001, 3)
    out = obj(x)
    assert len(seen) == 1 and seen[0].shape == (10_001, 3) and torch.equal(seen[0], x[:10_001])
    assert out.loss.shape == (40_001,)
    assert abs(out.stats["nll"].item() - 3 * 0.04) < 3e-3
    torch.testing.assert_close(out.loss.mean(), out.stats["cmfm"] + 2.0 * out.stats["nll"], rtol=1e-5, atol=1e-6)
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match="nll_batch"):
            load_config("ring", [f"rmflow.nll_batch={bad}"])


def test_independent_pairing_is_minimised_by_the_data_mean():
    """The collapse: under independent pairs, ∂L_NLL/∂(a, b) vanishes at x̂1 ≡ E[y] (a = -1, b = mean)."""
    mean = torch.tensor([1.0, -2.0])
    x = mean + torch.randn(200_000, 2)
    net = Affine(-1.0, 0.0)
    net.b = nn.Parameter(mean.clone())
    obj = _objective(net, lambda_nll=1.0, pairing="independent")

    def nll_only(x_data):   # only the likelihood term (its noise-free partner: the noise adds a constant)
        x0, y = _pairs(obj, x_data)[:2]
        ones = torch.ones(len(x0))
        return (y - (x0 + obj.model(x0, 0 * ones, ones))).pow(2).sum(1).mean()

    grads = torch.autograd.grad(nll_only(x), [net.a, net.b])
    assert grads[0].abs() < 0.02 and grads[1].abs().max() < 0.02
    # whereas the identity-like map (a = 0, b = mean) is not a stationary point: it is pushed towards a = -1
    net2 = Affine(0.0, 0.0)
    net2.b = nn.Parameter(mean.clone())
    obj.model.net = net2
    ga = torch.autograd.grad(nll_only(x), [net2.a])[0]
    assert ga > 1.0


def test_teacher_pairing_uses_the_frozen_copy():
    net = Affine(0.0, 0.0)
    obj = _objective(net, lambda_nll=1.0, pairing="teacher", teacher_steps=4, nll_start_step=1)
    assert not obj.nll_active                     # stage 1
    obj.set_step(1)
    assert obj.nll_active
    teacher_src = copy.deepcopy(obj.model)
    teacher_src.net.b.data.fill_(3.0)
    obj.start_likelihood_stage(teacher_src)
    x0, y = _pairs(obj, torch.zeros(20_000, 2))[:2]
    # teacher: u = 3 everywhere -> T_4(x0) = x0 + 3 (the student's u = 0 is not used)
    torch.testing.assert_close(y, x0 + 3)
    assert all(not p.requires_grad for p in obj.pairing.teacher.parameters())


def test_inverse_pairing_inverts_an_affine_map():
    """The model's inverse map x0 = x1 - u(x1, 1, 0): for u ≡ b it is x1 - b."""
    obj = _objective(Affine(0.0, 2.0), lambda_nll=1.0, pairing="inverse")
    x = torch.randn(7, 2)
    x0, y = _pairs(obj, x)[:2]
    torch.testing.assert_close(x0, x - 2.0)
    torch.testing.assert_close(y, x)


def test_invalid_settings_are_refused_where_the_config_loads():
    for keys, match in [(["flow.sigma=0.2", "rmflow.sigma_min=0.1"], "rmflow.sigma_min"),
                        (["rmflow.lambda_nll=-1"], "rmflow.lambda_nll"), (["rmflow.pairing=nearest"], "rmflow.pairing"),
                        (["flow.path_coupling=sinkhorn"], "flow.path_coupling"),
                        (["rmflow.teacher_bank=0", "rmflow.nll_focus=0.5", "rmflow.focus_errors=stored"],
                         "rmflow.focus_errors"),
                        (["rmflow.focus_errors=old"], "rmflow.focus_errors"),
                        (["rmflow.nll_batch=1", "rmflow.batch_split=true"], "rmflow.batch_split")]:
        with pytest.raises(ConfigError, match=match):
            load_config("ring", keys)


def test_learned_scale_is_positive_and_its_gradient_matches_finite_differences():
    scale = LearnedScale(0.3).double()
    scale.log_scale.data.fill_(-5.0)
    assert (scale(4) > 0).all()
    res = torch.tensor([0.5, 0.01, 2.0], dtype=torch.float64)
    dof = torch.full((3,), 2.0, dtype=torch.float64)

    def f(log_s):
        return scale_nll(res, torch.exp(log_s).expand(3), dof).sum()

    ls = torch.tensor(-0.7, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(f(ls), [ls])
    h = 1e-6
    fd = (f(ls.detach() + h) - f(ls.detach() - h)) / (2 * h)
    assert abs(g.item() - fd.item()) < 1e-6
    # minimiser: s² = Σ residual² / Σ dof
    s2 = res.sum() / dof.sum()
    ls_opt = (0.5 * torch.log(s2)).clone().requires_grad_(True)
    (g_opt,) = torch.autograd.grad(f(ls_opt), [ls_opt])
    assert abs(g_opt.item()) < 1e-9


def test_learned_scale_converges_to_the_residual_scale():
    """Training the NLL pulls s to sqrt(E‖y - x̂1‖²/dof): σ_min when the map matches its partner."""
    torch.manual_seed(0)
    net = MLP(2, hidden=8, depth=1, time_dim=8)
    model = RMFlow(net, GaussianSource(), LearnedScale(1.0))
    obj = _objective(None, sigma_min=0.3, lambda_nll=1.0, pairing="self", teacher_steps=1, model=model)
    opt = torch.optim.Adam([model.refiner.log_scale], lr=0.05)
    for _ in range(300):
        out = obj(torch.randn(256, 2))
        opt.zero_grad()
        out.loss.mean().backward()
        opt.step()
    assert abs(model.refiner(1).item() - 0.3) < 0.02


def test_encoder_penalty_and_guided_source():
    enc = nn.Linear(4, 2)
    model = RMFlow(MLP(2, hidden=8, depth=1, time_dim=8, cond_dim=4), GuidedSource(enc, sigma_c=0.0))
    obj = _objective(None, lambda_enc=0.5, model=model)
    c = torch.randn(6, 4)
    x0 = model.draw_source(torch.zeros(6, 2), c)
    torch.testing.assert_close(x0, enc(c))                    # σ_c = 0: the source is φ_ω(c)
    out = obj(torch.randn(6, 2), c)
    torch.testing.assert_close(out.stats["enc"], enc(c).pow(2).sum(1).mean().detach())
    with pytest.raises(ValueError, match="sigma_c"):
        GuidedSource(enc, sigma_c=-1.0)


def test_seeded_objective_is_deterministic():
    def run():
        torch.manual_seed(3)
        net = MLP(2, hidden=16, depth=2, time_dim=8)
        obj = _objective(net, lambda_nll=0.5, pairing="minibatch_ot")
        return obj(torch.randn(32, 2)).loss

    torch.testing.assert_close(run(), run(), rtol=0, atol=0)


def _teacher_objective(**kw):
    torch.manual_seed(0)
    net = MLP(2, hidden=16, depth=2, time_dim=8)
    obj = _objective(net, lambda_nll=1.0, pairing="teacher", teacher_steps=2, nll_start_step=1, **kw)
    obj.set_step(1)
    obj.start_likelihood_stage(obj.model)
    return obj


def test_teacher_bank_is_deterministic_and_holds_teacher_pairs():
    a = _teacher_objective(bank=500, bank_seed=7)
    b = _teacher_objective(bank=500, bank_seed=7)
    xa, ya = a.pairing._bank(a.model, torch.zeros(4, 2))[:2]
    xb, yb = b.pairing._bank(b.model, torch.zeros(4, 2))[:2]
    torch.testing.assert_close(xa, xb, rtol=0, atol=0)
    torch.testing.assert_close(ya, flow_matching_ode(a.pairing.teacher, xa, 2).x)   # the default: its ODE
    assert abs(xa.mean().item()) < 0.15 and abs(xa.std().item() - 1) < 0.1   # x0 drawn from the source
    x0, y, _, _, idx = _pairs(a, torch.zeros(64, 2))
    assert idx is None   # indices are only kept with stored focus errors
    assert x0.shape == (64, 2) and all((row == xa).all(1).any() for row in x0)   # pairs come from the bank


def test_focus_keeps_the_hardest_candidates():
    obj = _teacher_objective(bank=2000, focus=0.5)
    torch.manual_seed(1)
    x0, y = _pairs(obj, torch.zeros(100, 2))[:2]
    ones = torch.ones(len(x0))
    with torch.no_grad():
        err = (y - x0 - obj.model(x0, 0 * ones, ones)).pow(2).sum(1)
    # the focused half (top 50 of 350 candidates) all lies above the plain half's median
    assert err[50:].min() > err[:50].median() and err[50:].mean() > err[:50].mean()
    with pytest.raises(ValueError, match="bank_conditions"):
        _pairs(obj, torch.zeros(10, 2), torch.zeros(10, 3))


def test_stored_focus_errors_are_initialised_picked_and_updated():
    """focus_errors='stored': the bank's errors start as ‖T_k(x0) − x0 − u(x0, 0, 1)‖² of the model at freezing,
    the focus half is the top of the candidates by stored error (no forward), and a step overwrites the errors of
    the rows it used with the model's error at that step."""
    obj = _teacher_objective(bank=2000, focus=0.5, stored_errors=True)
    bank_x0, bank_y = obj.pairing._bank(obj.model, torch.zeros(4, 2))[:2]
    ones = torch.ones(len(bank_x0))
    with torch.no_grad():
        fresh = (bank_y - bank_x0 - obj.model(bank_x0, 0 * ones, ones)).pow(2).sum(1)
    torch.testing.assert_close(obj.pairing.errors, fresh)
    # the focus rows are chosen from the stored values alone: plant a known error ordering and check the choice
    obj.pairing.errors = torch.arange(2000, dtype=torch.float32)
    torch.manual_seed(3)
    cand_draw = torch.randint(2000, (400,))
    torch.manual_seed(3)
    x0, y, _, _, idx = _pairs(obj, torch.zeros(100, 2))
    assert torch.equal(idx[:50], cand_draw[:50])
    assert torch.equal(idx[50:].sort().values, cand_draw[50:].sort().values[-50:])   # the 50 largest of 350
    torch.testing.assert_close(x0, bank_x0[idx], rtol=0, atol=0)
    torch.testing.assert_close(y, bank_y[idx], rtol=0, atol=0)
    # one objective call rewrites the used rows' errors with the current model's (noise-free) error
    torch.manual_seed(4)
    with torch.no_grad():
        obj.model.net.body[0].weight.mul_(1.5)                   # the model moves on after the bank is built
    before = obj.pairing.errors.clone()
    torch.manual_seed(5)
    obj(torch.randn(100, 2))
    changed = (obj.pairing.errors != before).nonzero().squeeze(1)
    assert 0 < len(changed) <= 100
    ones = torch.ones(len(changed))
    with torch.no_grad():
        now = (bank_y[changed] - bank_x0[changed] - obj.model(bank_x0[changed], 0 * ones, ones)).pow(2).sum(1)
    torch.testing.assert_close(obj.pairing.errors[changed], now)


def test_batch_split_shares_one_forward_and_equals_the_separate_terms():
    """batch_split: rows ..k carry L_NLL, rows k.. L_CMFM, evaluated in ONE gradient-carrying forward; the loss and
    its gradient equal those of the two terms computed separately on the same draws."""
    torch.manual_seed(0)
    net = MLP(2, hidden=16, depth=2, time_dim=8).double()
    n, k = 40, 10
    x = torch.randn(n, 2, dtype=torch.float64)
    x0_all = torch.randn(n, 2, dtype=torch.float64)
    pair = Pairs(torch.randn(k, 2, dtype=torch.float64), torch.randn(k, 2, dtype=torch.float64))
    t = torch.rand(n - k, dtype=torch.float64)
    r = torch.where(torch.rand(n - k) < 0.5, t, torch.rand(n - k, dtype=torch.float64).maximum(t))

    def fixed(obj):   # the same source draws, pairs and times for both objectives
        obj.model.draw_source = lambda template, cond=None, mask=None, generator=None: x0_all[:len(template)]
        if obj.pairing is not None:
            obj.pairing.pairs = lambda model, xk, ck, mk: pair
        obj.cmfm.times.sample = lambda b, generator=None, device=None: (t[:b], r[:b])
        return obj

    split = fixed(_objective(net, lambda_nll=0.7, pairing="self", nll_batch=k / n, batch_split=True))
    calls = []
    hook = net.register_forward_hook(lambda m, a, o: calls.append((torch.is_grad_enabled(), len(a[0]))))
    torch.manual_seed(11)     # the only draw left: the σ_min noise of the partners
    out = split(x)
    torch.manual_seed(11)
    noise = 0.1 * torch.randn(k, 2, dtype=torch.float64)
    hook.remove()
    assert [c for c in calls if c[0]] == [(True, n)]          # one gradient-carrying forward over all n rows
    grads = torch.autograd.grad(out.loss.mean(), list(net.parameters()))
    # reference: L_CMFM on rows k.. (their own x0 and times) and λ1·L_NLL on the pairs, separately
    ref_obj = fixed(_objective(net, lambda_nll=0.0))
    x0_all_rest = x0_all[k:]
    ref_obj.model.draw_source = lambda template, cond=None, mask=None, generator=None: x0_all_rest
    cmfm = ref_obj(x[k:]).loss.mean()
    x0n, y = pair.x0, pair.y + noise
    ones = torch.ones(k, dtype=torch.float64)
    nll = (y - x0n - net(x0n, 0 * ones, ones)).pow(2).sum(1).mean()
    ref = cmfm + 0.7 * nll
    # (squared errors are summed in float32 by design, hence float32 tolerances)
    torch.testing.assert_close(out.loss.mean().double(), ref.double(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.stats["cmfm"].double(), cmfm.detach().double(), rtol=1e-5, atol=1e-6)
    for g, h in zip(grads, torch.autograd.grad(ref, list(net.parameters()))):
        torch.testing.assert_close(g, h, rtol=1e-4, atol=1e-6)


def test_conditional_teacher_bank_pairs_carry_their_own_conditions():
    """A bank for conditional data: each pair's x0 is drawn from the guided source of its own condition, its
    partner is the teacher's transport under that condition, and L_NLL uses the pair's condition, not the batch's."""
    from rmflow.flow import GuidedSource
    torch.manual_seed(0)
    enc = nn.Linear(3, 2)
    model = RMFlow(MLP(2, hidden=16, depth=1, time_dim=8, cond_dim=3), GuidedSource(enc, sigma_c=0.5))
    x, c = torch.randn(40, 2), torch.randn(40, 3)
    bank_c = torch.randn(300, 3) * 3
    kw = dict(lambda_nll=1.0, pairing="teacher", teacher_steps=2, nll_start_step=1, bank=300, focus=0.5,
              stored_errors=True, nll_batch=0.5, batch_split=True, model=model)
    without = _objective(None, **kw)
    without.set_step(1)
    with pytest.raises(ValueError, match="bank_conditions"):
        without(x, c)
    with pytest.raises(ValueError, match="300"):
        _objective(None, bank_conditions=(torch.randn(10, 3), None), **kw)
    with pytest.raises(ValueError, match="unconditional bank"):
        _objective(None, bank_conditions=(bank_c, None), filter_q=0.9, **kw)
    obj = _objective(None, bank_conditions=(bank_c, None), **kw)
    obj.set_step(1)
    obj.start_likelihood_stage(model)
    bank = obj.pairing._bank(model, x)
    assert torch.equal(bank.cond, bank_c)
    with torch.no_grad():
        eps = (bank.x0 - enc(bank_c)) / 0.5
        torch.testing.assert_close(bank.y, flow_matching_ode(obj.pairing.teacher, bank.x0, 2, bank_c).x)
    assert abs(eps.mean().item()) < 0.1 and abs(eps.std().item() - 1) < 0.1   # x0 ~ φ(c) + σ_c·ε
    pairs = _pairs(obj, x[:20], c[:20])
    assert torch.equal(pairs.cond, bank_c[pairs.bank_idx]) and torch.equal(pairs.x0, bank.x0[pairs.bank_idx])
    seen, calls = [], []
    pair = obj.pairing.pairs
    obj.pairing.pairs = lambda *a: seen.append(pair(*a)) or seen[-1]
    hook = model.net.register_forward_hook(lambda m, a, o: calls.append(a[3]) if torch.is_grad_enabled() else None)
    out = obj(x, c)
    hook.remove()
    assert torch.isfinite(out.loss).all() and "nll" in out.stats
    # the one gradient-carrying forward: the L_CMFM rows with the batch's contexts, then the pairs with their own
    assert len(calls) == 1 and torch.equal(calls[0][:20], c[20:]) and torch.equal(calls[0][20:], seen[0].cond)


@pytest.mark.parametrize("sampler", ["meanflow", "ode"])
def test_teacher_partner_is_its_k_step_map(sampler):
    """u = a·x + b at every time: k MeanFlow jumps and k Euler steps of u(x, t, t) are both the affine recursion
    x ← x + (1/k)(a·x + b), applied k times."""
    model = RMFlow(Affine(0.5, 1.0), GaussianSource(), FixedScale(0.1, 0.0))
    pairing = TeacherPairing(model, 4, sampler)
    x0 = torch.randn(16, 2, dtype=torch.float32)
    x = x0.clone()
    for _ in range(4):
        x = x + 0.25 * (0.5 * x + 1.0)
    torch.testing.assert_close(pairing.partner(x0), x)
    with pytest.raises(ValueError, match="teacher sampler"):
        TeacherPairing(model, 4, "heun")


def test_teacher_filter_falls_back_to_the_whole_bank_when_it_would_keep_nothing():
    """A teacher whose partners all lie far from the data leaves nothing to filter by: a warning, not a crash."""
    model = RMFlow(Affine(0.0, 100.0), GaussianSource(), FixedScale(0.1, 0.0))   # every partner near x0 + 100
    data = torch.randn(500, 2)
    far = TeacherPairing(model, 1, bank=64, filter_q=0.99, filter_reference=data)
    with pytest.warns(UserWarning, match="would keep none of the 64 bank pairs"):
        p = far.pairs(model, data[:8])
    assert len(far.bank.x0) == 64 and len(p.x0) == 8
    near = TeacherPairing(RMFlow(Affine(0.0, 0.0), GaussianSource(), FixedScale(0.1, 0.0)), 1, bank=64,
                          filter_q=0.99, filter_reference=data)
    near.pairs(model, data[:8])
    assert 0 < len(near.bank.x0) <= 64


def test_teacher_velocity_replaces_x1_minus_x0_in_the_likelihood_stage():
    """cmfm_velocity 'teacher': once the teacher is frozen, L_CMFM regresses its velocity u_T(x_t, t, t). A student
    equal to a constant teacher (u ≡ b: the ODE's average velocity is b on every interval) has zero L_CMFM then,
    while stage 1 (and the 'data' velocity) still regresses x1 − x0."""
    torch.manual_seed(0)
    model = RMFlow(Affine(0.0, 3.0), GaussianSource(), FixedScale(0.1, 0.0))
    obj = RMFlowObjective(model, CMFMLoss(TimeSampler(), adaptive_p=0.0), TeacherPairing(model, 4),
                          sigma_min=0.1, lambda_nll=1.0, schedule=LikelihoodSchedule(1), cmfm_velocity="teacher")
    x = torch.randn(256, 2)
    assert obj(x).stats["cmfm_sq"] > 1.0           # stage 1: x1 − x0
    obj.set_step(1)
    obj.start_likelihood_stage(model)
    assert obj(x).stats["cmfm_sq"] < 1e-10         # stage 2: the teacher's velocity, which the student equals
    with pytest.raises(ValueError, match="needs the 'teacher' pairing"):
        RMFlowObjective(model, CMFMLoss(TimeSampler()), SelfPairing(4), lambda_nll=1.0, cmfm_velocity="teacher")
    with pytest.raises(ConfigError, match="rmflow.cmfm_velocity"):
        load_config("ring", ["rmflow.pairing=self", "rmflow.cmfm_velocity=teacher"])

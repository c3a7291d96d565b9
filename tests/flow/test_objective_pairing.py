"""L_NLL, the couplings, the learned refinement scale and the encoder penalty."""
import copy

import pytest
import torch
from torch import nn

from rmflow.flow import (CMFMLoss, FixedScale, GaussianSource, GuidedSource, LearnedScale, RMFlow, meanflow,
                         RMFlowObjective, TimeSampler, minibatch_ot_permutation, scale_nll, transport_cost)
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


def _objective(net, **kw):
    model = RMFlow(net, GaussianSource(), FixedScale(kw.get("sigma_min", 0.1), 0.0))
    return RMFlowObjective(model, CMFMLoss(TimeSampler(), adaptive_p=0.0), **kw)


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
    pair = obj._pair
    obj._pair = lambda x, c, m: seen.append(x) or pair(x, c, m)
    x = torch.randn(40_001, 3)
    out = obj(x)
    assert len(seen) == 1 and seen[0].shape == (10_001, 3) and torch.equal(seen[0], x[:10_001])
    assert out.loss.shape == (40_001,)
    assert abs(out.stats["nll"].item() - 3 * 0.04) < 3e-3
    torch.testing.assert_close(out.loss.mean(), out.stats["cmfm"] + 2.0 * out.stats["nll"], rtol=1e-5, atol=1e-6)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="nll_batch"):
            _objective(Affine(0.5, 1.0), lambda_nll=1.0, nll_batch=bad)


def test_independent_pairing_is_minimised_by_the_data_mean():
    """The collapse: under independent pairs, ∂L_NLL/∂(a, b) vanishes at x̂1 ≡ E[y] (a = -1, b = mean)."""
    mean = torch.tensor([1.0, -2.0])
    x = mean + torch.randn(200_000, 2)
    net = Affine(-1.0, 0.0)
    net.b = nn.Parameter(mean.clone())
    obj = _objective(net, lambda_nll=1.0, pairing="independent")
    obj.cmfm = None  # only the likelihood term

    def nll_only(x_data):
        x0, y = obj._pair(x_data, None, None)[:2]
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
    obj.freeze_teacher(teacher_src)
    x0, y = obj._pair(torch.zeros(20_000, 2), None, None)[:2]
    # teacher: u = 3 everywhere -> T(x0) = x0 + 3; y = x0 + 3 + 0.1 ε
    assert abs((y - x0 - 3).mean().item()) < 3e-3 and abs((y - x0 - 3).std().item() - 0.1) < 3e-3
    assert all(not p.requires_grad for p in obj.teacher.parameters())


def test_inverse_pairing_inverts_an_affine_map():
    """The model's inverse map x0 = x1 - u(x1, 1, 0): for u ≡ b it is x1 - b."""
    obj = _objective(Affine(0.0, 2.0), lambda_nll=1.0, pairing="inverse")
    x = torch.randn(7, 2)
    x0, y = obj._pair(x, None, None)[:2]
    torch.testing.assert_close(x0, x - 2.0)


def test_objective_rejects_invalid_settings():
    for kw, match in [({"sigma": 0.2, "sigma_min": 0.1}, "sigma_min"), ({"lambda_nll": -1.0}, "lambda"),
                      ({"pairing": "nearest"}, "pairing"), ({"coupling": "sinkhorn"}, "coupling")]:
        with pytest.raises(ValueError, match=match):
            _objective(Affine(), **kw)


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
    obj = RMFlowObjective(model, CMFMLoss(TimeSampler(), adaptive_p=0.0), sigma_min=0.3, lambda_nll=1.0,
                          pairing="self", teacher_steps=1)
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
    obj = RMFlowObjective(model, CMFMLoss(TimeSampler(), adaptive_p=0.0), lambda_enc=0.5)
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
    obj.freeze_teacher(obj.model)
    return obj


def test_teacher_bank_is_deterministic_and_holds_teacher_pairs():
    a = _teacher_objective(teacher_bank=500, bank_seed=7)
    b = _teacher_objective(teacher_bank=500, bank_seed=7)
    xa, ya = a._teacher_bank(torch.zeros(4, 2))[:2]
    xb, yb = b._teacher_bank(torch.zeros(4, 2))[:2]
    torch.testing.assert_close(xa, xb, rtol=0, atol=0)
    torch.testing.assert_close(ya, meanflow(a.teacher, xa, 2).x)
    assert abs(xa.mean().item()) < 0.15 and abs(xa.std().item() - 1) < 0.1   # x0 drawn from the source
    x0, y, _, _, idx = a._pair(torch.zeros(64, 2), None, None)
    assert idx is None   # indices are only kept with stored focus errors
    assert x0.shape == (64, 2) and all((row == xa).all(1).any() for row in x0)   # pairs come from the bank


def test_focus_keeps_the_hardest_candidates():
    obj = _teacher_objective(teacher_bank=2000, nll_focus=0.5)
    torch.manual_seed(1)
    x0, y = obj._teacher_pairs(torch.zeros(100, 2), None, None)[:2]
    ones = torch.ones(len(x0))
    with torch.no_grad():
        err = (y - x0 - obj.model(x0, 0 * ones, ones)).pow(2).sum(1)
    # the focused half (top 50 of 350 candidates) all lies above the plain half's median
    assert err[50:].min() > err[:50].median() and err[50:].mean() > err[:50].mean()
    with pytest.raises(ValueError, match="set_bank_conditions"):
        obj._teacher_pairs(torch.zeros(10, 2), torch.zeros(10, 3), None)


def test_stored_focus_errors_are_initialised_picked_and_updated():
    """focus_errors='stored': the bank's errors start as ‖T_k(x0) − x0 − u(x0, 0, 1)‖² of the model at freezing,
    the focus half is the top of the candidates by stored error (no forward), and a step overwrites the errors of
    the rows it used with the model's error at that step."""
    obj = _teacher_objective(teacher_bank=2000, nll_focus=0.5, focus_errors="stored")
    bank_x0, bank_y = obj._teacher_bank(torch.zeros(4, 2))[:2]
    ones = torch.ones(len(bank_x0))
    with torch.no_grad():
        fresh = (bank_y - bank_x0 - obj.model(bank_x0, 0 * ones, ones)).pow(2).sum(1)
    torch.testing.assert_close(obj._bank_err, fresh)
    # the focus rows are chosen from the stored values alone: plant a known error ordering and check the choice
    obj._bank_err = torch.arange(2000, dtype=torch.float32)
    torch.manual_seed(3)
    cand_draw = torch.randint(2000, (400,))
    torch.manual_seed(3)
    x0, y, _, _, idx = obj._teacher_pairs(torch.zeros(100, 2), None, None)
    assert torch.equal(idx[:50], cand_draw[:50])
    assert torch.equal(idx[50:].sort().values, cand_draw[50:].sort().values[-50:])   # the 50 largest of 350
    torch.testing.assert_close(x0, bank_x0[idx], rtol=0, atol=0)
    torch.testing.assert_close(y, bank_y[idx], rtol=0, atol=0)
    # one objective call rewrites the used rows' errors with the current model's (noise-free) error
    torch.manual_seed(4)
    with torch.no_grad():
        obj.model.net.body[0].weight.mul_(1.5)                   # the model moves on after the bank is built
    before = obj._bank_err.clone()
    torch.manual_seed(5)
    obj(torch.randn(100, 2))
    changed = (obj._bank_err != before).nonzero().squeeze(1)
    assert 0 < len(changed) <= 100
    ones = torch.ones(len(changed))
    with torch.no_grad():
        now = (bank_y[changed] - bank_x0[changed] - obj.model(bank_x0[changed], 0 * ones, ones)).pow(2).sum(1)
    torch.testing.assert_close(obj._bank_err[changed], now)
    with pytest.raises(ValueError, match="focus_errors"):
        _teacher_objective(teacher_bank=0, nll_focus=0.5, focus_errors="stored")
    with pytest.raises(ValueError, match="focus_errors"):
        _teacher_objective(teacher_bank=100, nll_focus=0.5, focus_errors="old")


def test_batch_split_shares_one_forward_and_equals_the_separate_terms():
    """batch_split: rows ..k carry L_NLL, rows k.. L_CMFM, evaluated in ONE gradient-carrying forward; the loss and
    its gradient equal those of the two terms computed separately on the same draws."""
    torch.manual_seed(0)
    net = MLP(2, hidden=16, depth=2, time_dim=8).double()
    n, k = 40, 10
    x = torch.randn(n, 2, dtype=torch.float64)
    x0_all = torch.randn(n, 2, dtype=torch.float64)
    pair = (torch.randn(k, 2, dtype=torch.float64), torch.randn(k, 2, dtype=torch.float64), None, None, None)
    t = torch.rand(n - k, dtype=torch.float64)
    r = torch.where(torch.rand(n - k) < 0.5, t, torch.rand(n - k, dtype=torch.float64).maximum(t))

    def fixed(obj):   # the same source draws, pairs and times for both objectives
        obj.model.draw_source = lambda template, cond=None, mask=None, generator=None: x0_all[:len(template)]
        obj._pair = lambda xk, ck, mk: pair
        obj.cmfm.times.sample = lambda b, generator=None, device=None: (t[:b], r[:b])
        return obj

    split = fixed(_objective(net, lambda_nll=0.7, pairing="self", nll_batch=k / n, batch_split=True))
    calls = []
    hook = net.register_forward_hook(lambda m, a, o: calls.append((torch.is_grad_enabled(), len(a[0]))))
    out = split(x)
    hook.remove()
    assert [c for c in calls if c[0]] == [(True, n)]          # one gradient-carrying forward over all n rows
    grads = torch.autograd.grad(out.loss.mean(), list(net.parameters()))
    # reference: L_CMFM on rows k.. (their own x0 and times) and λ1·L_NLL on the pairs, separately
    ref_obj = fixed(_objective(net, lambda_nll=0.0))
    x0_all_rest = x0_all[k:]
    ref_obj.model.draw_source = lambda template, cond=None, mask=None, generator=None: x0_all_rest
    cmfm = ref_obj(x[k:]).loss.mean()
    x0n, y = pair[:2]
    ones = torch.ones(k, dtype=torch.float64)
    nll = (y - x0n - net(x0n, 0 * ones, ones)).pow(2).sum(1).mean()
    ref = cmfm + 0.7 * nll
    # (squared errors are summed in float32 by design, hence float32 tolerances)
    torch.testing.assert_close(out.loss.mean().double(), ref.double(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.stats["cmfm"].double(), cmfm.detach().double(), rtol=1e-5, atol=1e-6)
    for g, h in zip(grads, torch.autograd.grad(ref, list(net.parameters()))):
        torch.testing.assert_close(g, h, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="batch_split"):
        _objective(net, lambda_nll=1.0, pairing="self", batch_split=True)        # nll_batch = 1: no L_CMFM rows


def test_conditional_teacher_bank_pairs_carry_their_own_conditions():
    """A bank for conditional data: each pair's x0 is drawn from the guided source of its own condition, its
    partner is the teacher's transport under that condition, and L_NLL uses the pair's condition, not the batch's."""
    from rmflow.flow import GuidedSource
    torch.manual_seed(0)
    enc = nn.Linear(3, 2)
    model = RMFlow(MLP(2, hidden=16, depth=1, time_dim=8, cond_dim=3), GuidedSource(enc, sigma_c=0.5))
    obj = RMFlowObjective(model, CMFMLoss(TimeSampler(), adaptive_p=0.0), lambda_nll=1.0, pairing="teacher",
                          teacher_steps=2, nll_start_step=1, teacher_bank=300, nll_focus=0.5,
                          focus_errors="stored", nll_batch=0.5, batch_split=True)
    obj.set_step(1)
    obj.freeze_teacher(model)
    x, c = torch.randn(40, 2), torch.randn(40, 3)
    with pytest.raises(ValueError, match="set_bank_conditions"):
        obj(x, c)
    with pytest.raises(ValueError, match="300"):
        obj.set_bank_conditions(torch.randn(10, 3), None)
    bank_c = torch.randn(300, 3) * 3
    obj.set_bank_conditions(bank_c, None)
    bank = obj._teacher_bank(x)
    assert torch.equal(bank.cond, bank_c)
    with torch.no_grad():
        eps = (bank.x0 - enc(bank_c)) / 0.5
        torch.testing.assert_close(bank.y, meanflow(obj.teacher, bank.x0, 2, bank_c).x)
    assert abs(eps.mean().item()) < 0.1 and abs(eps.std().item() - 1) < 0.1   # x0 ~ φ(c) + σ_c·ε
    pairs = obj._pair(x[:20], c[:20], None)
    assert torch.equal(pairs.cond, bank_c[pairs.bank_idx]) and torch.equal(pairs.x0, bank.x0[pairs.bank_idx])
    seen, calls = [], []
    pair = obj._pair
    obj._pair = lambda *a: seen.append(pair(*a)) or seen[-1]
    hook = model.net.register_forward_hook(lambda m, a, o: calls.append(a[3]) if torch.is_grad_enabled() else None)
    out = obj(x, c)
    hook.remove()
    assert torch.isfinite(out.loss).all() and "nll" in out.stats
    # the one gradient-carrying forward: the L_CMFM rows with the batch's contexts, then the pairs with their own
    assert len(calls) == 1 and torch.equal(calls[0][:20], c[20:]) and torch.equal(calls[0][20:], seen[0].cond)

"""Zero-centre-of-mass space and the masked EGNN: projection, degrees of freedom, E(3) and permutation
equivariance, padding independence, forward-mode AD, and equivariance of the 1-NFE sampler."""
import pytest
import torch

from rmflow.flow import RMFlow, mean_velocity_time_derivative, one_step
from rmflow.flow.refine import FixedScale
from rmflow.flow.sources import GaussianSource
from rmflow.nets.egnn import EGNN
from rmflow.tasks.qm9.space import ZeroCoMSpace

N, F = 7, 5


def make_mask(counts, n=N, dtype=torch.float64):
    m = torch.zeros(len(counts), n, 1, dtype=dtype)
    for i, c in enumerate(counts):
        m[i, :c] = 1
    return m


def random_orthogonal(reflect: bool):
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
    if (torch.det(q) < 0) != reflect:
        q[:, 0] = -q[:, 0]
    return q


def transform(x, q, shift, mask):
    y = x.clone()
    y[..., :3] = (x[..., :3] @ q.T + shift) * mask
    return y


# ------------------------------------------------------------------------------------------------- space
def test_projection_properties():
    sp = ZeroCoMSpace()
    mask = make_mask([7, 4, 1])
    x = torch.randn(3, N, 3 + F, dtype=torch.float64)
    px = sp.project(x, mask)
    assert torch.allclose(sp.project(px, mask), px)                       # idempotent
    com = (px[..., :3] * mask).sum(1)
    assert com.abs().max() < 1e-12                                        # zero centre of mass
    assert (px * (1 - mask)).abs().max() == 0                             # padding is zero
    assert torch.equal(px[..., 3:], x[..., 3:] * mask)                    # type features untouched
    y = torch.randn_like(x)
    assert abs(((x - px) * sp.project(y, mask)).sum()) < 1e-10            # orthogonal projection
    eps = sp.randn_like(x, mask)
    assert torch.allclose(sp.project(eps, mask), eps)


def test_dof_equals_rank_of_projection():
    sp = ZeroCoMSpace()
    counts = [7, 3, 1]
    mask = make_mask(counts)
    dof = sp.dof(torch.zeros(3, N, 3 + F, dtype=torch.float64), mask)
    for b, n in enumerate(counts):
        basis = torch.eye(N * (3 + F), dtype=torch.float64).reshape(-1, N, 3 + F)
        proj = sp.project(basis, mask[b:b + 1].expand(len(basis), -1, -1)).reshape(len(basis), -1)
        rank = torch.linalg.matrix_rank(proj).item()
        assert dof[b].item() == rank == 3 * (n - 1) + F * n
    assert sp.dof(torch.zeros(2, N, 8)).tolist() == [N * 8 - 3] * 2


def test_bad_mask_shape():
    with pytest.raises(ValueError, match="atom mask"):
        ZeroCoMSpace().project(torch.zeros(2, N, 8), torch.ones(2, N))


# ------------------------------------------------------------------------------------------------- EGNN
@pytest.fixture(params=[0, 8], ids=["d2", "rbf8"])
def net(request):
    torch.manual_seed(0)
    return EGNN(F, hidden=16, layers=3, time_dim=8, cond_dim=2, distance_rbf=request.param, rbf_max=4.0).double()


def test_distance_rbf_extends_the_edge_input():
    """An RBF network whose RBF columns are zero is the plain network; nonzero columns change the output."""
    torch.manual_seed(0)
    plain = EGNN(F, hidden=16, layers=2, time_dim=8).double()
    rbf = EGNN(F, hidden=16, layers=2, time_dim=8, distance_rbf=6, rbf_max=4.0).double()
    state = plain.state_dict()
    for name, w in rbf.state_dict().items():
        if name.endswith("dist.weight"):
            state[name] = torch.cat([state[name], torch.zeros(16, 6, dtype=w.dtype)], 1)
    rbf.load_state_dict(state)
    x, t, r, _, mask = inputs()
    assert torch.allclose(rbf(x, t, r, None, mask), plain(x, t, r, None, mask), atol=1e-12)
    with torch.no_grad():
        rbf.layers[0].dist.weight[:, 2:] = 0.5
    assert not torch.allclose(rbf(x, t, r, None, mask), plain(x, t, r, None, mask), atol=1e-6)
    centres = rbf.layers[0].rbf_centres
    assert torch.allclose(centres, torch.linspace(0, 4.0, 6).double()) and rbf.layers[0].rbf_width == pytest.approx(0.8)


def inputs(counts=(7, 5, 3)):
    mask = make_mask(counts)
    x = ZeroCoMSpace().randn_like(torch.zeros(len(counts), N, 3 + F, dtype=torch.float64), mask) * 1.5
    t = torch.rand(len(counts), dtype=torch.float64)
    r = torch.rand(len(counts), dtype=torch.float64)
    cond = torch.randn(len(counts), 2, dtype=torch.float64)
    return x, t, r, cond, mask


@pytest.mark.parametrize("reflect", [False, True])
def test_e3_equivariance(net, reflect):
    x, t, r, cond, mask = inputs()
    q, shift = random_orthogonal(reflect), torch.randn(3, dtype=torch.float64) * 3
    u = net(x, t, r, cond, mask)
    u2 = net(transform(x, q, shift, mask), t, r, cond, mask)
    assert torch.allclose(u2[..., :3], u[..., :3] @ q.T, atol=1e-10)     # positions rotate, translation cancels
    assert torch.allclose(u2[..., 3:], u[..., 3:], atol=1e-10)           # features invariant
    assert u[..., :3].abs().max() > 1e-6                                 # not trivially zero


@pytest.mark.parametrize("edge_mlp", [True, False])
def test_output_in_subspace_and_permutation(edge_mlp):
    torch.manual_seed(1)
    net = EGNN(F, hidden=16, layers=2, time_dim=8, edge_mlp=edge_mlp).double()
    x, t, r, _, mask = inputs()
    u = net(x, t, r, None, mask)
    assert ((u[..., :3] * mask).sum(1)).abs().max() < 1e-10
    assert (u * (1 - mask)).abs().max() == 0
    perm = torch.randperm(N)                  # moves padding slots among real ones, too
    u_p = net(x[:, perm], t, r, None, mask[:, perm])
    assert torch.allclose(u_p, u[:, perm], atol=1e-10)


def test_masked_atoms_never_matter(net):
    x, t, r, cond, mask = inputs()
    garbage = x + 100 * torch.randn_like(x) * (1 - mask)
    assert torch.allclose(net(garbage, t, r, cond, mask), net(x, t, r, cond, mask), atol=1e-10)


def test_jvp_matches_finite_differences(net):
    x, t, r, cond, mask = inputs()
    v = ZeroCoMSpace().randn_like(x, mask)
    _, dudt = mean_velocity_time_derivative(net, x, t, r, v, cond, mask)
    h = 1e-7   # central differences converge as h² here (error ~1e-7 at this h)
    fd = (net(x + h * v, t + h, r, cond, mask) - net(x - h * v, t - h, r, cond, mask)) / (2 * h)
    assert torch.allclose(dudt, fd.detach(), atol=1e-6, rtol=1e-5)


def test_context_changes_output(net):
    x, t, r, cond, mask = inputs()
    assert not torch.allclose(net(x, t, r, cond, mask), net(x, t, r, cond + 1, mask))
    with pytest.raises(ValueError, match="context"):
        net(x, t, r, None, mask)


# ------------------------------------------------------------------------------------------------ sampler
def _model():
    torch.manual_seed(2)
    sp = ZeroCoMSpace()
    egnn = EGNN(F, hidden=16, layers=2, time_dim=8).double()
    return RMFlow(egnn, GaussianSource(sp), FixedScale(0.05, 0.0), sp)


def test_one_step_sampler_equivariant_per_draw():
    model = _model()
    mask = make_mask([7, 6, 4])
    x0 = model.draw_source(torch.zeros(3, N, 8, dtype=torch.float64), None, mask)
    q = random_orthogonal(True)
    out = one_step(model, x0, None, mask, refine=False).x
    out_q = one_step(model, transform(x0, q, torch.zeros(3, dtype=torch.float64), mask), None, mask, refine=False).x
    assert torch.allclose(out_q[..., :3], out[..., :3] @ q.T, atol=1e-10)
    perm = torch.cat([torch.randperm(4), torch.arange(4, N)])        # permute the real atoms of the 3rd molecule
    out_p = one_step(model, x0[:, perm], None, mask[:, perm], refine=False).x
    assert torch.allclose(out_p, out[:, perm], atol=1e-10)


def test_one_step_sample_statistics_invariant():
    """The sample law is E(3)- and permutation-invariant: the position second moment is isotropic, and every
    real atom slot has the same position and feature statistics (up to Monte Carlo error)."""
    model = _model()
    n, counts = 4000, [5]
    mask = make_mask(counts * n)
    gen = torch.Generator().manual_seed(0)
    x0 = model.draw_source(torch.zeros(n, N, 8, dtype=torch.float64), None, mask, gen)
    out = one_step(model, x0, None, mask, generator=gen).x[:, :5]
    pos = out[..., :3].reshape(-1, 3)
    cov = pos.T @ pos / len(pos)
    iso = cov.diagonal().mean()
    assert (cov - iso * torch.eye(3, dtype=torch.float64)).abs().max() < 0.08 * iso
    slot_sq = out[..., :3].pow(2).sum(-1).mean(0)                     # (5,) E‖p_i‖² per slot
    assert (slot_sq - slot_sq.mean()).abs().max() < 0.08 * slot_sq.mean()
    slot_feat = out[..., 3:].mean(0)                                  # (5, F)
    stderr = out[..., 3:].std(0) / n ** 0.5
    assert ((slot_feat - slot_feat.mean(0)).abs() < 5 * stderr).all()  # same law in every slot (5 s.e.)

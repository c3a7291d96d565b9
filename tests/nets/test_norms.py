"""Our GroupNorm / LayerNorm: the same function as torch's, and traceable by torch.compile under func.jvp."""
import pytest
import torch
from torch import nn

from rmflow.nets.norms import GroupNorm, LayerNorm


def _randomise(mod):
    with torch.no_grad():
        for p in mod.parameters():
            p.normal_()
    return mod


@pytest.mark.parametrize("shape,groups", [((3, 8, 5), 4), ((2, 6, 4, 4), 3), ((2, 4, 7), 1)])
def test_group_norm_equals_torch(shape, groups):
    torch.manual_seed(0)
    ours = _randomise(GroupNorm(groups, shape[1]).double())
    ref = nn.GroupNorm(groups, shape[1]).double()
    ref.load_state_dict(ours.state_dict())                 # same parameter names: checkpoints interchange
    x = 3 * torch.randn(shape, dtype=torch.float64) + 1
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-12, atol=1e-12)


def test_layer_norm_equals_torch():
    torch.manual_seed(0)
    ours = _randomise(LayerNorm(6).double())
    ref = nn.LayerNorm(6).double()
    ref.load_state_dict(ours.state_dict())
    x = 2 * torch.randn(4, 5, 6, dtype=torch.float64) - 1
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("make", [lambda: GroupNorm(4, 8), lambda: LayerNorm(5)])
def test_norm_jvp_matches_finite_differences_and_compiles(make):
    torch.manual_seed(0)
    norm = _randomise(make().double())
    x = torch.randn(3, 8, 5, dtype=torch.float64)
    v = torch.randn_like(x)
    _, tangent = torch.func.jvp(norm, (x,), (v,))
    h = 1e-6
    fd = (norm(x + h * v) - norm(x - h * v)) / (2 * h)
    torch.testing.assert_close(tangent, fd, rtol=1e-6, atol=1e-7)

    def loss(a, t):          # the MeanFlow pattern: a no-grad JVP target and a gradient-carrying forward
        with torch.no_grad():
            _, d = torch.func.jvp(norm, (a,), (t,))
        return (norm(a) - d).pow(2).mean()

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)   # raises if Dynamo cannot trace it
    torch.testing.assert_close(compiled(x, v), loss(x, v))


def test_norms_keep_bf16_statistics_in_float32():
    """A bf16 input is normalised in float32 (as torch's autocast does for its norms) and returned as bf16."""
    torch.manual_seed(0)
    x = (5 + 0.01 * torch.randn(2, 8, 64)).bfloat16()      # large mean, small spread: bf16 statistics would fail
    ours, ref = GroupNorm(4, 8), nn.GroupNorm(4, 8)
    y = ours(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref(x.float()), rtol=0.02, atol=0.02)
    ln = LayerNorm(64)
    torch.testing.assert_close(ln(x).float(), nn.LayerNorm(64)(x.float()), rtol=0.02, atol=0.02)

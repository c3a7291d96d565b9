"""The temporal backbone: shapes, forward-mode AD against finite differences, masks, context input."""
import pytest
import torch

from rmflow.nets.temporal import SelfAttention1d, SequenceFlowNet, UNet1d
from rmflow.tasks.dynamics.model import ContextEncoder


def randomise_output(net):
    for p in net.unet.out.parameters():          # the last layer starts at zero; make the test non-trivial
        torch.nn.init.normal_(p, std=0.1)


@pytest.mark.parametrize("length", [48, 47, 13])
def test_unet_shapes_any_length(length):
    net = UNet1d(3, 2, width=8, mults=(1, 2, 2), attention=True, heads=2)
    x = torch.randn(4, 3, length)
    out = net(x, torch.rand(4), torch.rand(4))
    assert out.shape == (4, 2, length)
    assert torch.all(out == 0)                     # zero-initialised output layer
    with pytest.raises(ValueError, match=r"\(B, 3, L\)"):
        net(torch.randn(4, 2, length), torch.rand(4), torch.rand(4))


def test_attention_matches_explicit_softmax():
    torch.manual_seed(0)
    att = SelfAttention1d(8, heads=2)
    h = torch.randn(2, 8, 5)
    q, k, v = att.qkv(att.norm(h)).reshape(2, 3, 2, 4, 5).unbind(1)
    out = torch.zeros(2, 2, 4, 5)
    for b in range(2):
        for hd in range(2):
            w = torch.softmax(q[b, hd].T @ k[b, hd] / 2.0, dim=-1)     # (L, L), √d = 2
            out[b, hd] = (w @ v[b, hd].T).T
    expected = h + att.out(out.reshape(2, 8, 5))
    torch.testing.assert_close(att(h), expected)


def test_jvp_matches_finite_differences():
    torch.manual_seed(0)
    net = SequenceFlowNet(3, context_len=6, width=8, mults=(1, 2), attention=True, heads=2).double()
    randomise_output(net)
    x = torch.randn(2, 3, 10, dtype=torch.float64)
    c = torch.randn(2, 3, 6, dtype=torch.float64)
    t = torch.tensor([0.2, 0.5], dtype=torch.float64)
    r = torch.tensor([0.6, 0.9], dtype=torch.float64)
    v = torch.randn_like(x)

    def f(x_, t_, r_):
        return net(x_, t_, r_, c)

    _, jvp = torch.func.jvp(f, (x, t, r), (v, torch.ones_like(t), torch.zeros_like(r)))
    eps = 1e-6
    fd = (f(x + eps * v, t + eps, r) - f(x - eps * v, t - eps, r)) / (2 * eps)
    torch.testing.assert_close(jvp, fd, rtol=1e-4, atol=1e-4 * fd.abs().max().item())


def test_context_input_and_mask():
    torch.manual_seed(1)
    net = SequenceFlowNet(2, context_len=4, width=8, mults=(1,), attention=False)
    randomise_output(net)
    x, t, r = torch.randn(3, 2, 6), torch.rand(3), torch.rand(3)
    c1, c2 = torch.randn(3, 2, 4), torch.randn(3, 2, 4)
    assert net(x, t, r, c1).shape == (3, 2, 6)
    assert not torch.allclose(net(x, t, r, c1), net(x, t, r, c2))       # the context matters
    mask = torch.ones(3, 1, 6)
    mask[:, :, 4:] = 0
    out = net(x, t, r, c1, mask)
    assert torch.all(out[..., 4:] == 0) and torch.allclose(out[..., :4], net(x, t, r, c1)[..., :4])
    with pytest.raises(ValueError, match="needs cond"):
        net(x, t, r)
    with pytest.raises(ValueError, match=r"\(B, 2, 4\)"):
        net(x, t, r, torch.randn(3, 2, 5))
    plain = SequenceFlowNet(2, context_len=0, width=8, mults=(1,), attention=False)
    assert plain(x, t, r).shape == (3, 2, 6)


def test_time_inputs_matter():
    torch.manual_seed(2)
    net = SequenceFlowNet(2, width=8, mults=(1,), attention=False)
    randomise_output(net)
    x = torch.randn(1, 2, 8)
    a = net(x, torch.tensor([0.1]), torch.tensor([0.5]))
    b = net(x, torch.tensor([0.1]), torch.tensor([0.9]))
    assert not torch.allclose(a, b)


def test_context_encoder_starts_as_persistence():
    enc = ContextEncoder(2, 3, 5)
    c = torch.randn(4, 2, 3)
    torch.testing.assert_close(enc(c), c[..., -1:].expand(4, 2, 5))
    assert torch.all(ContextEncoder(2, 3, 5, persistence=False)(c) == 0)
    with pytest.raises(ValueError, match=r"\(B, 2, 3\)"):
        enc(torch.randn(4, 2, 4))


def test_time_scale_reaches_the_embeddings():
    from rmflow.nets import UNet1d as Exported
    net = Exported(2, 2, width=8, mults=(1,), attention=False, time_scale=3.0)
    assert net.time.t_emb.scale == 3.0 and net.time.h_emb.scale == 3.0

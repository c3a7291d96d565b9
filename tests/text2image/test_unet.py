"""The U-Net: shapes, conditioning, own attention equal to softmax(QKᵀ/√d)V, JVP = float64 finite differences."""
import torch
import torch.nn.functional as F

from rmflow.nets.unet import UNet, attention


def _randomise(net):
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.3 / max(1, p[0].numel() ** 0.5) if p.dim() > 1 else 0.1)
    return net


def test_attention_matches_sdpa_math():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64) for _ in range(3))
    ref = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(attention(q, k, v), ref)
    # a hand computation for one query
    s = (q[0, 0, 0] @ k[0, 0].T) / 2.0
    torch.testing.assert_close(attention(q, k, v)[0, 0, 0], torch.softmax(s, 0) @ v[0, 0])


def test_shapes_and_text_conditioning():
    torch.manual_seed(0)
    net = _randomise(UNet(3, channels=8, channel_mult=(1, 2, 2), attn_levels=(1, 2), cond_dim=16, heads=2))
    x, t, r = torch.randn(3, 3, 16, 16), torch.rand(3), torch.rand(3)
    c = torch.randn(3, 16)
    u = net(x, t, r, c)
    assert u.shape == x.shape
    assert torch.equal(u, net(x, t, r, {"text": c}))
    assert (net(x, t, r, c + 1) - u).abs().max() > 1e-4
    assert (net(x, t, r + 0.3, c) - u).abs().max() > 1e-4         # depends on r (through r - t)
    unc = UNet(1, channels=8, cond_dim=0, heads=2)
    assert unc(torch.randn(2, 1, 8, 8), torch.rand(2), torch.rand(2)).shape == (2, 1, 8, 8)


def test_jvp_through_attention_matches_float64_differences():
    """du/dt = ∂_x u·v + ∂_t u by torch.func.jvp vs central differences along (v, 1, 0), all in float64."""
    torch.manual_seed(1)
    net = _randomise(UNet(2, channels=8, channel_mult=(1, 2), attn_levels=(0, 1), cond_dim=12, heads=2,
                          num_tokens=3)).double()
    x, v = torch.randn(2, 2, 8, 8, dtype=torch.float64), torch.randn(2, 2, 8, 8, dtype=torch.float64)
    t, r = torch.tensor([0.2, 0.7], dtype=torch.float64), torch.tensor([0.9, 0.75], dtype=torch.float64)
    c = torch.randn(2, 12, dtype=torch.float64)

    def f(x_, t_, r_):
        return net(x_, t_, r_, c)

    with torch.no_grad():
        _, dudt = torch.func.jvp(f, (x, t, r), (v, torch.ones_like(t), torch.zeros_like(r)))
        h = 1e-6
        fd = (f(x + h * v, t + h, r) - f(x - h * v, t - h, r)) / (2 * h)
    assert dudt.abs().max() > 1e-3
    torch.testing.assert_close(dudt, fd, rtol=1e-5, atol=1e-7)

"""The real-scale route with tiny random configurations: save them in a Stable Diffusion layout under tmp_path,
load them back through from_pretrained (local only), and check outputs, latents and the JVP through attention."""
import pytest
import torch

pytest.importorskip("diffusers")


def _save_tiny_pipeline(root, text_encoder):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import BertConfig, BertModel
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                                layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                attention_head_dim=4, norm_num_groups=4, class_embed_type="timestep")
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                        norm_num_groups=4, sample_size=16, layers_per_block=1)
    tok = text_encoder.tokenizer
    bert = BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1,
                                num_attention_heads=2, intermediate_size=32, max_position_embeddings=64))
    unet.save_pretrained(root / "unet")
    vae.save_pretrained(root / "vae")
    bert.save_pretrained(root / "text_encoder")
    tok.save_pretrained(root / "tokenizer")
    return unet, vae, bert


def test_tiny_pipeline_roundtrip_and_jvp(tmp_path, text_encoder):
    from rmflow.flow import sample
    from rmflow.flow.model import RMFlow
    from rmflow.tasks.text2image.diffusers_route import load_local_pipeline
    unet, vae, bert = _save_tiny_pipeline(tmp_path, text_encoder)
    net, latent, text = load_local_pipeline(tmp_path)
    text.max_length = 12
    cond = text.encode(["a small red circle", "the number 3"])
    assert cond["tokens"].shape == (2, 12, 16) and cond["text"].shape == (2, 16)
    x, t, r = torch.randn(2, 4, 8, 8), torch.tensor([0.1, 0.6]), torch.tensor([0.5, 1.0])
    with torch.no_grad():
        ref = unet(x, t * 1000, encoder_hidden_states=cond["tokens"], class_labels=(r - t) * 1000,
                   encoder_attention_mask=cond["token_mask"]).sample
        torch.testing.assert_close(net(x, t, r, cond), ref, rtol=1e-5, atol=1e-5)   # loaded == saved weights
        img = torch.rand(2, 3, 16, 16) * 2 - 1
        z = latent.encode(img)
        assert z.shape == (2, 4, 8, 8) and latent.decode(z).shape == img.shape
        torch.testing.assert_close(z, vae.encode(img).latent_dist.mean * vae.config.scaling_factor)
        # the samplers run it as net(x, t, r, cond, mask)
        out = sample(RMFlow(net), x, "meanflow", 2, cond)
    assert out.x.shape == x.shape and out.nfe == 2
    # JVP through the (classic, non-fused) attention path. diffusers computes its sinusoidal time features in
    # float32 whatever the input dtype, so: the x-direction against float64 central differences, and the full
    # tangent (v, 1, 0) against reverse-mode double-backward JVP (torch.autograd.functional.jvp).
    net64 = net.double()
    c64 = {"tokens": cond["tokens"].double(), "token_mask": cond["token_mask"]}
    x64, v64 = x.double(), torch.randn_like(x).double()
    t64, r64 = t.double(), r.double()

    def f(a, b, c):
        return net64(a, b, c, c64)

    with torch.no_grad():
        _, du_dx = torch.func.jvp(lambda a: f(a, t64, r64), (x64,), (v64,))
        h = 1e-6
        fd = (f(x64 + h * v64, t64, r64) - f(x64 - h * v64, t64, r64)) / (2 * h)
    assert du_dx.abs().max() > 1e-3
    torch.testing.assert_close(du_dx, fd, rtol=1e-6, atol=1e-8)
    tangents = (v64, torch.ones_like(t64), torch.zeros_like(r64))
    with torch.no_grad():
        _, dudt = torch.func.jvp(f, (x64, t64, r64), tangents)
    _, dudt_rev = torch.autograd.functional.jvp(f, (x64, t64, r64), tangents)
    torch.testing.assert_close(dudt, dudt_rev, rtol=1e-6, atol=1e-6)


def test_missing_layout_is_reported(tmp_path):
    from rmflow.tasks.text2image.diffusers_route import load_local_pipeline
    with pytest.raises(FileNotFoundError, match="unet"):
        load_local_pipeline(tmp_path)

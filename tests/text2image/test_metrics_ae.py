"""Metrics against independent computations; φ_ω shapes; the autoencoder's latent scaling."""
import numpy as np
import torch
from scipy import linalg

from rmflow.flow import EuclideanSpace, GuidedSource
from rmflow.tasks.text2image.autoencoder import ConvAutoencoder, train_autoencoder
from rmflow.tasks.text2image.classifier import AttributeClassifier
from rmflow.tasks.text2image.encoder import CaptionEncoder
from rmflow.tasks.text2image.metrics import classifier_frechet_distance, per_prompt_spread, prompt_accuracy


def test_classifier_frechet_distance_matches_scipy():
    torch.manual_seed(0)
    clf = AttributeClassifier(1, (10,), width=4, feature_dim=6).eval()
    with torch.no_grad():
        for p in clf.parameters():
            p.normal_(0, 0.5)
    real, fake = torch.randn(300, 1, 8, 8), 0.5 * torch.randn(200, 1, 8, 8) + 0.3
    got = classifier_frechet_distance(clf, real, fake, batch_size=64)
    with torch.no_grad():
        fr, ff = clf.features(real).double().numpy(), clf.features(fake).double().numpy()
    mu1, mu2 = fr.mean(0), ff.mean(0)
    s1, s2 = np.cov(fr, rowvar=False), np.cov(ff, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    ref = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)
    assert ref > 1e-3
    assert abs(got - ref) < 1e-3 * max(1.0, ref)
    assert abs(classifier_frechet_distance(clf, real, real)) < 1e-4


def test_prompt_accuracy_and_spread_known_values():
    pred = torch.tensor([[1, 0], [2, 1], [3, 3]])
    lab = torch.tensor([[1, 0], [2, 0], [0, 3]])
    acc = prompt_accuracy(pred, lab)
    assert acc == {"all": 1 / 3, "0": 2 / 3, "1": 2 / 3}
    feats = torch.tensor([[0.0, 0.0], [3.0, 4.0], [10.0, 0.0], [10.0, 0.0], [7.0, 7.0]])
    ids = torch.tensor([0, 0, 1, 1, 2])          # prompt 2 has one sample and is skipped
    assert abs(per_prompt_spread(feats, ids) - (5.0 + 0.0) / 2) < 1e-12


def test_phi_shapes_and_guided_source():
    phi = CaptionEncoder((4, 8, 8), cond_dim=384, hidden=32)
    c = {"text": torch.randn(5, 384)}
    assert phi(c).shape == (5, 4, 8, 8) and torch.equal(phi(c), torch.zeros(5, 4, 8, 8))   # zero start
    torch.nn.init.normal_(phi.net[-1].weight)
    src = GuidedSource(phi, 0.1, EuclideanSpace())
    template = torch.zeros(5, 4, 8, 8)
    g = torch.Generator().manual_seed(0)
    x0 = src(template, c, generator=g)
    eps = torch.randn(template.shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(x0, phi(c["text"]) + 0.1 * eps)


def test_autoencoder_shapes_and_latent_scale():
    torch.manual_seed(0)
    images = torch.rand(64, 3, 16, 16) * 2 - 1
    ae = ConvAutoencoder(3, latent_channels=2, downsample=2, width=8)
    losses = train_autoencoder(ae, images, steps=40, batch_size=16, lr=3e-3)
    assert losses[-1] < losses[0]
    z = ae.encode(images)
    assert z.shape == (64, 2, 4, 4)
    assert abs(float(z.std()) - 1.0) < 1e-4                 # latents normalised by their std
    assert ae.decode(z).shape == images.shape and ae.decode(z).abs().max() <= 1

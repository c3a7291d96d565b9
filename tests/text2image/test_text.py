"""The frozen text encoder: offline, deterministic, equal to the sentence-transformers pipeline, cached."""
import os
import socket

import pytest
import torch


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access in a test")
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_loads_offline_and_is_deterministic(no_network, tmp_path):
    from rmflow.tasks.text2image.text import TextEncoder
    enc = TextEncoder(cache_file=tmp_path / "cache.safetensors")
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
    caps = ["a handwritten digit three", "the number 3", "a small red circle in the top left"]
    a = enc.encode(caps)
    b = enc.embed_uncached(caps)
    assert a.shape == (3, 384) and a.dtype == torch.float32
    assert torch.equal(a, enc.encode(caps))                     # cached path
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)         # recomputation is deterministic
    torch.testing.assert_close(a.norm(dim=1), torch.ones(3))
    sim = a @ a.T
    assert sim[0, 1] > sim[0, 2] and sim[0, 1] > sim[1, 2]      # "three" ≈ "3", far from a red circle
    again = TextEncoder(cache_file=tmp_path / "cache.safetensors", _loaded=(enc.path, enc.tokenizer, enc.model))
    assert len(again.cache) == 3 and torch.equal(again.encode(caps), a)


def test_matches_sentence_transformers(text_encoder, no_network):
    """Independent computation: the bundled model through sentence-transformers (its own pooling/normalising)."""
    from sentence_transformers import SentenceTransformer
    st = SentenceTransformer(str(text_encoder.path), device="cpu")
    caps = ["a scanned handwritten seven", "there is a large square coloured blue in the bottom right corner"]
    ref = st.encode(caps, convert_to_tensor=True).float()
    torch.testing.assert_close(text_encoder.embed_uncached(caps), ref, rtol=0, atol=1e-5)

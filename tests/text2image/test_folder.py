"""Images from a user's folder (task.dataset "folder"): class sub-folders, a captions file, grey/RGB, the split, end
to end training with finite metrics, and the ConfigErrors for bad folders."""
import math

import numpy as np
import pytest
import torch

from rmflow.config import ConfigError, load_config
from rmflow.evaluate import evaluate_samplers
from rmflow.tasks.text2image import data as D
from rmflow.train import Trainer

Image = pytest.importorskip("PIL.Image")

COLOURS = {"red_square": (230, 30, 20), "blue-circle": (20, 40, 240)}


def draw(kind: str, seed: int, size=(14, 11), grey: bool = False):
    """A small PIL image: a square or a disc of the class colour on noise."""
    rng = np.random.default_rng(seed)
    h, w = size
    a = rng.integers(0, 40, (h, w, 3)).astype(np.uint8)
    yy, xx = np.mgrid[:h, :w]
    cy, cx = h / 2 + rng.uniform(-1, 1), w / 2 + rng.uniform(-1, 1)
    inside = ((np.abs(yy - cy) < 3) & (np.abs(xx - cx) < 3) if "square" in kind
              else (yy - cy) ** 2 + (xx - cx) ** 2 < 12)
    a[inside] = COLOURS.get(kind, (200, 200, 200))
    img = Image.fromarray(a)
    return img.convert("L") if grey else img


def class_folder(root, per_class: int = 10, grey: bool = False, jpeg_one: bool = True):
    for kind in COLOURS:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            suffix = "jpg" if jpeg_one and i == 0 else "png"
            draw(kind, i, grey=grey).save(root / kind / f"{i}.{suffix}")
    return root


def caption_folder(root, n: int = 10):
    """Images directly in the folder and a captions.txt, one (partly repeated) caption per image."""
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        kind = list(COLOURS)[i % 2]
        draw(kind, i).save(root / f"img {i}.png")       # a space in the name: tab-separated lines
        lines.append(f"img {i}.png\ta {kind.replace('_', ' ')} number {i % 3}")
    (root / "captions.txt").write_text("# file<TAB>caption\n" + "\n".join(lines) + "\n")
    return root


def folder_config(tiny_config, tmp_path, path, **over):
    return tiny_config(tmp_path, **{"task.dataset": "folder", "task.path": str(path), "task.image_size": 8,
                                    "train.steps": 3, **over})


def scored(trainer):
    trainer.train()
    ref = trainer.task.reference(40, seed=0)
    rows, _ = evaluate_samplers(trainer.task, trainer.ema.shadow, ref, ["rmflow"], 0)
    return rows[0]


# ----------------------------------------------------------------------------------------------- loading
def test_class_folders_load_split_and_scale(tmp_path):
    f = D.load_image_folder(class_folder(tmp_path / "imgs"), 8)
    assert f.class_names == ("blue-circle", "red_square") and f.captions_file == ""
    x = f.data.images
    assert x.shape == (20, 3, 8, 8) and x.min() >= -1 and x.max() <= 1 and x.max() > 0.5    # [-1, 1] like digits
    assert f.data.labels[:, 0].tolist() == [0] * 10 + [1] * 10
    assert f.data.captions[0] == "a photo of a blue circle" and f.data.captions[-1] == "a photo of a red square"
    train, test = D.split_folder(f, 0.2, seed=0)
    assert len(train) == 16 and len(test) == 4 and test.labels[:, 0].tolist() == [0, 0, 1, 1]   # per class
    assert not set(map(tuple, train.images.flatten(1).tolist())) & set(map(tuple, test.images.flatten(1).tolist()))
    again = D.split_folder(f, 0.2, seed=0)[1]
    torch.testing.assert_close(again.images, test.images)


def test_grey_images_give_one_channel_unless_rgb_is_asked(tmp_path):
    root = class_folder(tmp_path / "grey", per_class=3, grey=True, jpeg_one=False)
    assert D.load_image_folder(root, 8).data.images.shape[1] == 1
    assert D.load_image_folder(root, 8, channels=3).data.images.shape[1] == 3
    rgb = class_folder(tmp_path / "rgb", per_class=3)
    assert D.load_image_folder(rgb, 8, channels=1).data.images.shape[1] == 1


def test_captions_csv_with_class_folders(tmp_path):
    root = class_folder(tmp_path / "imgs", per_class=3, jpeg_one=False)
    rows = ["file,caption"] + [f"{k}/{i}.png,\"{k}, picture {i}\"" for k in COLOURS for i in range(3)]
    (root / "captions.csv").write_text("\n".join(rows) + "\n")
    f = D.load_image_folder(root, 8)
    assert f.captions_file == "captions.csv" and f.class_names == ("blue-circle", "red_square")
    assert f.data.captions[0] == "blue-circle, picture 0"


# ------------------------------------------------------------------------------------------- end to end
def test_class_folder_end_to_end(tiny_config, tmp_path, text_encoder):
    cfg = folder_config(tiny_config, tmp_path, class_folder(tmp_path / "imgs"))
    trainer = Trainer(cfg)
    task = trainer.task
    assert task.image_shape == (3, 8, 8) and task.num_classes == (2,)
    assert task.caption_strings[1][0] == "a photo of a red square" and len(task.caption_strings[1]) == 4
    row = scored(trainer)
    for key in ("cfd", "acc", "diversity", "pixel_fd", "pixel_diversity"):
        assert math.isfinite(row[key]) and row[key] >= 0, key
    assert set(task.metric_format) >= {"cfd", "acc", "pixel_fd"} and "acc_heldout" not in task.metric_format
    ref = task.reference(40, seed=0)
    same = task.data_baseline(ref, 1)                    # another held-out image of the same class
    assert (task.test.labels[ref.cond["index"]] == ref.cond["label"]).all() and same.shape == ref.x.shape


def test_captions_only_end_to_end_skips_classifier_metrics(tiny_config, tmp_path, text_encoder):
    cfg = folder_config(tiny_config, tmp_path, caption_folder(tmp_path / "imgs"))
    trainer = Trainer(cfg)
    task = trainer.task
    assert task.num_classes == () and not task.classifier_metrics
    assert len(task.caption_strings) == 6 and task.caption_strings[0] == ["a blue-circle number 0"]
    row = scored(trainer)
    assert {"cfd", "acc", "diversity"}.isdisjoint(row) and set(task.metric_format) == {"pixel_fd", "pixel_diversity"}
    assert math.isfinite(row["pixel_fd"]) and math.isfinite(row["pixel_diversity"])
    assert task._classifier is None                     # never trained
    path = tmp_path / "grid.png"
    ref = task.reference(40, seed=0)
    task.plot({"rmflow": ref.x}, ref, path)
    assert path.stat().st_size > 0


def test_preset_loads(tmp_path):
    cfg = load_config("images-folder", [f"task.path={tmp_path}", f"out_dir={tmp_path}"])
    assert cfg.task.dataset == "folder" and cfg.rmflow.lambda_nll > 0 and "rmflow_lora" in cfg.compare


# --------------------------------------------------------------------------------------------- bad input
def _bad(root, match, **kw):
    with pytest.raises(ConfigError, match=match):
        D.load_image_folder(root, 8, **kw)


def test_config_validation(tiny_config, tmp_path):
    with pytest.raises(ConfigError, match="task.path"):
        tiny_config(tmp_path, **{"task.dataset": "folder"})
    with pytest.raises(ConfigError, match="task.channels"):
        tiny_config(tmp_path, **{"task.dataset": "folder", "task.path": "x", "task.channels": 2})
    with pytest.raises(ConfigError, match="task.image_size"):
        tiny_config(tmp_path, **{"task.dataset": "folder", "task.path": "x", "task.image_size": 10})
    with pytest.raises(ConfigError, match="task.test_fraction"):
        tiny_config(tmp_path, **{"task.dataset": "folder", "task.path": "x", "task.test_fraction": 1.0})


def test_missing_and_empty_folders(tiny_config, tmp_path):
    with pytest.raises(ConfigError, match="task.path': no such folder"):
        Trainer(folder_config(tiny_config, tmp_path, tmp_path / "nope"))    # surfaces before any training
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("hi")
    _bad(tmp_path / "empty", "task.path': no PNG/JPEG images")
    _bad(tmp_path / "empty" / "notes.txt", "is not a folder")


def test_unreadable_files_are_named(tmp_path):
    root = class_folder(tmp_path / "imgs", per_class=3, jpeg_one=False)
    (root / "red_square" / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "blue-circle" / "empty.jpg").write_bytes(b"")
    _bad(root, r"2 files .*cannot be read as images: blue-circle/empty.jpg .*red_square/broken.png")


def test_too_few_images(tmp_path):
    root = tmp_path / "few"
    for i, kind in enumerate(["a", "a", "b"]):
        (root / kind).mkdir(parents=True, exist_ok=True)
        draw(kind, i).save(root / kind / f"{i}.png")
    _bad(root, "only 3 images")
    draw("b", 9).save(root / "a" / "9.png")
    _bad(root, r"at least 2 images .*too few in: b \(1\)")


def test_caption_problems(tmp_path):
    root = caption_folder(tmp_path / "imgs", n=5)
    (root / "captions.txt").unlink()
    _bad(root, "5 images lie directly in .*sub-folder per class, or add a captions.txt")
    (root / "captions.txt").write_text("img 0.png\ta caption\nimg 1.png\tanother\n")
    _bad(root, "3 images have no caption in captions.txt: img 2.png, img 3.png, img 4.png")
    lines = [f"img {i}.png\tcap {i}" for i in range(5)]
    (root / "captions.txt").write_text("\n".join(lines + ["ghost.png\tboo"]))
    _bad(root, "names 1 files that are not images of the folder.*ghost.png")
    (root / "captions.txt").write_text("\n".join(lines + ["img 0.png\tagain"]))
    _bad(root, "a second caption for 'img 0.png'")
    (root / "captions.txt").write_text("\n".join(lines))
    (root / "captions.csv").write_text("file,caption\n")
    _bad(root, "both captions.txt and captions.csv")

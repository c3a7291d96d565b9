"""Checkpoint reliability: stray names are ignored, resume falls back past corrupt checkpoints with a warning,
and a failed write (disk full, read-only folder) leaves no partial file and no damaged checkpoint behind."""
import errno
import os
import pathlib

import pytest
import torch

from rmflow.train import checkpoint as ck
from rmflow.train.checkpoint import (CheckpointError, latest_checkpoint, latest_good_checkpoint, load_checkpoint,
                                     save_checkpoint)


def _write_run(folder, steps=(100, 200, 300)):
    """One checkpoint per step; tensor 'w' is filled with the step so each one is recognisable."""
    for s in steps:
        save_checkpoint(folder / f"step_{s:08d}", {"w": torch.full((4, 3), float(s))}, {"step": s})


def _snapshot(folder):
    """{file name: bytes} of every file in the folder."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_latest_checkpoint_ignores_names_that_are_not_step_digits(tmp_path):
    _write_run(tmp_path, (100, 200))
    for stray in ("step_final.json", "step_.json", "step_12a.json", "notes.json", "step_00000900.json.tmp"):
        (tmp_path / stray).write_text("{}")
    assert latest_checkpoint(tmp_path) == tmp_path / "step_00000200.json"
    assert latest_good_checkpoint(tmp_path, warn=pytest.fail)[0] == tmp_path / "step_00000200.json"


def test_latest_checkpoint_orders_by_step_not_by_name(tmp_path):
    _write_run(tmp_path, (10,))
    save_checkpoint(tmp_path / "step_9", {"w": torch.zeros(1)}, {"step": 9})     # unpadded: sorts last by name
    assert latest_checkpoint(tmp_path) == tmp_path / "step_00000010.json"


def test_missing_or_empty_folder_has_no_checkpoint(tmp_path):
    assert latest_checkpoint(tmp_path / "nope") is None
    assert latest_good_checkpoint(tmp_path / "nope") is None
    assert latest_good_checkpoint(tmp_path) is None


def test_corrupt_newest_falls_back_to_the_previous_one_with_a_warning(tmp_path):
    _write_run(tmp_path)
    _flip_last_byte(tmp_path / "step_00000300.safetensors")
    warnings = []
    path, tensors, state = latest_good_checkpoint(tmp_path, warn=warnings.append)
    assert path == tmp_path / "step_00000200.json" and state == {"step": 200}
    assert torch.equal(tensors["w"], torch.full((4, 3), 200.0))
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "step_00000300" in warnings[0] and "SHA-256" in warnings[0]
    assert "falling back to step_00000200" in warnings[0]


def test_default_warning_goes_through_the_warnings_module(tmp_path):
    _write_run(tmp_path, (100, 200))
    (tmp_path / "step_00000200.safetensors").unlink()                 # incomplete pair
    with pytest.warns(UserWarning, match="step_00000200 .*incomplete.*falling back to step_00000100"):
        path, _, _ = latest_good_checkpoint(tmp_path)
    assert path.name == "step_00000100.json"


def test_two_corrupt_checkpoints_are_both_skipped(tmp_path):
    _write_run(tmp_path)
    (tmp_path / "step_00000300.json").write_bytes(b"\xff\xfe not utf-8")   # garbage JSON bytes
    tfile = tmp_path / "step_00000200.safetensors"
    tfile.write_bytes(tfile.read_bytes()[:40])                          # truncated tensors
    warnings = []
    path, tensors, state = latest_good_checkpoint(tmp_path, warn=warnings.append)
    assert state["step"] == 100 and torch.equal(tensors["w"], torch.full((4, 3), 100.0))
    assert [w.split()[1] for w in warnings] == ["step_00000300", "step_00000200"]
    assert "falling back to step_00000100" in warnings[1]


def test_garbage_json_is_a_checkpoint_error(tmp_path):
    _write_run(tmp_path, (100,))
    (tmp_path / "step_00000100.json").write_bytes(b"\x80\x81\x82")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(tmp_path / "step_00000100.json")


def test_no_usable_checkpoint_names_the_folder_and_the_newest_problem(tmp_path):
    _write_run(tmp_path, (100, 200))
    for s in (100, 200):
        _flip_last_byte(tmp_path / f"step_{s:08d}.safetensors")
    warnings = []
    with pytest.raises(CheckpointError, match="no usable checkpoint in .*all 2.*step_00000200.*SHA-256") as info:
        latest_good_checkpoint(tmp_path, warn=warnings.append)
    assert str(tmp_path) in str(info.value)
    assert len(warnings) == 1                       # 200 falls back to 100; 100 has nothing to fall back to


# ------------------------------------------------------------------------------------------------ failed writes

def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _fail_tensors(monkeypatch):
    real = ck.save_file

    def partial(tensors, filename):                 # a half-written file, then the disk is full
        real(tensors, filename)
        with open(filename, "r+b") as f:
            f.truncate(10)
        _enospc()
    monkeypatch.setattr(ck, "save_file", partial)


def _fail_json_write(monkeypatch):
    real = pathlib.Path.write_text

    def partial(self, text, *a, **k):
        real(self, text[: len(text) // 2], *a, **k)
        _enospc()
    monkeypatch.setattr(pathlib.Path, "write_text", partial)


def _fail_json_rename(monkeypatch):
    real = os.replace

    def replace(src, dst):
        if str(dst).endswith(".json"):
            _enospc()
        real(src, dst)
    monkeypatch.setattr(os, "replace", replace)


def _fail_fsync(monkeypatch):
    monkeypatch.setattr(os, "fsync", _enospc)


@pytest.mark.parametrize("fail", [_fail_tensors, _fail_json_write, _fail_json_rename, _fail_fsync],
                         ids=["tensors", "json-write", "json-rename", "fsync"])
def test_a_failed_write_leaves_no_partial_files_and_old_checkpoints_intact(tmp_path, monkeypatch, fail):
    _write_run(tmp_path, (100, 200))
    before = _snapshot(tmp_path)
    fail(monkeypatch)
    with pytest.raises(CheckpointError, match=r"could not write checkpoint .*step_00000300: .*No space left"):
        save_checkpoint(tmp_path / "step_00000300", {"w": torch.ones(64, 64)}, {"step": 300})
    monkeypatch.undo()
    assert _snapshot(tmp_path) == before            # no .tmp, no orphan tensor file, old bytes unchanged
    assert latest_good_checkpoint(tmp_path, warn=pytest.fail)[2] == {"step": 200}


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root ignores folder permissions; the monkeypatched failures above cover this case")
def test_read_only_folder_raises_checkpoint_error_and_changes_nothing(tmp_path):
    _write_run(tmp_path, (100,))
    before = _snapshot(tmp_path)
    os.chmod(tmp_path, 0o555)
    try:
        with pytest.raises(CheckpointError, match="could not write checkpoint"):
            save_checkpoint(tmp_path / "step_00000200", {"w": torch.ones(3)}, {"step": 200})
    finally:
        os.chmod(tmp_path, 0o755)
    assert _snapshot(tmp_path) == before

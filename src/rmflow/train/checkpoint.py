"""Checkpoints: tensors in safetensors, everything else in JSON; written atomically, verified on load.

A checkpoint is two files, <name>.safetensors and <name>.json. The JSON records the SHA-256 of the tensor file,
so a truncated or mismatched pair is reported as corrupt instead of being half-loaded. Both files are first
written in full to temporary names (<file>.tmp, fsynced), then renamed into place (os.replace is atomic), tensors
first, JSON last: the JSON's presence marks a complete checkpoint. A failed write (disk full, read-only folder)
removes its temporary files and leaves existing checkpoints as they were (the one exception, a failure between the
two renames while overwriting a checkpoint of the same name, leaves a pair that reads as corrupt). No pickle.

Checkpoints of a run are named step_<digits> (zero-padded step); latest_good_checkpoint walks them newest first
and falls back past corrupt ones.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT = 1
_STEP_NAME = re.compile(r"step_(\d+)\.json")


class CheckpointError(RuntimeError):
    pass


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _temp_name(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def _write_temp(path: Path, write) -> Path:
    """Write `path`'s content with write(tmp) to <path>.tmp and fsync it; returns the temporary path."""
    tmp = _temp_name(path)
    write(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    return tmp


def save_checkpoint(path_stem: str | Path, tensors: dict[str, torch.Tensor], state: dict) -> Path:
    """Write <stem>.safetensors and <stem>.json atomically; returns the JSON path.

    Raises CheckpointError when the files cannot be written (disk full, read-only folder, ...); then no temporary
    file is left behind and existing checkpoints are untouched."""
    stem = Path(path_stem)
    tfile, jfile = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    fresh, placed = not jfile.exists(), False
    try:
        try:
            stem.parent.mkdir(parents=True, exist_ok=True)
            ttmp = _write_temp(tfile, lambda p: save_file(tensors, str(p)))
            meta = {"format": FORMAT, "tensors_sha256": _sha256(ttmp), "state": state}
            jtmp = _write_temp(jfile, lambda p: p.write_text(json.dumps(meta, indent=1)))
            os.replace(ttmp, tfile)
            placed = True
            os.replace(jtmp, jfile)      # last: the JSON marks the pair complete
        except BaseException:
            if placed and fresh:         # a new tensor file without its JSON: remove the orphan
                with contextlib.suppress(OSError):
                    tfile.unlink()
            raise
        finally:
            for tmp in (_temp_name(tfile), _temp_name(jfile)):
                with contextlib.suppress(OSError):   # never hide the error that got us here
                    tmp.unlink(missing_ok=True)
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"could not write checkpoint {stem}: {e}") from e
    return jfile


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint (either file of the pair, or the stem); raises CheckpointError naming the problem."""
    stem = Path(path)
    if stem.suffix in (".json", ".safetensors"):
        stem = stem.with_suffix("")
    tfile, jfile = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    if not jfile.exists() or not tfile.exists():
        raise CheckpointError(f"checkpoint {stem} is incomplete: need {tfile.name} and {jfile.name}")
    try:
        meta = json.loads(jfile.read_text())
    except ValueError as e:     # JSONDecodeError, or UnicodeDecodeError for bytes that are not UTF-8
        raise CheckpointError(f"corrupt checkpoint {jfile}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "state" not in meta:
        raise CheckpointError(f"corrupt checkpoint {jfile}: unknown format")
    if _sha256(tfile) != meta.get("tensors_sha256"):
        raise CheckpointError(f"corrupt checkpoint {tfile}: its SHA-256 does not match {jfile.name}")
    try:
        tensors = load_file(str(tfile))
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"corrupt checkpoint {tfile}: {e}") from None
    return tensors, meta["state"]


def _checkpoints(directory: str | Path) -> list[Path]:
    """JSON files named step_<digits>.json in a directory, newest (highest step) first; other files are ignored."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _STEP_NAME.fullmatch(p.name))]
    return [p for _, p in sorted(found, key=lambda sp: sp[0], reverse=True)]


def checkpoint_step(path: str | Path) -> int:
    """The training step in a checkpoint's name, step_<digits>.json (ValueError for any other name)."""
    m = _STEP_NAME.fullmatch(Path(path).name)
    if m is None:
        raise ValueError(f"{path} is not named step_<digits>.json")
    return int(m.group(1))


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest complete checkpoint (by step) in a directory, or None. Files not named step_<digits>.json
    (step_final.json, notes.json, ...) are ignored. The checkpoint is not verified: see latest_good_checkpoint."""
    found = _checkpoints(directory)
    return found[0] if found else None


def latest_good_checkpoint(directory: str | Path, warn=warnings.warn
                           ) -> tuple[Path, dict[str, torch.Tensor], dict] | None:
    """The newest checkpoint in `directory` that verifies, as (JSON path, tensors, state); None if there is none.

    Corrupt or incomplete checkpoints are skipped newest first, each reported with one line through warn(message).
    Raises CheckpointError naming the directory and the newest problem when checkpoints exist but none verifies."""
    found = _checkpoints(directory)
    newest_error = None
    for k, path in enumerate(found):
        try:
            tensors, state = load_checkpoint(path)
        except CheckpointError as e:
            reason = " ".join(str(e).split())              # one line, whatever the underlying error printed
            newest_error = newest_error or reason
            if k + 1 < len(found):
                warn(f"checkpoint {path.stem} is unusable ({reason}); falling back to {found[k + 1].stem}")
            continue
        return path, tensors, state
    if newest_error is not None:
        raise CheckpointError(f"no usable checkpoint in {directory}: all {len(found)} failed to verify; "
                              f"the newest: {newest_error}")
    return None

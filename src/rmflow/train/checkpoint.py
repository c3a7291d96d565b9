"""Checkpoints: tensors in safetensors, everything else in JSON; written atomically, verified on load.

A checkpoint is two files, <name>.safetensors and <name>.json. The JSON records the SHA-256 of the tensor file,
so a truncated or mismatched pair is reported as corrupt instead of being half-loaded. Each file is written to a
temporary name and renamed into place (os.replace is atomic), tensors first, JSON last: the JSON's presence
marks a complete checkpoint. No pickle anywhere.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

FORMAT = 1


class CheckpointError(RuntimeError):
    pass


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(path_stem: str | Path, tensors: dict[str, torch.Tensor], state: dict) -> Path:
    """Write <stem>.safetensors and <stem>.json atomically; returns the JSON path."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    tfile, jfile = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    _atomic_write(tfile, lambda p: save_file(tensors, str(p)))
    meta = {"format": FORMAT, "tensors_sha256": _sha256(tfile), "state": state}
    _atomic_write(jfile, lambda p: p.write_text(json.dumps(meta, indent=1)))
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
    except json.JSONDecodeError as e:
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


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest complete checkpoint (by step) in a directory, or None."""
    d = Path(directory)
    found = sorted(d.glob("step_*.json"), key=lambda p: int(p.stem.split("_")[1])) if d.exists() else []
    return found[-1] if found else None

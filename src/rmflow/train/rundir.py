"""Run-folder safety: one process per run folder, atomic text writes, metrics rollback.

A run lives in out_dir/<name> (name may have subfolders: ring/meanflow-s0; rmflow.config.check_run_name keeps it
inside out_dir, where the config is loaded). RunLock keeps a second rmflow process out of a folder that is in use (an OS file lock, released by the
OS if the holder dies); atomic_write_text replaces a file whole or not at all; rollback_metrics cuts metrics.jsonl
back to a checkpoint's step so a resumed run does not log the same steps twice.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import sys
import uuid
from datetime import datetime
from pathlib import Path

import filelock


def atomic_write_text(path: str | Path, text: str) -> None:
    """Replace `path` with `text` (UTF-8) all at once: a temporary file in the same folder, fsynced, os.replace'd.

    Readers see the old content or the new, never a mix. An existing file's permission bits are kept. On failure
    the temporary file is removed and OSError is raised with the path in its message (and the original errno)."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with open(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileNotFoundError):
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
        os.replace(tmp, path)
    except BaseException as e:     # KeyboardInterrupt too: no temporary file is left behind
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if not isinstance(e, OSError):
            raise
        message = f"could not write {path}: {e.strerror or e}"
        raise (OSError(e.errno, message) if e.errno is not None else OSError(message)) from e


def rollback_metrics(path: str | Path, step: int) -> int:
    """Cut a metrics.jsonl back to `step`: keep the rows whose "step" is <= step; returns how many rows were dropped.

    Rows without a "step" key are kept; lines that are not JSON objects (a write cut short by a crash, typically
    the last line) are dropped and counted. The file is rewritten atomically, and only when something is dropped;
    a missing file is a no-op (returns 0)."""
    path = Path(path)
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").split("\n"):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        row_step = row.get("step") if isinstance(row, dict) else None
        if not isinstance(row, dict) or (isinstance(row_step, (int, float)) and row_step > step):
            dropped += 1
        else:
            kept.append(line + "\n")
    if dropped:
        atomic_write_text(path, "".join(kept))
    return dropped


def is_interactive(stream=None) -> bool:
    """Whether progress bars should be drawn: `stream` (default: sys.stderr at call time) is an open terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):   # None (pythonw), no isatty, or a closed stream
        return False


class RunLocked(RuntimeError):
    """Raised by RunLock when another process is using the run folder."""


class RunLock:
    """Exclusive use of a run folder by one process: `with RunLock(run_dir): ...`.

    Takes a non-blocking OS file lock on run_dir/.lock (created with run_dir if missing); if another process (or
    another RunLock object in this one) holds it, raises RunLocked naming the holder's pid, host and start time,
    read from run_dir/.lock.info, which the holder writes after acquiring and removes on release. The OS drops the
    lock when its holder dies, so a crashed run never blocks the folder. Not re-entrant."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.lock_path, self.info_path = self.run_dir / ".lock", self.run_dir / ".lock.info"
        self._lock = filelock.FileLock(str(self.lock_path), timeout=0, thread_local=False)
        self._held = False

    @property
    def held(self) -> bool:
        return self._held

    def acquire(self) -> RunLock:
        if self._held:
            raise RuntimeError(f"this RunLock already holds {self.run_dir} (it is not re-entrant)")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=0)
        except filelock.Timeout:
            raise RunLocked(f"run folder {self.run_dir} is in use by another rmflow process ({self._holder()}); "
                            "wait for it to finish or choose another name=") from None
        try:
            info = {"pid": os.getpid(), "host": socket.gethostname(),
                    "started": datetime.now().astimezone().isoformat(timespec="seconds")}
            atomic_write_text(self.info_path, json.dumps(info) + "\n")
        except BaseException:
            self._lock.release()
            raise
        self._held = True
        return self

    def release(self) -> None:
        """Remove the info file, then drop the lock; a no-op when not held."""
        if not self._held:
            return
        with contextlib.suppress(OSError):
            self.info_path.unlink(missing_ok=True)
        self._lock.release()
        self._held = False

    def _holder(self) -> str:
        """'pid 1234 on host, started <time>' from the info file, or a note that the holder is unknown."""
        try:
            info = json.loads(self.info_path.read_text(encoding="utf-8"))
            return f"pid {info['pid']} on {info['host']}, started {info['started']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "holder unknown: it has not written run_dir/.lock.info yet"

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

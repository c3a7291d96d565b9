"""Run-folder safety: run names stay inside out_dir, one process per run folder, atomic writes, metrics rollback."""
import errno
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from rmflow.train import rundir
from rmflow.config import check_run_name
from rmflow.train.rundir import (RunLock, RunLocked, atomic_write_text, is_interactive,
                                 rollback_metrics)

# ----------------------------------------------------------------------------------------------- run names


@pytest.mark.parametrize("name", ["x", "ring/meanflow-s0", "a/b/c", "with space", "./x"])
def test_relative_names_give_a_folder_inside_out_dir(tmp_path, name):
    assert check_run_name(tmp_path / "runs", name) == tmp_path / "runs" / name


@pytest.mark.parametrize("name,why", [("", "empty"), ("   ", "empty"), ("/etc/cron.d", "absolute"),
                                      ("../other", r"'\.\.'"), ("ring/../../x", r"'\.\.'"), ("ring/..", r"'\.\.'"),
                                      ("..\\x", r"'\.\.'"), (".", "out_dir itself"), ("a\0b", "NUL")])
def test_names_that_leave_out_dir_are_refused(tmp_path, name, why):
    with pytest.raises(ValueError, match=re.escape(f"'name': {name!r}") + f".*{why}"):
        check_run_name(tmp_path / "runs", name)


def test_a_symlink_out_of_out_dir_is_refused(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "runs" / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="'name': 'link/run' resolves to .*elsewhere.*outside out_dir"):
        check_run_name(tmp_path / "runs", "link/run")


def test_a_non_string_name_is_refused(tmp_path):
    with pytest.raises(ValueError, match="'name': 3 is a int, not a string"):
        check_run_name(tmp_path, 3)


# --------------------------------------------------------------------------------------------------- RunLock

def test_second_lock_on_a_folder_in_use_is_refused_with_the_holder(tmp_path):
    run = tmp_path / "runs" / "x"                                  # does not exist yet
    with RunLock(run) as held:
        assert held.held and run.is_dir()
        info = json.loads((run / ".lock.info").read_text())
        assert info["pid"] == os.getpid()
        with pytest.raises(RunLocked, match=f"run folder {run} is in use .*pid {os.getpid()}.*started .*name="):
            RunLock(run).acquire()
        assert json.loads((run / ".lock.info").read_text()) == info   # the refused one changed nothing
    assert not (run / ".lock.info").exists()
    with RunLock(run):                                             # free again after release
        pass


def test_run_lock_is_not_reentrant_and_release_is_idempotent(tmp_path):
    lock = RunLock(tmp_path)
    with lock:
        with pytest.raises(RuntimeError, match="not re-entrant"):
            lock.acquire()
    lock.release()
    assert not lock.held


def test_holder_without_info_file_is_reported_unknown(tmp_path):
    with RunLock(tmp_path):
        (tmp_path / ".lock.info").unlink()
        with pytest.raises(RunLocked, match="holder unknown"):
            RunLock(tmp_path).acquire()


def test_lock_held_by_another_process_is_refused_and_freed_when_it_dies(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        from rmflow.train.rundir import RunLock
        lock = RunLock({str(tmp_path)!r}).acquire()
        print("held", flush=True)
        sys.stdin.read()                     # hold until the parent closes our stdin
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(RunLocked, match=f"pid {child.pid} "):
            RunLock(tmp_path).acquire()
    finally:
        child.kill()                         # dies without releasing: the OS drops its lock
        child.wait(timeout=30)
    with RunLock(tmp_path) as lock:          # a stale .lock.info left by the dead holder does not matter
        assert json.loads((tmp_path / ".lock.info").read_text())["pid"] == os.getpid() and lock.held


# -------------------------------------------------------------------------------------------- metrics rollback

def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_rollback_drops_later_rows_and_a_truncated_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "loss": 1.0 / s} for s in (2, 4, 6, 8)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 10, "lo')
    assert rollback_metrics(path, 5) == 3
    assert _rows(path) == rows[:2]
    assert path.read_text() == "".join(json.dumps(r) + "\n" for r in rows[:2])   # kept lines are byte-exact
    assert not [p for p in tmp_path.iterdir() if p.name != "metrics.jsonl"]


def test_rollback_keeps_rows_without_step_and_is_a_no_op_when_nothing_is_later(tmp_path):
    path = tmp_path / "metrics.jsonl"
    text = '{"note": "resumed"}\n{"step": 3, "loss": 0.5}\n'
    path.write_text(text)
    before = path.stat().st_mtime_ns
    assert rollback_metrics(path, 3) == 0
    assert path.read_text() == text and path.stat().st_mtime_ns == before
    assert rollback_metrics(path, 2) == 1 and _rows(path) == [{"note": "resumed"}]


def test_rollback_of_a_missing_file_does_nothing(tmp_path):
    assert rollback_metrics(tmp_path / "metrics.jsonl", 10) == 0
    assert not (tmp_path / "metrics.jsonl").exists()


# ------------------------------------------------------------------------------------------- atomic writes

def test_atomic_write_replaces_and_keeps_permissions(tmp_path):
    path = tmp_path / "config.yaml"
    atomic_write_text(path, "a: 1\n")
    os.chmod(path, 0o640)
    atomic_write_text(path, "a: 2\n")
    assert path.read_text() == "a: 2\n" and (path.stat().st_mode & 0o777) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_failed_atomic_write_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    path.write_text("old\n")

    def full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(rundir.os, "replace", full)
    with pytest.raises(OSError, match=f"could not write {path}: No space left") as info:
        atomic_write_text(path, "new\n")
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_atomic_write_into_a_missing_folder_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="could not write .*nope/x.txt"):
        atomic_write_text(tmp_path / "nope" / "x.txt", "x")


# ---------------------------------------------------------------------------------------------- interactive

def test_is_interactive_only_for_terminals(monkeypatch):
    import io
    assert not is_interactive(io.StringIO())
    closed = io.StringIO()
    closed.close()
    assert not is_interactive(closed)
    monkeypatch.setattr(sys, "stderr", None)        # pythonw: no stderr at all
    assert not is_interactive()
    if hasattr(os, "openpty"):
        leader, follower = os.openpty()
        with open(follower, "w") as tty:
            assert is_interactive(tty)
        os.close(leader)

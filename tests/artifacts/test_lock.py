"""RootLock: O_EXCL lock file, stale-lock detection, never releasing someone else's lock."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from recxfer.artifacts.lock import LOCK_FILE, LockHeldError, LockInfo, RootLock, read_lock, stale_reason


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(root: Path, **fields) -> Path:
    info = {"pid": os.getpid(), "host": socket.gethostname(), "token": "t",
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **fields}
    root.mkdir(parents=True, exist_ok=True)
    (root / LOCK_FILE).write_text(json.dumps(info))
    return root / LOCK_FILE


def test_lock_file_names_the_holder_and_excludes_a_second_taker(tmp_path: Path) -> None:
    with RootLock(tmp_path / "root") as lock:
        info = read_lock(tmp_path / "root" / LOCK_FILE)
        assert info is not None and info.pid == os.getpid() and info.host == socket.gethostname()
        assert lock.held()
        with pytest.raises(LockHeldError, match=f"pid {os.getpid()}") as caught:
            RootLock(tmp_path / "root").acquire()
        assert caught.value.holder is not None and caught.value.holder.token == info.token
    assert not (tmp_path / "root" / LOCK_FILE).exists()
    RootLock(tmp_path / "root").acquire()  # free again


def test_stale_lock_of_a_dead_process_is_cleared(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pid = _dead_pid()
    _write_lock(tmp_path, pid=pid)
    with RootLock(tmp_path) as lock:
        assert lock.info is not None and lock.info.pid == os.getpid()
    assert f"process {pid} is gone" in caplog.text
    assert [p.name for p in tmp_path.iterdir()] == []  # no renamed leftovers


def test_reused_pid_is_stale_but_a_live_holder_is_not(tmp_path: Path) -> None:
    me = LockInfo(os.getpid(), socket.gethostname(), "2024-01-01T00:00:00+00:00", "t", proc_start=1)
    assert "another process" in (stale_reason(me) or "")
    alive = LockInfo(os.getpid(), socket.gethostname(), "2024-01-01T00:00:00+00:00", "t")
    assert stale_reason(alive) is None
    _write_lock(tmp_path)  # held by this (live) process
    with pytest.raises(LockHeldError):
        RootLock(tmp_path).acquire()


def test_other_host_lock_is_stale_only_past_the_configured_age(tmp_path: Path) -> None:
    old = (datetime.now(timezone.utc) - timedelta(hours=2)).isoformat(timespec="seconds")
    _write_lock(tmp_path, host="elsewhere", started_at=old)
    with pytest.raises(LockHeldError, match="elsewhere"):
        RootLock(tmp_path).acquire()
    with RootLock(tmp_path, stale_after_s=3600):
        pass


def test_unreadable_lock_is_held_while_young_then_stale(tmp_path: Path) -> None:
    path = tmp_path / LOCK_FILE
    path.write_text("")
    with pytest.raises(LockHeldError, match="being written"):
        RootLock(tmp_path).acquire()
    os.utime(path, (0, 0))
    with RootLock(tmp_path):
        pass


def test_release_never_removes_someone_elses_lock(tmp_path: Path) -> None:
    lock = RootLock(tmp_path)
    lock.acquire()
    _write_lock(tmp_path, token="someone-else")  # e.g. an operator broke ours and another run took it
    assert not lock.held()
    lock.release()
    assert read_lock(tmp_path / LOCK_FILE).token == "someone-else"


def _try_lock(root: str, barrier, results) -> None:
    barrier.wait()
    try:
        with RootLock(root):
            results.put("won")
            barrier.wait()  # hold until every contender has tried
    except LockHeldError:
        results.put("lost")
        barrier.wait()


def test_only_one_of_many_concurrent_takers_wins(tmp_path: Path) -> None:
    _write_lock(tmp_path, pid=_dead_pid())  # and they all race to clear the same stale lock
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_try_lock, args=(str(tmp_path), barrier, results)) for _ in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(30)
    outcomes = sorted(results.get(timeout=5) for _ in procs)
    assert outcomes == ["lost", "lost", "lost", "won"]

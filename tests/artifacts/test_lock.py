"""RootLock: an flock on ROOT/.lock; the kernel releases it when its holder dies,
the file's pid is for people, and a release never removes someone else's lock."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recxfer.artifacts import LockHeldError, LockInfo, RootLock, read_lock
from recxfer.artifacts.lock import LOCK_FILE

REPO = Path(__file__).resolve().parents[2]


def _wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in (path.read_text() if path.exists() else ""):
        assert proc.poll() is None, path.read_text() if path.exists() else "no output"
        assert time.monotonic() < deadline, f"{text!r} never appeared"
        time.sleep(0.02)


def test_acquire_release_and_a_second_taker_names_the_holder(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with RootLock(root) as lock:
        info = read_lock(root / LOCK_FILE)
        assert info == lock.info and info.pid == os.getpid() and info.host == socket.gethostname()
        assert lock.held()
        with pytest.raises(LockHeldError, match=f"locked by pid {os.getpid()} on ") as caught:
            RootLock(root).acquire()  # another open file description: refused, even in-process
        assert caught.value.holder == info
    assert not (root / LOCK_FILE).exists()  # released and removed
    again = RootLock(root)
    again.acquire()
    assert again.held()
    with pytest.raises(RuntimeError, match="already held"):
        again.acquire()
    again.release()
    again.release()  # a no-op when not held


def test_a_lock_file_left_by_a_dead_holder_is_taken_over_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # What a SIGKILLed holder leaves: the file with its pid, but no flock (the kernel
    # dropped it with the process).
    (tmp_path / LOCK_FILE).write_text(json.dumps(
        {"pid": 999_999, "host": "elsewhere", "started_at": "2024-01-01T00:00:00+00:00"}))
    with RootLock(tmp_path) as lock:
        assert lock.info is not None and lock.info.pid == os.getpid()
        assert read_lock(tmp_path / LOCK_FILE) == lock.info
    assert "was left by pid 999999 on elsewhere" in caplog.text
    (tmp_path / LOCK_FILE).write_text("not json")  # an unreadable leftover: taken silently too
    with RootLock(tmp_path):
        pass


_HOLDER = """
import sys, time
from recxfer.artifacts import RootLock
lock = RootLock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
time.sleep(300)
"""


def test_the_kernel_releases_the_lock_of_a_killed_holder(tmp_path: Path) -> None:
    out = tmp_path / "holder.out"
    with out.open("w") as handle:
        proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path / "root")],
                                cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)
    try:
        _wait_for(out, "locked", proc)
        with pytest.raises(LockHeldError, match=f"locked by pid {proc.pid} ") as caught:
            RootLock(tmp_path / "root").acquire()
        assert caught.value.holder.pid == proc.pid
    finally:
        proc.send_signal(signal.SIGKILL)  # no cleanup code runs
        proc.wait(30)
    assert read_lock(tmp_path / "root" / LOCK_FILE).pid == proc.pid  # its file is still there
    with RootLock(tmp_path / "root") as lock:  # ... but the lock is free
        assert lock.info.pid == os.getpid()


def test_release_never_removes_someone_elses_lock(tmp_path: Path) -> None:
    first = RootLock(tmp_path)
    first.acquire()
    (tmp_path / LOCK_FILE).unlink()  # e.g. an operator deleted it by hand ...
    second = RootLock(tmp_path)
    second.acquire()  # ... and another run took a new one
    assert not first.held() and second.held()
    first.release()
    assert second.held() and read_lock(tmp_path / LOCK_FILE) == second.info
    second.release()
    assert not (tmp_path / LOCK_FILE).exists()


def test_lock_info_describes_the_holder() -> None:
    assert LockInfo(7, "h", "t").describe() == "pid 7 on h since t"


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
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_try_lock, args=(str(tmp_path), barrier, results)) for _ in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(30)
    outcomes = sorted(results.get(timeout=5) for _ in procs)
    assert outcomes == ["lost", "lost", "lost", "won"]


def _churn(root: str, rounds: int, results) -> None:
    """Take and release the lock over and over; inside, claim a marker file that
    must never exist already (two holders at once would collide on it)."""
    wins = collisions = 0
    for _ in range(rounds):
        try:
            with RootLock(root):
                try:
                    fd = os.open(os.path.join(root, "inside"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    collisions += 1
                    continue
                os.close(fd)
                os.unlink(os.path.join(root, "inside"))
                wins += 1
        except LockHeldError:
            pass
    results.put((wins, collisions))


def test_release_racing_acquire_never_gives_two_holders(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    procs = [ctx.Process(target=_churn, args=(str(tmp_path), 300, results)) for _ in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
    outcomes = [results.get(timeout=5) for _ in procs]
    assert sum(c for _, c in outcomes) == 0, outcomes
    assert sum(w for w, _ in outcomes) > 0
    assert not (tmp_path / LOCK_FILE).exists()

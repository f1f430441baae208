"""An exclusive lock on an artifacts root, so that one writer at a time stages,
publishes, prunes or rolls back.

The lock is the file ``ROOT/.lock``, created with ``O_CREAT | O_EXCL`` (atomic on
a local file system) and holding JSON::

    {"pid": 4242, "host": "worker-1", "started_at": "2024-05-01T02:00:00+00:00",
     "proc_start": 123456789, "token": "9f2c..."}

A lock is *stale*, and is cleared by the next ``acquire``, when its holder is
known to be gone: on the same host, no process with that pid exists, or one does
but started after the lock was taken (the pid was reused; ``proc_start`` is the
kernel's start time of the process, from ``/proc``). A lock from another host
cannot be checked; it is only treated as stale when older than
``stale_after_s`` (off by default: an operator checks and deletes the file). A
stale lock is removed by renaming it to a unique name first and checking that
the renamed file is still the one judged stale, so two processes breaking the
same stale lock cannot both win.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
_UNREADABLE_GRACE_S = 30.0  # a lock file being written right now may still be empty


class LockHeldError(RuntimeError):
    """Another live process holds the lock."""

    def __init__(self, path: Path, holder: "LockInfo | None", detail: str) -> None:
        self.path = path
        self.holder = holder
        super().__init__(f"{path}: {detail}")


@dataclass(frozen=True)
class LockInfo:
    """Who holds a lock."""

    pid: int
    host: str
    started_at: str
    token: str
    proc_start: int | None = None

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} since {self.started_at}"


def _proc_start(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks after boot), or ``None``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return int(stat.rsplit(")", 1)[1].split()[19])  # field 22 of stat(5)
    except (IndexError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def read_lock(path: str | Path) -> LockInfo | None:
    """The lock's content, or ``None`` when the file is missing or unreadable."""
    try:
        data = json.loads(Path(path).read_text())
        return LockInfo(
            pid=int(data["pid"]), host=str(data["host"]), started_at=str(data["started_at"]),
            token=str(data["token"]),
            proc_start=int(data["proc_start"]) if data.get("proc_start") is not None else None,
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def stale_reason(info: LockInfo, stale_after_s: float | None = None) -> str | None:
    """Why the lock ``info`` is stale, or ``None`` when its holder may be alive."""
    if info.host == socket.gethostname():
        if not _pid_alive(info.pid):
            return f"process {info.pid} is gone"
        now_start = _proc_start(info.pid)
        if info.proc_start is not None and now_start is not None and now_start != info.proc_start:
            return f"pid {info.pid} now belongs to another process"
        return None
    if stale_after_s is not None:
        try:
            age = (datetime.now(timezone.utc) - datetime.fromisoformat(info.started_at)).total_seconds()
        except ValueError:
            return None
        if age > stale_after_s:
            return f"taken on {info.host} {age:.0f} s ago (> {stale_after_s:.0f} s)"
    return None


class RootLock:
    """Exclusive lock of an artifacts root; a context manager.

    Usage::

        with RootLock(root):
            ...  # stage, publish, prune

    Raises (on enter):
        LockHeldError: a live process holds it.
    """

    def __init__(self, root: str | Path, stale_after_s: float | None = None) -> None:
        self.root = Path(root)
        self.path = self.root / LOCK_FILE
        self.stale_after_s = stale_after_s
        self.info: LockInfo | None = None

    def acquire(self) -> LockInfo:
        """Take the lock, clearing a stale one first (logged)."""
        self.root.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            info = LockInfo(
                pid=os.getpid(), host=socket.gethostname(),
                started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                token=uuid.uuid4().hex, proc_start=_proc_start(os.getpid()),
            )
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._clear_if_stale()
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump(asdict(info), handle)
                handle.flush()
                os.fsync(handle.fileno())
            self.info = info
            return info
        holder = read_lock(self.path)
        raise LockHeldError(
            self.path, holder,
            f"locked by {holder.describe()}" if holder else "locked (holder unreadable)",
        )

    def _clear_if_stale(self) -> None:
        try:
            seen = self.path.read_bytes()
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return  # released meanwhile: retry
        holder = read_lock(self.path)
        if holder is None:
            age = datetime.now(timezone.utc).timestamp() - mtime
            if age < _UNREADABLE_GRACE_S:
                raise LockHeldError(self.path, None, "locked (lock file being written)")
            reason = f"unreadable lock file {age:.0f} s old"
        else:
            reason = stale_reason(holder, self.stale_after_s)
            if reason is None:
                raise LockHeldError(self.path, holder, f"locked by {holder.describe()}")
        grave = self.root / f"{LOCK_FILE}.stale-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return  # another process cleared it first
        if grave.read_bytes() != seen:  # we moved a lock someone just took: put it back
            try:
                os.link(grave, self.path)
            except FileExistsError:
                pass
            grave.unlink(missing_ok=True)
            return
        grave.unlink(missing_ok=True)
        log.warning(
            "cleared a stale lock %s (%s): %s",
            self.path, holder.describe() if holder else "no holder info", reason,
        )

    def held(self) -> bool:
        """Whether the lock file on disk is still ours."""
        current = read_lock(self.path)
        return self.info is not None and current is not None and current.token == self.info.token

    def release(self) -> None:
        """Remove the lock file if it is still ours."""
        if self.held():
            self.path.unlink(missing_ok=True)
        self.info = None

    def __enter__(self) -> "RootLock":
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

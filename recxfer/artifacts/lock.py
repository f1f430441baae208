"""An exclusive lock on an artifacts root, so that one writer at a time stages,
publishes, prunes or rolls back (``recxfer train``, ``run``, ``nightly``,
``rollback``).

The lock is ``fcntl.flock(LOCK_EX | LOCK_NB)`` on the file ``ROOT/.lock``. The
kernel owns it: it is released when the holder closes the file or dies (SIGKILL,
OOM kill, a crash), so there is no stale lock to detect or break. The file holds
JSON for information only (error messages and logs), never to decide who holds it::

    {"pid": 4242, "host": "worker-1", "started_at": "2024-05-01T02:00:00+00:00"}

``release`` deletes the file while still holding the lock; ``acquire`` checks,
after locking, that the file it locked is still the one at ``ROOT/.lock`` (and
retries otherwise), so a release racing an acquire never leaves two holders. A
holder killed before releasing leaves the file behind; the next ``acquire`` locks
it at once and logs whose it was. On NFS the Linux client maps ``flock`` onto
NFS locks, which the server drops when a dead client's lease expires.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
_ATTEMPTS = 10


class LockHeldError(RuntimeError):
    """Another process (or another ``RootLock`` of this one) holds the lock."""

    def __init__(self, path: Path, holder: "LockInfo | None", detail: str) -> None:
        self.path = path
        self.holder = holder
        super().__init__(f"{path}: {detail}")


@dataclass(frozen=True)
class LockInfo:
    """Who holds (or last held) a lock: written into the lock file for people."""

    pid: int
    host: str
    started_at: str

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} since {self.started_at}"


def _parse(text: str) -> LockInfo | None:
    try:
        data = json.loads(text)
        return LockInfo(pid=int(data["pid"]), host=str(data["host"]),
                        started_at=str(data["started_at"]))
    except (ValueError, KeyError, TypeError):
        return None


def read_lock(path: str | Path) -> LockInfo | None:
    """The lock file's content, or ``None`` when it is missing, empty or unreadable.
    Information only: whether the lock is held is the kernel's business."""
    try:
        return _parse(Path(path).read_text())
    except OSError:
        return None


class RootLock:
    """Exclusive lock of an artifacts root; a context manager.

    Usage::

        with RootLock(root):
            ...  # stage, publish, prune

    Raises (on enter):
        LockHeldError: someone holds it, naming the holder's pid when known.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.path = self.root / LOCK_FILE
        self.info: LockInfo | None = None
        self._fd: int | None = None

    def acquire(self) -> LockInfo:
        """Take the lock without waiting.

        Raises:
            LockHeldError: it is held.
            RuntimeError: already held by this object.
        """
        if self._fd is not None:
            raise RuntimeError(f"{self.path}: already held by this RootLock")
        self.root.mkdir(parents=True, exist_ok=True)
        for _ in range(_ATTEMPTS):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                holder = read_lock(self.path)
                raise LockHeldError(
                    self.path, holder,
                    f"locked by {holder.describe()}" if holder
                    else "locked (its holder has not written its pid yet)",
                ) from None
            if not self._is_current(fd):  # released (deleted) between our open and flock
                os.close(fd)
                continue
            left = _parse(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
            if left is not None:
                log.warning(
                    "%s was left by %s, which ended without releasing it (process gone; the "
                    "kernel released its lock): taking it over", self.path, left.describe())
            info = LockInfo(pid=os.getpid(), host=socket.gethostname(),
                            started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
            data = json.dumps(asdict(info)).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            os.fsync(fd)
            self._fd, self.info = fd, info
            return info
        raise LockHeldError(self.path, None, "the lock file keeps being replaced; try again")

    def _is_current(self, fd: int) -> bool:
        try:
            return os.path.samestat(os.fstat(fd), os.stat(self.path))
        except FileNotFoundError:
            return False

    def held(self) -> bool:
        """Whether we hold the lock and its file is still ``ROOT/.lock`` (false if
        someone deleted the file by hand)."""
        return self._fd is not None and self._is_current(self._fd)

    def release(self) -> None:
        """Delete the lock file (if still ours) and unlock; a no-op when not held."""
        if self._fd is None:
            return
        try:
            if self.held():
                self.path.unlink(missing_ok=True)  # while still locked: see the module doc
        finally:
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd, self.info = None, None

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

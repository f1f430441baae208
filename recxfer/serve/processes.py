"""Several server processes on one port: the parent of ``recxfer serve --processes
N`` and what its workers need of it.

The parent creates no grpc object (grpc is not fork-safe once initialised) and
imports neither grpc nor the model: it starts each worker as a fresh interpreter
(``multiprocessing`` "spawn"), which builds its own server on the shared port
(``SO_REUSEPORT``), loads the artifact (memory-mapped, so the workers share one
copy in the page cache) and hot-reloads it on its own. ``Supervisor`` then:

- starts worker 0, waits until it serves (its artifact loaded and verified), then
  the others, so a bad artifact or address fails once, with that worker's exit
  code, before the rest start;
- forwards SIGTERM/SIGINT to the workers, which drain (the server's graceful
  stop) and exit; a worker still running ``stop_timeout_s`` later is killed;
- logs a worker that dies unexpectedly (``event=worker_died``) and starts it again
  after a backoff (1 s doubling to 30 s; back to 1 s after a run of 60 s);
- returns 0 when every worker drained and exited 0 and none died on its own,
  else 1; or the code of a worker that failed while the server was starting.

Workers tell the parent they serve with one message on a pipe
(``WorkerLink.ready``).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

log = logging.getLogger(__name__)

EXIT_OK, EXIT_ERROR = 0, 1
BACKOFF_S = (1.0, 30.0)  # first restart delay, cap
STABLE_S = 60.0  # a worker up this long starts its next restart from the first delay
POLL_S = 0.2


@dataclass(frozen=True)
class WorkerLink:
    """What a worker gets from its parent: its slot and the pipe back."""

    slot: int
    parent_pid: int
    conn: Connection

    def ready(self, **info: Any) -> None:
        """Tell the parent this worker serves (``info``: e.g. version, port)."""
        self.conn.send({"pid": os.getpid(), **info})

    def die_with_parent(self) -> None:
        """Get SIGTERM (and so drain) when the parent dies, even by SIGKILL (Linux
        ``PR_SET_PDEATHSIG``); exit at once if it is already gone."""
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - not Linux
            pass
        if os.getppid() != self.parent_pid:
            os._exit(EXIT_ERROR)


@dataclass
class _Slot:
    index: int
    process: Any = None  # multiprocessing.process.BaseProcess
    conn: Connection | None = None
    ready: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    started_at: float = 0.0
    failures: int = 0  # deaths since the last stable run
    restart_at: float | None = None


class Supervisor:
    """Runs ``processes`` workers ``target(link, *args)`` (a picklable top-level
    function that serves until SIGTERM, calls ``link.ready(...)`` once serving and
    exits 0 after draining) and supervises them; see the module doc.

    Args:
        on_ready: called once, with each worker's ``ready`` info, when all serve.
        on_stopping: called when a signal asks the workers to stop.
        on_exit: called with the pid of every worker that exited (e.g. to forget
            its live metrics).
        stop_timeout_s: how long workers may take to drain before they are killed.
    """

    def __init__(
        self,
        target: Callable[..., Any],
        args: Sequence[Any],
        processes: int,
        *,
        stop_timeout_s: float,
        on_ready: Callable[[list[dict[str, Any]]], None] | None = None,
        on_stopping: Callable[[], None] | None = None,
        on_exit: Callable[[int], None] | None = None,
        backoff_s: tuple[float, float] = BACKOFF_S,
    ) -> None:
        if processes < 1:
            raise ValueError(f"processes must be >= 1, got {processes}")
        self._ctx = multiprocessing.get_context("spawn")
        self._target = target
        self._args = tuple(args)
        self._slots = [_Slot(i) for i in range(processes)]
        self._stop_timeout_s = stop_timeout_s
        self._on_ready = on_ready
        self._on_stopping = on_stopping
        self._on_exit = on_exit
        self._backoff_s = backoff_s
        self._signal: int | None = None
        self.deaths = 0  # workers that died on their own while serving

    # ------------------------------------------------------------------ workers

    def _start(self, slot: _Slot) -> None:
        reader, writer = self._ctx.Pipe(duplex=False)
        link = WorkerLink(slot.index, os.getpid(), writer)
        process = self._ctx.Process(target=self._target, args=(link, *self._args),
                                    name=f"recxfer-worker-{slot.index}")
        process.start()
        writer.close()  # the worker holds the other end
        slot.process, slot.conn, slot.ready, slot.info = process, reader, False, {}
        slot.started_at, slot.restart_at = time.monotonic(), None
        log.info("started worker %d (pid %d)", slot.index, process.pid,
                 extra={"event": "worker_started", "worker": slot.index, "worker_pid": process.pid})

    def _live(self) -> list[_Slot]:
        return [s for s in self._slots if s.process is not None]

    def _poll(self, timeout: float) -> None:
        """Wait up to ``timeout`` for a message or a death; read the messages."""
        live = self._live()
        handles: list[Any] = [s.conn for s in live if s.conn is not None]
        handles += [s.process.sentinel for s in live]
        if handles:
            wait(handles, timeout)
        else:
            time.sleep(timeout)
        for slot in live:
            while slot.conn is not None:
                try:
                    if not slot.conn.poll():
                        break
                    message = slot.conn.recv()
                except (EOFError, OSError):
                    slot.conn.close()
                    slot.conn = None
                    break
                if isinstance(message, dict) and not slot.ready:
                    slot.ready, slot.info = True, message
                    log.info("worker %d (pid %d) serves", slot.index, slot.process.pid,
                             extra={"event": "worker_ready", "worker": slot.index,
                                    "worker_pid": slot.process.pid})

    def _reap(self, slot: _Slot) -> int | None:
        """The exit code of a worker that has exited (then forgotten), else None."""
        process = slot.process
        if process is None or process.exitcode is None:
            return None
        process.join()
        code = process.exitcode
        if slot.conn is not None:
            slot.conn.close()
        slot.process, slot.conn = None, None
        if self._on_exit is not None:
            try:
                self._on_exit(process.pid)
            except Exception:  # noqa: BLE001 - bookkeeping must not stop supervision
                log.exception("on_exit of worker %d failed", slot.index)
        return code

    def _signal_all(self, sig: int) -> None:
        for slot in self._live():
            try:
                os.kill(slot.process.pid, sig)
            except ProcessLookupError:
                pass

    # ------------------------------------------------------------------ phases

    def _handle(self, signum: int, _frame: Any) -> None:
        self._signal = signum

    def _start_and_wait(self, slots: list[_Slot]) -> int | None:
        """Start ``slots`` and wait until they serve; a code to exit with when one
        died first (the others are stopped) or a signal came."""
        for slot in slots:
            self._start(slot)
        while not all(s.ready for s in slots):
            if self._signal is not None:
                return EXIT_OK
            self._poll(POLL_S)
            for slot in slots:
                if slot.ready:
                    continue
                code = self._reap(slot)
                if code is not None:
                    log.error("worker %d exited with %s before serving", slot.index, code,
                              extra={"event": "worker_failed", "worker": slot.index, "code": code})
                    return code if code and code > 0 else EXIT_ERROR
        return None

    def _delay(self, slot: _Slot) -> float:
        first, cap = self._backoff_s
        return min(cap, first * 2 ** slot.failures)

    def _supervise(self) -> None:
        """Until a signal: restart workers that die."""
        while self._signal is None:
            self._poll(POLL_S)
            now = time.monotonic()
            for slot in self._slots:
                code = self._reap(slot)
                if code is not None:
                    self.deaths += 1
                    if now - slot.started_at >= STABLE_S:
                        slot.failures = 0
                    delay = self._delay(slot)
                    slot.failures += 1
                    slot.restart_at = now + delay
                    log.error("worker %d died (exit code %s); restarting it in %.1f s",
                              slot.index, code, delay,
                              extra={"event": "worker_died", "worker": slot.index, "code": code,
                                     "restart_in_s": delay})
                if slot.process is None and slot.restart_at is not None and now >= slot.restart_at:
                    self._start(slot)

    def _stop(self) -> int:
        """SIGTERM to every worker, wait for them to drain, kill the late ones."""
        if self._on_stopping is not None:
            self._on_stopping()
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + self._stop_timeout_s
        code = EXIT_OK
        while self._live():
            if time.monotonic() >= deadline:
                for slot in self._live():
                    log.error("worker %d did not stop in %.0f s; killing it", slot.index,
                              self._stop_timeout_s, extra={"event": "worker_killed", "worker": slot.index})
                    slot.process.kill()
                    slot.process.join()
                    self._reap(slot)
                return EXIT_ERROR
            self._poll(POLL_S)
            for slot in self._slots:
                was_ready = slot.ready
                exit_code = self._reap(slot)
                # A worker still loading when SIGTERM came dies of it: nothing to drain.
                if exit_code not in (None, 0) and (was_ready or exit_code != -signal.SIGTERM):
                    log.error("worker %d exited with %s while stopping", slot.index, exit_code,
                              extra={"event": "worker_failed", "worker": slot.index, "code": exit_code})
                    code = EXIT_ERROR
        return code

    def run(self) -> int:
        """Start, supervise until SIGTERM/SIGINT, stop; returns the exit code."""
        previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            code = self._start_and_wait(self._slots[:1])
            if code is None:
                code = self._start_and_wait(self._slots[1:])
            if code is not None:  # a worker failed to start, or a signal came first
                stopped = self._stop()
                return code if code != EXIT_OK else stopped
            if self._on_ready is not None:
                self._on_ready([dict(s.info) for s in self._slots])
            self._supervise()
            code = self._stop()
            return EXIT_ERROR if self.deaths else code
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for slot in self._live():  # only after an unexpected error of the parent
                slot.process.kill()
                slot.process.join()

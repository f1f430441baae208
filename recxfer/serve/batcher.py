"""Dynamic batching of concurrent unary calls, as Triton's dynamic batcher.

A call ``submit``s one item under a key (kind of call, model snapshot, domain, k
bucket: whatever must be equal for items to share one search) with the function
that answers a list of such items. Items of one key wait in a FIFO queue; a
batch is taken as soon as it holds ``max_batch`` items or its oldest item has
waited ``max_queue_delay_ms``, and only by an idle executor thread, so under
load (every executor searching) queues grow into fuller batches by themselves.
With ``admitted`` (the gate's count of admitted batchable calls) a queued call
is also taken at once when it is the only such call admitted: a lone caller
pays no delay. (Taking a batch whenever every admitted call is already queued
was tried: calls on the wire are not counted, so at 32 callers it took batches
of one, 1257 searches for 1280 calls.)
An executor takes a worker slot of the server's admission gate for the search
(``WorkSlots``), so ``max_workers`` bounds batches and unbatched calls together.

A caller whose deadline passes (or whose call is cancelled) while its item is
queued takes the item out and fails with ``BatchExpired`` (``BatchCancelled``):
it is never searched. The executor drops items that expired while it waited for
a slot. The answer function runs in the executor's thread; its per-item results
(values or exception instances, as the caller's unbatched path would return)
go back to each caller; an exception it raises goes to every caller of the batch.

The batcher belongs to one server (no module-level state); its executor threads
start on the first ``submit`` and end with ``stop``.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Protocol

from recxfer.serve.config import BatchingConfig

log = logging.getLogger(__name__)

# An item is QUEUED, then TAKEN into a batch (its executor waits for a worker
# slot), RUNNING (searched), DONE; or DROPPED (its call ended first: never searched
# unless it was already RUNNING).
QUEUED, TAKEN, RUNNING, DONE, DROPPED = "queued", "taken", "running", "done", "dropped"


class BatchExpired(Exception):
    """The caller's deadline passed before its item was searched."""


class BatchCancelled(Exception):
    """The call was cancelled before its item was searched."""


class BatcherStopped(Exception):
    """The batcher was stopped (server shutting down) before the item was searched."""


class WorkSlots(Protocol):
    """Worker slots shared with unbatched calls (``AdmissionGate``)."""

    def acquire_slot(self) -> None: ...

    def release_slot(self) -> None: ...


class CallContext(Protocol):
    """What ``submit`` needs of a ``grpc.ServicerContext``."""

    def time_remaining(self) -> float | None: ...

    def is_active(self) -> bool: ...

    def add_callback(self, callback: Callable[[], None]) -> bool: ...


class BatchMetrics(Protocol):
    """What the batcher reports (``ServingMetrics`` implements it)."""

    def batch_searched(self, kind: str, size: int) -> None: ...

    def batch_dropped(self, kind: str, reason: str) -> None: ...

    def batch_queued(self, count: int) -> None: ...


Answer = Callable[[list[Any]], Sequence[Any]]


class _Entry:
    __slots__ = ("item", "key", "deadline", "enqueued", "event", "state", "result", "error")

    def __init__(self, item: Any, key: Hashable, deadline: float | None, now: float) -> None:
        self.item = item
        self.key = key
        self.deadline = deadline  # time.monotonic() seconds, None: no deadline
        self.enqueued = now
        self.event = threading.Event()
        self.state = QUEUED
        self.result: Any = None
        self.error: BaseException | None = None


class _Queue:
    __slots__ = ("kind", "answer", "entries")

    def __init__(self, kind: str, answer: Answer) -> None:
        self.kind = kind
        self.answer = answer
        self.entries: deque[_Entry] = deque()


class DynamicBatcher:
    """Batches ``submit``ted items per key (see the module docstring).

    Args:
        config: ``max_batch`` and ``max_queue_delay_ms``.
        workers: executor threads (batches searched at once, at most).
        slots: worker slots to hold while searching (``None``: none).
        metrics: batch sizes, dropped items, queue length (``None``: none).
        initializer: run once in each executor thread (e.g. faiss thread count).
        admitted: calls admitted to the batched methods right now (including those
            not yet submitted); ``None``: always wait out the delay.
    """

    def __init__(
        self,
        config: BatchingConfig,
        workers: int,
        slots: WorkSlots | None = None,
        metrics: BatchMetrics | None = None,
        initializer: Callable[[], None] | None = None,
        admitted: Callable[[], int] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.max_batch = config.max_batch
        self.delay_s = config.max_queue_delay_ms / 1000.0
        self.workers = workers
        self._slots = slots
        self._metrics = metrics
        self._initializer = initializer
        self._admitted = admitted
        self._cond = threading.Condition(threading.Lock())
        self._queues: dict[Hashable, _Queue] = {}
        self._queued = 0
        self._threads: list[threading.Thread] = []
        self._stopped = False

    # --- callers ---------------------------------------------------------------------

    def submit(
        self, key: Hashable, kind: str, answer: Answer, item: Any, context: CallContext
    ) -> Any:
        """Queue ``item`` under ``key`` and wait for its result.

        ``answer(items)`` must return one result per item, in order; every caller
        of one key must pass an equivalent ``answer`` (the first one's is used).
        ``kind`` labels the metrics.

        Returns:
            This item's result.

        Raises:
            BatchExpired, BatchCancelled, BatcherStopped, or what ``answer`` raised.
        """
        now = time.monotonic()
        remaining = context.time_remaining()
        deadline = None if remaining is None else now + remaining
        if deadline is not None and deadline <= now:
            self._dropped(kind, "deadline")
            raise BatchExpired("deadline exceeded before the call was queued")
        entry = _Entry(item, key, deadline, now)
        with self._cond:
            if self._stopped:
                raise BatcherStopped("the server is stopping")
            if not self._threads:
                self._start()
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = _Queue(kind, answer)
            queue.entries.append(entry)
            self._queued += 1
            self._report()
            self._cond.notify()
        return self._wait(entry, kind, deadline, context)

    def _wait(self, entry: _Entry, kind: str, deadline: float | None, context: CallContext) -> Any:
        context.add_callback(entry.event.set)  # cancelled / deadline: wake at once
        while True:
            timeout = 1.0 if deadline is None else min(1.0, max(0.0, deadline - time.monotonic()))
            entry.event.wait(timeout)
            with self._cond:
                if entry.state == DONE:
                    break
                expired = entry.state == DROPPED or (
                    deadline is not None and time.monotonic() >= deadline
                )
                if expired or not context.is_active():
                    was = entry.state
                    if was == QUEUED:
                        self._unqueue(entry)
                    if was != DROPPED:  # the executor counts what it drops itself
                        # "late": the call ended while its batch was being searched.
                        reason = "deadline" if expired else "cancelled"
                        self._dropped(kind, "late" if was == RUNNING else reason)
                    entry.state = DROPPED  # an executor holding it skips it
                    if expired:
                        raise BatchExpired("deadline exceeded while queued for a batch")
                    raise BatchCancelled("cancelled while queued for a batch")
                entry.event.clear()
        if entry.error is not None:
            raise _fresh(entry.error)
        return entry.result

    def _unqueue(self, entry: _Entry) -> None:
        queue = self._queues[entry.key]
        queue.entries.remove(entry)
        if not queue.entries:
            del self._queues[entry.key]
        self._queued -= 1
        self._report()

    # --- executors -------------------------------------------------------------------

    def _start(self) -> None:
        for number in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"batch-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _take(self, now: float) -> tuple[_Queue | None, list[_Entry], float | None]:
        """The ready queue whose oldest item waited longest and up to ``max_batch``
        of its items; else ``(None, [], seconds until one is ready or None)``."""
        ready_key, ready_since, wait = None, float("inf"), None
        # The only admitted batchable call: nobody else can join, take it at once.
        alone = self._admitted is not None and self._admitted() <= 1
        for key, queue in self._queues.items():
            first = queue.entries[0].enqueued
            if alone or len(queue.entries) >= self.max_batch or now - first >= self.delay_s:
                if first < ready_since:
                    ready_key, ready_since = key, first
            else:
                left = first + self.delay_s - now
                wait = left if wait is None else min(wait, left)
        if ready_key is None:
            return None, [], wait
        queue = self._queues[ready_key]
        entries = [queue.entries.popleft() for _ in range(min(self.max_batch, len(queue.entries)))]
        for entry in entries:
            entry.state = TAKEN
        if not queue.entries:
            del self._queues[ready_key]
        self._queued -= len(entries)
        self._report()
        return queue, entries, None

    def _work(self) -> None:
        if self._initializer is not None:
            self._initializer()
        while True:
            with self._cond:
                while True:
                    if self._stopped:
                        return
                    queue, entries, wait = self._take(time.monotonic())
                    if queue is not None:
                        break
                    self._cond.wait(wait)
                if self._queues:
                    self._cond.notify()  # another idle executor times the rest
            self._run(queue, entries)

    def _run(self, queue: _Queue, entries: list[_Entry]) -> None:
        if self._slots is not None:
            self._slots.acquire_slot()
        try:
            with self._cond:
                now = time.monotonic()
                live = []
                for entry in entries:
                    if entry.state == DROPPED:
                        continue
                    if entry.deadline is not None and now >= entry.deadline:
                        entry.state = DROPPED
                        self._dropped(queue.kind, "deadline")
                        entry.event.set()
                        continue
                    entry.state = RUNNING
                    live.append(entry)
            if not live:
                return
            results: Sequence[Any] = ()
            error: BaseException | None = None
            try:
                results = queue.answer([entry.item for entry in live])
                if len(results) != len(live):
                    raise RuntimeError(f"batch answer gave {len(results)} results for {len(live)} items")
            except Exception as exc:  # goes to every caller of the batch
                error = exc
            if self._metrics is not None:
                self._metrics.batch_searched(queue.kind, len(live))
            with self._cond:
                for i, entry in enumerate(live):
                    if error is None:
                        entry.result = results[i]
                    else:
                        entry.error = error
                    entry.state = DONE
                    entry.event.set()
        finally:
            if self._slots is not None:
                self._slots.release_slot()

    # --- lifecycle -------------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Items waiting to be taken into a batch."""
        return self._queued

    def stop(self, timeout: float = 2.0) -> None:
        """Fail the queued items with ``BatcherStopped``, end the executors (a
        batch being searched finishes first, up to ``timeout`` seconds)."""
        with self._cond:
            self._stopped = True
            for queue in self._queues.values():
                for entry in queue.entries:
                    entry.error = BatcherStopped("the server is stopping")
                    entry.state = DONE
                    entry.event.set()
            self._queues.clear()
            self._queued = 0
            self._report()
            self._cond.notify_all()
            threads, self._threads = self._threads, []
        end = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, end - time.monotonic()))

    def _dropped(self, kind: str, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.batch_dropped(kind, reason)

    def _report(self) -> None:
        if self._metrics is not None:
            self._metrics.batch_queued(self._queued)


def k_bucket(k: int) -> int:
    """Calls whose ``k`` share a bucket may share a search (at the bucket's largest
    ``k``, each cut to its own): ``1``, ``2``, ``3-4``, ``5-8``, ... (largest at
    most twice the smallest, bounding the over-fetch of the small ones)."""
    return (k - 1).bit_length()


def _fresh(error: BaseException) -> BaseException:
    """A copy of ``error`` to raise in one caller's thread (the batch's callers
    raise it at once; one shared instance would share its traceback)."""
    try:
        fresh = copy.copy(error)
    except Exception:  # pragma: no cover - an exception type that cannot be copied
        return error
    fresh.__cause__ = error.__cause__
    return fresh

"""Server interceptors: per-RPC metrics and logs, the bearer-token check,
undecodable requests, and admission (a bounded FIFO queue in front of the
workers that health checks bypass).

``create_server`` chains them in this order (the first sees a call first):
metrics, token, decoding, admission; so an unauthenticated call is refused
before its bytes are looked at, and neither it nor an undecodable one queues.
"""

from __future__ import annotations

import collections
import hmac
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import grpc

from recxfer.serve.errors import abort_invalid
from recxfer.serve.metrics import ServingMetrics

log = logging.getLogger(__name__)

HEALTH_PREFIX = "/grpc.health.v1.Health/"


def _with_behavior(
    handler: grpc.RpcMethodHandler, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]
) -> grpc.RpcMethodHandler:
    """A copy of ``handler`` whose behaviour (whatever its streaming kind) is wrapped."""
    for kind, factory in (
        ("unary_unary", grpc.unary_unary_rpc_method_handler),
        ("unary_stream", grpc.unary_stream_rpc_method_handler),
        ("stream_unary", grpc.stream_unary_rpc_method_handler),
        ("stream_stream", grpc.stream_stream_rpc_method_handler),
    ):
        behavior = getattr(handler, kind)
        if behavior is not None:
            return factory(
                wrap(behavior),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    return handler


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts every unary RPC by method and final status code, times it, and logs it
    at DEBUG (``event=rpc``); an unexpected exception is logged at ERROR."""

    def __init__(self, metrics: ServingMetrics) -> None:
        self._metrics = metrics

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method.lstrip("/")
        metrics = self._metrics

        def wrap(behavior: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[..., Any]:
            def observed(request: Any, context: grpc.ServicerContext) -> Any:
                start = time.perf_counter()
                code = grpc.StatusCode.OK
                try:
                    response = behavior(request, context)
                    code = context.code() or grpc.StatusCode.OK
                    return response
                except BaseException:
                    code = context.code() or grpc.StatusCode.UNKNOWN
                    if code is grpc.StatusCode.UNKNOWN:
                        log.exception("%s failed", method, extra={"event": "rpc_error", "method": method})
                    raise
                finally:
                    seconds = time.perf_counter() - start
                    metrics.observe(method, code.name, seconds)
                    if log.isEnabledFor(logging.DEBUG):
                        log.debug("rpc", extra={"event": "rpc", "method": method, "code": code.name,
                                                "ms": round(seconds * 1000, 3)})

            return observed

        return _with_behavior(handler, wrap)


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Refuses, with UNAUTHENTICATED, calls without ``authorization: Bearer <token>``
    naming one of ``tokens`` (constant-time comparison). Health checks are exempt
    so load balancers can probe without a token."""

    def __init__(self, tokens: Iterable[str], exempt_prefixes: tuple[str, ...] = (HEALTH_PREFIX,)) -> None:
        self._tokens = [t.encode() for t in tokens]
        if not self._tokens:
            raise ValueError("BearerTokenInterceptor needs at least one token")
        self._exempt = exempt_prefixes

    def _authorized(self, metadata: tuple[tuple[str, Any], ...] | None) -> bool:
        for key, value in metadata or ():
            if key == "authorization":
                text = value.decode() if isinstance(value, bytes) else str(value)
                scheme, _, token = text.partition(" ")
                if scheme.lower() != "bearer":
                    return False
                given = token.strip().encode()
                # Compare with every token, so timing does not reveal which matched.
                return any([hmac.compare_digest(given, t) for t in self._tokens])
        return False

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if (
            handler is None
            or handler_call_details.method.startswith(self._exempt)
            or self._authorized(handler_call_details.invocation_metadata)
        ):
            return handler

        def deny(_behavior: Callable[..., Any]) -> Callable[..., Any]:
            def refuse(_request: Any, context: grpc.ServicerContext) -> Any:
                context.abort(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "authorization: missing or wrong bearer token",
                )

            return refuse

        return _with_behavior(handler, deny)


# --- undecodable requests ----------------------------------------------------------


class RateLimitedLog:
    """At most one log line per ``every_s`` seconds; the line counts the events
    since the previous one (the others are only counted)."""

    def __init__(self, logger: logging.Logger, every_s: float = 10.0) -> None:
        self._log = logger
        self._every_s = every_s
        self._lock = threading.Lock()
        self._last = float("-inf")
        self._pending = 0

    def warning(self, message: str, *args: Any, extra: dict[str, Any] | None = None) -> bool:
        """Log ``message % args`` + the count, unless a line went out less than
        ``every_s`` ago; returns whether it logged."""
        with self._lock:
            self._pending += 1
            now = time.monotonic()
            if now - self._last < self._every_s:
                return False
            count, self._pending, self._last = self._pending, 0, now
        self._log.warning(message + " (%d such requests since the last such line)", *args, count,
                          extra={**(extra or {}), "count": count})
        return True


class _Undecodable:
    """What the guarded deserializer hands on instead of raising."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


def _safe_deserializer(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # grpc would log a traceback and answer INTERNAL
            return _Undecodable(exc)

    return decode


def _message_name(deserializer: Callable[[bytes], Any]) -> str:
    owner = getattr(deserializer, "__self__", None)  # e.g. RecommendRequest.FromString
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return getattr(descriptor, "full_name", "the method's request message")


class DecodeGuardInterceptor(grpc.ServerInterceptor):
    """Request bytes that do not decode as the method's message are refused with
    INVALID_ARGUMENT (``request: ...``), counted in
    ``recxfer_undecodable_requests_total{method}`` and logged at most once per
    ``log_every_s`` (grpc's default: INTERNAL and a traceback per call).
    Unary-request methods only (a stream's bad message still fails in grpc)."""

    def __init__(self, metrics: ServingMetrics, log_every_s: float = 10.0) -> None:
        self._metrics = metrics
        self._log = RateLimitedLog(log, log_every_s)

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method.lstrip("/")
        expected = _message_name(handler.request_deserializer)

        def wrap(behavior: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[..., Any]:
            def guarded(request: Any, context: grpc.ServicerContext) -> Any:
                if isinstance(request, _Undecodable):
                    self._metrics.undecodable.labels(method).inc()
                    self._log.warning(
                        "undecodable request to %s from %s: %s", method, context.peer(),
                        request.error, extra={"event": "undecodable_request", "method": method},
                    )
                    abort_invalid(context, "request", f"the bytes are not a valid {expected}")
                return behavior(request, context)

            return guarded

        factory = (grpc.unary_unary_rpc_method_handler if handler.unary_unary is not None
                   else grpc.unary_stream_rpc_method_handler)
        return factory(
            wrap(handler.unary_unary or handler.unary_stream),
            request_deserializer=_safe_deserializer(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )


# --- admission -----------------------------------------------------------------------


class _Turn:
    __slots__ = ("event", "granted")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.granted = False


class AdmissionGate:
    """At most ``workers`` callers at work and ``capacity`` admitted (at work +
    waiting, FIFO); a caller beyond ``capacity`` is refused at once.

    ``enter`` returns ``"admitted"`` (call ``leave`` when done), ``"full"``,
    ``"deadline"`` (its deadline passed while it waited) or ``"cancelled"``.

    Dynamically batched calls (``recxfer.serve.batcher``) are admitted without a
    worker slot (``admit_unslotted`` / ``leave_unslotted``: counted against
    ``capacity`` only); their batch takes one slot for its search
    (``acquire_slot`` / ``release_slot``, FIFO with the calls), so ``workers``
    bounds the searches of batches and unbatched calls together.
    """

    ADMITTED, FULL, DEADLINE, CANCELLED = "admitted", "full", "deadline", "cancelled"

    def __init__(self, workers: int, capacity: int, metrics: ServingMetrics | None = None) -> None:
        if workers < 1 or capacity < 1:
            raise ValueError(f"workers and capacity must be >= 1, got {workers}, {capacity}")
        self.workers = workers
        self.capacity = capacity
        self._metrics = metrics
        self._lock = threading.Lock()
        self._working = 0  # slots in use (by calls or batches)
        self._waiting: collections.deque[_Turn] = collections.deque()  # calls or batches
        self._internal = 0  # slots used or awaited by batches (not calls)
        self._unslotted = 0  # admitted calls without a slot (in the batcher)

    @property
    def working(self) -> int:
        return self._working

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def unslotted(self) -> int:
        """Admitted calls without a worker slot (batched calls)."""
        return self._unslotted

    @property
    def admitted(self) -> int:
        """Calls admitted (at work, waiting for a slot, or in the batcher)."""
        return self._working + len(self._waiting) - self._internal + self._unslotted

    def _report(self) -> None:
        if self._metrics is not None:
            self._metrics.rpcs_working.set(self._working)
            self._metrics.rpcs_queued.set(len(self._waiting))
            self._metrics.rpcs_batched.set(self._unslotted)

    def enter(self, context: grpc.ServicerContext) -> str:
        with self._lock:
            if self.admitted >= self.capacity:
                return self.FULL
            if self._working < self.workers and not self._waiting:
                self._working += 1
                self._report()
                return self.ADMITTED
            turn = _Turn()
            self._waiting.append(turn)
            self._report()
        # Woken by ``leave`` handing over its slot, or by the call ending
        # (cancelled, deadline); the timeout is a safety net for both.
        context.add_callback(turn.event.set)
        while True:
            remaining = context.time_remaining()
            turn.event.wait(1.0 if remaining is None else max(0.0, min(remaining, 1.0)))
            with self._lock:
                if turn.granted:
                    return self.ADMITTED
                remaining = context.time_remaining()
                expired = remaining is not None and remaining <= 0
                if expired or not context.is_active():
                    self._waiting.remove(turn)
                    self._report()
                    return self.DEADLINE if expired else self.CANCELLED
                turn.event.clear()

    def leave(self) -> None:
        with self._lock:
            self._hand_over()

    def _hand_over(self) -> None:
        if self._waiting:
            turn = self._waiting.popleft()  # the slot passes on: ``_working`` unchanged
            turn.granted = True
            turn.event.set()
        else:
            self._working -= 1
        self._report()

    def admit_unslotted(self) -> bool:
        """Admit a call that takes no worker slot (a batched one); ``False`` when
        full. Call ``leave_unslotted`` when it is done."""
        with self._lock:
            if self.admitted >= self.capacity:
                return False
            self._unslotted += 1
            self._report()
            return True

    def leave_unslotted(self) -> None:
        with self._lock:
            self._unslotted -= 1
            self._report()

    def acquire_slot(self) -> None:
        """Wait (FIFO with the calls, no deadline) for a worker slot for a batch's
        search; give it back with ``release_slot``."""
        with self._lock:
            self._internal += 1
            if self._working < self.workers and not self._waiting:
                self._working += 1
                self._report()
                return
            turn = _Turn()
            self._waiting.append(turn)
            self._report()
        while not turn.event.wait(1.0):
            pass

    def release_slot(self) -> None:
        with self._lock:
            self._internal -= 1
            self._hand_over()


class AdmissionInterceptor(grpc.ServerInterceptor):
    """Unary calls (health checks exempt) go through ``gate``: RESOURCE_EXHAUSTED
    when it is full, DEADLINE_EXCEEDED / CANCELLED when the call ends while
    queued. The queue holds threads of the server's pool, which has threads to
    spare beyond ``gate.capacity`` for the exempt calls, so a health check never
    waits behind busy callers."""

    def __init__(
        self, gate: AdmissionGate, exempt_prefixes: tuple[str, ...] = (HEALTH_PREFIX,),
        unslotted: frozenset[str] = frozenset(),
    ) -> None:
        """``unslotted``: full method names (``/pkg.Service/Method``) admitted
        without a worker slot, because the dynamic batcher takes one per batch."""
        self._gate = gate
        self._exempt = exempt_prefixes
        self._unslotted = unslotted

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if (handler is None or handler.unary_unary is None
                or handler_call_details.method.startswith(self._exempt)):
            return handler
        gate = self._gate
        if handler_call_details.method in self._unslotted:
            return _with_behavior(handler, self._unslotted_call)

        def wrap(behavior: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[..., Any]:
            def admitted(request: Any, context: grpc.ServicerContext) -> Any:
                outcome = gate.enter(context)
                if outcome == gate.FULL:
                    context.abort(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"server busy: {gate.capacity} calls already admitted "
                        "(max_concurrent_rpcs); retry later",
                    )
                if outcome == gate.DEADLINE:
                    context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                  "deadline exceeded while queued for a worker")
                if outcome == gate.CANCELLED:
                    context.abort(grpc.StatusCode.CANCELLED, "cancelled while queued for a worker")
                try:
                    return behavior(request, context)
                finally:
                    gate.leave()

            return admitted

        return _with_behavior(handler, wrap)

    def _unslotted_call(self, behavior: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[..., Any]:
        gate = self._gate

        def admitted(request: Any, context: grpc.ServicerContext) -> Any:
            if not gate.admit_unslotted():
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"server busy: {gate.capacity} calls already admitted "
                    "(max_concurrent_rpcs); retry later",
                )
            try:
                return behavior(request, context)
            finally:
                gate.leave_unslotted()

        return admitted

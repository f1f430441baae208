"""Server interceptors: per-RPC metrics and logs, and the bearer-token check."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import grpc

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

"""``create_server``: the gRPC server with the recommender, health and reflection."""

from __future__ import annotations

from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from recxfer.serve.holder import ModelHolder
from recxfer.serve.servicer import RecommenderServicer
from recxfer.v1 import recommender_pb2, recommender_pb2_grpc

SERVICE_NAME = recommender_pb2.DESCRIPTOR.services_by_name["Recommender"].full_name


class RecommenderServer:
    """A built (not yet started) server and what it serves."""

    def __init__(self, server: grpc.Server, port: int, holder: ModelHolder,
                 health_servicer: health.HealthServicer) -> None:
        self.server = server
        self.port = port
        self.holder = holder
        self.health = health_servicer

    def start(self) -> None:
        self.server.start()
        self.refresh_health()

    def refresh_health(self) -> None:
        """SERVING once a model is loaded, NOT_SERVING before."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if self.holder.get() is not None
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            self.health.set(name, status)

    def stop(self, grace: float | None = 2.0) -> None:
        """Health to NOT_SERVING, then stop, letting requests in flight finish."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()


def create_server(
    address: str, holder: ModelHolder, *, max_k: int = 1000, max_workers: int = 8
) -> tuple[RecommenderServer, int]:
    """Build a server bound to ``address`` (``host:0`` picks a free port).

    Returns:
        ``(server, port)``; call ``server.start()``.

    Raises:
        RuntimeError: the address cannot be bound.
    """
    # SO_REUSEPORT off: a second server on a busy port must fail, not share it.
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers), options=[("grpc.so_reuseport", 0)]
    )
    recommender_pb2_grpc.add_RecommenderServicer_to_server(
        RecommenderServicer(holder, max_k), server
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise RuntimeError(f"cannot bind {address}: {exc}") from exc
    if port == 0:
        raise RuntimeError(f"cannot bind {address}")
    wrapped = RecommenderServer(server, port, holder, health_servicer)
    wrapped.refresh_health()
    return wrapped, port

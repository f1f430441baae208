"""``create_server``: the gRPC server with the recommender, health, reflection,
metrics, optional TLS and bearer-token check. No module-level state: everything
belongs to the ``RecommenderServer`` a call builds.

Threads: the pool has ``max_concurrent_rpcs + SPARE_THREADS`` threads and grpc
admits at most that many calls, so every admitted call has a thread at once (no
hidden queue in the executor). The admission gate (``interceptors``) lets
``max_workers`` of them work and queues the rest FIFO, up to
``max_concurrent_rpcs``; health checks bypass it, so the spare threads keep them
answered however busy the workers are.

Dynamic batching (``config.batching``, on by default): ``Recommend``,
``SimilarItems`` and ``RecommendFromHistory`` are admitted without a worker slot
and searched in batches by the server's ``DynamicBatcher``, whose executors take
a worker slot per batch (``recxfer.serve.batcher``).
"""

from __future__ import annotations

import logging
import time
from concurrent import futures
from dataclasses import replace
from functools import partial
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from recxfer.index import set_search_threads
from recxfer.serve.address import busy_addresses  # noqa: F401 - also this module's API
from recxfer.serve.batcher import DynamicBatcher
from recxfer.serve.config import ServeConfig
from recxfer.serve.holder import ModelHolder
from recxfer.serve.interceptors import (
    AdmissionGate,
    AdmissionInterceptor,
    BearerTokenInterceptor,
    DecodeGuardInterceptor,
    MetricsInterceptor,
)
from recxfer.serve.limits import batch_result_bytes, field_bytes, response_bytes
from recxfer.serve.metrics import ServingMetrics
from recxfer.serve.model import ServingModel
from recxfer.serve.servicer import RecommenderServicer
from recxfer.v1 import recommender_pb2, recommender_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = recommender_pb2.DESCRIPTOR.services_by_name["Recommender"].full_name
_CONFIG_GRACE = object()  # ``stop()`` without a grace: the config's
# Pool threads beyond ``max_concurrent_rpcs``: for health checks (Check, and the
# long-lived Watch streams), reflection and calls being refused as over capacity.
SPARE_THREADS = 4


class RecommenderServer:
    """A built (not yet started) server and what it serves.

    Attributes:
        server: the ``grpc.Server``.
        port: the bound port.
        holder: the model holder; every swap refreshes health and metrics.
        health: the health servicer (``""`` and the Recommender service).
        metrics: this server's Prometheus metrics.
        config: the limits and options it was built with.
        metrics_port: port of ``/metrics`` once started (``None`` when disabled).
        batcher: the dynamic batcher of the unary calls (``None`` when disabled).
    """

    def __init__(
        self,
        server: grpc.Server,
        port: int,
        holder: ModelHolder,
        health_servicer: health.HealthServicer,
        metrics: ServingMetrics | None = None,
        config: ServeConfig | None = None,
        batcher: DynamicBatcher | None = None,
    ) -> None:
        self.server = server
        self.batcher = batcher
        self.port = port
        self.holder = holder
        self.health = health_servicer
        self.metrics = metrics or ServingMetrics()
        self.config = config or ServeConfig()
        self.metrics_port: int | None = None
        holder.add_listener(self._on_swap)
        model = holder.get()
        if model is not None:
            self.metrics.model_swapped(model)
            self._check_limits(model)

    def _on_swap(self, model: ServingModel) -> None:
        self.refresh_health()
        self.metrics.model_swapped(model)
        log.info("serving %s", model.version, extra={"event": "model_swapped", "version": model.version})
        self._check_limits(model)

    def _check_limits(self, model: ServingModel) -> None:
        """Warn when, with this model's ids, a full batch at ``max_k`` cannot fit in
        ``max_message_bytes`` (such requests are refused with INVALID_ARGUMENT)."""
        c = self.config
        for name, served in model.domains.items():
            n = min(c.max_k, served.index.ntotal)
            one = response_bytes(n, served.max_item_id_bytes, len(model.version.encode()))
            worst = c.max_batch * batch_result_bytes(one, 0) + field_bytes(len(model.version.encode()))
            if worst > c.max_message_bytes:
                log.warning(
                    "domain %s: a full batch (%d x k=%d, ids up to %d bytes) may take %d bytes, "
                    "over max_message_bytes %d: such requests will be refused", name, c.max_batch,
                    n, served.max_item_id_bytes, worst, c.max_message_bytes,
                    extra={"event": "limits_do_not_fit", "domain": name, "bytes": worst},
                )

    def start(self) -> None:
        """Start answering (and serving ``/metrics`` when configured)."""
        if self.config.metrics_address is not None:
            self.metrics_port = self.metrics.serve_http(self.config.metrics_address)
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

    def stop(self, grace: Any = _CONFIG_GRACE) -> None:
        """Graceful shutdown: health to NOT_SERVING, wait ``shutdown_delay_s`` for
        load balancers to notice, refuse new RPCs and let those in flight finish
        for up to ``grace`` seconds (the config's ``grace_s`` by default; ``None``
        cancels them at once), then stop ``/metrics``."""
        grace = self.config.grace_s if grace is _CONFIG_GRACE else grace
        self.health.enter_graceful_shutdown()
        if self.config.shutdown_delay_s > 0:
            time.sleep(self.config.shutdown_delay_s)
        self.server.stop(grace).wait()
        if self.batcher is not None:
            self.batcher.stop()
        self.holder.remove_listener(self._on_swap)
        self.metrics.stop_http()
        log.info("server stopped", extra={"event": "server_stopped", "port": self.port})


def create_server(
    address: str, holder: ModelHolder, config: ServeConfig | None = None, *,
    reuse_port: bool = False, **overrides: Any
) -> tuple[RecommenderServer, int]:
    """Build a server bound to ``address`` (``host:0`` picks a free port).

    Args:
        config: limits and options (defaults: ``ServeConfig()``).
        reuse_port: share the port with the other worker processes of ``recxfer
            serve --processes N`` (``SO_REUSEPORT``; their parent checked that the
            address was free and holds it, ``recxfer.serve.address.reserve_port``).
            Off (the default), a port another socket holds is refused.
        overrides: ``ServeConfig`` fields replacing the config's, e.g. ``max_k=5``.

    Returns:
        ``(server, port)``; call ``server.start()``.

    Raises:
        ValueError: an invalid config value or an unreadable TLS file.
        RuntimeError: the address cannot be bound.
    """
    config = replace(config or ServeConfig(), **overrides)
    busy = [] if reuse_port else busy_addresses(address)
    if busy:
        raise RuntimeError(f"cannot bind {address}: {', '.join(busy)} already in use")
    metrics = ServingMetrics()
    gate = AdmissionGate(config.max_workers, config.max_concurrent_rpcs, metrics)
    interceptors: list[grpc.ServerInterceptor] = [MetricsInterceptor(metrics)]
    if config.auth_tokens:
        interceptors.append(BearerTokenInterceptor(config.auth_tokens))
    batcher = None
    unslotted: frozenset[str] = frozenset()
    if config.batching.enabled:
        batcher = DynamicBatcher(
            config.batching, config.max_workers, gate, metrics,
            # OpenMP keeps its thread count per thread: set it in each executor.
            initializer=partial(set_search_threads, config.search_threads),
            admitted=(lambda: gate.unslotted) if config.batching.early_flush else None,
        )
        unslotted = RecommenderServicer.BATCHED_METHODS
    interceptors += [DecodeGuardInterceptor(metrics), AdmissionInterceptor(gate, unslotted=unslotted)]
    threads = config.max_concurrent_rpcs + SPARE_THREADS
    server = grpc.server(
        futures.ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="rpc",
            # OpenMP keeps its thread count per thread: set it in each worker.
            initializer=set_search_threads, initargs=(config.search_threads,),
        ),
        interceptors=interceptors,
        options=[
            # SO_REUSEPORT off: a second server on a busy port must fail, not share
            # it; on only among the worker processes of one `serve --processes N`.
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
        ],
        # Beyond this grpc refuses calls itself (RESOURCE_EXHAUSTED), so a call
        # never waits for a thread of the pool.
        maximum_concurrent_rpcs=threads,
    )
    recommender_pb2_grpc.add_RecommenderServicer_to_server(
        RecommenderServicer(holder, config, batcher), server
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    try:
        if config.tls is not None:
            pairs, client_ca, require_client = config.tls.credentials_args()
            credentials = grpc.ssl_server_credentials(
                pairs, root_certificates=client_ca, require_client_auth=require_client
            )
            port = server.add_secure_port(address, credentials)
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as exc:
        server.stop(None)
        raise RuntimeError(f"cannot bind {address}: {exc}") from exc
    if port == 0:
        server.stop(None)
        raise RuntimeError(f"cannot bind {address}")
    wrapped = RecommenderServer(server, port, holder, health_servicer, metrics, config, batcher)
    wrapped.refresh_health()
    return wrapped, port

"""Prometheus metrics of one server, in a registry of its own (no global state).

Multi-process serving (``recxfer serve --processes N``): the parent sets
``PROMETHEUS_MULTIPROC_DIR`` for its workers, whose metrics then live in files
there (prometheus_client's multiprocess mode), and serves one ``/metrics`` for all
of them (``serve_multiprocess_http``): counters and histograms summed over the
workers (dead ones included), gauges combined over the live ones as each gauge's
``multiprocess_mode`` says (e.g. ``recxfer_model_info{version}`` counts the workers
serving each version). Imports no model code, so the parent stays light.
"""

from __future__ import annotations

import os
import threading
import time
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

if TYPE_CHECKING:
    from recxfer.serve.model import ServingModel

# States of ROOT/current seen by the reload loop (recxfer.serve.reload.ArtifactWatcher).
LINK_OK = "ok"  # points at the served artifact's folder
LINK_STATES = (
    LINK_OK,
    "missing",  # no ROOT/current
    "dangling",  # the link's target does not exist (e.g. the folder was deleted)
    "elsewhere",  # points at another folder than the served one (e.g. a refused artifact)
)

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # no access log on stderr
        pass


class ServingMetrics:
    """Request counts by method and status code, latency histograms by method, the
    loaded version, index sizes and reload outcomes.

    Exposed names: ``recxfer_requests_total{method,code}``,
    ``recxfer_request_latency_seconds{method}``, ``recxfer_model_info{version}``,
    ``recxfer_model_loaded_timestamp_seconds``, ``recxfer_index_items{domain}``,
    ``recxfer_reloads_total{outcome}`` (``loaded`` / ``refused``),
    ``recxfer_undecodable_requests_total{method}`` (request bytes that are not the
    method's message), ``recxfer_rpcs_working`` / ``recxfer_rpcs_queued`` (admitted
    RPCs searching / waiting for a worker), ``recxfer_artifact_link_ok`` (1 while
    ``ROOT/current`` points at the served artifact's folder, 0 when it is missing,
    dangling or points elsewhere) and ``recxfer_artifact_link_state{state}`` (1 for
    the state the reload loop last saw: see ``LINK_STATES``). Dynamic batching
    (``recxfer.serve.batcher``): ``recxfer_rpcs_batched`` (admitted calls in the
    batcher, holding no worker slot), ``recxfer_batch_queued`` (calls waiting to
    be taken into a batch), ``recxfer_batch_size{kind}`` (calls per batch search;
    its ``_count`` is the number of searches) and
    ``recxfer_batch_dropped_total{kind,reason}`` (calls answered without a search:
    ``deadline`` / ``cancelled`` while queued; ``late``: the call ended while its
    batch was searched).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "recxfer_requests", "RPCs answered, by method and status code.",
            ["method", "code"], registry=self.registry,
        )
        self.latency = Histogram(
            "recxfer_request_latency_seconds", "RPC latency in the server, by method.",
            ["method"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.model_info = Gauge(
            "recxfer_model_info", "1 for the artifact version being served.",
            ["version"], registry=self.registry, multiprocess_mode="livesum",
        )
        self.model_loaded = Gauge(
            "recxfer_model_loaded_timestamp_seconds", "When the served model was swapped in.",
            registry=self.registry, multiprocess_mode="livemax",
        )
        self.index_items = Gauge(
            "recxfer_index_items", "Items in the served index, by domain.",
            ["domain"], registry=self.registry, multiprocess_mode="livemax",
        )
        self.reloads = Counter(
            "recxfer_reloads", "Artifacts loaded or refused by hot reload.",
            ["outcome"], registry=self.registry,
        )
        self.undecodable = Counter(
            "recxfer_undecodable_requests",
            "Requests whose bytes do not decode as the method's message, by method.",
            ["method"], registry=self.registry,
        )
        self.rpcs_working = Gauge(
            "recxfer_rpcs_working", "Admitted RPCs doing work (at most max_workers).",
            registry=self.registry, multiprocess_mode="livesum",
        )
        self.rpcs_queued = Gauge(
            "recxfer_rpcs_queued", "Admitted RPCs waiting for a worker.", registry=self.registry, multiprocess_mode="livesum",
        )
        self.rpcs_batched = Gauge(
            "recxfer_rpcs_batched",
            "Admitted RPCs in the dynamic batcher (waiting for or in a batch search).",
            registry=self.registry,
        )
        self.batch_queued_calls = Gauge(
            "recxfer_batch_queued", "Calls waiting to be taken into a batch.", registry=self.registry,
        )
        self.batch_size = Histogram(
            "recxfer_batch_size", "Calls searched together by the dynamic batcher, by kind.",
            ["kind"], buckets=BATCH_BUCKETS, registry=self.registry,
        )
        self.batch_dropped_calls = Counter(
            "recxfer_batch_dropped",
            "Calls the dynamic batcher answered without their result, by kind and reason.",
            ["kind", "reason"], registry=self.registry,
        )
        self.link_ok = Gauge(
            "recxfer_artifact_link_ok",
            "1 while ROOT/current points at the served artifact's folder, else 0.",
            registry=self.registry, multiprocess_mode="livemin",
        )
        self.link_state = Gauge(
            "recxfer_artifact_link_state",
            "1 for the state of ROOT/current last seen by the reload loop.",
            ["state"], registry=self.registry, multiprocess_mode="livemax",
        )
        self._http: Any = None

    def observe(self, method: str, code: str, seconds: float) -> None:
        """Count one RPC and its latency."""
        self.requests.labels(method, code).inc()
        self.latency.labels(method).observe(seconds)

    def model_swapped(self, model: ServingModel) -> None:
        """Point the version and index gauges at ``model``."""
        _zero_and_clear(self.model_info)
        self.model_info.labels(model.version).set(1)
        self.model_loaded.set(time.time())
        _zero_and_clear(self.index_items)
        for domain, size in model.index_sizes.items():
            self.index_items.labels(domain).set(size)

    def batch_searched(self, kind: str, size: int) -> None:
        self.batch_size.labels(kind).observe(size)

    def batch_dropped(self, kind: str, reason: str) -> None:
        self.batch_dropped_calls.labels(kind, reason).inc()

    def batch_queued(self, count: int) -> None:
        self.batch_queued_calls.set(count)

    def reload_outcome(self, loaded: bool) -> None:
        self.reloads.labels("loaded" if loaded else "refused").inc()

    def link_checked(self, state: str) -> None:
        """Record the state of ``ROOT/current`` (one of ``LINK_STATES``)."""
        self.link_ok.set(1 if state == LINK_OK else 0)
        for name in LINK_STATES:
            self.link_state.labels(name).set(1 if name == state else 0)

    def serve_http(self, address: str) -> int:
        """Expose ``/metrics`` on ``host:port`` (port 0 picks one); returns the port."""
        host, _, port = address.rpartition(":")
        try:
            self._http = make_server(
                host or "0.0.0.0", int(port), make_wsgi_app(self.registry),
                _ThreadingWSGIServer, handler_class=_QuietHandler,
            )
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"cannot serve metrics on {address}: {exc}") from exc
        # A short poll interval keeps shutdown quick.
        threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.05},
            name="metrics-http", daemon=True,
        ).start()
        return int(self._http.server_address[1])

    def stop_http(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


def _zero_and_clear(gauge: Gauge) -> None:
    """Drop a labelled gauge's children. In multiprocess mode (which has no
    ``clear()``: their values stay in the files) they are set to 0 instead."""
    if not (os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")):
        gauge.clear()
        return
    for metric in gauge.collect():
        for sample in metric.samples:
            gauge.labels(**sample.labels).set(0)


class MultiprocessMetricsHttp:
    """``/metrics`` of all the worker processes writing to ``directory``
    (``PROMETHEUS_MULTIPROC_DIR``), served by the parent on ``address``.

    Raises:
        RuntimeError: the address cannot be bound.
    """

    def __init__(self, address: str, directory: str) -> None:
        from prometheus_client.multiprocess import MultiProcessCollector

        self.directory = directory
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=directory)
        host, _, port = address.rpartition(":")
        try:
            self._http = make_server(
                host or "0.0.0.0", int(port), make_wsgi_app(registry),
                _ThreadingWSGIServer, handler_class=_QuietHandler,
            )
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"cannot serve metrics on {address}: {exc}") from exc
        self.port = int(self._http.server_address[1])
        threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.05},
            name="metrics-http", daemon=True,
        ).start()

    def worker_exited(self, pid: int) -> None:
        """Forget a dead worker's live gauges (its counters stay in the sums)."""
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(pid, self.directory)

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()

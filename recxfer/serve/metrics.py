"""Prometheus metrics of one server, in a registry of its own (no global state)."""

from __future__ import annotations

import threading
import time
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

from recxfer.serve.model import ServingModel

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)


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
    ``recxfer_reloads_total{outcome}`` (``loaded`` / ``refused``).
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
            ["version"], registry=self.registry,
        )
        self.model_loaded = Gauge(
            "recxfer_model_loaded_timestamp_seconds", "When the served model was swapped in.",
            registry=self.registry,
        )
        self.index_items = Gauge(
            "recxfer_index_items", "Items in the served index, by domain.",
            ["domain"], registry=self.registry,
        )
        self.reloads = Counter(
            "recxfer_reloads", "Artifacts loaded or refused by hot reload.",
            ["outcome"], registry=self.registry,
        )
        self._http: Any = None

    def observe(self, method: str, code: str, seconds: float) -> None:
        """Count one RPC and its latency."""
        self.requests.labels(method, code).inc()
        self.latency.labels(method).observe(seconds)

    def model_swapped(self, model: ServingModel) -> None:
        """Point the version and index gauges at ``model``."""
        self.model_info.clear()
        self.model_info.labels(model.version).set(1)
        self.model_loaded.set(time.time())
        self.index_items.clear()
        for domain, size in model.index_sizes.items():
            self.index_items.labels(domain).set(size)

    def reload_outcome(self, loaded: bool) -> None:
        self.reloads.labels("loaded" if loaded else "refused").inc()

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

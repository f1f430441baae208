"""Typed configuration of the gRPC server (``recxfer serve --config F`` mirrors it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class TlsConfig:
    """Server TLS: PEM files. With ``client_ca`` the server requires client
    certificates signed by it (mutual TLS)."""

    cert: str
    key: str
    client_ca: str | None = None

    def credentials_args(self) -> tuple[list[tuple[bytes, bytes]], bytes | None, bool]:
        """``(key/cert pairs, client CA bytes or None, require client auth)`` for
        ``grpc.ssl_server_credentials``.

        Raises:
            ValueError: a file cannot be read, naming the field.
        """
        cert = _read("tls.cert", self.cert)
        key = _read("tls.key", self.key)
        ca = _read("tls.client_ca", self.client_ca) if self.client_ca else None
        return [(key, cert)], ca, ca is not None


def _read(name: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{name}: cannot read {path}: {exc}") from exc


@dataclass(frozen=True)
class ServeConfig:
    """Limits, behaviour and security of one server.

    Attributes:
        max_k: largest ``k`` accepted by every RPC.
        max_batch: most requests in one ``BatchRecommend``.
        max_history: most ``source_item_ids`` in one ``RecommendFromHistory``.
        max_filter_ids: most ids in one request's allow- or deny-list.
        max_message_bytes: largest request and response message (gRPC limit;
            bigger requests fail with RESOURCE_EXHAUSTED).
        max_workers: threads answering RPCs.
        max_concurrent_rpcs: RPCs admitted at once, beyond which calls fail with
            RESOURCE_EXHAUSTED (``None``: unbounded, they queue).
        popularity_fallback: answer an unknown user or item with the domain's most
            popular items instead of NOT_FOUND.
        tls: serve TLS (and mTLS) instead of plaintext.
        auth_tokens: accepted bearer tokens (``authorization: Bearer <t>``); empty
            disables the check. Health checks are exempt (load balancers).
        metrics_address: ``host:port`` of the Prometheus endpoint (port 0 picks a
            free one); ``None`` disables it.
        shutdown_delay_s: on stop, time between reporting NOT_SERVING and refusing
            new calls, for load balancers to notice.
        grace_s: on stop, time granted to RPCs in flight.
        index_device: ``"auto"`` (GPU when present) or ``"cpu"``; used by the
            model loader (``ServingModel.from_artifact``).
        search_threads: faiss threads per search in each RPC worker thread
            (``recxfer.index.set_search_threads``): 1 serves concurrent requests
            best; 0 is faiss's default (all cores).
    """

    max_k: int = 1000
    max_batch: int = 256
    max_history: int = 1000
    max_filter_ids: int = 10_000
    max_message_bytes: int = 4 * 1024 * 1024
    max_workers: int = 8
    max_concurrent_rpcs: int | None = None
    popularity_fallback: bool = False
    tls: TlsConfig | None = None
    auth_tokens: tuple[str, ...] = field(default=(), repr=False)
    metrics_address: str | None = None
    shutdown_delay_s: float = 0.0
    grace_s: float = 5.0
    index_device: str = "auto"
    search_threads: int = 1

    def __post_init__(self) -> None:
        for name in ("max_k", "max_batch", "max_history", "max_filter_ids",
                     "max_message_bytes", "max_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_concurrent_rpcs is not None and self.max_concurrent_rpcs < 1:
            raise ValueError(f"max_concurrent_rpcs must be >= 1, got {self.max_concurrent_rpcs}")
        if self.search_threads < 0:
            raise ValueError(f"search_threads must be >= 0, got {self.search_threads}")
        if self.shutdown_delay_s < 0 or self.grace_s < 0:
            raise ValueError("shutdown_delay_s and grace_s must be >= 0")
        if any(not t for t in self.auth_tokens):
            raise ValueError("auth_tokens: tokens must not be empty")
        if self.index_device not in ("auto", "cpu"):
            raise ValueError(f"index_device must be 'auto' or 'cpu', got {self.index_device!r}")

"""Typed configuration of the gRPC server (``recxfer serve --config F`` mirrors it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from recxfer.serve.limits import min_batch_answer_bytes


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
class BatchingConfig:
    """Dynamic batching of the unary calls (``Recommend``, ``RecommendFromHistory``,
    ``SimilarItems``), as Triton's dynamic batcher: concurrent calls of one kind,
    domain, k bucket and model are searched together in one index call
    (``recxfer.serve.batcher``).

    Attributes:
        enabled: batch the unary calls (off: each call searches alone).
        max_batch: most calls in one batch; a batch is searched as soon as it is full.
        max_queue_delay_ms: longest a call waits for others to join its batch
            (0: no waiting; calls that queued while every worker was busy still
            share a search). A call whose deadline passes while it waits is
            answered DEADLINE_EXCEEDED without being searched.
        early_flush: take a call at once, without the delay, when it is the only
            batchable call admitted (a lone caller does not wait); off: always
            wait out ``max_queue_delay_ms`` (Triton's rule).
    """

    enabled: bool = True
    max_batch: int = 64
    max_queue_delay_ms: float = 1.0
    early_flush: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.max_batch, int) or self.max_batch < 1:
            raise ValueError(f"batching.max_batch must be an int >= 1, got {self.max_batch!r}")
        if not self.max_queue_delay_ms >= 0:
            raise ValueError(
                f"batching.max_queue_delay_ms must be >= 0, got {self.max_queue_delay_ms!r}"
            )


@dataclass(frozen=True)
class ServeConfig:
    """Limits, behaviour and security of one server.

    Attributes:
        max_k: largest ``k`` accepted by every RPC.
        max_batch: most requests in one ``BatchRecommend``.
        max_history: most ``source_item_ids`` in one ``RecommendFromHistory``.
        max_filter_ids: most ids in one request's allow- or deny-list.
        max_message_bytes: largest request and response message (gRPC limit;
            bigger requests fail with RESOURCE_EXHAUSTED; a request whose answer
            may not fit is refused up front with INVALID_ARGUMENT). A full batch
            at the largest ``k`` must fit it even with 1-byte ids.
        max_workers: RPCs doing work (searching) at once; the others wait in a
            FIFO queue. Health checks never wait behind them.
        max_concurrent_rpcs: RPCs admitted at once (working + queued), beyond
            which calls fail at once with RESOURCE_EXHAUSTED; health checks are
            not counted (they have threads of their own).
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
        index_device: ``"auto"`` (GPU when present), ``"cpu"`` or ``"cuda"`` (a
            GPU required: faiss GPU, else torch exact top-k on CUDA); used by
            the model loader (``ServingModel.from_artifact``, with ``max_k`` and
            ``max_filter_ids``: searches past faiss GPU's k limit of 2048 go to
            torch exact top-k on CUDA).
        search_threads: faiss threads per search in each RPC worker thread
            (``recxfer.index.set_search_threads``): 1 serves concurrent requests
            best; 0 is faiss's default (all cores).
        batching: dynamic batching of the unary calls (``BatchingConfig``; on by
            default); in a JSON serve config ``{"batching": {"max_queue_delay_ms": 2}}``.
    """

    max_k: int = 1000
    max_batch: int = 256
    max_history: int = 1000
    max_filter_ids: int = 10_000
    max_message_bytes: int = 4 * 1024 * 1024
    max_workers: int = 8
    max_concurrent_rpcs: int = 64
    popularity_fallback: bool = False
    tls: TlsConfig | None = None
    auth_tokens: tuple[str, ...] = field(default=(), repr=False)
    metrics_address: str | None = None
    shutdown_delay_s: float = 0.0
    grace_s: float = 5.0
    index_device: str = "auto"
    search_threads: int = 1
    batching: BatchingConfig = BatchingConfig()

    def __post_init__(self) -> None:
        for name in ("max_k", "max_batch", "max_history", "max_filter_ids",
                     "max_message_bytes", "max_workers", "max_concurrent_rpcs"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        floor = min_batch_answer_bytes(self.max_batch, self.max_k)
        if floor > self.max_message_bytes:
            raise ValueError(
                f"max_message_bytes {self.max_message_bytes} cannot hold the answer to a full "
                f"batch (max_batch {self.max_batch} x max_k {self.max_k}: at least {floor} "
                "bytes even with 1-byte ids); raise max_message_bytes or lower max_batch/max_k"
            )
        if self.search_threads < 0:
            raise ValueError(f"search_threads must be >= 0, got {self.search_threads}")
        if self.shutdown_delay_s < 0 or self.grace_s < 0:
            raise ValueError("shutdown_delay_s and grace_s must be >= 0")
        if any(not t for t in self.auth_tokens):
            raise ValueError("auth_tokens: tokens must not be empty")
        if self.index_device not in ("auto", "cpu", "cuda"):
            raise ValueError(
                f"index_device must be 'auto', 'cpu' or 'cuda', got {self.index_device!r}"
            )

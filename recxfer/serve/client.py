"""A small typed client of ``recxfer.v1.Recommender`` (used by the CLI and tests).

Errors come back as ``grpc.RpcError`` with the server's status code and message;
inside a batch, an unknown user is a ``RequestFailed`` entry.

Answers are asked for in the packed layout (``packed: true``: parallel
``item_ids``/``scores`` arrays, cheaper for both sides at large k); a server
that predates it fills the legacy ``items`` instead, which is read then. The
result types are the same either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recxfer.v1 import recommender_pb2, recommender_pb2_grpc


@dataclass(frozen=True)
class Recommended:
    """A ``Recommend`` answer (also one entry of a batch)."""

    item_ids: list[str]
    scores: list[float]
    model_version: str
    user_kind: str  # "warm", "transfer" or "popularity" (unknown user, fallback)


@dataclass(frozen=True)
class RequestFailed:
    """A batch entry that failed on its own (e.g. NOT_FOUND for an unknown user)."""

    code: grpc.StatusCode
    message: str


@dataclass(frozen=True)
class Similar:
    """A ``SimilarItems`` answer."""

    item_ids: list[str]
    scores: list[float]
    model_version: str
    popularity_fallback: bool


@dataclass(frozen=True)
class RecommendArgs:
    """One request of ``batch_recommend``; ``allow`` and ``deny`` may both be
    given (allowed items that are not denied)."""

    user_id: str
    domain: str
    k: int = 10
    exclude_seen: bool = True
    allow: Sequence[str] | None = None
    deny: Sequence[str] | None = None


@dataclass(frozen=True)
class ClientTls:
    """TLS of the channel: PEM paths. ``ca_cert`` verifies the server (``None``:
    the system roots); ``cert``/``key`` authenticate the client (mutual TLS);
    ``server_name`` overrides the name checked in the server's certificate."""

    ca_cert: str | None = None
    cert: str | None = None
    key: str | None = None
    server_name: str | None = None


def _filter(allow: Sequence[str] | None, deny: Sequence[str] | None) -> recommender_pb2.Filter | None:
    if allow is None and deny is None:
        return None
    out = recommender_pb2.Filter()
    if allow is not None:
        out.allow.SetInParent()  # present even when empty (the server refuses that)
        out.allow.item_ids.extend(allow)
    if deny is not None:
        out.deny.SetInParent()
        out.deny.item_ids.extend(deny)
    return out


def _request(args: RecommendArgs, packed: bool = True) -> recommender_pb2.RecommendRequest:
    return recommender_pb2.RecommendRequest(
        user_id=args.user_id, domain=args.domain, k=args.k, exclude_seen=args.exclude_seen,
        filter=_filter(args.allow, args.deny), packed=packed,
    )


def _items(response: object) -> tuple[list[str], list[float]]:
    """``(item_ids, scores)`` of a Recommend/SimilarItems response: the packed
    arrays, else (a server that ignores ``packed``) the legacy ``items``."""
    if len(response.item_ids) or not len(response.items):  # type: ignore[attr-defined]
        return list(response.item_ids), list(response.scores)  # type: ignore[attr-defined]
    items = response.items  # type: ignore[attr-defined]
    return [item.item_id for item in items], [item.score for item in items]


def _recommended(response: recommender_pb2.RecommendResponse) -> Recommended:
    kind = recommender_pb2.UserKind.Name(response.user_kind)
    item_ids, scores = _items(response)
    return Recommended(
        item_ids=item_ids,
        scores=scores,
        model_version=response.model_version,
        user_kind=kind.removeprefix("USER_KIND_").lower(),
    )


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


class RecommenderClient:
    """Blocking client; use as a context manager to close the channel.

    Args:
        address: ``host:port``.
        timeout: deadline of each call, seconds.
        tls: use a TLS channel (plaintext otherwise).
        token: bearer token sent as ``authorization: Bearer <token>``.
        max_message_bytes: largest message sent or received.
        packed: ask for the packed answer layout (default); ``False``: the legacy
            ``items`` layout (same results).
    """

    def __init__(
        self,
        address: str,
        timeout: float = 5.0,
        *,
        tls: ClientTls | None = None,
        token: str | None = None,
        max_message_bytes: int = 4 * 1024 * 1024,
        packed: bool = True,
    ) -> None:
        self._packed = packed
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        if tls is None:
            self._channel = grpc.insecure_channel(address, options=options)
        else:
            if tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(tls.ca_cert),
                private_key=_read(tls.key),
                certificate_chain=_read(tls.cert),
            )
            self._channel = grpc.secure_channel(address, credentials, options=options)
        self._stub = recommender_pb2_grpc.RecommenderStub(self._channel)
        self._timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None

    def _call(self, method: grpc.UnaryUnaryMultiCallable, request: object) -> object:
        return method(request, timeout=self._timeout, metadata=self._metadata)

    def recommend(
        self,
        user_id: str,
        domain: str,
        k: int = 10,
        exclude_seen: bool = True,
        *,
        allow: Sequence[str] | None = None,
        deny: Sequence[str] | None = None,
    ) -> Recommended:
        """Top-``k`` items of ``domain`` for a known user."""
        request = _request(RecommendArgs(user_id, domain, k, exclude_seen, allow, deny), self._packed)
        return _recommended(self._call(self._stub.Recommend, request))

    def batch_recommend(self, requests: Sequence[RecommendArgs]) -> list[Recommended | RequestFailed]:
        """Many users in one call; one entry per request, in order."""
        response = self._call(
            self._stub.BatchRecommend,
            recommender_pb2.BatchRecommendRequest(
                requests=[_request(r, self._packed) for r in requests]
            ),
        )
        out: list[Recommended | RequestFailed] = []
        for result in response.results:
            if result.WhichOneof("result") == "error":
                code = next(c for c in grpc.StatusCode if c.value[0] == result.error.code)
                out.append(RequestFailed(code, result.error.message))
            else:
                out.append(_recommended(result.response))
        return out

    def similar_items(
        self,
        domain: str,
        item_id: str,
        k: int = 10,
        *,
        allow: Sequence[str] | None = None,
        deny: Sequence[str] | None = None,
    ) -> Similar:
        """The ``k`` items of ``domain`` closest to ``item_id``."""
        response = self._call(
            self._stub.SimilarItems,
            recommender_pb2.SimilarItemsRequest(
                domain=domain, item_id=item_id, k=k, filter=_filter(allow, deny),
                packed=self._packed,
            ),
        )
        item_ids, scores = _items(response)
        return Similar(
            item_ids=item_ids,
            scores=scores,
            model_version=response.model_version,
            popularity_fallback=response.popularity_fallback,
        )

    def recommend_from_history(
        self,
        source_domain: str,
        source_item_ids: Sequence[str],
        target_domain: str,
        k: int = 10,
        *,
        allow: Sequence[str] | None = None,
        deny: Sequence[str] | None = None,
    ) -> Recommended:
        """Top-``k`` items of ``target_domain`` for a user known only by a history."""
        response = self._call(
            self._stub.RecommendFromHistory,
            recommender_pb2.RecommendFromHistoryRequest(
                source_domain=source_domain, source_item_ids=list(source_item_ids),
                target_domain=target_domain, k=k, filter=_filter(allow, deny),
                packed=self._packed,
            ),
        )
        return _recommended(response)

    def health(self, service: str = "") -> str:
        """The server's health status name, e.g. ``"SERVING"``."""
        response = health_pb2_grpc.HealthStub(self._channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=self._timeout,
            metadata=self._metadata,
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "RecommenderClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""A small typed client of ``recxfer.v1.Recommender``."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from recxfer.v1 import recommender_pb2, recommender_pb2_grpc


@dataclass(frozen=True)
class Recommended:
    """A ``Recommend`` answer."""

    item_ids: list[str]
    scores: list[float]
    model_version: str
    user_kind: str  # "warm" or "transfer"


class RecommenderClient:
    """Blocking client; use as a context manager to close the channel."""

    def __init__(self, address: str, timeout: float = 5.0) -> None:
        self._channel = grpc.insecure_channel(address)
        self._stub = recommender_pb2_grpc.RecommenderStub(self._channel)
        self._timeout = timeout

    def recommend(
        self, user_id: str, domain: str, k: int = 10, exclude_seen: bool = True
    ) -> Recommended:
        """Raises ``grpc.RpcError`` with the server's status code and message."""
        response = self._stub.Recommend(
            recommender_pb2.RecommendRequest(
                user_id=user_id, domain=domain, k=k, exclude_seen=exclude_seen
            ),
            timeout=self._timeout,
        )
        kind = recommender_pb2.UserKind.Name(response.user_kind)
        return Recommended(
            item_ids=[item.item_id for item in response.items],
            scores=[item.score for item in response.items],
            model_version=response.model_version,
            user_kind=kind.removeprefix("USER_KIND_").lower(),
        )

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "RecommenderClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""gRPC servicer of ``recxfer.v1.Recommender``."""

from __future__ import annotations

import logging

import grpc

from recxfer.serve.holder import ModelHolder
from recxfer.serve.model import UnknownDomainError, UnknownUserError
from recxfer.types import UserOrigin
from recxfer.v1 import recommender_pb2, recommender_pb2_grpc

log = logging.getLogger(__name__)

_KINDS = {
    UserOrigin.WARM.value: recommender_pb2.USER_KIND_WARM,
    UserOrigin.TRANSFER.value: recommender_pb2.USER_KIND_TRANSFER,
}


class RecommenderServicer(recommender_pb2_grpc.RecommenderServicer):
    """Answers ``Recommend``; every error goes through ``context.abort`` with the
    status code that names the fault (the message names the field)."""

    def __init__(self, holder: ModelHolder, max_k: int = 1000) -> None:
        if max_k < 1:
            raise ValueError(f"max_k must be >= 1, got {max_k}")
        self._holder = holder
        self._max_k = max_k

    def Recommend(
        self, request: recommender_pb2.RecommendRequest, context: grpc.ServicerContext
    ) -> recommender_pb2.RecommendResponse:
        model = self._holder.get()
        if model is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "no model loaded yet")
        if not request.user_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "user_id: must not be empty")
        if not request.domain:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "domain: must not be empty")
        if not 1 <= request.k <= self._max_k:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"k: must be in [1, {self._max_k}], got {request.k}",
            )
        exclude_seen = request.exclude_seen if request.HasField("exclude_seen") else True
        try:
            rec = model.recommend(request.user_id, request.domain, request.k, exclude_seen)
        except UnknownDomainError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"domain: {exc.args[0]}")
        except UnknownUserError as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, f"user_id: {exc.args[0]}")
        return recommender_pb2.RecommendResponse(
            items=[
                recommender_pb2.ScoredItem(item_id=str(i), score=float(s))
                for i, s in zip(rec.item_ids, rec.scores)
            ],
            model_version=model.version,
            user_kind=_KINDS[rec.user_origin],
        )

"""gRPC servicer of ``recxfer.v1.Recommender``.

Every error goes through ``context.abort`` with the status code that names the
fault; the message starts with the field at fault (``"k: ..."``,
``"requests[3].user_id: ..."``, ``"filter.allow.item_ids: ..."``). An
INVALID_ARGUMENT also carries a ``google.rpc.BadRequest`` naming that field in
its details (``recxfer.serve.errors``). Values the caller sent are echoed cut to
``limits.ECHO_CHARS`` characters, so an error stays small whatever was sent. A
request whose answer may not fit in ``max_message_bytes`` is refused before any
search (the bound follows the response proto: ``recxfer.serve.limits``).

With a ``DynamicBatcher`` the unary calls (``Recommend``, ``SimilarItems``,
``RecommendFromHistory``) are validated in their own thread, then searched
together with concurrent calls of the same kind, model snapshot, domain(s) and
k bucket by the model's batch functions (``recommend_many``,
``similar_items_many``, ``recommend_from_histories``): the same functions, on
the same snapshot, that answer an unbatched call, so the answers are the same.
A request's ``packed`` flag picks the response layout: the parallel
``item_ids``/``scores`` arrays, else the legacy ``items`` messages.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from recxfer.serve.batcher import (
    BatchCancelled,
    BatchExpired,
    BatcherStopped,
    DynamicBatcher,
    k_bucket,
)
from recxfer.serve.config import ServeConfig
from recxfer.serve.errors import bad_request_status
from recxfer.serve.holder import ModelHolder
from recxfer.serve.limits import batch_result_bytes, echo, field_bytes, response_bytes
from recxfer.serve.model import (
    POPULARITY,
    ItemFilter,
    NoHistoryEncoderError,
    Recommendation,
    RecommendQuery,
    ServingModel,
    UnknownItemError,
    UnknownUserError,
)
from recxfer.types import UserOrigin
from recxfer.v1 import recommender_pb2, recommender_pb2_grpc

log = logging.getLogger(__name__)

_KINDS = {
    UserOrigin.WARM.value: recommender_pb2.USER_KIND_WARM,
    UserOrigin.TRANSFER.value: recommender_pb2.USER_KIND_TRANSFER,
    POPULARITY: recommender_pb2.USER_KIND_POPULARITY,
}
_NOT_FOUND_CODE = grpc.StatusCode.NOT_FOUND.value[0]


class _Reject(Exception):
    """A request refused with ``code``; ``message`` starts with the field.
    ``field`` (INVALID_ARGUMENT): the field at fault, for the ``BadRequest`` detail."""

    def __init__(
        self, code: grpc.StatusCode, message: str, field: str | None = None,
        description: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.description = description


def _invalid(field: str, description: str) -> _Reject:
    return _Reject(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {description}", field, description)


def _add_items(items: object, item_ids: Sequence[str], scores: Sequence[float]) -> None:
    """Append ``ScoredItem``s to a repeated field (``.add`` is ~2x faster than
    building the messages first)."""
    add = items.add  # type: ignore[attr-defined]
    for item_id, score in zip(item_ids, scores):
        add(item_id=item_id, score=score)


def _fill_items(out: Any, item_ids: Any, scores: Any, packed: bool) -> None:
    """Items of an answer (``(k',)`` arrays) into ``out``: the parallel packed
    fields (two calls, whatever k) or the legacy ``items`` messages."""
    if packed:
        out.item_ids.extend(item_ids.tolist())
        out.scores.extend(scores.tolist())
    else:
        _add_items(out.items, item_ids.tolist(), scores.tolist())


_Rpc = Callable[[Any, Any, grpc.ServicerContext], Any]


def _aborting(method: _Rpc) -> _Rpc:
    """Turn a ``_Reject`` raised by an RPC method into ``context.abort``."""

    @functools.wraps(method)
    def rpc(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except _Reject as reject:
            if reject.field is not None:
                context.abort_with_status(bad_request_status(
                    reject.message, [(reject.field, reject.description or "")]
                ))
            context.abort(reject.code, reject.message)

    return rpc


class RecommenderServicer(recommender_pb2_grpc.RecommenderServicer):
    """Answers the ``Recommender`` RPCs from the model in ``holder``, within the
    limits of ``config``; the unary ones through ``batcher`` when given."""

    # The methods answered through the batcher (``AdmissionInterceptor(unslotted=...)``).
    BATCHED_METHODS = frozenset(
        f"/{recommender_pb2.DESCRIPTOR.services_by_name['Recommender'].full_name}/{name}"
        for name in ("Recommend", "SimilarItems", "RecommendFromHistory")
    )

    def __init__(
        self, holder: ModelHolder, config: ServeConfig = ServeConfig(),
        batcher: DynamicBatcher | None = None,
    ) -> None:
        self._holder = holder
        self._config = config
        self._batcher = batcher

    # --- helpers ---------------------------------------------------------------------

    def _model(self) -> ServingModel:
        model = self._holder.get()
        if model is None:
            raise _Reject(grpc.StatusCode.UNAVAILABLE, "no model loaded yet")
        return model

    @staticmethod
    def _check_deadline(context: grpc.ServicerContext) -> None:
        """Stop work the caller no longer waits for (it queued or searched too long)."""
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            raise _Reject(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded before the answer")

    def _check_k(self, k: int, field: str) -> None:
        if not 1 <= k <= self._config.max_k:
            raise _invalid(field, f"must be in [1, {self._config.max_k}], got {k}")

    @staticmethod
    def _check_domain(model: ServingModel, domain: str, field: str) -> None:
        if not domain:
            raise _invalid(field, "must not be empty")
        if domain not in model.domains:
            raise _invalid(field, f"unknown domain {echo(domain)}; known: {sorted(model.domains)}")

    def _item_filter(self, message: recommender_pb2.Filter, field: str) -> ItemFilter | None:
        """The allow- and/or deny-list of a request (both: allowed minus denied)."""
        lists: dict[str, tuple[str, ...]] = {}
        for kind in ("allow", "deny"):
            if not message.HasField(kind):
                continue
            ids = tuple(getattr(message, kind).item_ids)
            where = f"{field}.{kind}.item_ids"
            if len(ids) > self._config.max_filter_ids:
                raise _invalid(where, f"at most {self._config.max_filter_ids} ids, got {len(ids)}")
            if kind == "allow" and not ids:
                raise _invalid(where, "an allow-list must name at least one item")
            lists[kind] = ids
        if not lists:
            return None
        return ItemFilter(allow=lists.get("allow"), deny=lists.get("deny", ()))

    def _answer(
        self, context: grpc.ServicerContext, key: tuple[Any, ...],
        answer: Callable[[list[Any]], Sequence[Any]], item: Any,
    ) -> Any:
        """``answer([item])[0]``, batched with concurrent calls of the same ``key``
        (whose first element names the kind of call) when there is a batcher."""
        if self._batcher is None:
            return answer([item])[0]
        try:
            return self._batcher.submit(key, key[0], answer, item, context)
        except BatchExpired:
            raise _Reject(grpc.StatusCode.DEADLINE_EXCEEDED,
                          "deadline exceeded while queued for a batch") from None
        except BatchCancelled:
            raise _Reject(grpc.StatusCode.CANCELLED, "cancelled while queued for a batch") from None
        except BatcherStopped:
            raise _Reject(grpc.StatusCode.UNAVAILABLE, "the server is stopping") from None

    def _query(
        self, model: ServingModel, request: recommender_pb2.RecommendRequest, prefix: str = ""
    ) -> RecommendQuery:
        """Validate a ``RecommendRequest`` (fields named with ``prefix``)."""
        if not request.user_id:
            raise _invalid(f"{prefix}user_id", "must not be empty")
        if not request.domain:
            raise _invalid(f"{prefix}domain", "must not be empty")
        self._check_k(request.k, f"{prefix}k")
        self._check_domain(model, request.domain, f"{prefix}domain")
        return RecommendQuery(
            user_id=request.user_id,
            domain=request.domain,
            k=request.k,
            exclude_seen=request.exclude_seen if request.HasField("exclude_seen") else True,
            item_filter=self._item_filter(request.filter, f"{prefix}filter"),
        )

    def _check_fits(self, model: ServingModel, domain: str, k: int, field: str = "k") -> None:
        """Refuse a single answer of up to ``k`` items of ``domain`` that may not
        fit in ``max_message_bytes``."""
        served = model.domains[domain]
        n = min(k, len(served.item_rows))
        size = response_bytes(n, served.max_item_id_bytes, len(model.version.encode()))
        if size > self._config.max_message_bytes:
            raise _invalid(field, self._too_big(size, f"{n} items with ids up to "
                                                      f"{served.max_item_id_bytes} bytes"))

    def _check_batch_fits(self, model: ServingModel, queries: Sequence[RecommendQuery]) -> None:
        """Refuse a batch whose answer (each entry a response or an error, whichever
        is larger) may not fit in ``max_message_bytes``."""
        version = len(model.version.encode())
        size = field_bytes(version)
        items = 0
        for i, query in enumerate(queries):
            served = model.domains[query.domain]
            n = min(query.k, len(served.item_rows))
            items += n
            error = 64 + len(str(i)) + len(echo(query.user_id).encode()) + len(query.domain.encode())
            size += batch_result_bytes(response_bytes(n, served.max_item_id_bytes, version), error)
        if size > self._config.max_message_bytes:
            raise _invalid("requests", self._too_big(
                size, f"{len(queries)} results, {items} items in all"
            ))

    def _too_big(self, size: int, what: str) -> str:
        return (f"the answer may take up to {size} bytes ({what}), over the server's "
                f"max_message_bytes {self._config.max_message_bytes}; ask for a smaller k "
                "or fewer requests per batch")

    @staticmethod
    def _fill(
        out: recommender_pb2.RecommendResponse, rec: Recommendation, version: str,
        packed: bool = False,
    ) -> None:
        _fill_items(out, rec.item_ids, rec.scores, packed)
        out.model_version = version
        out.user_kind = _KINDS[rec.user_origin]

    # --- RPCs ------------------------------------------------------------------------

    @_aborting
    def Recommend(
        self, request: recommender_pb2.RecommendRequest, context: grpc.ServicerContext
    ) -> recommender_pb2.RecommendResponse:
        model = self._model()
        query = self._query(model, request)
        self._check_fits(model, query.domain, query.k)
        self._check_deadline(context)
        fallback = self._config.popularity_fallback
        result = self._answer(
            context, ("recommend", id(model), query.domain, k_bucket(query.k)),
            lambda queries: model.recommend_many(queries, fallback), query,
        )
        if isinstance(result, UnknownUserError):
            raise _Reject(grpc.StatusCode.NOT_FOUND, f"user_id: {result.args[0]}")
        self._check_deadline(context)
        response = recommender_pb2.RecommendResponse()
        self._fill(response, result, model.version, request.packed)
        return response

    @_aborting
    def BatchRecommend(
        self, request: recommender_pb2.BatchRecommendRequest, context: grpc.ServicerContext
    ) -> recommender_pb2.BatchRecommendResponse:
        model = self._model()
        n = len(request.requests)
        if n == 0:
            raise _invalid("requests", "must not be empty")
        if n > self._config.max_batch:
            raise _invalid("requests", f"at most {self._config.max_batch} per batch, got {n}")
        queries = [
            self._query(model, entry, f"requests[{i}].")
            for i, entry in enumerate(request.requests)
        ]
        self._check_batch_fits(model, queries)
        self._check_deadline(context)
        results = model.recommend_many(queries, self._config.popularity_fallback)
        self._check_deadline(context)
        out = recommender_pb2.BatchRecommendResponse(model_version=model.version)
        for i, result in enumerate(results):
            if isinstance(result, UnknownUserError):
                out.results.add(error=recommender_pb2.RequestError(
                    code=_NOT_FOUND_CODE, message=f"requests[{i}].user_id: {result.args[0]}"
                ))
            else:
                self._fill(out.results.add().response, result, model.version,
                           request.requests[i].packed)
        return out

    @_aborting
    def SimilarItems(
        self, request: recommender_pb2.SimilarItemsRequest, context: grpc.ServicerContext
    ) -> recommender_pb2.SimilarItemsResponse:
        model = self._model()
        if not request.domain:
            raise _invalid("domain", "must not be empty")
        if not request.item_id:
            raise _invalid("item_id", "must not be empty")
        self._check_k(request.k, "k")
        self._check_domain(model, request.domain, "domain")
        item_filter = self._item_filter(request.filter, "filter")
        self._check_fits(model, request.domain, request.k)
        self._check_deadline(context)
        domain, fallback = request.domain, self._config.popularity_fallback

        def answer(items: list[tuple[str, int, ItemFilter | None]]) -> list[Any]:
            return model.similar_items_many(
                domain, [i for i, _, _ in items], [k for _, k, _ in items],
                [f for _, _, f in items], fallback,
            )

        similar = self._answer(
            context, ("similar", id(model), domain, k_bucket(request.k)), answer,
            (request.item_id, request.k, item_filter),
        )
        if isinstance(similar, UnknownItemError):
            raise _Reject(grpc.StatusCode.NOT_FOUND, f"item_id: {similar.args[0]}")
        self._check_deadline(context)
        response = recommender_pb2.SimilarItemsResponse(
            model_version=model.version, popularity_fallback=similar.popularity_fallback
        )
        _fill_items(response, similar.item_ids, similar.scores, request.packed)
        return response

    @_aborting
    def RecommendFromHistory(
        self, request: recommender_pb2.RecommendFromHistoryRequest, context: grpc.ServicerContext
    ) -> recommender_pb2.RecommendResponse:
        """Scores the source history by the artifact's item-to-item transfer into
        the target when it has one from that source, else embeds it at query time
        with the shared user encoder and searches the target domain.
        FAILED_PRECONDITION when the served artifact has neither (e.g. EMCDR)."""
        model = self._model()
        self._check_domain(model, request.source_domain, "source_domain")
        self._check_domain(model, request.target_domain, "target_domain")
        n = len(request.source_item_ids)
        if n == 0:
            raise _invalid("source_item_ids", "must not be empty")
        if n > self._config.max_history:
            raise _invalid("source_item_ids", f"at most {self._config.max_history} ids, got {n}")
        self._check_k(request.k, "k")
        item_filter = self._item_filter(request.filter, "filter")
        self._check_fits(model, request.target_domain, request.k)
        history = model.known_items(request.source_domain, request.source_item_ids)
        if history.size == 0:
            raise _Reject(
                grpc.StatusCode.NOT_FOUND,
                f"source_item_ids: none of the {n} ids is known in domain "
                f"{request.source_domain!r}",
            )
        self._check_deadline(context)
        source, target = request.source_domain, request.target_domain

        def answer(items: list[tuple[list[str], int, ItemFilter | None]]) -> list[Any]:
            return model.recommend_from_histories(
                source, [h for h, _, _ in items], target, [k for _, k, _ in items],
                [f for _, _, f in items],
            )

        try:
            result = self._answer(
                context, ("history", id(model), source, target, k_bucket(request.k)), answer,
                (list(request.source_item_ids), request.k, item_filter),
            )
        except NoHistoryEncoderError as exc:
            raise _Reject(grpc.StatusCode.FAILED_PRECONDITION, f"RecommendFromHistory: {exc}") from None
        if isinstance(result, UnknownItemError):
            raise _Reject(grpc.StatusCode.NOT_FOUND, f"source_item_ids: {result.args[0]}")
        self._check_deadline(context)
        response = recommender_pb2.RecommendResponse()
        self._fill(response, result, model.version, request.packed)
        return response

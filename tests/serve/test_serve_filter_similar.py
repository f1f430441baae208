"""Allow/deny filters with seen-item exclusion (exactly k when possible),
SimilarItems, and the popularity fallback, each against a numpy brute force and
on both index backends (faiss Flat and exact torch)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from recxfer.serve import ModelHolder
from recxfer.serve.client import RecommenderClient
from recxfer.v1 import recommender_pb2 as pb

TIMEOUT = 5.0
BACKENDS = ["served", "served_exact"]


def allow(*ids: str) -> pb.Filter:
    return pb.Filter(allow=pb.ItemIdList(item_ids=list(ids)))


def deny(*ids: str) -> pb.Filter:
    return pb.Filter(deny=pb.ItemIdList(item_ids=list(ids)))


def recommend(stub, user_id, k, item_filter=None, domain="books", **kwargs):
    return stub.Recommend(
        pb.RecommendRequest(user_id=user_id, domain=domain, k=k, filter=item_filter, **kwargs),
        timeout=TIMEOUT,
    )


def ids_scores(response):
    return [i.item_id for i in response.items], np.array([i.score for i in response.items])


# --- filters on Recommend ------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("user_id, k", [("alice", 5), ("bob", 10), ("carol", 8)])
def test_deny_list_with_seen_exclusion_returns_exactly_k(request, domains, tools, backend, user_id, k):
    books = domains["books"]
    unfiltered, _ = tools.brute(books, tools.vec(books, user_id), 3, tools.seen(books, user_id))
    denied = set(unfiltered[:2]) | {"no-such-item"}  # the two best admissible, and junk
    response = recommend(request.getfixturevalue(backend).stub, user_id, k, deny(*denied))
    ids, scores = ids_scores(response)
    want_ids, want_scores = tools.brute(
        books, tools.vec(books, user_id), k, tools.seen(books, user_id) | denied
    )
    assert len(ids) == k
    assert ids == want_ids
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [1, 3, 4, 10])
def test_allow_list_minus_seen_is_exact(request, domains, tools, backend, k):
    books = domains["books"]
    seen = tools.seen(books, "alice")
    allowed = sorted(seen)[:2] + ["b03", "b07", "b11", "b16", "b19"]
    allowed = list(dict.fromkeys(allowed))
    admissible = set(allowed) - seen
    response = recommend(request.getfixturevalue(backend).stub, "alice", k, allow(*allowed, "zzz"))
    ids, scores = ids_scores(response)
    want_ids, want_scores = tools.brute(books, tools.vec(books, "alice"), k, seen, set(allowed))
    assert len(ids) == min(k, len(admissible))
    assert ids == want_ids
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)


def test_allow_list_with_include_seen(served, domains, tools):
    books = domains["books"]
    allowed = set(sorted(tools.seen(books, "alice"))) | {"b03"}
    response = recommend(served.stub, "alice", 10, allow(*allowed), exclude_seen=False)
    assert ids_scores(response)[0] == tools.brute(books, tools.vec(books, "alice"), 10, set(), allowed)[0]


def test_allow_list_of_unknown_ids_is_empty_not_an_error(served):
    assert list(recommend(served.stub, "alice", 5, allow("x1", "x2")).items) == []


def test_fewer_than_k_admissible_returns_all_of_them(served, domains, tools):
    """erin has seen 17 of 20 books; denying one more leaves 2."""
    books = domains["books"]
    admissible = tools.brute(books, tools.vec(books, "erin"), 20, tools.seen(books, "erin"))[0]
    assert len(admissible) == 3
    ids, _ = ids_scores(recommend(served.stub, "erin", 5, deny(admissible[0])))
    assert ids == admissible[1:]


@pytest.mark.parametrize(
    "item_filter, field, words",
    [
        (allow(), "filter.allow.item_ids:", "at least one"),
        (allow("a", "b", "c", "d"), "filter.allow.item_ids:", "at most 3"),  # max_filter_ids 3
        (deny("a", "b", "c", "d"), "filter.deny.item_ids:", "at most 3"),
    ],
)
def test_bad_filters_are_invalid_argument(start_server, model, item_filter, field, words):
    running = start_server(ModelHolder(model), max_filter_ids=3)
    with pytest.raises(grpc.RpcError) as info:
        recommend(running.stub, "alice", 3, item_filter)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(field), info.value.details()
    assert words in info.value.details()
    assert len(recommend(running.stub, "alice", 3, deny("a", "b", "c")).items) == 3


# --- SimilarItems --------------------------------------------------------------------


def similar(stub, item_id, k, domain="books", item_filter=None):
    return stub.SimilarItems(
        pb.SimilarItemsRequest(domain=domain, item_id=item_id, k=k, filter=item_filter),
        timeout=TIMEOUT,
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("domain, item_id, k", [("books", "b04", 5), ("video", "v07", 3), ("books", "b00", 19)])
def test_similar_items_equal_brute_force(request, domains, tools, backend, domain, item_id, k):
    emb = domains[domain]
    response = similar(request.getfixturevalue(backend).stub, item_id, k, domain)
    ids, scores = ids_scores(response)
    query = emb.item_emb[list(emb.item_ids).index(item_id)]
    want_ids, want_scores = tools.brute(emb, query, k, {item_id})
    assert ids == want_ids and item_id not in ids
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    assert response.model_version and not response.popularity_fallback


def test_similar_items_k_beyond_catalogue_returns_all_others(served):
    assert len(similar(served.stub, "b04", 50).items) == 19


@pytest.mark.parametrize("backend", BACKENDS)
def test_similar_items_filters(request, domains, tools, backend):
    stub = request.getfixturevalue(backend).stub
    books = domains["books"]
    query = books.item_emb[list(books.item_ids).index("b04")]
    best = tools.brute(books, query, 2, {"b04"})[0]
    ids, _ = ids_scores(similar(stub, "b04", 4, item_filter=deny(*best)))
    assert ids == tools.brute(books, query, 4, {"b04", *best})[0]
    allowed = {"b04", "b10", "b12", "b18"}
    ids, _ = ids_scores(similar(stub, "b04", 10, item_filter=allow(*allowed)))
    assert ids == tools.brute(books, query, 10, {"b04"}, allowed)[0] and len(ids) == 3


@pytest.mark.parametrize(
    "fields, code, field",
    [
        ({"domain": "books", "item_id": "nope", "k": 3}, grpc.StatusCode.NOT_FOUND, "item_id:"),
        ({"domain": "books", "item_id": "v01", "k": 3}, grpc.StatusCode.NOT_FOUND, "item_id:"),
        ({"domain": "", "item_id": "b01", "k": 3}, grpc.StatusCode.INVALID_ARGUMENT, "domain:"),
        ({"domain": "music", "item_id": "b01", "k": 3}, grpc.StatusCode.INVALID_ARGUMENT, "domain:"),
        ({"domain": "books", "item_id": "", "k": 3}, grpc.StatusCode.INVALID_ARGUMENT, "item_id:"),
        ({"domain": "books", "item_id": "b01", "k": 0}, grpc.StatusCode.INVALID_ARGUMENT, "k:"),
        ({"domain": "books", "item_id": "b01", "k": 6}, grpc.StatusCode.INVALID_ARGUMENT, "k:"),
        ({"domain": "books", "item_id": "b01", "k": 3, "filter": allow()},
         grpc.StatusCode.INVALID_ARGUMENT, "filter.allow.item_ids:"),
    ],
)
def test_similar_items_errors(start_server, model, fields, code, field):
    running = start_server(ModelHolder(model), max_k=5)
    with pytest.raises(grpc.RpcError) as info:
        running.stub.SimilarItems(pb.SimilarItemsRequest(**fields), timeout=TIMEOUT)
    assert info.value.code() == code
    assert info.value.details().startswith(field), info.value.details()


def test_similar_items_unavailable_without_model(start_server):
    running = start_server(ModelHolder())
    with pytest.raises(grpc.RpcError) as info:
        similar(running.stub, "b01", 3)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


# --- popularity fallback -------------------------------------------------------------


def popular_ids(emb, k, exclude=frozenset()):
    order = np.argsort(-emb.item_popularity, kind="stable")
    return [str(emb.item_ids[j]) for j in order if emb.item_ids[j] not in exclude][:k]


def test_popularity_fallback_for_unknown_user_and_item(start_server, model, domains):
    books = domains["books"]
    running = start_server(ModelHolder(model), popularity_fallback=True)
    response = recommend(running.stub, "nobody", 6)
    assert response.user_kind == pb.USER_KIND_POPULARITY
    ids, scores = ids_scores(response)
    assert ids == popular_ids(books, 6)
    want_counts = [books.item_popularity[list(books.item_ids).index(i)] for i in ids]
    np.testing.assert_array_equal(scores, want_counts)
    top = popular_ids(books, 2)
    assert ids_scores(recommend(running.stub, "nobody", 4, deny(*top)))[0] == popular_ids(books, 4, set(top))
    allowed = ["b03", "b09", top[0]]
    assert ids_scores(recommend(running.stub, "nobody", 5, allow(*allowed)))[0] == [
        i for i in popular_ids(books, 20) if i in allowed
    ]
    response = similar(running.stub, "nope", 3)
    assert response.popularity_fallback and ids_scores(response)[0] == popular_ids(books, 3)
    # Known users are unaffected, and bad requests stay INVALID_ARGUMENT.
    assert recommend(running.stub, "alice", 3).user_kind == pb.USER_KIND_WARM
    with pytest.raises(grpc.RpcError) as info:
        recommend(running.stub, "nobody", 3, domain="music")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_popularity_fallback_in_a_batch(start_server, model, domains):
    running = start_server(ModelHolder(model), popularity_fallback=True)
    batch = running.stub.BatchRecommend(pb.BatchRecommendRequest(requests=[
        pb.RecommendRequest(user_id="nobody", domain="books", k=3),
        pb.RecommendRequest(user_id="alice", domain="books", k=3),
    ]), timeout=TIMEOUT)
    first = batch.results[0].response
    assert first.user_kind == pb.USER_KIND_POPULARITY
    assert [i.item_id for i in first.items] == popular_ids(domains["books"], 3)


def test_client_similar_and_filters(served, domains, tools):
    books = domains["books"]
    with RecommenderClient(served.address) as client:
        sim = client.similar_items("books", "b04", 3, deny=["b00"])
        rec = client.recommend("alice", "books", 3, allow=["b03", "b07"])
        both = client.recommend("alice", "books", 3, False, allow=["b03", "b07"], deny=["b07"])
    assert both.item_ids == ["b03"]  # allow minus deny
    query = books.item_emb[list(books.item_ids).index("b04")]
    assert sim.item_ids == tools.brute(books, query, 3, {"b04", "b00"})[0]
    assert not sim.popularity_fallback and sim.model_version == "v1-faiss"
    assert set(rec.item_ids) <= {"b03", "b07"}

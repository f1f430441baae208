"""Recommend over the wire: rankings equal a numpy brute force, seen-item
exclusion, k beyond the catalogue; the same answers from faiss and exact search."""

from __future__ import annotations

import numpy as np
import pytest

from recxfer.index import ExactIndex, FaissIndex
from recxfer.serve import ServingModel, UnknownDomainError, UnknownUserError
from recxfer.v1 import recommender_pb2

TIMEOUT = 5.0


def call(stub, user_id: str, domain: str, k: int, exclude_seen: bool | None = None):
    kwargs = {} if exclude_seen is None else {"exclude_seen": exclude_seen}
    request = recommender_pb2.RecommendRequest(user_id=user_id, domain=domain, k=k, **kwargs)
    return stub.Recommend(request, timeout=TIMEOUT)


def ids_scores(response) -> tuple[list[str], np.ndarray]:
    return (
        [item.item_id for item in response.items],
        np.array([item.score for item in response.items], dtype=np.float32),
    )


@pytest.mark.parametrize(
    "user_id, domain, k",
    [
        ("alice", "books", 5),
        ("bob", "books", 4),
        ("carol", "books", 7),
        ("alice", "video", 3),
        ("dave", "video", 1),
    ],
)
def test_top_k_equals_brute_force(served, domains, expected, user_id, domain, k):
    response = call(served.stub, user_id, domain, k)
    ids, scores = ids_scores(response)
    want_ids, want_scores = expected(domains[domain], user_id, k)
    assert ids == want_ids
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(scores) < 0), "scores must be strictly descending here (no ties)"
    assert response.model_version == "v1-faiss"


def test_model_version_is_the_artifact_version(served, artifact):
    assert call(served.stub, "alice", "books", 1).model_version == artifact.version


@pytest.mark.parametrize(
    "user_id, domain, kind",
    [
        ("alice", "books", recommender_pb2.USER_KIND_WARM),
        ("erin", "books", recommender_pb2.USER_KIND_WARM),
        ("carol", "books", recommender_pb2.USER_KIND_TRANSFER),
        ("carol", "video", recommender_pb2.USER_KIND_WARM),  # warm in the source domain
    ],
)
def test_user_kind(served, user_id, domain, kind):
    assert call(served.stub, user_id, domain, 3).user_kind == kind


def test_exclude_seen_by_default_still_returns_k(served, domains, expected):
    books = domains["books"]
    alice_seen = set(books.item_ids[books.seen.row(0)])
    assert len(alice_seen) == 3
    k = 10
    ids, _ = ids_scores(call(served.stub, "alice", "books", k))  # field unset
    assert len(ids) == k
    assert not alice_seen & set(ids)
    assert ids == expected(books, "alice", k, exclude_seen=True)[0]
    # Explicit True is the same as unset.
    assert ids == ids_scores(call(served.stub, "alice", "books", k, exclude_seen=True))[0]


def test_exclude_seen_false_includes_seen_items(served, domains, expected):
    books = domains["books"]
    k = 6  # alice has seen her 1st, 3rd and 6th best items
    ids, scores = ids_scores(call(served.stub, "alice", "books", k, exclude_seen=False))
    want_ids, want_scores = expected(books, "alice", k, exclude_seen=False)
    assert ids == want_ids
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    assert set(books.item_ids[books.seen.row(0)]) <= set(ids)


@pytest.mark.parametrize("exclude_seen, n_expected", [(None, 20 - 3), (True, 20 - 3), (False, 20)])
def test_k_larger_than_catalogue_returns_all_admissible(
    served, domains, expected, exclude_seen, n_expected
):
    ids, scores = ids_scores(call(served.stub, "alice", "books", 50, exclude_seen=exclude_seen))
    assert len(ids) == n_expected
    assert len(set(ids)) == n_expected
    assert ids == expected(domains["books"], "alice", 50, exclude_seen=exclude_seen is not False)[0]
    assert np.all(np.isfinite(scores))
    assert np.all(np.diff(scores) < 0)


def test_fewer_admissible_items_than_k(served, domains, expected):
    # erin has seen 17 of the 20 books: k=5 can only give 3, and never padding.
    ids, scores = ids_scores(call(served.stub, "erin", "books", 5))
    assert ids == expected(domains["books"], "erin", 5)[0]
    assert len(ids) == 3
    assert np.all(np.isfinite(scores))
    assert len(call(served.stub, "erin", "books", 5, exclude_seen=False).items) == 5


def test_transfer_user_has_nothing_excluded(served, domains, expected):
    with_default = ids_scores(call(served.stub, "carol", "books", 20))[0]
    assert with_default == expected(domains["books"], "carol", 20, exclude_seen=False)[0]
    assert len(with_default) == 20


# --- the exact torch index gives the same answers -----------------------------


def test_index_backend_follows_the_manifest(artifact, exact_artifact):
    assert all(
        isinstance(d.index, FaissIndex)
        for d in ServingModel.from_artifact(artifact.path).domains.values()
    )
    assert all(
        isinstance(d.index, ExactIndex)
        for d in ServingModel.from_artifact(exact_artifact.path).domains.values()
    )


@pytest.mark.parametrize(
    "user_id, domain, k, exclude_seen",
    [
        ("alice", "books", 5, None),
        ("alice", "books", 5, False),
        ("bob", "books", 50, None),
        ("erin", "books", 5, None),
        ("carol", "books", 8, None),
        ("carol", "video", 4, True),
        ("dave", "video", 12, False),
    ],
)
def test_exact_index_server_matches_faiss_server_and_brute_force(
    served, served_exact, domains, expected, user_id, domain, k, exclude_seen
):
    faiss_resp = call(served.stub, user_id, domain, k, exclude_seen)
    exact_resp = call(served_exact.stub, user_id, domain, k, exclude_seen)
    faiss_ids, faiss_scores = ids_scores(faiss_resp)
    exact_ids, exact_scores = ids_scores(exact_resp)
    want_ids, want_scores = expected(domains[domain], user_id, k, exclude_seen is not False)
    assert exact_ids == faiss_ids == want_ids
    np.testing.assert_allclose(exact_scores, want_scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(exact_scores, faiss_scores, rtol=1e-5, atol=1e-5)
    assert exact_resp.user_kind == faiss_resp.user_kind
    assert exact_resp.model_version == "v1-exact"


# --- ServingModel in-process ---------------------------------------------------


def test_serving_model_errors(model):
    with pytest.raises(UnknownUserError, match="nobody"):
        model.recommend("nobody", "books", 3)
    with pytest.raises(UnknownDomainError, match="music"):
        model.recommend("alice", "music", 3)
    # dave is known in the source domain only.
    with pytest.raises(UnknownUserError):
        model.recommend("dave", "books", 3)


def test_serving_model_recommend(model, domains, expected):
    rec = model.recommend("carol", "books", 4)
    assert list(rec.item_ids) == expected(domains["books"], "carol", 4)[0]
    assert rec.user_origin == "transfer"
    assert rec.scores.shape == (4,)

"""BatchRecommend over the wire: equal to unary Recommend, one index search per
domain, per-entry NOT_FOUND, whole-batch INVALID_ARGUMENT naming the entry."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from recxfer.serve import ModelHolder
from recxfer.serve.client import RecommendArgs, Recommended, RecommenderClient, RequestFailed
from recxfer.v1 import recommender_pb2 as pb

TIMEOUT = 5.0


def req(user_id="alice", domain="books", k=5, **kwargs) -> pb.RecommendRequest:
    return pb.RecommendRequest(user_id=user_id, domain=domain, k=k, **kwargs)


MIXED = [
    req("alice", "books", 5),
    req("carol", "books", 3),
    req("alice", "video", 4),
    req("bob", "books", 7, exclude_seen=False),
    req("erin", "books", 10),  # only 3 admissible
    req("bob", "books", 2, filter=pb.Filter(deny=pb.ItemIdList(item_ids=["b00", "b01"]))),
    req("alice", "books", 4, filter=pb.Filter(allow=pb.ItemIdList(item_ids=["b03", "b07", "b11"]))),
    req("dave", "video", 1),
]


@pytest.mark.parametrize("running", ["served", "served_exact"])
def test_batch_equals_unary_recommend(request, running):
    stub = request.getfixturevalue(running).stub
    batch = stub.BatchRecommend(pb.BatchRecommendRequest(requests=MIXED), timeout=TIMEOUT)
    assert len(batch.results) == len(MIXED)
    assert batch.model_version
    for entry, result in zip(MIXED, batch.results):
        assert result.WhichOneof("result") == "response"
        single = stub.Recommend(entry, timeout=TIMEOUT)
        got = result.response
        # Ids exactly; scores to float32 rounding (a batched matmul sums differently).
        assert [i.item_id for i in got.items] == [i.item_id for i in single.items]
        np.testing.assert_allclose(
            [i.score for i in got.items], [i.score for i in single.items], rtol=1e-5, atol=1e-6
        )
        assert (got.user_kind, got.model_version) == (single.user_kind, single.model_version)
        assert got.model_version == batch.model_version


def test_batch_is_one_index_search_per_domain(start_server, model, tools):
    counted = tools.with_index(model, "books", tools.SlowIndex)
    counted = tools.with_index(counted, "video", tools.SlowIndex)
    running = start_server(ModelHolder(counted))
    running.stub.BatchRecommend(pb.BatchRecommendRequest(requests=MIXED), timeout=TIMEOUT)
    # 6 books requests, one of them allow-listed (scored exactly, not by the index).
    assert counted.domains["books"].index.calls == [5]
    assert counted.domains["video"].index.calls == [2]


def test_unknown_user_fails_only_its_entry(served, domains, expected):
    batch = served.stub.BatchRecommend(
        pb.BatchRecommendRequest(requests=[req("alice"), req("nobody"), req("carol", k=2)]),
        timeout=TIMEOUT,
    )
    kinds = [r.WhichOneof("result") for r in batch.results]
    assert kinds == ["response", "error", "response"]
    error = batch.results[1].error
    assert error.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert error.message.startswith("requests[1].user_id:") and "nobody" in error.message
    assert [i.item_id for i in batch.results[2].response.items] == expected(
        domains["books"], "carol", 2
    )[0]


@pytest.mark.parametrize(
    "requests, field",
    [
        ([], "requests:"),
        ([req(), req(), req(), req()], "requests:"),  # max_batch is 3
        ([req(), req(k=0)], "requests[1].k:"),
        ([req(), req(), req(k=6)], "requests[2].k:"),  # max_k is 5
        ([req(user_id="")], "requests[0].user_id:"),
        ([req(), req(domain="")], "requests[1].domain:"),
        ([req(), req(domain="music")], "requests[1].domain:"),
        ([req(filter=pb.Filter(allow=pb.ItemIdList()))], "requests[0].filter.allow.item_ids:"),
    ],
)
def test_malformed_entry_fails_the_whole_batch(start_server, model, requests, field):
    running = start_server(ModelHolder(model), max_k=5, max_batch=3)
    with pytest.raises(grpc.RpcError) as info:
        running.stub.BatchRecommend(pb.BatchRecommendRequest(requests=requests), timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(field), info.value.details()


def test_batch_at_max_size_is_accepted(start_server, model):
    running = start_server(ModelHolder(model), max_batch=3)
    batch = running.stub.BatchRecommend(
        pb.BatchRecommendRequest(requests=[req(), req("bob"), req("carol")]), timeout=TIMEOUT
    )
    assert len(batch.results) == 3


def test_batch_unavailable_without_model(start_server):
    running = start_server(ModelHolder())
    with pytest.raises(grpc.RpcError) as info:
        running.stub.BatchRecommend(pb.BatchRecommendRequest(requests=[req()]), timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_batch_recommend(served, domains, expected):
    with RecommenderClient(served.address) as client:
        out = client.batch_recommend([
            RecommendArgs("alice", "books", 3),
            RecommendArgs("nobody", "books", 3),
            RecommendArgs("bob", "books", 2, deny=["b05"]),
        ])
        single = client.recommend("bob", "books", 2, deny=["b05"])
    assert isinstance(out[0], Recommended) and out[0].item_ids == expected(domains["books"], "alice", 3)[0]
    assert isinstance(out[1], RequestFailed) and out[1].code == grpc.StatusCode.NOT_FOUND
    assert out[2].item_ids == single.item_ids
    np.testing.assert_allclose(out[0].scores, expected(domains["books"], "alice", 3)[1], atol=1e-5)

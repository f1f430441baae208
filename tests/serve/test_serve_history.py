"""RecommendFromHistory: validation, and FAILED_PRECONDITION for an artifact
without an inductive user encoder (these hand-made artifacts have none; the
shared method's artifacts do: see tests/test_pipeline.py)."""

from __future__ import annotations

import grpc
import pytest

from recxfer.serve import ModelHolder
from recxfer.serve.client import RecommenderClient
from recxfer.v1 import recommender_pb2 as pb

TIMEOUT = 5.0
VALID = {"source_domain": "video", "source_item_ids": ["v01", "v02"], "target_domain": "books", "k": 3}


def call(stub, **changes):
    fields = {**VALID, **changes}
    with pytest.raises(grpc.RpcError) as info:
        stub.RecommendFromHistory(pb.RecommendFromHistoryRequest(**fields), timeout=TIMEOUT)
    return info.value


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"source_domain": ""}, "source_domain:"),
        ({"source_domain": "music"}, "source_domain:"),
        ({"target_domain": ""}, "target_domain:"),
        ({"target_domain": "Books"}, "target_domain:"),
        ({"source_item_ids": []}, "source_item_ids:"),
        ({"source_item_ids": ["v01", "v02", "v03"]}, "source_item_ids:"),  # max_history is 2
        ({"k": 0}, "k:"),
        ({"k": 6}, "k:"),
        ({"filter": pb.Filter(allow=pb.ItemIdList())}, "filter.allow.item_ids:"),
    ],
)
def test_invalid_argument_names_the_field(start_server, model, changes, field):
    running = start_server(ModelHolder(model), max_k=5, max_history=2)
    error = call(running.stub, **changes)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(field), error.details()


def test_no_known_source_item_is_not_found(served):
    error = call(served.stub, source_item_ids=["x1", "b01"])  # b01 is a book, not a video
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details().startswith("source_item_ids:") and "video" in error.details()


def test_artifact_without_encoder_is_failed_precondition(served):
    error = call(served.stub, source_item_ids=["x1", "v03"])  # unknown ids are ignored
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "RecommendFromHistory" in error.details() and "encoder" in error.details()
    with RecommenderClient(served.address) as client:
        with pytest.raises(grpc.RpcError) as info:
            client.recommend_from_history("video", ["v03"], "books", 3)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_unavailable_without_model(start_server):
    assert call(start_server(ModelHolder()).stub).code() == grpc.StatusCode.UNAVAILABLE

"""The typed client and the ``recxfer query`` command against a real server."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest

from recxfer.cli import main
from recxfer.serve import ModelHolder
from recxfer.serve.client import Recommended, RecommenderClient
from recxfer.v1 import recommender_pb2

TIMEOUT = 5.0


@pytest.mark.parametrize(
    "user_id, domain, k, exclude_seen",
    [("alice", "books", 5, True), ("alice", "books", 5, False), ("carol", "books", 3, True),
     ("bob", "video", 30, True)],
)
def test_client_matches_raw_stub(served, user_id, domain, k, exclude_seen):
    raw = served.stub.Recommend(
        recommender_pb2.RecommendRequest(
            user_id=user_id, domain=domain, k=k, exclude_seen=exclude_seen
        ),
        timeout=TIMEOUT,
    )
    with RecommenderClient(served.address) as client:
        rec = client.recommend(user_id, domain, k, exclude_seen)
    assert isinstance(rec, Recommended)
    assert rec.item_ids == [i.item_id for i in raw.items]
    assert rec.scores == [i.score for i in raw.items]
    assert rec.model_version == raw.model_version == "v1-faiss"
    assert rec.user_kind == {
        recommender_pb2.USER_KIND_WARM: "warm",
        recommender_pb2.USER_KIND_TRANSFER: "transfer",
    }[raw.user_kind]


def test_client_defaults_and_kinds(served, domains, expected):
    with RecommenderClient(served.address) as client:
        warm = client.recommend("alice", "books")
        transfer = client.recommend("carol", "books", k=4)
    assert warm.user_kind == "warm"
    assert warm.item_ids == expected(domains["books"], "alice", 10, exclude_seen=True)[0]
    assert transfer.user_kind == "transfer"
    want_ids, want_scores = expected(domains["books"], "carol", 4)
    assert transfer.item_ids == want_ids
    np.testing.assert_allclose(transfer.scores, want_scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "args, code, field",
    [
        (("nobody", "books", 3), grpc.StatusCode.NOT_FOUND, "user_id"),
        (("alice", "books", 0), grpc.StatusCode.INVALID_ARGUMENT, "k"),
        (("alice", "books", 6), grpc.StatusCode.INVALID_ARGUMENT, "k"),
        (("", "books", 3), grpc.StatusCode.INVALID_ARGUMENT, "user_id"),
        (("alice", "music", 3), grpc.StatusCode.INVALID_ARGUMENT, "domain"),
    ],
)
def test_client_raises_rpc_error_with_code(start_server, model, args, code, field):
    running = start_server(ModelHolder(model), max_k=5)
    with RecommenderClient(running.address) as client:
        with pytest.raises(grpc.RpcError) as info:
            client.recommend(*args)
    assert info.value.code() == code
    assert info.value.details().startswith(f"{field}:")


def test_client_unavailable_without_model(start_server):
    running = start_server(ModelHolder())
    with RecommenderClient(running.address) as client:
        with pytest.raises(grpc.RpcError) as info:
            client.recommend("alice", "books", 3)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


# --- recxfer query ---------------------------------------------------------------


def test_cli_query_prints_json(served, domains, expected, capsys):
    code = main(["query", "--address", served.address, "--user", "alice",
                 "--domain", "books", "--k", "4"])
    out = capsys.readouterr().out
    assert code == 0
    answer = json.loads(out)
    assert answer["model_version"] == "v1-faiss"
    assert answer["user_kind"] == "warm"
    want_ids, want_scores = expected(domains["books"], "alice", 4)
    assert [i["item_id"] for i in answer["items"]] == want_ids
    np.testing.assert_allclose([i["score"] for i in answer["items"]], want_scores, atol=1e-4)


def test_cli_query_include_seen_and_transfer(served, domains, expected, capsys):
    assert main(["query", "--address", served.address, "--user", "alice",
                 "--domain", "books", "--k", "6", "--include-seen"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert [i["item_id"] for i in answer["items"]] == expected(
        domains["books"], "alice", 6, exclude_seen=False
    )[0]
    assert main(["query", "--address", served.address, "--user", "carol",
                 "--domain", "books", "--k", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["user_kind"] == "transfer"


def test_cli_query_unknown_user_exits_2(served, capsys):
    code = main(["query", "--address", served.address, "--user", "nobody",
                 "--domain", "books", "--k", "3"])
    captured = capsys.readouterr()
    assert code == 2
    assert "NOT_FOUND" in captured.err
    assert "nobody" in captured.err
    assert captured.out == ""


def test_cli_query_bad_k_exits_2(served, capsys):
    code = main(["query", "--address", served.address, "--user", "alice",
                 "--domain", "books", "--k", "0"])
    captured = capsys.readouterr()
    assert code == 2
    assert "INVALID_ARGUMENT" in captured.err and "k:" in captured.err

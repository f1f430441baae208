"""The packed answer layout (request ``packed``: parallel ``item_ids``/``scores``
instead of ``items``) and allow + deny lists together, on a real port: through
the typed client, the raw stubs, and an independent client generated from the
.proto alone (grpc_tools.protoc into a temporary folder, run in a process of its
own that never imports recxfer)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from recxfer.serve import ModelHolder
from recxfer.serve.client import RecommendArgs, RecommenderClient
from recxfer.serve.history import HistoryEncoder
from recxfer.v1 import recommender_pb2 as pb

TIMEOUT = 5.0
PROTO_DIR = Path(__file__).resolve().parents[2] / "protos" / "recxfer" / "v1"
ALLOW = ["b01", "b03", "b05", "b07", "b09", "b11"]
DENY = ["b03", "b09", "b19"]


@pytest.fixture
def running(start_server, model):
    """The faiss model with a mean-pooling history encoder, batching on (default)."""
    return start_server(ModelHolder(replace(model, history_encoder=HistoryEncoder("mean", 50))))


def answers(client: RecommenderClient) -> dict:
    """The same calls through a typed client, as plain data."""
    out = {}
    for user in ("alice", "bob", "carol"):
        r = client.recommend(user, "books", 6)
        out[f"rec/{user}"] = (r.item_ids, r.scores, r.model_version, r.user_kind)
    r = client.recommend("alice", "books", 4, False, allow=ALLOW, deny=DENY)
    out["rec/both"] = (r.item_ids, r.scores, r.model_version, r.user_kind)
    s = client.similar_items("books", "b04", 5, deny=["b00"])
    out["sim"] = (s.item_ids, s.scores, s.model_version, s.popularity_fallback)
    h = client.recommend_from_history("video", ["v01", "v02", "v07"], "books", 5)
    out["hist"] = (h.item_ids, h.scores, h.model_version, h.user_kind)
    batch = client.batch_recommend([RecommendArgs("alice", "books", 3),
                                    RecommendArgs("bob", "books", 2, allow=ALLOW, deny=DENY)])
    out["batch"] = [(b.item_ids, b.scores) for b in batch]
    return out


def test_typed_client_packed_equals_legacy(running):
    with RecommenderClient(running.address) as packed, \
            RecommenderClient(running.address, packed=False) as legacy:
        assert answers(packed) == answers(legacy)
        assert len(packed.recommend("alice", "books", 6).item_ids) == 6


def test_packed_fills_only_the_parallel_arrays(running):
    request = pb.RecommendRequest(user_id="bob", domain="books", k=5)
    legacy = running.stub.Recommend(request, timeout=TIMEOUT)
    request.packed = True
    packed = running.stub.Recommend(request, timeout=TIMEOUT)
    assert len(legacy.items) == 5 and not legacy.item_ids and not legacy.scores
    assert not packed.items and list(packed.item_ids) == [i.item_id for i in legacy.items]
    assert list(packed.scores) == [i.score for i in legacy.items]
    assert (packed.model_version, packed.user_kind) == (legacy.model_version, legacy.user_kind)
    similar = running.stub.SimilarItems(
        pb.SimilarItemsRequest(domain="books", item_id="b02", k=3, packed=True), timeout=TIMEOUT)
    assert not similar.items and len(similar.item_ids) == len(similar.scores) == 3
    batch = running.stub.BatchRecommend(pb.BatchRecommendRequest(requests=[
        pb.RecommendRequest(user_id="alice", domain="books", k=3, packed=True),
        pb.RecommendRequest(user_id="alice", domain="books", k=3),
    ]), timeout=TIMEOUT)
    first, second = (r.response for r in batch.results)
    assert not first.items and list(first.item_ids) == [i.item_id for i in second.items]
    assert not second.item_ids


def test_allow_and_deny_together(running, domains, tools):
    books, video = domains["books"], domains["video"]
    allowed, denied = set(ALLOW), set(DENY)
    with RecommenderClient(running.address) as client:
        r = client.recommend("alice", "books", 10, allow=ALLOW, deny=DENY)
        want = tools.brute(books, tools.vec(books, "alice"), 10,
                           denied | tools.seen(books, "alice"), allowed)[0]
        assert r.item_ids == want and not set(r.item_ids) & denied
        s = client.similar_items("books", "b05", 10, allow=ALLOW, deny=DENY)
        query = books.item_emb[list(books.item_ids).index("b05")]
        assert s.item_ids == tools.brute(books, query, 10, denied | {"b05"}, allowed)[0]
        h = client.recommend_from_history("video", ["v01", "v02"], "books", 10, allow=ALLOW, deny=DENY)
        pooled = video.item_emb[[list(video.item_ids).index(i) for i in ("v01", "v02")]].mean(axis=0)
        assert h.item_ids == tools.brute(books, pooled, 10, denied, allowed)[0]
        (b,) = client.batch_recommend([RecommendArgs("alice", "books", 10, allow=ALLOW, deny=DENY)])
        assert b.item_ids == r.item_ids
        # Everything allowed is denied: an empty answer, not an error.
        assert client.recommend("alice", "books", 3, allow=["b03"], deny=["b03"]).item_ids == []


INDEPENDENT_CLIENT = r'''
import json, sys
sys.path.insert(0, sys.argv[1])
import grpc
import recommender_pb2 as pb
import recommender_pb2_grpc as rpc

stub = rpc.RecommenderStub(grpc.insecure_channel(sys.argv[2]))
ALLOW, DENY = json.loads(sys.argv[3])

def items(r):
    if r.item_ids or not r.items:
        assert not r.items
        return list(r.item_ids), list(r.scores)
    assert not r.item_ids
    return [i.item_id for i in r.items], [i.score for i in r.items]

out = {}
for packed in (True, False):
    got = {}
    for user in ("alice", "bob", "carol"):
        r = stub.Recommend(pb.RecommendRequest(user_id=user, domain="books", k=6, packed=packed), timeout=5)
        got["rec/" + user] = (*items(r), r.model_version, pb.UserKind.Name(r.user_kind))
    f = pb.Filter(allow=pb.ItemIdList(item_ids=ALLOW), deny=pb.ItemIdList(item_ids=DENY))
    r = stub.Recommend(pb.RecommendRequest(user_id="alice", domain="books", k=4, exclude_seen=False,
                                           filter=f, packed=packed), timeout=5)
    got["rec/both"] = (*items(r), r.model_version, pb.UserKind.Name(r.user_kind))
    s = stub.SimilarItems(pb.SimilarItemsRequest(domain="books", item_id="b04", k=5,
                          filter=pb.Filter(deny=pb.ItemIdList(item_ids=["b00"])), packed=packed), timeout=5)
    got["sim"] = (*items(s), s.model_version, s.popularity_fallback)
    h = stub.RecommendFromHistory(pb.RecommendFromHistoryRequest(
        source_domain="video", source_item_ids=["v01", "v02", "v07"], target_domain="books", k=5,
        packed=packed), timeout=5)
    got["hist"] = (*items(h), h.model_version, pb.UserKind.Name(h.user_kind))
    b = stub.BatchRecommend(pb.BatchRecommendRequest(requests=[
        pb.RecommendRequest(user_id="alice", domain="books", k=3, packed=packed),
        pb.RecommendRequest(user_id="bob", domain="books", k=2, filter=f, packed=packed)]), timeout=5)
    got["batch"] = [items(e.response) for e in b.results]
    out["packed" if packed else "legacy"] = got
assert not any(name == "recxfer" or name.startswith("recxfer.") for name in sys.modules)
print(json.dumps(out))
'''


def test_independent_client_from_the_proto_alone(running, tmp_path):
    grpc_tools = pytest.importorskip("grpc_tools")
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    status = protoc.main([
        "grpc_tools.protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={tmp_path}",
        f"--grpc_python_out={tmp_path}", str(PROTO_DIR / "recommender.proto"),
    ])
    assert status == 0 and (tmp_path / "recommender_pb2_grpc.py").exists()
    done = subprocess.run(
        [sys.executable, "-c", INDEPENDENT_CLIENT, str(tmp_path), running.address,
         json.dumps([ALLOW, DENY])],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout)
    assert got["packed"] == got["legacy"]
    with RecommenderClient(running.address) as client:
        want = json.loads(json.dumps(answers(client)))
    kinds = {"warm": "USER_KIND_WARM", "transfer": "USER_KIND_TRANSFER"}
    for key, value in want.items():
        if key.startswith(("rec/", "hist")):
            value[3] = kinds[value[3]]
    for key in want:
        if key == "batch":
            assert got["packed"][key] == want[key]
        else:
            ids, scores, *rest = got["packed"][key]
            assert ids == want[key][0] and rest == want[key][2:], key
            np.testing.assert_array_equal(scores, want[key][1])

"""Dynamic batching of the unary calls (recxfer/serve/batcher.py) on a real port:
many concurrent callers get exactly the answers of the unbatched server, in
fewer index searches; a batch never exceeds ``max_batch``; a call whose deadline
passes in the queue is answered DEADLINE_EXCEEDED without being searched; a
batch answers from one model snapshot across hot swaps; batched calls still
count against ``max_concurrent_rpcs``."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import grpc
import numpy as np
import pytest

from recxfer.config import from_dict
from recxfer.serve import ModelHolder, ServeConfig, ServingModel
from recxfer.serve.config import BatchingConfig
from recxfer.serve.history import HistoryEncoder
from recxfer.serve.interceptors import AdmissionGate
from recxfer.v1 import recommender_pb2 as pb

TIMEOUT = 10.0
OFF = BatchingConfig(enabled=False)


def deny(*ids):
    return pb.Filter(deny=pb.ItemIdList(item_ids=list(ids)))


def allow(*ids):
    return pb.Filter(allow=pb.ItemIdList(item_ids=list(ids)))


def both(allowed, denied):
    return pb.Filter(allow=pb.ItemIdList(item_ids=allowed), deny=pb.ItemIdList(item_ids=denied))


def rec(user="alice", k=5, domain="books", **kw):
    return ("Recommend", pb.RecommendRequest(user_id=user, domain=domain, k=k, **kw))


def sim(item="b04", k=5, domain="books", **kw):
    return ("SimilarItems", pb.SimilarItemsRequest(domain=domain, item_id=item, k=k, **kw))


def hist(items=("v01", "v02"), k=5, **kw):
    return ("RecommendFromHistory", pb.RecommendFromHistoryRequest(
        source_domain="video", source_item_ids=list(items), target_domain="books", k=k, **kw))


# Every kind of call, k across buckets, exclusion, each filter kind, errors.
CALLS = [
    *(rec(user, k) for user in ("alice", "bob", "erin", "carol") for k in (1, 3, 4, 7, 10, 20)),
    rec("bob", 7, exclude_seen=False),
    rec("alice", 6, filter=deny("b00", "b01", "b02")),
    rec("bob", 4, filter=allow("b03", "b07", "b11", "b12", "b15")),
    rec("alice", 5, exclude_seen=False, filter=both(["b03", "b07", "b11", "b12"], ["b07"])),
    rec("alice", 3, "video"), rec("dave", 8, "video"),
    rec("nobody", 3),  # NOT_FOUND
    *(sim(item, k) for item in ("b00", "b04", "b13") for k in (1, 5, 19)),
    sim("b04", 4, filter=deny("b00", "b01")),
    sim("b04", 3, filter=both(["b01", "b02", "b05", "b09"], ["b02"])),
    sim("v03", 4, "video"), sim("nope", 3),  # NOT_FOUND
    hist(("v01",), 3), hist(("v01", "v02", "v07"), 6), hist(("v05", "v11"), 10),
    hist(("v01", "v02"), 4, filter=deny("b00", "b05")),
    hist(("v03",), 4, filter=both(["b01", "b02", "b06", "b08", "b10"], ["b06"])),
    hist(("x1", "zz"), 3),  # NOT_FOUND
]


def outcome(stub, call):
    method, request = call
    try:
        response = getattr(stub, method)(request, timeout=TIMEOUT)
    except grpc.RpcError as exc:
        return ("error", exc.code())
    ids = [i.item_id for i in response.items]
    scores = [i.score for i in response.items]
    extra = response.user_kind if method != "SimilarItems" else response.popularity_fallback
    return ("ok", ids, scores, response.model_version, extra)


def same(got, want) -> bool:
    if got[0] != want[0] or got[0] == "error":
        return got == want
    # Ids exactly; scores to float32 rounding (faiss sums a batch differently).
    return (got[1] == want[1] and got[3:] == want[3:]
            and np.allclose(got[2], want[2], rtol=1e-5, atol=1e-6))


@pytest.fixture
def history_model(model) -> ServingModel:
    """The faiss model with a mean-pooling history encoder (RecommendFromHistory)."""
    return replace(model, history_encoder=HistoryEncoder("mean", 50))


def counted(model, tools, delay=0.0):
    spied = tools.with_index(model, "books", lambda index: tools.SlowIndex(index, delay))
    return tools.with_index(spied, "video", lambda index: tools.SlowIndex(index, delay))


def test_concurrent_batched_answers_equal_sequential_unbatched(start_server, history_model, tools):
    plain_model = counted(history_model, tools)
    plain = start_server(ModelHolder(plain_model), batching=OFF)
    want = [outcome(plain.stub, call) for call in CALLS]
    assert sum(w[0] == "error" for w in want) == 3
    unbatched = len(plain_model.domains["books"].index.calls)  # one search per call

    spied = counted(history_model, tools, delay=0.005)
    batched = start_server(ModelHolder(spied), max_concurrent_rpcs=64,
                           batching=BatchingConfig(max_batch=16, max_queue_delay_ms=20.0))
    mismatches: list[tuple] = []

    def caller(seed: int) -> None:
        order = list(range(len(CALLS)))
        random.Random(seed).shuffle(order)
        for i in order:
            got = outcome(batched.stub, CALLS[i])
            if not same(got, want[i]):
                mismatches.append((CALLS[i], got, want[i]))

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(caller, range(32)))
    assert not mismatches, mismatches[:3]
    books = spied.domains["books"].index.calls
    # Batches formed (many queries per search), and never beyond max_batch.
    assert max(books) > 1 and max(books) <= 16
    assert sum(books) == 32 * unbatched  # every query searched once, none twice
    # ~15 keys (kind x k bucket) share 32 callers: about 2 queries per search.
    assert len(books) < 0.8 * sum(books), "batching saved no search"
    sizes = batched.server.metrics.batch_size
    assert sizes.labels("recommend")._sum.get() > 0 and sizes.labels("similar")._sum.get() > 0
    assert sizes.labels("history")._sum.get() > 0


def test_deadline_passing_in_the_queue_is_answered_without_a_search(start_server, model, tools):
    spied = counted(model, tools)
    running = start_server(ModelHolder(spied),
                           batching=BatchingConfig(max_batch=64, max_queue_delay_ms=5000, early_flush=False))
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        running.stub.Recommend(pb.RecommendRequest(user_id="alice", domain="books", k=3),
                               timeout=0.3)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - t0 < 2.0
    metrics = running.server.metrics
    dropped = metrics.batch_dropped_calls.labels("recommend", "deadline")
    answered = metrics.requests.labels("recxfer.v1.Recommender/Recommend", "DEADLINE_EXCEEDED")
    end = time.monotonic() + 2.0
    while (dropped._value.get() < 1 or answered._value.get() < 1) and time.monotonic() < end:
        time.sleep(0.01)
    assert dropped._value.get() == 1 and answered._value.get() == 1
    assert running.server.batcher.queued == 0
    assert spied.domains["books"].index.calls == []  # never searched
    assert metrics.batch_size.labels("recommend")._sum.get() == 0


def test_deadline_passing_while_the_batch_waits_for_a_worker_is_not_searched(
        start_server, model, tools):
    spied = counted(model, tools, delay=1.0)
    running = start_server(ModelHolder(spied), max_workers=1,
                           batching=BatchingConfig(max_queue_delay_ms=0))
    busy = running.stub.BatchRecommend.future(pb.BatchRecommendRequest(requests=[
        pb.RecommendRequest(user_id="alice", domain="books", k=3)]), timeout=TIMEOUT)
    time.sleep(0.2)  # the only worker slot is searching for ~1 s
    with pytest.raises(grpc.RpcError) as info:  # taken into a batch, waiting for the slot
        running.stub.Recommend(pb.RecommendRequest(user_id="bob", domain="books", k=3),
                               timeout=0.3)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert len(busy.result().results) == 1
    dropped = running.server.metrics.batch_dropped_calls.labels("recommend", "deadline")
    end = time.monotonic() + 2.0
    while dropped._value.get() < 1 and time.monotonic() < end:
        time.sleep(0.01)
    time.sleep(0.1)  # the executor had the slot by now: it skips the dropped call
    assert dropped._value.get() == 1
    assert spied.domains["books"].index.calls == [1]  # BatchRecommend's search only
    assert running.stub.Recommend(pb.RecommendRequest(user_id="bob", domain="books", k=3),
                                  timeout=TIMEOUT).items  # and the server still answers


def test_a_full_batch_is_searched_at_once_and_never_exceeds_max_batch(start_server, model, tools):
    spied = counted(model, tools, delay=0.05)
    running = start_server(ModelHolder(spied),
                           batching=BatchingConfig(max_batch=4, max_queue_delay_ms=5000, early_flush=False))
    users = ["alice", "bob", "erin", "carol"] * 3
    t0 = time.monotonic()
    futures = [running.stub.Recommend.future(pb.RecommendRequest(user_id=u, domain="books", k=3),
                                             timeout=TIMEOUT) for u in users]
    answers = [f.result() for f in futures]
    assert time.monotonic() - t0 < 3.0  # full batches do not wait out the 5 s delay
    assert all(len(a.items) == 3 for a in answers)
    assert spied.domains["books"].index.calls == [4, 4, 4]


def test_the_queue_delay_flushes_a_partial_batch(start_server, model, tools):
    spied = counted(model, tools)
    running = start_server(ModelHolder(spied),
                           batching=BatchingConfig(max_batch=64, max_queue_delay_ms=300, early_flush=False))
    t0 = time.monotonic()
    futures = [running.stub.Recommend.future(pb.RecommendRequest(user_id=u, domain="books", k=2),
                                             timeout=TIMEOUT) for u in ("alice", "bob", "erin")]
    assert all(len(f.result().items) == 2 for f in futures)
    assert time.monotonic() - t0 >= 0.29
    assert spied.domains["books"].index.calls == [3]


def test_a_lone_caller_does_not_wait_out_the_delay(start_server, model, tools):
    spied = counted(model, tools)
    running = start_server(ModelHolder(spied), batching=BatchingConfig(max_queue_delay_ms=5000))
    t0 = time.monotonic()
    for user in ("alice", "bob", "erin"):
        running.stub.Recommend(pb.RecommendRequest(user_id=user, domain="books", k=2),
                               timeout=TIMEOUT)
    assert time.monotonic() - t0 < 2.0  # early_flush: the only admitted call goes at once
    assert spied.domains["books"].index.calls == [1, 1, 1]


def test_different_domains_and_kinds_are_separate_searches(start_server, model, tools):
    spied = counted(model, tools)
    running = start_server(ModelHolder(spied),
                           batching=BatchingConfig(max_batch=64, max_queue_delay_ms=200, early_flush=False))
    calls = [rec("alice", 3), rec("bob", 4), rec("alice", 3, "video"), sim("b01", 3),
             rec("erin", 20)]
    futures = [getattr(running.stub, m).future(r, timeout=TIMEOUT) for m, r in calls]
    for f in futures:
        f.result()
    # books: one recommend search for k=3,4 (bucket 3-4), one for k=20, one similar.
    assert sorted(spied.domains["books"].index.calls) == [1, 1, 2]
    assert spied.domains["video"].index.calls == [1]


def test_reload_mid_traffic_answers_from_one_snapshot(start_server, model, artifact_v2):
    v1, v2 = model, ServingModel.from_artifact(artifact_v2.path)
    expected = {
        m.version: {
            ("r", u, k): list(m.recommend(u, "books", k).item_ids)
            for u in ("alice", "bob", "erin", "carol") for k in (2, 5)
        } | {("s", i, k): list(m.similar_items("books", i, k).item_ids)
             for i in ("b01", "b07") for k in (2, 5)}
        for m in (v1, v2)
    }
    assert expected["v1-faiss"] != expected["v2-exact"]
    holder = ModelHolder(v1)
    running = start_server(holder, batching=BatchingConfig(max_batch=8, max_queue_delay_ms=2.0))
    stop = threading.Event()
    problems: list[str] = []
    seen_versions: set[str] = set()

    def caller(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            k = rng.choice((2, 5))
            try:
                if rng.random() < 0.7:
                    u = rng.choice(("alice", "bob", "erin", "carol"))
                    r = running.stub.Recommend(pb.RecommendRequest(user_id=u, domain="books", k=k),
                                               timeout=TIMEOUT)
                    key = ("r", u, k)
                else:
                    i = rng.choice(("b01", "b07"))
                    r = running.stub.SimilarItems(
                        pb.SimilarItemsRequest(domain="books", item_id=i, k=k), timeout=TIMEOUT)
                    key = ("s", i, k)
            except grpc.RpcError as exc:
                problems.append(f"{exc.code()}: {exc.details()}")
                continue
            seen_versions.add(r.model_version)
            if [i.item_id for i in r.items] != expected[r.model_version][key]:
                problems.append(f"{key} on {r.model_version}: {[i.item_id for i in r.items]}")

    threads = [threading.Thread(target=caller, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    try:
        for n in range(20):
            time.sleep(0.05)
            holder.swap(v2 if n % 2 == 0 else v1)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not problems, problems[:5]
    assert seen_versions == {"v1-faiss", "v2-exact"}


def test_batched_calls_count_against_max_concurrent_rpcs(start_server, model):
    running = start_server(ModelHolder(model), max_concurrent_rpcs=2,
                           batching=BatchingConfig(max_batch=64, max_queue_delay_ms=600, early_flush=False))
    request = pb.RecommendRequest(user_id="alice", domain="books", k=3)
    waiting = [running.stub.Recommend.future(request, timeout=TIMEOUT) for _ in range(2)]
    time.sleep(0.2)  # both wait in the batcher now
    with pytest.raises(grpc.RpcError) as info:
        running.stub.Recommend(request, timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert all(len(f.result().items) == 3 for f in waiting)
    assert running.stub.Recommend(request, timeout=TIMEOUT).items  # room again


def test_gate_counts_batched_calls_but_not_batch_slots():
    gate = AdmissionGate(workers=1, capacity=2)
    assert gate.admit_unslotted() and gate.admit_unslotted()
    assert not gate.admit_unslotted()  # full: two calls in the batcher
    gate.acquire_slot()  # a batch's search: a worker slot, not a call
    assert gate.working == 1 and gate.admitted == 2
    gate.leave_unslotted()
    assert gate.admit_unslotted()
    handed = threading.Event()
    threading.Thread(target=lambda: (gate.acquire_slot(), handed.set())).start()
    time.sleep(0.05)
    assert not handed.is_set() and gate.waiting == 1 and gate.admitted == 2
    gate.release_slot()  # the slot passes to the waiting batch
    assert handed.wait(2.0)
    gate.release_slot()
    assert gate.working == 0 and gate.waiting == 0


def test_batching_config_in_the_serve_config():
    assert ServeConfig().batching == BatchingConfig(enabled=True, max_batch=64, max_queue_delay_ms=1.0)
    config = from_dict(ServeConfig, {"max_k": 50, "batching": {"max_queue_delay_ms": 2.5}})
    assert config.batching == BatchingConfig(max_queue_delay_ms=2.5) and config.max_k == 50
    assert not from_dict(ServeConfig, {"batching": {"enabled": False}}).batching.enabled
    with pytest.raises(ValueError, match="max_batch"):
        BatchingConfig(max_batch=0)
    with pytest.raises(ValueError, match="max_queue_delay_ms"):
        BatchingConfig(max_queue_delay_ms=-1)

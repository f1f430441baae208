"""Hot reload: ArtifactWatcher swaps in each published artifact, refuses a corrupt
one while the old model keeps serving, and a reload under load fails no request."""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from recxfer.artifacts import CURRENT, publish
from recxfer.serve import ArtifactWatcher, ModelHolder, ServingModel
from recxfer.v1 import recommender_pb2 as pb

TIMEOUT = 5.0


def switch_current(root: Path, version: str) -> None:
    """Point ROOT/current at ``version`` WITHOUT the publisher's verification (a
    buggy publisher, or a disk that went bad after publishing)."""
    tmp = root / f".{CURRENT}-{uuid.uuid4().hex[:8]}"
    os.symlink(version, tmp)
    os.replace(tmp, root / CURRENT)


def corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def recommend(stub, user_id="alice", k=4):
    return stub.Recommend(pb.RecommendRequest(user_id=user_id, domain="books", k=k), timeout=TIMEOUT)


@pytest.fixture
def root(tmp_path, make_artifact, domains, domains_v2) -> Path:
    """An artifacts root with v1 (published) and v2 (not yet)."""
    make_artifact(tmp_path, domains, version="v1")
    make_artifact(tmp_path, domains_v2, version="v2", use_faiss=False)
    publish(tmp_path, "v1")
    return tmp_path


def test_check_now_loads_new_versions_only(root, domains, domains_v2, expected, start_server):
    holder = ModelHolder()
    swapped = []
    watcher = ArtifactWatcher(root, holder, on_swap=swapped.append)
    running = start_server(holder)
    assert watcher.check_now() is True
    assert holder.get().version == "v1" and watcher.check_now() is False
    assert [i.item_id for i in recommend(running.stub).items] == expected(domains["books"], "alice", 4)[0]
    publish(root, "v2")
    assert watcher.check_now() is True and watcher.check_now() is False
    response = recommend(running.stub)
    assert response.model_version == "v2"
    assert [i.item_id for i in response.items] == expected(domains_v2["books"], "alice", 4)[0]
    assert [m.version for m in swapped] == ["v1", "v2"]
    publish(root, "v1")  # rollback is just another publish
    assert watcher.check_now() is True and holder.get().version == "v1"


def test_nothing_published_or_dangling_link(tmp_path):
    holder = ModelHolder()
    watcher = ArtifactWatcher(tmp_path, holder)
    assert watcher.check_now() is False
    switch_current(tmp_path, "missing")
    assert watcher.check_now() is False and holder.get() is None


def test_model_loaded_before_the_watcher_is_not_reloaded(root):
    loads = []

    def loader(path):
        loads.append(path.name)
        return ServingModel.from_artifact(path)

    holder = ModelHolder(ServingModel.from_artifact(root / "v1"))
    watcher = ArtifactWatcher(root, holder, loader=loader)
    assert watcher.check_now() is False and loads == []
    publish(root, "v2")
    assert watcher.check_now() is True and loads == ["v2"]


def test_corrupt_artifact_is_refused_and_the_old_one_keeps_serving(
    root, make_artifact, domains, start_server, caplog
):
    holder = ModelHolder()
    refused = []
    watcher = ArtifactWatcher(root, holder, on_refuse=lambda path, exc: refused.append((path.name, exc)))
    running = start_server(holder, metrics_address="127.0.0.1:0")
    assert watcher.check_now()
    make_artifact(root, domains, version="v3")
    corrupt(root / "v3" / "domains" / "books" / "item_emb.npy")
    switch_current(root, "v3")
    with caplog.at_level("ERROR", logger="recxfer.serve.reload"):
        assert watcher.check_now() is False
    assert holder.get().version == "v1"
    assert [name for name, _ in refused] == ["v3"] and "sha256" in str(refused[0][1])
    assert "sha256" in watcher.last_error
    record = next(r for r in caplog.records if getattr(r, "event", None) == "artifact_refused")
    assert record.serving == "v1" and "v3" in record.artifact
    assert recommend(running.stub).model_version == "v1"
    health = running.server.health.Check(health_pb2.HealthCheckRequest(service=""), None)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert watcher.check_now() is False and len(refused) == 1  # not retried every poll
    publish(root, "v2")  # the next good artifact is taken
    assert watcher.check_now() is True and recommend(running.stub).model_version == "v2"
    assert watcher.last_error is None


def test_index_disagreeing_with_tables_is_refused(root, domains):
    """Checksums pass but the artifact is inconsistent (a books index of 5 items
    for 20 items): the load-time self-check refuses it."""
    from recxfer.artifacts import index_file, save_domain, write_artifact
    from recxfer.index import FaissIndex

    holder = ModelHolder()
    watcher = ArtifactWatcher(root, holder)
    assert watcher.check_now()
    with write_artifact(root, config={}, data_fingerprint="x", version="v5") as builder:
        for name, emb in domains.items():
            save_domain(builder.path, emb)
            rows = 5 if name == "books" else len(emb.item_ids)
            FaissIndex.build(emb.item_emb[:rows], "Flat").save(builder.path / index_file(name))
        builder.extra["domains"] = {
            name: {"index": {"factory": "Flat", "file": index_file(name)}} for name in domains
        }
    publish(root, "v5")
    assert watcher.check_now() is False
    assert "index holds 5 items" in watcher.last_error and holder.get().version == "v1"


def test_reload_under_load_fails_no_request(root, start_server):
    """Four client threads call Recommend and BatchRecommend without pause while the
    background watcher swaps v1 -> v2 -> v1 -> v2; every call must succeed."""
    holder = ModelHolder()
    watcher = ArtifactWatcher(root, holder, interval_s=0.02)
    assert watcher.check_now()
    running = start_server(holder, max_workers=4)
    stop = threading.Event()
    errors: list[BaseException] = []
    seen_versions: list[set[str]] = [set() for _ in range(4)]
    calls = [0] * 4

    def hammer(slot: int) -> None:
        batch = pb.BatchRecommendRequest(requests=[
            pb.RecommendRequest(user_id=u, domain="books", k=5) for u in ("alice", "bob", "carol")
        ])
        while not stop.is_set():
            try:
                if slot % 2:
                    response = running.stub.BatchRecommend(batch, timeout=TIMEOUT)
                    assert all(r.WhichOneof("result") == "response" for r in response.results)
                else:
                    response = recommend(running.stub)
                    assert len(response.items) == 4
                seen_versions[slot].add(response.model_version)
                calls[slot] += 1
            except BaseException as exc:  # noqa: BLE001 - every failure counts
                errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    watcher.start()
    try:
        for version in ("v2", "v1", "v2"):
            time.sleep(0.15)
            publish(root, version)
            deadline = time.monotonic() + 10
            while holder.get().version != version and time.monotonic() < deadline:
                time.sleep(0.01)
            assert holder.get().version == version
        time.sleep(0.15)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        watcher.stop()
    assert errors == []
    print("calls per thread:", calls)
    assert min(calls) > 5, calls
    assert set().union(*seen_versions) == {"v1", "v2"}


def test_watcher_start_stop(root):
    watcher = ArtifactWatcher(root, ModelHolder(), interval_s=0.01)
    watcher.start()
    with pytest.raises(RuntimeError, match="already started"):
        watcher.start()
    deadline = time.monotonic() + 5
    while watcher.holder.get() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    watcher.stop()
    assert watcher.holder.get().version == "v1"
    with pytest.raises(ValueError, match="interval_s"):
        ArtifactWatcher(root, ModelHolder(), interval_s=0)

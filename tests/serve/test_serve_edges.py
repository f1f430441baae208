"""Hardened edges, against real servers on real ports: echoed values cut short,
undecodable bytes, health under load, busy addresses, limits that fit together,
BadRequest details, and the state of ROOT/current seen by the reload loop."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
import urllib.request
import uuid

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from prometheus_client.parser import text_string_to_metric_families

from recxfer.artifacts import CURRENT, publish
from recxfer.serve import ArtifactWatcher, ModelHolder, ServeConfig, create_server
from recxfer.serve.config import BatchingConfig
from recxfer.serve.interceptors import RateLimitedLog
from recxfer.serve.limits import batch_result_bytes, echo, field_bytes, response_bytes
from recxfer.serve.metrics import ServingMetrics
from recxfer.serve.server import busy_addresses
from recxfer.v1 import recommender_pb2 as pb

TIMEOUT = 5.0
RECOMMEND = "/recxfer.v1.Recommender/Recommend"
HUGE = "u" * 16_000


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }


def error_of(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=TIMEOUT)
    return info.value


def bad_request_fields(error: grpc.RpcError) -> list[tuple[str, str]]:
    status = rpc_status.from_call(error)
    assert status is not None, "no status details"
    out = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out += [(v.field, v.description) for v in bad.field_violations]
    return out


# --- 1. echoed values are cut short ---------------------------------------------------


def test_echo_cuts_long_values():
    assert echo("alice") == "'alice'"
    shown = echo("x" * 16_000)
    assert shown == repr("x" * 64) + "…(16000 chars)"


def test_huge_ids_get_their_own_code_not_a_metadata_error(served):
    stub = served.stub
    error = error_of(stub.Recommend, pb.RecommendRequest(user_id=HUGE, domain="books", k=3))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details().startswith("user_id: user 'uuuu") and "(16000 chars)" in error.details()
    assert len(error.details()) < 200
    error = error_of(stub.Recommend, pb.RecommendRequest(user_id="alice", domain=HUGE, k=3))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("domain: unknown domain") and len(error.details()) < 250
    error = error_of(stub.SimilarItems, pb.SimilarItemsRequest(domain="books", item_id=HUGE, k=3))
    assert error.code() == grpc.StatusCode.NOT_FOUND and len(error.details()) < 200
    batch = stub.BatchRecommend(pb.BatchRecommendRequest(requests=[
        pb.RecommendRequest(user_id=HUGE, domain="books", k=3),
        pb.RecommendRequest(user_id="alice", domain="books", k=3),
    ]), timeout=TIMEOUT)
    assert batch.results[0].error.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert len(batch.results[0].error.message) < 200 and len(batch.results[1].response.items) == 3


# --- 2. undecodable bytes ---------------------------------------------------------------


def raw_call(channel: grpc.Channel, method: str = RECOMMEND):
    return channel.unary_unary(method, request_serializer=None, response_deserializer=None)


def test_undecodable_bytes_are_invalid_argument_counted_and_logged_rate_limited(
    start_server, model, caplog
):
    running = start_server(ModelHolder(model), metrics_address="127.0.0.1:0")
    call = raw_call(running.channel)
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            error = error_of(call, b"\xff" * 16)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert error.details().startswith("request: ")
            assert "recxfer.v1.RecommendRequest" in error.details()
    assert bad_request_fields(error)[0][0] == "request"
    lines = [r for r in caplog.records if "undecodable" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]  # one line per 10 s, with a count
    assert not [r for r in caplog.records if "deserializing" in r.getMessage()], "grpc's traceback"
    health = raw_call(running.channel, "/grpc.health.v1.Health/Check")
    assert error_of(health, b"\xff" * 16).code() == grpc.StatusCode.INVALID_ARGUMENT
    m = scrape(running.server.metrics_port)
    assert m[("recxfer_undecodable_requests_total",
              (("method", "recxfer.v1.Recommender/Recommend"),))] == 5
    assert m[("recxfer_undecodable_requests_total", (("method", "grpc.health.v1.Health/Check"),))] == 1
    assert m[("recxfer_requests_total",
              (("code", "INVALID_ARGUMENT"), ("method", "recxfer.v1.Recommender/Recommend")))] == 5
    # The server still answers well-formed calls.
    assert running.stub.Recommend(pb.RecommendRequest(user_id="alice", domain="books", k=2),
                                  timeout=TIMEOUT).items


def test_undecodable_bytes_without_a_token_are_unauthenticated(start_server, model):
    running = start_server(ModelHolder(model), auth_tokens=("t0k",))
    error = error_of(raw_call(running.channel), b"\xff" * 16)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    error = raw_call(running.channel)
    with pytest.raises(grpc.RpcError) as info:
        error(b"\xff" * 16, timeout=TIMEOUT, metadata=(("authorization", "Bearer t0k"),))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_rate_limited_log_counts_what_it_skips(caplog):
    limited = RateLimitedLog(logging.getLogger("test.ratelimit"), every_s=0.2)
    with caplog.at_level(logging.WARNING, logger="test.ratelimit"):
        assert limited.warning("bad %s", "x") is True
        assert [limited.warning("bad %s", "x") for _ in range(3)] == [False] * 3
        time.sleep(0.25)
        assert limited.warning("bad %s", "x") is True
    assert [r.count for r in caplog.records] == [1, 4]


# --- 3. health is not starved by load ----------------------------------------------------


def test_health_answers_within_1s_while_12_callers_keep_2_workers_busy(start_server, model, tools):
    slow = tools.with_index(model, "books", lambda index: tools.SlowIndex(index, delay=0.2))
    # Unbatched: the callers must queue at the admission gate (batched calls wait in
    # the batcher instead, without a worker slot; see tests/serve/test_batching.py).
    running = start_server(ModelHolder(slow), max_workers=2, metrics_address="127.0.0.1:0",
                           batching=BatchingConfig(enabled=False))
    stop = threading.Event()
    failures: list[Exception] = []
    answered = [0]

    def busy() -> None:
        while not stop.is_set():
            try:
                running.stub.Recommend(pb.RecommendRequest(user_id="alice", domain="books", k=3),
                                       timeout=30)
                answered[0] += 1
            except grpc.RpcError as exc:
                failures.append(exc)

    callers = [threading.Thread(target=busy) for _ in range(12)]
    for caller in callers:
        caller.start()
    health = health_pb2_grpc.HealthStub(running.channel)
    checks = []
    try:
        time.sleep(0.5)  # the queue is full of busy calls now
        queued = scrape(running.server.metrics_port)[("recxfer_rpcs_queued", ())]
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0).status
            checks.append(time.perf_counter() - t0)
            assert status == health_pb2.HealthCheckResponse.SERVING
            time.sleep(0.05)
    finally:
        stop.set()
        for caller in callers:
            caller.join()
    assert queued >= 5, "the busy callers did not queue: the test tests nothing"
    assert not failures, failures[:3]
    assert answered[0] >= 12 and len(checks) >= 10
    assert max(checks) < 0.5, max(checks)


def test_calls_queue_up_to_max_concurrent_rpcs_then_are_refused(start_server, model, tools):
    slow = tools.with_index(model, "books", lambda index: tools.SlowIndex(index, delay=0.4))
    running = start_server(ModelHolder(slow), max_workers=1, max_concurrent_rpcs=2)
    request = pb.RecommendRequest(user_id="alice", domain="books", k=3)
    working = running.stub.Recommend.future(request, timeout=TIMEOUT)
    time.sleep(0.05)
    queued = running.stub.Recommend.future(request, timeout=TIMEOUT)
    time.sleep(0.05)
    error = error_of(running.stub.Recommend, request)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_concurrent_rpcs" in error.details()
    assert len(working.result().items) == 3 and len(queued.result().items) == 3


def test_queue_is_bounded_by_default():
    assert ServeConfig().max_concurrent_rpcs == 64
    with pytest.raises(ValueError, match="max_concurrent_rpcs"):
        ServeConfig(max_concurrent_rpcs=None)  # type: ignore[arg-type]


# --- 4. a busy address is refused for every address the name resolves to -----------------


def _listen(family: int, host: str, port: int = 0) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((host, port))
    sock.listen()
    return sock


def _ipv6_loopback() -> bool:
    try:
        _listen(socket.AF_INET6, "::1").close()
        return True
    except OSError:
        return False


def test_localhost_is_refused_when_its_ipv4_address_is_busy():
    with _listen(socket.AF_INET, "127.0.0.1") as busy:
        port = busy.getsockname()[1]
        assert busy_addresses(f"localhost:{port}") == [f"127.0.0.1:{port}"]
        with pytest.raises(RuntimeError, match=f"cannot bind localhost:{port}: 127.0.0.1:{port}"):
            create_server(f"localhost:{port}", ModelHolder())
        assert busy_addresses(f"127.0.0.1:{port}") == [f"127.0.0.1:{port}"]
        assert busy_addresses("localhost:0") == []  # port 0: grpc picks a free one


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this host")
def test_localhost_is_refused_when_its_ipv6_address_is_busy():
    with _listen(socket.AF_INET6, "::1") as busy:
        port = busy.getsockname()[1]
        with pytest.raises(RuntimeError, match=rf"\[::1\]:{port}"):
            create_server(f"localhost:{port}", ModelHolder())
        assert busy_addresses(f"[::1]:{port}") == [f"[::1]:{port}"]


def test_a_free_localhost_port_is_served(model):
    with _listen(socket.AF_INET, "127.0.0.1") as probe:
        port = probe.getsockname()[1]
    server, bound = create_server(f"localhost:{port}", ModelHolder(model))
    try:
        assert bound == port
        server.start()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop(grace=None)


# --- 5. limits that fit together ------------------------------------------------------------


def test_config_refuses_a_full_batch_that_can_never_fit():
    ServeConfig()  # the defaults fit (256 x 1000 x >= 10 bytes < 4 MiB)
    with pytest.raises(ValueError, match="max_message_bytes 1048576 cannot hold"):
        ServeConfig(max_message_bytes=1 << 20)
    ServeConfig(max_message_bytes=1 << 20, max_batch=64)


def test_an_answer_that_cannot_fit_is_refused_up_front(start_server, model, tools):
    # 20 books with 3-byte ids: a 50 x k=20 batch takes ~12.9 kB, over 11 kB; the
    # config floor (1-byte ids) is 10.5 kB, so the config itself is accepted.
    slow = tools.with_index(model, "books", tools.SlowIndex)
    running = start_server(ModelHolder(slow), max_message_bytes=11_000, max_batch=50, max_k=20)
    entry = pb.RecommendRequest(user_id="alice", domain="books", k=20)
    error = error_of(running.stub.BatchRecommend, pb.BatchRecommendRequest(requests=[entry] * 50))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("requests: the answer may take up to ")
    assert "max_message_bytes 11000" in error.details()
    assert [f for f, _ in bad_request_fields(error)] == ["requests"]
    assert slow.domains["books"].index.calls == [], "refused before any search"
    ok = running.stub.BatchRecommend(pb.BatchRecommendRequest(requests=[entry] * 40), timeout=TIMEOUT)
    assert len(ok.results) == 40 and ok.ByteSize() <= 11_000


def test_single_answers_that_cannot_fit_are_refused(start_server, model):
    # 20 items of 3-byte ids take ~252 bytes, over 230; the config floor is ~210.
    running = start_server(ModelHolder(model), max_message_bytes=230, max_batch=1, max_k=20)
    big = running.stub.Recommend
    error = error_of(big, pb.RecommendRequest(user_id="alice", domain="books", k=20))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith("k: ")
    error = error_of(running.stub.SimilarItems, pb.SimilarItemsRequest(domain="books", item_id="b00", k=20))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith("k: ")
    assert len(big(pb.RecommendRequest(user_id="alice", domain="books", k=10), timeout=TIMEOUT).items) == 10


def test_the_size_bound_holds_for_real_messages():
    for id_len in (1, 3, 127, 128, 300):
        for n in (0, 1, 20, 200):
            for version in ("", "v1", "x" * 200):
                response = pb.RecommendResponse(model_version=version, user_kind=pb.USER_KIND_POPULARITY)
                for j in range(n):
                    response.items.add(item_id=f"{j:0{id_len}d}"[-id_len:], score=-1e38)
                bound = response_bytes(n, id_len, len(version))
                assert response.ByteSize() <= bound <= response.ByteSize() + 2
                batch = pb.BatchRecommendResponse(model_version=version)
                batch.results.add().response.CopyFrom(response)
                error = "requests[7].user_id: " + echo(HUGE)
                batch.results.add(error=pb.RequestError(code=5, message=error))
                estimate = (batch_result_bytes(bound, len(error)) * 2 + field_bytes(len(version)))
                assert batch.ByteSize() <= estimate


# --- 6. BadRequest details --------------------------------------------------------------------


def test_invalid_argument_carries_a_bad_request_beside_the_same_message(served):
    error = error_of(served.stub.Recommend, pb.RecommendRequest(user_id="alice", domain="books", k=0))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "k: must be in [1, 1000], got 0"
    assert bad_request_fields(error) == [("k", "must be in [1, 1000], got 0")]
    error = error_of(served.stub.BatchRecommend, pb.BatchRecommendRequest(requests=[
        pb.RecommendRequest(user_id="alice", domain="books", k=1),
        pb.RecommendRequest(user_id="", domain="books", k=1),
    ]))
    assert bad_request_fields(error) == [("requests[1].user_id", "must not be empty")]
    not_found = error_of(served.stub.Recommend, pb.RecommendRequest(user_id="nobody", domain="books", k=1))
    assert not_found.code() == grpc.StatusCode.NOT_FOUND


# --- 7. the state of ROOT/current -----------------------------------------------------------------


def _point(root, target: str) -> None:
    tmp = root / f".{CURRENT}-{uuid.uuid4().hex[:8]}"
    os.symlink(target, tmp)
    os.replace(tmp, root / CURRENT)


def test_reload_loop_reports_a_missing_dangling_or_moved_current_link(
    tmp_path, make_artifact, domains, caplog
):
    make_artifact(tmp_path, domains, version="v1")
    publish(tmp_path, "v1")
    (tmp_path / "broken").mkdir()  # not an artifact: refused
    metrics = ServingMetrics()
    holder = ModelHolder()
    watcher = ArtifactWatcher(tmp_path, holder, on_link_state=metrics.link_checked)

    def gauge() -> tuple[float, float]:
        ok = metrics.registry.get_sample_value("recxfer_artifact_link_ok")
        state = watcher.link_state
        return ok, metrics.registry.get_sample_value("recxfer_artifact_link_state", {"state": state})

    assert watcher.check_now() is True
    assert watcher.link_state == "ok" and gauge() == (1, 1)
    with caplog.at_level(logging.WARNING, logger="recxfer.serve.reload"):
        (tmp_path / CURRENT).unlink()
        watcher.check_now()
        assert watcher.link_state == "missing" and gauge() == (0, 1)
        watcher.check_now()  # the same state is not warned about again at once
        _point(tmp_path, "gone")
        watcher.check_now()
        assert watcher.link_state == "dangling" and gauge() == (0, 1)
        _point(tmp_path, "broken")
        watcher.check_now()
        assert watcher.link_state == "elsewhere" and gauge() == (0, 1)
        assert holder.get().version == "v1"  # still served
        _point(tmp_path, "v1")
        watcher.check_now()
        assert watcher.link_state == "ok" and gauge() == (1, 1)
        # The served folder deleted under the server: the link now dangles.
        shutil.rmtree(tmp_path / "v1")
        watcher.check_now()
        assert watcher.link_state == "dangling" and gauge() == (0, 1)
    warned = [r for r in caplog.records if getattr(r, "event", None) == "artifact_link"
              and r.levelno == logging.WARNING]
    assert [r.state for r in warned] == ["missing", "dangling", "elsewhere", "dangling"]
    assert metrics.registry.get_sample_value("recxfer_artifact_link_state", {"state": "ok"}) == 0

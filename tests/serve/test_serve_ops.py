"""Operations: the Prometheus endpoint, deadlines, graceful shutdown, structured
logs, and the serving config (file, flags, ``recxfer serve --help``)."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import urllib.request
from dataclasses import fields

import grpc
import pytest
from grpc_health.v1 import health_pb2
from prometheus_client.parser import text_string_to_metric_families

from recxfer.cli import _serve_config, build_parser, main
from recxfer.serve import ModelHolder, ServeConfig, ServingModel, TlsConfig
from recxfer.serve.client import RecommenderClient
from recxfer.serve.logs import JsonFormatter
from recxfer.serve.servicer import RecommenderServicer
from recxfer.v1 import recommender_pb2 as pb

TIMEOUT = 5.0


def req(user_id="alice", k=3) -> pb.RecommendRequest:
    return pb.RecommendRequest(user_id=user_id, domain="books", k=k)


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


# --- metrics -------------------------------------------------------------------------


def test_metrics_endpoint_counts_codes_latency_version_and_index(start_server, model, artifact_v2):
    running = start_server(ModelHolder(model), metrics_address="127.0.0.1:0", max_k=5)
    port = running.server.metrics_port
    assert port
    stub = running.stub
    stub.Recommend(req(), timeout=TIMEOUT)
    stub.Recommend(req("bob"), timeout=TIMEOUT)
    for bad in (req("nobody"), req(k=9)):
        with pytest.raises(grpc.RpcError):
            stub.Recommend(bad, timeout=TIMEOUT)
    stub.BatchRecommend(pb.BatchRecommendRequest(requests=[req()]), timeout=TIMEOUT)
    method = "recxfer.v1.Recommender/Recommend"
    m = scrape(port)
    assert m[("recxfer_requests_total", (("code", "OK"), ("method", method)))] == 2
    assert m[("recxfer_requests_total", (("code", "NOT_FOUND"), ("method", method)))] == 1
    assert m[("recxfer_requests_total", (("code", "INVALID_ARGUMENT"), ("method", method)))] == 1
    batch = "recxfer.v1.Recommender/BatchRecommend"
    assert m[("recxfer_requests_total", (("code", "OK"), ("method", batch)))] == 1
    assert m[("recxfer_request_latency_seconds_count", (("method", method),))] == 4
    assert m[("recxfer_request_latency_seconds_sum", (("method", method),))] > 0
    assert m[("recxfer_model_info", (("version", "v1-faiss"),))] == 1
    assert m[("recxfer_index_items", (("domain", "books"),))] == 20
    assert m[("recxfer_index_items", (("domain", "video"),))] == 12
    # A swap moves the version gauge (and only one version is reported).
    running.holder.swap(ServingModel.from_artifact(artifact_v2.path))
    m = scrape(port)
    assert m[("recxfer_model_info", (("version", "v2-exact"),))] == 1
    assert not any(k[0] == "recxfer_model_info" and k[1] == (("version", "v1-faiss"),) for k in m)


def test_two_servers_keep_separate_metrics(start_server, model):
    a = start_server(ModelHolder(model), metrics_address="127.0.0.1:0")
    b = start_server(ModelHolder(model), metrics_address="127.0.0.1:0")
    a.stub.Recommend(req(), timeout=TIMEOUT)
    key = ("recxfer_requests_total", (("code", "OK"), ("method", "recxfer.v1.Recommender/Recommend")))
    assert scrape(a.server.metrics_port)[key] == 1
    assert key not in scrape(b.server.metrics_port)


# --- deadlines -----------------------------------------------------------------------


class _ExpiredContext:
    """A ServicerContext whose deadline has passed; abort raises like grpc's."""

    def time_remaining(self) -> float:
        return 0.0

    def abort(self, code, details):
        raise _Aborted(code, details)


class _Aborted(Exception):
    pass


def test_servicer_refuses_work_past_the_deadline(model):
    servicer = RecommenderServicer(ModelHolder(model))
    with pytest.raises(_Aborted) as info:
        servicer.Recommend(req(), _ExpiredContext())
    assert info.value.args[0] == grpc.StatusCode.DEADLINE_EXCEEDED


def test_queued_request_past_its_deadline_is_not_searched(start_server, model, tools):
    slow = tools.with_index(model, "books", lambda index: tools.SlowIndex(index, delay=0.4))
    running = start_server(ModelHolder(slow), max_workers=1)
    first = running.stub.Recommend.future(req(), timeout=TIMEOUT)
    time.sleep(0.05)  # the only worker is now busy with `first`
    with pytest.raises(grpc.RpcError) as info:
        running.stub.Recommend(req("bob"), timeout=0.15)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert len(first.result().items) == 3
    time.sleep(0.1)
    assert slow.domains["books"].index.calls == [1], "the expired request must not be searched"


# --- graceful shutdown ---------------------------------------------------------------


def test_stop_drains_requests_in_flight(model, tools):
    from recxfer.serve import create_server

    slow = tools.with_index(model, "books", lambda index: tools.SlowIndex(index, delay=0.5))
    server, port = create_server("127.0.0.1:0", ModelHolder(slow), grace_s=3.0)
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        from recxfer.v1 import recommender_pb2_grpc

        stub = recommender_pb2_grpc.RecommenderStub(channel)
        in_flight = stub.Recommend.future(req(), timeout=TIMEOUT)
        time.sleep(0.1)
        stopper = threading.Thread(target=server.stop)  # config grace: 3 s
        stopper.start()
        assert len(in_flight.result().items) == 3  # finished, not cancelled
        stopper.join(5)
        assert not stopper.is_alive()
        for service in ("", "recxfer.v1.Recommender"):
            status = server.health.Check(health_pb2.HealthCheckRequest(service=service), None).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as info:
            stub.Recommend(req(), timeout=1.0)
        assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_client_health(served, start_server):
    with RecommenderClient(served.address) as client:
        assert client.health() == "SERVING"
        assert client.health("recxfer.v1.Recommender") == "SERVING"
    with RecommenderClient(start_server(ModelHolder()).address) as client:
        assert client.health() == "NOT_SERVING"


# --- structured logs -----------------------------------------------------------------


def test_json_formatter_writes_extra_fields_and_exceptions():
    record = logging.LogRecord("recxfer.serve.reload", logging.ERROR, __file__, 1,
                               "refused %s", ("v3",), None)
    record.event, record.artifact = "artifact_refused", "/a/v3"
    entry = json.loads(JsonFormatter().format(record))
    assert entry["msg"] == "refused v3" and entry["level"] == "ERROR"
    assert entry["event"] == "artifact_refused" and entry["artifact"] == "/a/v3"
    assert entry["logger"] == "recxfer.serve.reload" and "ts" in entry
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    assert "boom" in json.loads(JsonFormatter().format(record))["exc"]


# --- config: file, flags, --help -----------------------------------------------------


def test_serve_config_file_then_flags(tmp_path):
    config_file = tmp_path / "serve.json"
    config_file.write_text(json.dumps({
        "max_k": 50, "popularity_fallback": True, "auth_tokens": ["t1", "t2"],
        "tls": {"cert": "c.pem", "key": "k.pem"}, "max_batch": 9,
    }))
    tokens = tmp_path / "tokens"
    tokens.write_text("s3cret\n\n")
    args = build_parser().parse_args([
        "serve", "--serve-config", str(config_file), "--max-k", "7", "--token-file", str(tokens),
        "--metrics-address", "127.0.0.1:0", "--no-popularity-fallback",
    ])
    config = _serve_config(args)
    assert config.max_k == 7 and config.max_batch == 9  # flag over file, file over default
    assert config.popularity_fallback is False
    assert config.auth_tokens == ("s3cret",)
    assert config.tls == TlsConfig("c.pem", "k.pem")
    assert config.metrics_address == "127.0.0.1:0"
    assert _serve_config(build_parser().parse_args(["serve"])) == ServeConfig()


@pytest.mark.parametrize(
    "content, words",
    [('{"max_kk": 3}', "unknown key"), ('{"max_k": 0}', "max_k"), ("{", "cannot read")],
)
def test_bad_serve_config_exits_2(tmp_path, capsys, content, words):
    config_file = tmp_path / "serve.json"
    config_file.write_text(content)
    code = main(["serve", "--artifact", str(tmp_path), "--serve-config", str(config_file)])
    assert code == 2
    assert words in capsys.readouterr().err


def test_serve_help_lists_every_option_with_the_config_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--artifacts", "--artifact", "--address", "--serve-config", "--reload-interval",
                 "--max-k", "--max-batch", "--max-history", "--max-filter-ids",
                 "--max-message-bytes", "--workers", "--max-concurrent-rpcs",
                 "--popularity-fallback", "--metrics-address", "--tls-cert", "--tls-key",
                 "--tls-client-ca", "--token-file", "--grace", "--shutdown-delay",
                 "--index-device", "--search-threads"):
        assert flag in text, flag
    d = ServeConfig()
    for value in (d.max_k, d.max_batch, d.max_history, d.max_filter_ids, d.max_message_bytes,
                  d.max_workers, d.grace_s, d.shutdown_delay_s):
        assert f"(default {value})" in text, value


@pytest.mark.parametrize(
    "name", [f.name for f in fields(ServeConfig) if f.name.startswith("max_") and f.name != "max_concurrent_rpcs"]
)
def test_serve_config_rejects_non_positive_limits(name):
    with pytest.raises(ValueError, match=name):
        ServeConfig(**{name: 0})


# --- search threads ------------------------------------------------------------------


@pytest.mark.parametrize("threads", [1, 0])
def test_search_threads_apply_in_the_rpc_worker_threads(start_server, model, tools, threads):
    faiss = pytest.importorskip("faiss")
    seen = []

    class Probe(tools.SlowIndex):
        def search(self, queries, k, exclude=None):
            seen.append(faiss.omp_get_max_threads())
            return super().search(queries, k, exclude)

    probed = tools.with_index(model, "books", Probe)
    running = start_server(ModelHolder(probed), search_threads=threads)
    running.stub.Recommend(req(), timeout=TIMEOUT)
    assert seen == [threads or os.cpu_count()]

"""Status codes and messages, health, reflection, binding and shutdown."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from recxfer.serve import ModelHolder, create_server
from recxfer.v1 import recommender_pb2, recommender_pb2_grpc

TIMEOUT = 5.0
SERVICE = "recxfer.v1.Recommender"


def rpc_error(stub, **fields) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        stub.Recommend(recommender_pb2.RecommendRequest(**fields), timeout=TIMEOUT)
    return info.value


def health_status(channel: grpc.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT).status


# --- INVALID_ARGUMENT / NOT_FOUND ----------------------------------------------


@pytest.mark.parametrize(
    "fields, field_name",
    [
        ({"user_id": "alice", "domain": "books", "k": 0}, "k"),
        ({"user_id": "alice", "domain": "books"}, "k"),  # k unset is k=0
        ({"user_id": "alice", "domain": "books", "k": -1}, "k"),
        ({"user_id": "alice", "domain": "books", "k": -(2**31)}, "k"),
        ({"user_id": "alice", "domain": "books", "k": 6}, "k"),  # max_k is 5
        ({"user_id": "alice", "domain": "books", "k": 2**31 - 1}, "k"),
        ({"user_id": "", "domain": "books", "k": 3}, "user_id"),
        ({"domain": "books", "k": 3}, "user_id"),
        ({"user_id": "alice", "domain": "", "k": 3}, "domain"),
        ({"user_id": "alice", "domain": "music", "k": 3}, "domain"),
        ({"user_id": "alice", "domain": "Books", "k": 3}, "domain"),
    ],
)
def test_invalid_argument_names_the_field(start_server, model, fields, field_name):
    running = start_server(ModelHolder(model), max_k=5)
    error = rpc_error(running.stub, **fields)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(f"{field_name}:"), error.details()


def test_k_bounds_message_and_max_k_is_inclusive(start_server, model):
    running = start_server(ModelHolder(model), max_k=5)
    error = rpc_error(running.stub, user_id="alice", domain="books", k=6)
    assert "5" in error.details() and "6" in error.details()
    response = running.stub.Recommend(
        recommender_pb2.RecommendRequest(user_id="alice", domain="books", k=5), timeout=TIMEOUT
    )
    assert len(response.items) == 5
    assert len(running.stub.Recommend(
        recommender_pb2.RecommendRequest(user_id="alice", domain="books", k=1), timeout=TIMEOUT
    ).items) == 1


def test_unknown_domain_message_lists_known_domains(served):
    error = rpc_error(served.stub, user_id="alice", domain="music", k=3)
    assert "music" in error.details()
    assert "books" in error.details() and "video" in error.details()


@pytest.mark.parametrize(
    "user_id, domain",
    [("nobody", "books"), ("dave", "books"), ("erin", "video"), ("ALICE", "books")],
)
def test_unknown_user_is_not_found(served, user_id, domain):
    error = rpc_error(served.stub, user_id=user_id, domain=domain, k=3)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details().startswith("user_id:")
    assert repr(user_id) in error.details()


def test_create_server_rejects_max_k_below_one():
    with pytest.raises(ValueError, match="max_k"):
        create_server("127.0.0.1:0", ModelHolder(), max_k=0)


# --- empty holder: UNAVAILABLE and NOT_SERVING -----------------------------------


def test_empty_holder_is_unavailable(start_server):
    running = start_server(ModelHolder())
    error = rpc_error(running.stub, user_id="alice", domain="books", k=3)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    # Even an invalid request is UNAVAILABLE while nothing is loaded.
    assert rpc_error(running.stub, k=0).code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("service", ["", SERVICE])
def test_health_not_serving_without_model(start_server, service):
    running = start_server(ModelHolder())
    assert health_status(running.channel, service) == health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.mark.parametrize("service", ["", SERVICE])
def test_health_serving_with_model(served, service):
    assert health_status(served.channel, service) == health_pb2.HealthCheckResponse.SERVING


def test_health_unknown_service_is_not_found(served):
    with pytest.raises(grpc.RpcError) as info:
        health_status(served.channel, "no.such.Service")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_loading_a_model_later_then_refreshing_health(start_server, model, domains, expected):
    running = start_server(ModelHolder())
    assert running.holder.swap(model) is None
    running.server.refresh_health()
    for service in ("", SERVICE):
        assert health_status(running.channel, service) == health_pb2.HealthCheckResponse.SERVING
    response = running.stub.Recommend(
        recommender_pb2.RecommendRequest(user_id="alice", domain="books", k=3), timeout=TIMEOUT
    )
    assert [i.item_id for i in response.items] == expected(domains["books"], "alice", 3)[0]


# --- shutdown --------------------------------------------------------------------


def test_after_stop_health_is_not_serving_or_refused(model):
    server, port = create_server("127.0.0.1:0", ModelHolder(model))
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        assert health_status(channel, "") == health_pb2.HealthCheckResponse.SERVING
        server.stop()
        for service in ("", SERVICE):
            try:
                status = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=1.0
                ).status
            except grpc.RpcError as exc:
                assert exc.code() in (
                    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED
                ), exc
            else:
                assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as info:
            recommender_pb2_grpc.RecommenderStub(channel).Recommend(
                recommender_pb2.RecommendRequest(user_id="alice", domain="books", k=3), timeout=1.0
            )
        assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class _Context:
    """Just enough of a ServicerContext for HealthServicer.Check of a known service."""

    def set_code(self, code):  # pragma: no cover - only used for unknown services
        raise AssertionError(f"unexpected code {code}")


def test_stop_sets_every_health_status_to_not_serving(model):
    server, _ = create_server("127.0.0.1:0", ModelHolder(model))
    server.start()
    server.stop(grace=None)
    for service in ("", SERVICE):
        response = server.health.Check(health_pb2.HealthCheckRequest(service=service), _Context())
        assert response.status == health_pb2.HealthCheckResponse.NOT_SERVING


# --- reflection --------------------------------------------------------------------


def _reflect(channel: grpc.Channel, request: reflection_pb2.ServerReflectionRequest):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = list(stub.ServerReflectionInfo(iter([request]), timeout=TIMEOUT))
    assert len(responses) == 1
    return responses[0]


def test_reflection_lists_services(served):
    response = _reflect(served.channel, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {s.name for s in response.list_services_response.service}
    assert names == {
        SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }


def test_reflection_describes_the_recommender(served):
    response = _reflect(
        served.channel, reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE)
    )
    protos = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]
    mine = [p for p in protos if p.package == "recxfer.v1"]
    assert mine and mine[0].name == "recxfer/v1/recommender.proto"
    assert [m.name for m in mine[0].service[0].method] == [
        "Recommend", "BatchRecommend", "RecommendFromHistory", "SimilarItems"
    ]


# --- binding ---------------------------------------------------------------------


def test_unbindable_address_raises_runtime_error():
    with pytest.raises(RuntimeError, match="cannot bind"):
        create_server("256.1.1.1:0", ModelHolder())


def test_binding_a_port_in_use_raises_runtime_error(served):
    with pytest.raises(RuntimeError, match="cannot bind"):
        server, _ = create_server(f"127.0.0.1:{served.port}", ModelHolder())
        server.server.stop(None)  # only reached when the bug is present

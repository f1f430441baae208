"""TLS, mutual TLS, the bearer-token check and message-size limits, against real
servers; certificates are made on the fly (self-signed, EC P-256)."""

from __future__ import annotations

import datetime
import ipaddress
import time
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from recxfer.serve import ModelHolder, TlsConfig, create_server
from recxfer.serve.client import ClientTls, RecommenderClient
from recxfer.v1 import recommender_pb2 as pb

TIMEOUT = 5.0
TOKEN = "s3cret-token"


def self_signed(folder: Path, name: str) -> tuple[str, str]:
    """A self-signed certificate (its own CA) for localhost/127.0.0.1: (cert, key) paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        ), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))
    return str(cert_path), str(key_path)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, tuple[str, str]]:
    folder = tmp_path_factory.mktemp("certs")
    return {name: self_signed(folder, name) for name in ("server", "client", "stranger")}


@pytest.fixture
def tls_server(model, certs):
    """A TLS server factory: ``tls_server(mtls=False, **config)`` -> port."""
    started = []

    def start(mtls: bool = False, **config) -> int:
        cert, key = certs["server"]
        tls = TlsConfig(cert, key, certs["client"][0] if mtls else None)
        server, port = create_server("127.0.0.1:0", ModelHolder(model), tls=tls, **config)
        server.start()
        started.append(server)
        return port

    yield start
    for server in started:
        server.stop(grace=None)


def tls_client(port: int, certs, ca: str = "server", client: str | None = None, **kwargs):
    cert, key = certs[client] if client else (None, None)
    return RecommenderClient(
        f"localhost:{port}", timeout=2.0,
        tls=ClientTls(ca_cert=certs[ca][0], cert=cert, key=key), **kwargs,
    )


# --- TLS -----------------------------------------------------------------------------


def test_tls_serves_trusting_clients_only(tls_server, certs):
    port = tls_server()
    with tls_client(port, certs) as client:
        assert client.recommend("alice", "books", 3).model_version == "v1-faiss"
    with tls_client(port, certs, ca="stranger") as client:  # does not trust the server
        with pytest.raises(grpc.RpcError) as info:
            client.recommend("alice", "books", 3)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    with RecommenderClient(f"127.0.0.1:{port}", timeout=2.0) as plaintext:
        with pytest.raises(grpc.RpcError) as info:
            plaintext.recommend("alice", "books", 3)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_requires_a_client_certificate_from_the_ca(tls_server, certs):
    port = tls_server(mtls=True)
    with tls_client(port, certs, client="client") as client:
        assert len(client.recommend("alice", "books", 3).item_ids) == 3
    for who in (None, "stranger"):  # no certificate, or one the CA did not sign
        with tls_client(port, certs, client=who) as client:
            with pytest.raises(grpc.RpcError) as info:
                client.recommend("alice", "books", 3)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_unreadable_tls_file_names_the_field(model, tmp_path):
    with pytest.raises(ValueError, match=r"tls\.cert"):
        create_server("127.0.0.1:0", ModelHolder(model),
                      tls=TlsConfig(str(tmp_path / "nope.crt"), str(tmp_path / "nope.key")))


def test_tls_and_token_together(tls_server, certs):
    port = tls_server(auth_tokens=(TOKEN,))
    with tls_client(port, certs, token=TOKEN) as client:
        assert len(client.similar_items("books", "b01", 2).item_ids) == 2
    with tls_client(port, certs) as client:
        with pytest.raises(grpc.RpcError) as info:
            client.similar_items("books", "b01", 2)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


# --- bearer token --------------------------------------------------------------------


@pytest.mark.parametrize(
    "metadata",
    [None, (("authorization", "Bearer wrong"),), (("authorization", f"Basic {TOKEN}"),),
     (("authorization", TOKEN),), (("x-token", TOKEN),)],
)
def test_missing_or_wrong_token_is_unauthenticated(start_server, model, metadata):
    running = start_server(ModelHolder(model), auth_tokens=(TOKEN, "other"))
    calls = [
        (running.stub.Recommend, pb.RecommendRequest(user_id="alice", domain="books", k=3)),
        (running.stub.BatchRecommend, pb.BatchRecommendRequest()),
        (running.stub.SimilarItems, pb.SimilarItemsRequest()),
        (running.stub.RecommendFromHistory, pb.RecommendFromHistoryRequest()),
    ]
    for method, request in calls:  # refused before any validation
        with pytest.raises(grpc.RpcError) as info:
            method(request, timeout=TIMEOUT, metadata=metadata)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert info.value.details().startswith("authorization:")
    reflection = reflection_pb2_grpc.ServerReflectionStub(running.channel)
    with pytest.raises(grpc.RpcError) as info:
        list(reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
            timeout=TIMEOUT, metadata=metadata,
        ))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_right_token_is_served_and_health_is_exempt(start_server, model):
    running = start_server(ModelHolder(model), auth_tokens=(TOKEN, "other"),
                           metrics_address="127.0.0.1:0")
    for token in (TOKEN, "other"):
        with RecommenderClient(running.address, token=token) as client:
            assert len(client.recommend("alice", "books", 3).item_ids) == 3
    lower = (("authorization", f"bearer {TOKEN}"),)
    assert running.stub.Recommend(
        pb.RecommendRequest(user_id="alice", domain="books", k=1), timeout=TIMEOUT, metadata=lower
    ).items
    status = health_pb2_grpc.HealthStub(running.channel).Check(
        health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT
    ).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    with RecommenderClient(running.address) as client:
        with pytest.raises(grpc.RpcError):
            client.recommend("alice", "books", 3)
    from urllib.request import urlopen

    text = urlopen(f"http://127.0.0.1:{running.server.metrics_port}/metrics", timeout=5).read().decode()
    assert 'code="UNAUTHENTICATED",method="recxfer.v1.Recommender/Recommend"} 1.0' in text


# --- limits --------------------------------------------------------------------------


def test_oversized_message_is_refused(start_server, model):
    # A full batch at max_k must fit the limit (ServeConfig refuses it otherwise).
    running = start_server(ModelHolder(model), max_message_bytes=1024, max_batch=4, max_k=5)
    big = pb.Filter(deny=pb.ItemIdList(item_ids=[f"item-{i:06d}" for i in range(200)]))
    with pytest.raises(grpc.RpcError) as info:
        running.stub.Recommend(
            pb.RecommendRequest(user_id="alice", domain="books", k=3, filter=big), timeout=TIMEOUT
        )
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    small = pb.RecommendRequest(user_id="alice", domain="books", k=3)
    assert len(running.stub.Recommend(small, timeout=TIMEOUT).items) == 3


def test_max_concurrent_rpcs_sheds_load(start_server, model, tools):
    slow = tools.with_index(model, "books", lambda index: tools.SlowIndex(index, delay=0.3))
    running = start_server(ModelHolder(slow), max_concurrent_rpcs=1)
    request = pb.RecommendRequest(user_id="alice", domain="books", k=3)
    first = running.stub.Recommend.future(request, timeout=TIMEOUT)
    time.sleep(0.05)
    with pytest.raises(grpc.RpcError) as info:
        running.stub.Recommend(request, timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(first.result().items) == 3


def test_create_server_refuses_empty_tokens(model):
    with pytest.raises(ValueError, match="auth_tokens"):
        create_server("127.0.0.1:0", ModelHolder(model), auth_tokens=("",))

"""Fixtures for the serving tests: a small hand-made artifact with known
embeddings, and real gRPC servers bound to port 0 (grpc examples style).

Domains (dim 4):

- ``video`` (source): 12 items ``v00..v11``; users alice, bob, carol, dave, all warm.
- ``books`` (target): 20 items ``b00..b19``; users
  - ``alice``: warm, has seen her 1st, 3rd and 6th best items;
  - ``bob``: warm, has seen 5 items;
  - ``erin``: warm, has seen 17 of the 20 items (only 3 are admissible);
  - ``carol``: transfer (cold-start), has seen nothing.

Every user's scores are checked to be free of near-ties, so the expected ranking
(numpy brute force, ``expected_topk``) is unambiguous for faiss and torch alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import numpy as np
import pytest

from recxfer.artifacts import Artifact, index_file, save_domain, write_artifact
from recxfer.index import FaissIndex, faiss_available
from recxfer.serve import ModelHolder, RecommenderServer, ServingModel, create_server
from recxfer.types import DomainEmbeddings, SeenItems
from recxfer.v1 import recommender_pb2_grpc

DIM = 4
RPC_TIMEOUT = 5.0
SOURCE, TARGET = "video", "books"


def _domain(
    name: str,
    user_ids: list[str],
    origins: list[str],
    item_ids: list[str],
    rng: np.random.Generator,
    seen_ranks: dict[str, list[int]],
) -> DomainEmbeddings:
    """Random embeddings; ``seen_ranks[user]`` lists the *ranks* (0 = best) of the
    items that user has seen, resolved against the user's own true ranking."""
    user_emb = rng.standard_normal((len(user_ids), DIM)).astype(np.float32)
    item_emb = rng.standard_normal((len(item_ids), DIM)).astype(np.float32)
    scores = user_emb @ item_emb.T  # (U, I)
    for row in range(len(user_ids)):
        gaps = np.diff(np.sort(scores[row]))
        assert gaps.min() > 1e-3, f"{name}/{user_ids[row]}: near-tied scores, pick another seed"
    users, items = [], []
    for row, user in enumerate(user_ids):
        ranking = np.argsort(-scores[row], kind="stable")
        for rank in seen_ranks.get(user, []):
            users.append(row)
            items.append(int(ranking[rank]))
    seen = SeenItems.from_pairs(
        len(user_ids), np.array(users, dtype=np.int64), np.array(items, dtype=np.int64)
    )
    popularity = np.bincount(np.array(items, dtype=np.int64), minlength=len(item_ids))
    return DomainEmbeddings(
        domain=name,
        user_ids=np.array(user_ids, dtype=object),
        user_emb=user_emb,
        user_origin=np.array(origins, dtype=object),
        item_ids=np.array(item_ids, dtype=object),
        item_emb=item_emb,
        seen=seen,
        item_popularity=popularity.astype(np.int64),
    )


def make_domains(seed: int = 0) -> dict[str, DomainEmbeddings]:
    rng = np.random.default_rng(seed)
    video = _domain(
        SOURCE,
        ["alice", "bob", "carol", "dave"],
        ["warm"] * 4,
        [f"v{j:02d}" for j in range(12)],
        rng,
        {"alice": [0, 4], "bob": [1], "carol": [0, 1, 2], "dave": [3]},
    )
    books = _domain(
        TARGET,
        ["alice", "bob", "erin", "carol"],
        ["warm", "warm", "warm", "transfer"],
        [f"b{j:02d}" for j in range(20)],
        rng,
        {"alice": [0, 2, 5], "bob": [1, 3, 4, 8, 9], "erin": list(range(17))},
    )
    return {SOURCE: video, TARGET: books}


def expected_topk(
    emb: DomainEmbeddings, user_id: str, k: int, exclude_seen: bool = True
) -> tuple[list[str], np.ndarray]:
    """Numpy brute force: the top-``k`` admissible item ids and their scores."""
    row = list(emb.user_ids).index(user_id)
    scores = (emb.item_emb @ emb.user_emb[row]).astype(np.float32)  # (I,)
    order = np.argsort(-scores, kind="stable")
    if exclude_seen:
        order = order[~np.isin(order, emb.seen.row(row))]
    order = order[:k]
    return [str(i) for i in emb.item_ids[order]], scores[order]


def write_test_artifact(
    root: Path,
    domains: dict[str, DomainEmbeddings],
    *,
    use_faiss: bool = True,
    version: str | None = None,
) -> Artifact:
    """Write an artifact the way ``recxfer.pipeline.train_evaluate_publish`` does."""
    if use_faiss and not faiss_available():
        pytest.skip("faiss is not installed")
    with write_artifact(root, config={}, data_fingerprint="x", version=version) as builder:
        meta = {}
        for name, emb in domains.items():
            save_domain(builder.path, emb)
            file = None
            if use_faiss:
                FaissIndex.build(emb.item_emb, "Flat").save(builder.path / index_file(name))
                file = index_file(name)
            meta[name] = {
                "role": "source" if name == SOURCE else "target",
                "users": len(emb.user_ids),
                "items": len(emb.item_ids),
                "dim": int(emb.item_emb.shape[1]),
                "index": {"factory": "Flat", "file": file},
            }
        builder.extra["domains"] = meta
    assert builder.artifact is not None
    return builder.artifact


@dataclass
class Running:
    """A started server plus a channel and stub talking to it."""

    server: RecommenderServer
    port: int
    holder: ModelHolder
    channel: grpc.Channel
    stub: recommender_pb2_grpc.RecommenderStub

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture(scope="session")
def domains() -> dict[str, DomainEmbeddings]:
    return make_domains(seed=0)


@pytest.fixture(scope="session")
def domains_v2(domains: dict[str, DomainEmbeddings]) -> dict[str, DomainEmbeddings]:
    """Same users, items and seen sets; item embeddings negated (ranking reversed)."""
    return {name: replace(emb, item_emb=-emb.item_emb) for name, emb in domains.items()}


@pytest.fixture(scope="session")
def artifact(tmp_path_factory: pytest.TempPathFactory, domains) -> Artifact:
    """Faiss ``Flat`` index per domain, as the pipeline writes it."""
    return write_test_artifact(tmp_path_factory.mktemp("artifacts"), domains, version="v1-faiss")


@pytest.fixture(scope="session")
def exact_artifact(tmp_path_factory: pytest.TempPathFactory, domains) -> Artifact:
    """No index files (``"file": None``): served with the exact torch index."""
    return write_test_artifact(
        tmp_path_factory.mktemp("artifacts"), domains, use_faiss=False, version="v1-exact"
    )


@pytest.fixture(scope="session")
def artifact_v2(tmp_path_factory: pytest.TempPathFactory, domains_v2) -> Artifact:
    return write_test_artifact(
        tmp_path_factory.mktemp("artifacts"), domains_v2, use_faiss=False, version="v2-exact"
    )


@pytest.fixture(scope="session")
def model(artifact: Artifact) -> ServingModel:
    return ServingModel.from_artifact(artifact.path)


def _start(holder: ModelHolder, **kwargs) -> Running:
    server, port = create_server("127.0.0.1:0", holder, **kwargs)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    return Running(server, port, holder, channel, recommender_pb2_grpc.RecommenderStub(channel))


def _stop(running: Running) -> None:
    running.channel.close()
    running.server.stop(grace=None)


@pytest.fixture
def start_server() -> Iterator[Callable[..., Running]]:
    """Factory: ``start_server(holder, **create_server_kwargs)``; all stopped at teardown."""
    started: list[Running] = []

    def start(holder: ModelHolder, **kwargs) -> Running:
        running = _start(holder, **kwargs)
        started.append(running)
        return running

    yield start
    for running in started:
        _stop(running)


@pytest.fixture(scope="session")
def served(model: ServingModel) -> Iterator[Running]:
    """The faiss artifact, served read-only for the whole session (default max_k)."""
    running = _start(ModelHolder(model))
    yield running
    _stop(running)


@pytest.fixture(scope="session")
def served_exact(exact_artifact: Artifact) -> Iterator[Running]:
    running = _start(ModelHolder(ServingModel.from_artifact(exact_artifact.path)))
    yield running
    _stop(running)


@pytest.fixture(scope="session")
def expected() -> Callable[..., tuple[list[str], np.ndarray]]:
    """``expected(emb, user_id, k, exclude_seen=True)``: numpy brute-force top-k."""
    return expected_topk


@pytest.fixture(scope="session")
def make_artifact() -> Callable[..., Artifact]:
    """``make_artifact(root, domains, use_faiss=True, version=None)``."""
    return write_test_artifact


def brute_force_ids(
    emb: DomainEmbeddings,
    query: np.ndarray,
    k: int,
    exclude: set[str] = frozenset(),
    allow: set[str] | None = None,
) -> tuple[list[str], np.ndarray]:
    """Numpy brute force over a ``(d,)`` query vector: top-``k`` admissible item ids
    (not in ``exclude``; in ``allow`` when given) and their scores."""
    scores = (emb.item_emb @ query).astype(np.float32)  # (I,)
    order = [
        j for j in np.argsort(-scores, kind="stable")
        if emb.item_ids[j] not in exclude and (allow is None or emb.item_ids[j] in allow)
    ][:k]
    return [str(emb.item_ids[j]) for j in order], scores[order]


def seen_ids(emb: DomainEmbeddings, user_id: str) -> set[str]:
    row = list(emb.user_ids).index(user_id)
    return {str(i) for i in emb.item_ids[emb.seen.row(row)]}


def user_vec(emb: DomainEmbeddings, user_id: str) -> np.ndarray:
    return emb.user_emb[list(emb.user_ids).index(user_id)]


class SlowIndex:
    """Wraps an index: counts searches (and queries), sleeps ``delay`` in each."""

    def __init__(self, inner, delay: float = 0.0) -> None:
        self.inner = inner
        self.delay = delay
        self.calls: list[int] = []  # queries per search call

    @property
    def ntotal(self) -> int:
        return self.inner.ntotal

    @property
    def dim(self) -> int:
        return self.inner.dim

    def search(self, queries, k, exclude=None):
        self.calls.append(len(queries))
        if self.delay:
            time.sleep(self.delay)
        return self.inner.search(queries, k, exclude)


def with_index(model: ServingModel, domain: str, wrap: Callable) -> ServingModel:
    """A copy of ``model`` whose ``domain`` index is ``wrap(old_index)``."""
    served = model.domains[domain]
    return replace(model, domains={**model.domains, domain: replace(served, index=wrap(served.index))})


@pytest.fixture(scope="session")
def tools() -> SimpleNamespace:
    """Helpers for the tests: ``brute``, ``seen``, ``vec``, ``SlowIndex``, ``with_index``."""
    return SimpleNamespace(
        brute=brute_force_ids, seen=seen_ids, vec=user_vec, SlowIndex=SlowIndex,
        with_index=with_index,
    )

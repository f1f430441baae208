"""Serving on a GPU, tested on CPU with stand-ins (and real CUDA where marked ``gpu``).

- The load-time self-check searches at the configured ``max_k`` and at the worst
  case fetch (``max_k`` + longest seen list + ``max_filter_ids``), so an index that
  cannot answer them is refused at load, naming the limits.
- On a faiss GPU index (a fake one here) with limits past faiss GPU's k limit,
  those searches go to the torch exact path, and answers stay exact.
- ``index_device="cuda"`` is accepted by the config and the CLI, and refused
  clearly on a host without a GPU.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import recxfer.index as index_pkg
import recxfer.serve.model as model_mod
from recxfer.artifacts import ArtifactError
from recxfer.cli import main
from recxfer.index import FAISS_GPU_MAX_K, ExactIndex, FaissIndex, cuda_available, faiss_available, faiss_gpu_count
from recxfer.index import faiss_index as faiss_mod
from recxfer.serve import ItemFilter, ServeConfig, ServingModel
from recxfer.types import DomainEmbeddings, SeenItems

needs_faiss = pytest.mark.skipif(not faiss_available(), reason="faiss is not installed")


def big_domain(n_items: int = 3000, n_users: int = 6, seen: int = 40, seed: int = 3) -> DomainEmbeddings:
    rng = np.random.default_rng(seed)
    user_idx = np.repeat(np.arange(n_users), seen)
    item_idx = np.concatenate([rng.choice(n_items, seen, replace=False) for _ in range(n_users)])
    return DomainEmbeddings(
        domain="books",
        user_ids=np.array([f"u{i}" for i in range(n_users)], dtype=object),
        user_emb=rng.standard_normal((n_users, 8)).astype(np.float32),
        user_origin=np.array(["warm"] * n_users, dtype=object),
        item_ids=np.array([f"b{j}" for j in range(n_items)], dtype=object),
        item_emb=rng.standard_normal((n_items, 8)).astype(np.float32),
        seen=SeenItems.from_pairs(n_users, user_idx, item_idx),
        item_popularity=rng.integers(0, 100, n_items).astype(np.int64),
    )


def brute(emb: DomainEmbeddings, row: int, k: int, exclude: np.ndarray) -> list[str]:
    scores = emb.item_emb.astype(np.float64) @ emb.user_emb[row].astype(np.float64)
    scores[exclude] = -np.inf
    return [str(emb.item_ids[j]) for j in np.argsort(-scores, kind="stable")[:k]]


class Recording:
    """Wraps an index; records ``(k, widest exclusion)`` of each search and fails
    searches with ``k > fail_above``."""

    def __init__(self, inner, fail_above: int | None = None) -> None:
        self.inner, self.fail_above, self.calls = inner, fail_above, []

    @property
    def ntotal(self) -> int:
        return self.inner.ntotal

    @property
    def dim(self) -> int:
        return self.inner.dim

    def search(self, queries, k, exclude=None):
        self.calls.append((k, max((len(e) for e in exclude), default=0) if exclude else 0))
        if self.fail_above is not None and k > self.fail_above:
            raise RuntimeError(f"k {k} is over this index's limit {self.fail_above}")
        return self.inner.search(queries, k, exclude)


@pytest.fixture
def recording(monkeypatch) -> list[Recording]:
    made: list[Recording] = []
    real = model_mod.load_index

    def load(*args, **kwargs):
        made.append(Recording(real(*args, **kwargs)))
        return made[-1]

    monkeypatch.setattr(model_mod, "load_index", load)
    return made


def test_self_check_searches_at_configured_max_k_and_worst_case(
    tmp_path, domains, make_artifact, recording
) -> None:
    artifact = make_artifact(tmp_path, domains, use_faiss=False)
    ServingModel.from_artifact(artifact.path, max_k=7, max_filter_ids=3)
    by_size = {r.ntotal: r.calls for r in recording}
    books, video = domains["books"], domains["video"]
    longest = int(np.diff(books.seen.indptr).max())  # erin: 17 of the 20 items
    assert by_size[len(books.item_ids)] == [(7, 0), (7, min(longest + 3, 19))]
    assert by_size[len(video.item_ids)] == [(7, 0), (7, min(int(np.diff(video.seen.indptr).max()) + 3, 11))]


def test_self_check_refuses_an_index_that_cannot_serve_max_k(
    tmp_path, domains, make_artifact, monkeypatch
) -> None:
    artifact = make_artifact(tmp_path, domains, use_faiss=False)
    real = model_mod.load_index
    monkeypatch.setattr(model_mod, "load_index", lambda *a, **kw: Recording(real(*a, **kw), 5))
    ServingModel.from_artifact(artifact.path, max_k=5)
    with pytest.raises(ArtifactError, match=r"cannot search at k=10 .*serve max_k 10.*over this index's limit"):
        ServingModel.from_artifact(artifact.path, max_k=10)


@pytest.fixture
def fake_gpu(monkeypatch):
    """faiss "has" a GPU whose index refuses k past its limit and concurrent
    searches; torch "has" CUDA (an ExactIndex on CPU, serialised like one)."""
    import faiss

    class FakeGpu:
        def __init__(self, cpu) -> None:
            self.cpu, self.ntotal, self.d, self.calls = cpu, cpu.ntotal, cpu.d, []
            self.busy = threading.Lock()

        def search(self, x, k):
            if not self.busy.acquire(blocking=False):
                raise AssertionError("two threads searched one GPU index at once")
            try:
                if k > FAISS_GPU_MAX_K:
                    raise RuntimeError(f"k {k} > {FAISS_GPU_MAX_K} is not supported on the GPU")
                self.calls.append(k)
                return self.cpu.search(x, k)
            finally:
                self.busy.release()

    made: dict[str, list] = {"gpu": [], "exact": []}

    def to_gpus(index, *args, **kwargs):
        made["gpu"].append(FakeGpu(index))
        return made["gpu"][-1]

    def exact(item_emb, device="auto", **kwargs):
        made["exact"].append(device)
        return ExactIndex(item_emb, device="cpu", serialize=device == "cuda", **kwargs)

    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", to_gpus, raising=False)
    monkeypatch.setattr(faiss_mod, "faiss_gpu_count", lambda: 1)
    monkeypatch.setattr(index_pkg, "faiss_gpu_count", lambda: 1)
    monkeypatch.setattr(index_pkg, "cuda_available", lambda: True)
    monkeypatch.setattr(index_pkg, "ExactIndex", exact)
    return made


@needs_faiss
def test_gpu_model_serves_k_past_the_faiss_gpu_limit_by_torch(tmp_path, make_artifact, fake_gpu) -> None:
    emb = big_domain()
    artifact = make_artifact(tmp_path, {"books": emb})
    max_k, deny = 2000, 100  # 2000 + 40 seen + 100 denied > 2048
    model = ServingModel.from_artifact(artifact.path, max_k=max_k, max_filter_ids=deny)
    index = model.domains["books"].index
    assert isinstance(index, FaissIndex) and index.on_gpu
    assert isinstance(index.large_k_index, ExactIndex) and fake_gpu["exact"] == ["cuda"]
    assert fake_gpu["gpu"][-1].calls == [max_k]  # self-check at max k; the worst case went to torch
    denied = tuple(f"b{j}" for j in range(deny))
    got = model.recommend("u1", "books", max_k, item_filter=ItemFilter(deny=denied))
    exclude = np.concatenate([emb.seen.row(1), np.arange(deny)])
    assert list(got.item_ids) == brute(emb, 1, max_k, exclude)
    assert fake_gpu["gpu"][-1].calls == [max_k]  # still: served by the torch path
    assert list(model.recommend("u2", "books", 10).item_ids) == brute(emb, 2, 10, emb.seen.row(2))
    assert fake_gpu["gpu"][-1].calls == [max_k, 10 + 40]

    errors: list[BaseException] = []

    def many(user: str) -> None:
        try:
            for k in (5, 50, 500):
                model.recommend(user, "books", k)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=many, args=(f"u{i % 6}",)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


@needs_faiss
def test_gpu_model_within_the_limit_keeps_one_index(tmp_path, make_artifact, fake_gpu) -> None:
    artifact = make_artifact(tmp_path, {"books": big_domain()})
    model = ServingModel.from_artifact(artifact.path, max_k=100, max_filter_ids=10)
    index = model.domains["books"].index
    assert index.on_gpu and index.large_k_index is None and fake_gpu["exact"] == []


def test_config_and_cli_accept_cuda(tmp_path, domains, make_artifact, monkeypatch, capsys) -> None:
    assert ServeConfig(index_device="cuda").index_device == "cuda"
    with pytest.raises(ValueError, match="'auto', 'cpu' or 'cuda'"):
        ServeConfig(index_device="gpu")
    artifact = make_artifact(tmp_path, domains, use_faiss=False)
    monkeypatch.setattr(index_pkg, "faiss_gpu_count", lambda: 0)
    monkeypatch.setattr(index_pkg, "cuda_available", lambda: False)
    code = main(["recommend", "--artifact", str(artifact.path), "--domain", "books", "--k", "3",
                 "--all-users", "--out", str(tmp_path / "out.csv"), "--index-device", "cuda",
                 "--no-progress"])
    assert code == 2
    assert "index device 'cuda': no GPU" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_available(), reason="needs a CUDA device")
def test_cuda_model_serves_large_k_exactly(tmp_path, make_artifact) -> None:
    emb = big_domain(n_items=5000)
    artifact = make_artifact(tmp_path, {"books": emb}, use_faiss=faiss_available())
    model = ServingModel.from_artifact(artifact.path, device="cuda", max_k=3000, max_filter_ids=200)
    index = model.domains["books"].index
    assert getattr(index, "on_gpu", False)
    if faiss_gpu_count():
        assert index.large_k_index is not None
    got = model.recommend("u0", "books", 3000, item_filter=ItemFilter(deny=("b1", "b2")))
    assert len(got.item_ids) == 3000 and not {"b1", "b2"} & set(got.item_ids)
    assert not set(got.item_ids) & set(emb.item_ids[emb.seen.row(0)])

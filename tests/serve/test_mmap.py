"""Serving maps the artifact's arrays and faiss index read-only from its files
(processes share one copy in the page cache) and answers exactly as a model read
into memory does."""

from __future__ import annotations

import mmap
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from recxfer.artifacts import save_domain, save_transfer, write_artifact
from recxfer.index import FaissIndex, faiss_available
from recxfer.serve import ItemFilter, RecommendQuery, ServingModel
from recxfer.types import DomainEmbeddings, DomainTransfer, ItemToItemScorer, SeenItems


def _mapped(array: np.ndarray) -> bool:
    """Whether ``array``'s memory is a file mapping (a memmap or a view of one)."""
    while array is not None:
        if isinstance(array, np.memmap) or isinstance(array, mmap.mmap):
            return True
        array = getattr(array, "base", None)
    return False


def _maps(path: Path) -> bool:
    """Whether this process maps ``path``."""
    return str(path.resolve()) in Path("/proc/self/maps").read_text()


def _domain(name: str, n_users: int, n_items: int, rng: np.random.Generator, transfer_users: int = 0):
    users = [f"u{i}" for i in range(n_users)]  # the same users in every domain
    pairs = rng.integers(0, n_items, size=(2, n_users * 3))
    pairs[0] = np.repeat(np.arange(n_users), 3)
    return DomainEmbeddings(
        domain=name,
        user_ids=np.array(users, dtype=object),
        user_emb=rng.standard_normal((n_users, 8)).astype(np.float32),
        user_origin=np.array(["warm"] * (n_users - transfer_users) + ["transfer"] * transfer_users,
                             dtype=object),
        item_ids=np.array([f"{name}-i{j}" for j in range(n_items)], dtype=object),
        item_emb=rng.standard_normal((n_items, 8)).astype(np.float32),
        seen=SeenItems.from_pairs(n_users, pairs[0], pairs[1]),
        item_popularity=rng.integers(0, 50, n_items).astype(np.int64),
    )


@pytest.fixture(scope="module")
def artifact_path(tmp_path_factory) -> Path:
    """Source ``video`` (faiss Flat), target ``books`` (faiss HNSW) with an
    item-to-item transfer; the same users in both, the last 5 cold in ``books``."""
    if not faiss_available():
        pytest.skip("faiss is not installed")
    rng = np.random.default_rng(5)
    video, books = _domain("video", 40, 300, rng), _domain("books", 40, 500, rng, transfer_users=5)
    dense = rng.random((300, 500)) * (rng.random((300, 500)) < 0.05)
    scorer = ItemToItemScorer(video.item_ids, books.item_ids, ("itemknn",),
                              (sp.csr_matrix(dense.astype(np.float32)),), (1.0,),
                              books.item_popularity.astype(np.float32), 0.1, 0.2)
    root = tmp_path_factory.mktemp("mmap")
    with write_artifact(root, config={}, data_fingerprint="x", version="v1") as builder:
        meta = {}
        for emb, factory in ((video, "Flat"), (books, "HNSW16")):
            save_domain(builder.path, emb)
            file = f"domains/{emb.domain}/index.faiss"
            FaissIndex.build(emb.item_emb, factory).save(builder.path / file)
            meta[emb.domain] = {"role": "source" if emb.domain == "video" else "target",
                                "users": 40, "items": len(emb.item_ids), "dim": 8,
                                "index": {"factory": factory, "file": file}}
        save_transfer(builder.path, DomainTransfer("video", "books", scorer))
        builder.extra["domains"] = meta
        builder.extra["transfer"] = {"books": {"source": "video"}}
    return root / "v1"


@pytest.fixture(scope="module")
def mapped(artifact_path) -> ServingModel:
    return ServingModel.from_artifact(artifact_path, device="cpu")


@pytest.fixture(scope="module")
def in_memory(artifact_path) -> ServingModel:
    return ServingModel.from_artifact(artifact_path, device="cpu", mmap=False)


def test_arrays_and_indexes_are_mapped_read_only(mapped, in_memory, artifact_path):
    for served in mapped.domains.values():
        emb = served.emb
        for array in (emb.user_emb, emb.item_emb, emb.item_popularity, emb.seen.indptr, emb.seen.indices):
            assert isinstance(array, np.memmap) and not array.flags.writeable
    matrix = mapped.transfers["books"].scorer.matrices[0]
    assert _mapped(matrix.data) and _mapped(matrix.indices)  # (indptr: small, may be converted)
    assert _mapped(mapped.transfers["books"].scorer.popularity)
    for served in in_memory.domains.values():
        assert not _mapped(served.emb.item_emb) and served.emb.item_emb.flags.writeable
    for name in ("video", "books"):  # the faiss indexes too (IO_FLAG_MMAP_IFC)
        assert _maps(artifact_path / f"domains/{name}/index.faiss")
    with pytest.raises(ValueError, match="read-only"):
        mapped.domains["books"].emb.item_emb[0, 0] = 1.0


def _same(a, b) -> None:
    assert list(a.item_ids) == list(b.item_ids)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6, atol=1e-6)
    assert getattr(a, "user_origin", None) == getattr(b, "user_origin", None)


def test_answers_equal_a_model_read_into_memory(mapped, in_memory):
    books = in_memory.domains["books"].emb
    allow = ItemFilter(allow=tuple(books.item_ids[::3]))
    deny = ItemFilter(deny=tuple(books.item_ids[:40]))
    queries = [RecommendQuery(f"u{i}", domain, k, exclude, item_filter)
               for i in range(40) for domain in ("books", "video")
               for k, exclude, item_filter in ((10, True, None), (25, False, deny), (7, True, allow))]
    queries.append(RecommendQuery("nobody", "books", 5))
    got = mapped.recommend_many(queries, popularity_fallback=True)
    want = in_memory.recommend_many(queries, popularity_fallback=True)
    assert {r.user_origin for r in got} >= {"warm", "transfer", "popularity"}
    for a, b in zip(got, want):
        _same(a, b)
    for item in books.item_ids[:20]:
        _same(mapped.similar_items("books", item, 10, deny), in_memory.similar_items("books", item, 10, deny))
    histories = [[f"video-i{j}" for j in range(start, start + 6)] for start in range(0, 60, 6)]
    for a, b in zip(mapped.recommend_from_histories("video", histories, "books", 15, allow),
                    in_memory.recommend_from_histories("video", histories, "books", 15, allow)):
        _same(a, b)


@pytest.mark.parametrize("factory", ["Flat", "HNSW16", "IVF8,Flat"])
def test_a_mapped_faiss_index_searches_like_a_read_one(factory, tmp_path):
    if not faiss_available():
        pytest.skip("faiss is not installed")
    rng = np.random.default_rng(1)
    items = rng.standard_normal((2000, 16)).astype(np.float32)
    FaissIndex.build(items, factory, use_gpu=False, params="nprobe=4" if "IVF" in factory else "").save(
        tmp_path / "x.faiss")
    queries = rng.standard_normal((50, 16)).astype(np.float32)
    exclude = [rng.integers(0, 2000, 5) for _ in range(50)]
    read = FaissIndex.load(tmp_path / "x.faiss", factory, use_gpu=False).search(queries, 20, exclude)
    mapped = FaissIndex.load(tmp_path / "x.faiss", factory, use_gpu=False, mmap=True)
    got = mapped.search(queries, 20, exclude)
    np.testing.assert_array_equal(got.idx, read.idx)
    np.testing.assert_allclose(got.scores, read.scores, rtol=1e-6)
    assert _maps(tmp_path / "x.faiss")


def test_an_exact_index_shares_a_mapped_table_without_warning(tmp_path):
    from recxfer.index import ExactIndex

    items = np.random.default_rng(2).standard_normal((100, 4)).astype(np.float32)
    np.save(tmp_path / "items.npy", items)
    table = np.load(tmp_path / "items.npy", mmap_mode="r")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        index = ExactIndex(table, device="cpu")
    want = ExactIndex(items, device="cpu").search(items[:5], 3)
    np.testing.assert_array_equal(index.search(items[:5], 3).idx, want.idx)


def test_serving_from_faiss_imports_no_torch(artifact_path):
    """torch (~150 MB private per process) is loaded only for exact torch search."""
    import subprocess
    import sys

    code = ("import sys; from recxfer.serve import ServingModel; "
            f"m = ServingModel.from_artifact({str(artifact_path)!r}, device='cpu'); "
            "m.recommend('u1', 'books', 5); assert 'torch' not in sys.modules, 'torch imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]

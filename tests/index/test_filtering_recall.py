"""Allow-list top-k (``topk_among``), the recall report stored in manifests,
faiss search parameters, and which index ``load_index`` serves with."""

from __future__ import annotations

import os

import numpy as np
import pytest

from recxfer.index import (
    ExactIndex,
    FaissIndex,
    faiss_available,
    index_recall,
    load_index,
    recall_vs_exact,
    topk_among,
)

needs_faiss = pytest.mark.skipif(not faiss_available(), reason="faiss is not installed")


def naive_among(items, query, candidates, k, exclude=()):
    """Loop over the candidates: float64 scores, best first, ties by position."""
    cands = sorted(set(int(c) for c in candidates) - set(int(e) for e in exclude))
    scored = sorted(((-float(items[c].astype(np.float64) @ query), c) for c in cands))[:k]
    return [c for _, c in scored]


@pytest.mark.parametrize("k", [1, 3, 8])
def test_topk_among_equals_a_naive_loop(k):
    rng = np.random.default_rng(3)
    items = rng.standard_normal((50, 6)).astype(np.float32)
    queries = rng.standard_normal((4, 6)).astype(np.float32)
    candidates = [rng.choice(50, 6, replace=False), np.array([7, 7, 3]), np.array([], dtype=np.int64),
                  np.arange(50)]
    exclude = [candidates[0][:2], np.array([3]), np.array([1]), np.arange(0, 50, 2)]
    result = topk_among(queries, items, candidates, k, exclude)
    assert result.idx.shape == (4, k) and result.idx.dtype == np.int64
    assert result.scores.dtype == np.float32
    for row in range(4):
        want = naive_among(items, queries[row].astype(np.float64), candidates[row], k, exclude[row])
        got = result.idx[row]
        assert got[: len(want)].tolist() == want
        assert (got[len(want):] == -1).all() and np.isneginf(result.scores[row, len(want):]).all()
        np.testing.assert_allclose(result.scores[row, : len(want)], items[want] @ queries[row], rtol=1e-5)


def test_topk_among_validates():
    items = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="k must be"):
        topk_among(items[:1], items, [np.array([0])], 0)
    with pytest.raises(ValueError, match="one row per query"):
        topk_among(items[:2], items, [np.array([0])], 1)


def test_recall_vs_exact_counts_shared_items_and_ignores_padding():
    exact = np.array([[1, 2, 3, 4], [5, 6, -1, -1], [-1, -1, -1, -1]])
    approx = np.array([[4, 3, 9, 8], [6, 5, 7, -1], [1, 2, 3, 4]])
    assert recall_vs_exact(approx, exact) == pytest.approx((0.5 + 1.0) / 2)
    assert recall_vs_exact(exact, exact) == 1.0
    with pytest.raises(ValueError):
        recall_vs_exact(approx[:2], exact)


def blobs(n_items=3000, n_users=400, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((40, dim)) * 3
    items = centers[rng.integers(0, 40, n_items)] + rng.standard_normal((n_items, dim))
    users = centers[rng.integers(0, 40, n_users)] + rng.standard_normal((n_users, dim))
    return items.astype(np.float32), users.astype(np.float32)


@needs_faiss
def test_index_recall_exact_is_one_and_ivf_improves_with_nprobe():
    items, users = blobs()
    flat = index_recall(FaissIndex.build(items, "Flat", use_gpu=False), items, users, (10, 100))
    assert flat == {"queries": 400, "recall@10": 1.0, "recall@100": 1.0}
    low = index_recall(FaissIndex.build(items, "IVF64,Flat", use_gpu=False), items, users, (10,))
    high = index_recall(
        FaissIndex.build(items, "IVF64,Flat", use_gpu=False, params="nprobe=64"), items, users, (10,)
    )
    assert low["recall@10"] < 0.9 < high["recall@10"] == 1.0
    sampled = index_recall(FaissIndex.build(items, "Flat", use_gpu=False), items, users, (5,),
                           max_queries=50)
    assert sampled["queries"] == 50


@needs_faiss
def test_index_recall_caps_k_at_the_catalogue():
    items, users = blobs(n_items=30, n_users=10)
    report = index_recall(FaissIndex.build(items, "Flat", use_gpu=False), items, users, (100,))
    assert report["recall@100"] == 1.0


@needs_faiss
def test_search_params_survive_save_and_load(tmp_path):
    import faiss

    items, _ = blobs(n_items=2000)
    index = FaissIndex.build(items, "IVF32,Flat", use_gpu=False, params="nprobe=7")
    index.save(tmp_path / "i.faiss")
    loaded = FaissIndex.load(tmp_path / "i.faiss", "IVF32,Flat", use_gpu=False)
    assert faiss.extract_index_ivf(loaded._cpu_index).nprobe == 7


@needs_faiss
def test_load_index_picks_the_backend(tmp_path):
    items, users = blobs(n_items=500)
    FaissIndex.build(items, "Flat", use_gpu=False).save(tmp_path / "i.faiss")
    stored = load_index(tmp_path / "i.faiss", "Flat", items, device="cpu")
    assert isinstance(stored, FaissIndex) and not stored.on_gpu
    exact = load_index(None, "Flat", items, device="cpu")
    assert isinstance(exact, ExactIndex) and exact.device.type == "cpu"
    np.testing.assert_array_equal(stored.search(users, 5).idx, exact.search(users, 5).idx)
    auto = load_index(tmp_path / "i.faiss", "Flat", items)  # CUDA when present, else faiss
    assert auto.ntotal == 500
    with pytest.raises(ValueError, match="device"):
        load_index(None, "Flat", items, device="tpu")


@needs_faiss
def test_set_search_threads_is_per_thread():
    import threading

    import faiss

    from recxfer.index import set_search_threads

    seen = []

    def worker():
        set_search_threads(1)
        seen.append(faiss.omp_get_max_threads())
        set_search_threads(0)
        seen.append(faiss.omp_get_max_threads())

    before = faiss.omp_get_max_threads()
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [1, os.cpu_count()]
    assert faiss.omp_get_max_threads() == before  # this thread is untouched
    with pytest.raises(ValueError):
        set_search_threads(-1)

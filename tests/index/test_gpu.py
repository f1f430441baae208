"""GPU behaviour of the indexes, tested on CPU with stand-ins, plus real-CUDA checks.

- One search at a time per GPU index: a fake faiss GPU index (``FakeGpuIndex``,
  put in place of ``faiss.index_cpu_to_all_gpus``) fails any concurrent entry and
  any ``k`` past faiss GPU's limit, as the real one would; many threads drive it.
  CPU indexes must keep searching concurrently (a barrier only they can pass).
- ``k`` + exclusions past ``FAISS_GPU_MAX_K``: served by the torch exact index
  (``large_k_index``) or the CPU copy, never by the GPU index.
- ``device="cuda"`` without faiss GPU picks torch exact top-k on CUDA; the same
  code path runs here with ``device="cpu"`` against a numpy reference.

Tests marked ``gpu`` need a CUDA device and are skipped without one
(``pytest -m gpu``; ``bench/gpu.sh`` runs this file on the GPU machine).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

import recxfer.index as index_pkg
from recxfer.index import (
    FAISS_GPU_MAX_K,
    ExactIndex,
    FaissIndex,
    cuda_available,
    faiss_available,
    faiss_gpu_count,
    load_index,
)
from recxfer.index import faiss_index as faiss_mod

needs_faiss = pytest.mark.skipif(not faiss_available(), reason="faiss is not installed")
needs_cuda = pytest.mark.skipif(not cuda_available(), reason="needs a CUDA device")
needs_faiss_gpu = pytest.mark.skipif(faiss_gpu_count() == 0, reason="needs faiss with a GPU")

THREADS, SEARCHES = 16, 12


def reference(items: np.ndarray, queries: np.ndarray, k: int,
              exclude: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """Numpy brute force (float64): ``(n, k)`` positions, excluded ones left out."""
    scores = queries.astype(np.float64) @ items.astype(np.float64).T  # (n, I)
    out = np.full((len(queries), k), -1, dtype=np.int64)
    for row in range(len(queries)):
        s = scores[row].copy()
        if exclude is not None:
            s[np.asarray(exclude[row], dtype=np.int64)] = -np.inf
        order = [j for j in np.argsort(-s, kind="stable") if np.isfinite(s[j])][:k]
        out[row, : len(order)] = order
    return out


def assert_close_to_reference(items, queries, k, exclude, result, atol=1e-4) -> None:
    """GPU float32 maths may swap near-tied items: the scores of the returned
    items must equal the reference top-k scores, and none may be excluded."""
    ref = reference(items, queries, k, exclude)
    assert result.idx.shape == ref.shape
    exact = queries.astype(np.float64) @ items.astype(np.float64).T  # (n, I)
    for row in range(len(queries)):
        got, want = result.idx[row], ref[row]
        assert (got >= 0).sum() == (want >= 0).sum()
        got, want = got[got >= 0], want[want >= 0]
        assert len(np.unique(got)) == len(got) and not np.isin(got, exclude[row]).any()
        np.testing.assert_allclose(exact[row, got], exact[row, want], atol=atol)


def data(n_items: int = 300, n_queries: int = 8, dim: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n_items, dim)).astype(np.float32),
            rng.standard_normal((n_queries, dim)).astype(np.float32))


class FakeGpuIndex:
    """Stands in for a faiss GPU index: refuses a second concurrent search and
    ``k > FAISS_GPU_MAX_K`` (both fail on a real one), else answers from the CPU index."""

    def __init__(self, cpu_index, delay: float = 0.001) -> None:
        self.cpu, self.delay = cpu_index, delay
        self.ntotal, self.d = cpu_index.ntotal, cpu_index.d
        self._guard = threading.Lock()
        self._inside = 0
        self.calls: list[int] = []  # k of each search
        self.overlaps = 0

    def search(self, x: np.ndarray, k: int):
        with self._guard:
            self._inside += 1
            alone = self._inside == 1
        try:
            if not alone:
                self.overlaps += 1
                raise AssertionError("two threads searched one GPU index at once")
            if k > FAISS_GPU_MAX_K:
                raise RuntimeError(f"k {k} > {FAISS_GPU_MAX_K} is not supported on the GPU")
            time.sleep(self.delay)  # widen the window a race would need
            self.calls.append(k)
            return self.cpu.search(x, k)
        finally:
            with self._guard:
                self._inside -= 1


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> list[FakeGpuIndex]:
    """faiss "has" one GPU: ``index_cpu_to_all_gpus`` returns a ``FakeGpuIndex``
    (the list collects them). torch CUDA is reported absent unless a test says so."""
    import faiss

    made: list[FakeGpuIndex] = []

    def to_gpus(index, *args, **kwargs):
        made.append(FakeGpuIndex(index))
        return made[-1]

    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", to_gpus, raising=False)
    monkeypatch.setattr(faiss_mod, "faiss_gpu_count", lambda: 1)
    monkeypatch.setattr(index_pkg, "faiss_gpu_count", lambda: 1)
    monkeypatch.setattr(index_pkg, "cuda_available", lambda: False)
    return made


def hammer(search, queries: np.ndarray, threads: int = THREADS, searches: int = SEARCHES):
    """``search(queries[rows], k, exclude)`` from many threads at once; returns
    ``(rows, k, exclude, result)`` of every call and the errors raised."""
    done: list[tuple] = []
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        start.wait()
        for _ in range(searches):
            rows = rng.choice(len(queries), size=int(rng.integers(1, 4)), replace=False)
            k = int(rng.integers(1, 20))
            exclude = [rng.choice(50, size=int(rng.integers(0, 6)), replace=False) for _ in rows]
            try:
                done.append((rows, k, exclude, search(queries[rows], k, exclude)))
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                errors.append(exc)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return done, errors


# ----------------------------------------------------------------------------- the lock


@needs_faiss
def test_faiss_gpu_index_is_searched_by_one_thread_at_a_time(fake_gpu) -> None:
    items, queries = data()
    index = FaissIndex.build(items, "Flat", use_gpu=True)
    assert index.on_gpu and len(fake_gpu) == 1
    done, errors = hammer(index.search, queries)
    assert errors == [] and fake_gpu[0].overlaps == 0
    assert len(fake_gpu[0].calls) == THREADS * SEARCHES
    for rows, k, exclude, result in done:
        np.testing.assert_array_equal(result.idx, reference(items, queries[rows], k, exclude))


class BarrierIndex:
    """A CPU "faiss index" whose searches wait for each other: they pass only when
    ``parties`` run at once (a lock around them would time the barrier out)."""

    def __init__(self, cpu_index, parties: int) -> None:
        self.cpu, self.ntotal, self.d = cpu_index, cpu_index.ntotal, cpu_index.d
        self.barrier = threading.Barrier(parties, timeout=10)

    def search(self, x, k):
        self.barrier.wait()
        return self.cpu.search(x, k)


@needs_faiss
def test_cpu_faiss_index_searches_concurrently() -> None:
    import faiss

    items, queries = data()
    cpu = faiss.IndexFlatIP(items.shape[1])
    cpu.add(items)
    index = FaissIndex(BarrierIndex(cpu, parties=4), "Flat", use_gpu=False)
    assert not index.on_gpu
    done, errors = hammer(index.search, queries, threads=4, searches=3)
    assert errors == [] and len(done) == 12


def test_exact_index_serialised_on_gpu_concurrent_on_cpu(monkeypatch) -> None:
    items, queries = data()
    assert not ExactIndex(items, device="cpu").on_gpu
    # serialize=True is what device="cuda" gets: the same search code on CPU here.
    gpu_like = ExactIndex(items, device="cpu", serialize=True, chunk=2)
    inside = {"now": 0, "max": 0}
    guard = threading.Lock()
    real = gpu_like._topk

    def watched(q, k_fetch):
        with guard:
            inside["now"] += 1
            inside["max"] = max(inside["max"], inside["now"])
        try:
            time.sleep(0.001)
            return real(q, k_fetch)
        finally:
            with guard:
                inside["now"] -= 1

    monkeypatch.setattr(gpu_like, "_topk", watched)
    done, errors = hammer(gpu_like.search, queries)
    assert errors == [] and inside["max"] == 1
    for rows, k, exclude, result in done:
        np.testing.assert_array_equal(result.idx, reference(items, queries[rows], k, exclude))

    cpu = ExactIndex(items, device="cpu")
    barrier = threading.Barrier(4, timeout=10)
    real_cpu = cpu._topk

    def together(q, k_fetch):
        barrier.wait()  # passes only if 4 searches run at once
        return real_cpu(q, k_fetch)

    monkeypatch.setattr(cpu, "_topk", together)
    done, errors = hammer(cpu.search, queries, threads=4, searches=2)
    assert errors == [] and len(done) == 8


# ----------------------------------------------------------------------------- k past the GPU limit


@needs_faiss
def test_k_past_gpu_limit_is_served_by_the_cpu_copy(fake_gpu) -> None:
    items, queries = data(n_items=3000, n_queries=3)
    index = FaissIndex.build(items, "Flat", use_gpu=True)
    exclude = [np.arange(100), np.arange(0), np.arange(0, 3000, 7)]
    for k in (FAISS_GPU_MAX_K + 1, 2000):  # k alone, or k + exclusions, over the limit
        result = index.search(queries, k, exclude)
        np.testing.assert_array_equal(result.idx, reference(items, queries, k, exclude))
    assert fake_gpu[0].calls == []  # the GPU index never saw those
    index.search(queries, 10, exclude)
    assert fake_gpu[0].calls == [10 + 3000 // 7 + 1]


@needs_faiss
def test_load_index_routes_large_k_to_torch_exact_when_limits_exceed(
    fake_gpu, monkeypatch, tmp_path, caplog
) -> None:
    items, queries = data(n_items=3000, n_queries=3)
    path = tmp_path / "index.faiss"
    FaissIndex.build(items, "Flat", use_gpu=False).save(path)
    made: list[str] = []

    def exact(item_emb, device="auto", **kwargs):  # torch "CUDA" index, on CPU here
        made.append(device)
        return ExactIndex(item_emb, device="cpu", serialize=device == "cuda", **kwargs)

    monkeypatch.setattr(index_pkg, "cuda_available", lambda: True)
    monkeypatch.setattr(index_pkg, "ExactIndex", exact)
    small = load_index(path, "Flat", items, device="auto", max_fetch=FAISS_GPU_MAX_K)
    assert isinstance(small, FaissIndex) and small.on_gpu and small.large_k_index is None
    with caplog.at_level(logging.INFO, logger="recxfer.index"):
        index = load_index(path, "Flat", items, device="auto", max_fetch=FAISS_GPU_MAX_K + 1)
    assert index.on_gpu and isinstance(index.large_k_index, ExactIndex) and made == ["cuda"]
    assert "torch exact top-k on CUDA" in caplog.text
    exclude = [np.arange(60)] * 3
    result = index.search(queries, 2000, exclude)  # fetch 2060: the torch index
    np.testing.assert_array_equal(result.idx, reference(items, queries, 2000, exclude))
    assert fake_gpu[-1].calls == []
    done, errors = hammer(index.search, queries)  # small k: the GPU index, serialised
    assert errors == [] and fake_gpu[-1].overlaps == 0 and len(fake_gpu[-1].calls) == len(done)


@needs_faiss
def test_ivf_nprobe_past_gpu_limit_stays_on_cpu(fake_gpu, caplog) -> None:
    import faiss

    items, queries = data(n_items=2000)
    index = FaissIndex.build(items, "IVF8,Flat", use_gpu=False)._cpu_index
    faiss.extract_index_ivf(index).nprobe = FAISS_GPU_MAX_K + 1
    with caplog.at_level(logging.WARNING, logger="recxfer.index.faiss_index"):
        kept = FaissIndex(index, "IVF8,Flat", use_gpu=True)
    assert not kept.on_gpu and fake_gpu == []
    assert "nprobe" in caplog.text and str(FAISS_GPU_MAX_K) in caplog.text
    faiss.extract_index_ivf(index).nprobe = 8
    assert FaissIndex(index, "IVF8,Flat", use_gpu=True).on_gpu


# ----------------------------------------------------------------------------- device="cuda"


@pytest.mark.parametrize("with_file", [True, False])
def test_device_cuda_without_faiss_gpu_picks_torch_exact(monkeypatch, tmp_path, with_file) -> None:
    items, _ = data()
    path = None
    if with_file:
        if not faiss_available():
            pytest.skip("faiss is not installed")
        path = tmp_path / "index.faiss"
        FaissIndex.build(items, "IVF4,Flat", use_gpu=False).save(path)
    made: list[str] = []

    def exact(item_emb, device="auto", **kwargs):
        made.append(device)
        return ExactIndex(item_emb, device="cpu", **kwargs)

    monkeypatch.setattr(index_pkg, "faiss_gpu_count", lambda: 0)
    monkeypatch.setattr(index_pkg, "cuda_available", lambda: True)
    monkeypatch.setattr(index_pkg, "ExactIndex", exact)
    index = load_index(path, "IVF4,Flat", items, device="cuda")
    assert isinstance(index, ExactIndex) and made == ["cuda"]
    if with_file:  # "auto" keeps an approximate faiss index on CPU instead
        assert isinstance(load_index(path, "IVF4,Flat", items, device="auto"), FaissIndex)


def test_device_cuda_without_any_gpu_is_refused(monkeypatch) -> None:
    items, _ = data()
    monkeypatch.setattr(index_pkg, "faiss_gpu_count", lambda: 0)
    monkeypatch.setattr(index_pkg, "cuda_available", lambda: False)
    with pytest.raises(ValueError, match="index device 'cuda': no GPU"):
        load_index(None, "Flat", items, device="cuda")
    with pytest.raises(ValueError, match="unknown index device"):
        load_index(None, "Flat", items, device="gpu")


@pytest.mark.parametrize("chunk", [None, 1, 3])
def test_exact_torch_path_equals_numpy_reference(chunk) -> None:
    """The torch path ``device="cuda"`` runs (chunked matmul + topk, results to
    the host), here on CPU."""
    items, queries = data(n_items=500, n_queries=7)
    index = ExactIndex(items, device="cpu", chunk=chunk)
    exclude = [np.arange(i * 3) for i in range(7)]
    for k in (1, 10, 499):
        result = index.search(queries, k, exclude)
        np.testing.assert_array_equal(result.idx, reference(items, queries, k, exclude))
        assert result.idx.dtype == np.int64 and result.scores.dtype == np.float32
    assert index.search(queries[:0], 5).idx.shape == (0, 5)


# ----------------------------------------------------------------------------- real CUDA


@pytest.mark.gpu
@needs_cuda
def test_cuda_exact_index_equals_reference_and_survives_threads() -> None:
    items, queries = data(n_items=4000, n_queries=64, dim=32)
    index = load_index(None, "Flat", items, device="cuda")
    assert isinstance(index, ExactIndex) and index.on_gpu and index.device.type == "cuda"
    exclude = [np.arange(i) for i in range(64)]
    for k in (1, 100, FAISS_GPU_MAX_K + 500):
        assert_close_to_reference(items, queries, k, exclude, index.search(queries, k, exclude))
    done, errors = hammer(index.search, queries)
    assert errors == [] and len(done) == THREADS * SEARCHES
    for rows, k, exclude, result in done:
        assert_close_to_reference(items, queries[rows], k, exclude, result)


@pytest.mark.gpu
@needs_faiss_gpu
def test_real_faiss_gpu_index_threads_and_large_k(tmp_path) -> None:
    items, queries = data(n_items=5000, n_queries=16, dim=16)
    path = tmp_path / "index.faiss"
    FaissIndex.build(items, "Flat", use_gpu=False).save(path)
    index = load_index(path, "Flat", items, device="cuda", max_fetch=4000)
    assert isinstance(index, FaissIndex) and index.on_gpu
    done, errors = hammer(index.search, queries)
    assert errors == [] and len(done) == THREADS * SEARCHES
    for rows, k, exclude, result in done:
        assert_close_to_reference(items, queries[rows], k, exclude, result)
    exclude = [np.arange(500)] * 16
    result = index.search(queries, 3000, exclude)  # fetch 3500 > 2048: not the GPU index
    assert_close_to_reference(items, queries, 3000, exclude, result)

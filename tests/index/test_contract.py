"""Contract tests run against every index backend (``implicit`` style), exact-vs-
approximate recall checks (faiss contrib style), and the exclusion helpers.

Every numeric check compares with a numpy brute force in float64: random
float32 data makes ties practically impossible, so ids must match exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from recxfer.index import ExactIndex, FaissIndex, build_index, faiss_available, recall_vs_exact
from recxfer.index.base import drop_excluded, fetch_size
from recxfer.types import SearchResult

needs_faiss = pytest.mark.skipif(not faiss_available(), reason="faiss is not installed")

N_ITEMS, DIM = 60, 8


# ----------------------------------------------------------------------------- reference


def brute_force(
    items: np.ndarray, queries: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Naive top-k: float64 scores, excluded items at -inf, padding -1 / -inf."""
    scores = queries.astype(np.float64) @ items.astype(np.float64).T  # (n, I)
    n = queries.shape[0]
    out_idx = np.full((n, k), -1, dtype=np.int64)
    out_scores = np.full((n, k), -np.inf, dtype=np.float64)
    for row in range(n):
        s = scores[row].copy()
        if exclude is not None:
            s[np.asarray(exclude[row], dtype=np.int64)] = -np.inf
        order = [int(j) for j in np.argsort(-s, kind="stable") if np.isfinite(s[j])][:k]
        out_idx[row, : len(order)] = order
        out_scores[row, : len(order)] = s[order]
    return out_idx, out_scores


def assert_matches_brute_force(result: SearchResult, ref_idx: np.ndarray, ref_scores: np.ndarray) -> None:
    assert result.idx.shape == ref_idx.shape
    assert result.idx.dtype == np.int64
    assert result.scores.dtype == np.float32
    np.testing.assert_array_equal(result.idx, ref_idx)
    finite = np.isfinite(ref_scores)
    np.testing.assert_array_equal(np.isfinite(result.scores), finite)
    assert np.all(result.scores[~finite] == -np.inf)
    np.testing.assert_allclose(result.scores[finite], ref_scores[finite], rtol=1e-5, atol=1e-5)


def random_data(n_items: int = N_ITEMS, n_queries: int = 9, dim: int = DIM, seed: int = 0):
    rng = np.random.default_rng(seed)
    items = rng.standard_normal((n_items, dim)).astype(np.float32)
    queries = rng.standard_normal((n_queries, dim)).astype(np.float32)
    return items, queries


# ----------------------------------------------------------------------------- contract mixin


class IndexContract:
    """Mixin: subclasses define ``make(items)`` returning an ``ItemIndex``."""

    def make(self, items: np.ndarray):  # pragma: no cover - overridden
        raise NotImplementedError

    def test_sizes(self) -> None:
        items, _ = random_data()
        index = self.make(items)
        assert index.ntotal == N_ITEMS
        assert index.dim == DIM

    @pytest.mark.parametrize("k", [1, 5, 17])
    def test_topk_equals_brute_force(self, k: int) -> None:
        items, queries = random_data()
        result = self.make(items).search(queries, k)
        assert_matches_brute_force(result, *brute_force(items, queries, k))
        # best first
        assert np.all(np.diff(result.scores, axis=1) <= 0)

    def test_float64_and_non_contiguous_queries_accepted(self) -> None:
        items, queries = random_data()
        index = self.make(items)
        wide = np.asfortranarray(queries.astype(np.float64))
        a = index.search(wide, 6)
        b = index.search(queries, 6)
        np.testing.assert_array_equal(a.idx, b.idx)
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)

    def test_batch_equals_single_queries(self) -> None:
        items, queries = random_data(seed=1)
        index = self.make(items)
        rng = np.random.default_rng(3)
        exclude = [rng.choice(N_ITEMS, size=rng.integers(0, 8), replace=False) for _ in queries]
        batch = index.search(queries, 7, exclude)
        for row in range(len(queries)):
            single = index.search(queries[row : row + 1], 7, [exclude[row]])
            np.testing.assert_array_equal(single.idx[0], batch.idx[row])
            np.testing.assert_allclose(single.scores[0], batch.scores[row], rtol=1e-6)

    def test_exclusion_equals_brute_force(self) -> None:
        items, queries = random_data(seed=2)
        index = self.make(items)
        k = 10
        plain = index.search(queries, k)
        rng = np.random.default_rng(5)
        # Row 0 bans exactly its own top-k (all must move out), row 1 bans nothing,
        # the rest ban a random mix (lists and arrays, some duplicated).
        exclude: list = [plain.idx[0].copy(), np.array([], dtype=np.int64)]
        for row in range(2, len(queries)):
            banned = rng.choice(N_ITEMS, size=int(rng.integers(1, 20)), replace=False)
            exclude.append(list(np.concatenate([banned, banned[:2]])) if row % 2 else banned)
        result = index.search(queries, k, exclude)
        assert_matches_brute_force(result, *brute_force(items, queries, k, exclude))
        for row, banned in enumerate(exclude):
            assert not np.isin(result.idx[row], np.asarray(banned)).any()
            # The catalogue has enough admissible items: exactly k real results.
            assert (result.idx[row] >= 0).all()
            assert len(set(result.idx[row].tolist())) == k
        # Nothing but the excluded items moved: the row without exclusions is unchanged.
        np.testing.assert_array_equal(result.idx[1], plain.idx[1])
        assert set(result.idx[0].tolist()).isdisjoint(plain.idx[0].tolist())

    def test_exclusion_leaving_fewer_than_k_pads(self) -> None:
        items, queries = random_data(n_items=12, n_queries=3, seed=4)
        index = self.make(items)
        exclude = [np.arange(9), np.arange(12), np.array([0])]  # 3, 0 and 11 admissible
        result = index.search(queries, 5, exclude)
        assert_matches_brute_force(result, *brute_force(items, queries, 5, exclude))
        assert (result.idx[0, 3:] == -1).all() and (result.scores[0, 3:] == -np.inf).all()
        assert (result.idx[1] == -1).all() and (result.scores[1] == -np.inf).all()
        assert (result.idx[2] >= 0).all()

    def test_k_larger_than_catalogue_pads_and_returns_all(self) -> None:
        items, queries = random_data(n_items=7, n_queries=4, seed=6)
        index = self.make(items)
        result = index.search(queries, 10)
        assert result.idx.shape == (4, 10)
        assert_matches_brute_force(result, *brute_force(items, queries, 10))
        for row in range(4):
            assert sorted(result.idx[row, :7].tolist()) == list(range(7))
        assert (result.idx[:, 7:] == -1).all()
        assert (result.scores[:, 7:] == -np.inf).all()
        excl = index.search(queries, 10, [np.array([2, 5])] * 4)
        assert_matches_brute_force(excl, *brute_force(items, queries, 10, [np.array([2, 5])] * 4))
        assert (excl.idx[:, 5:] == -1).all()

    @pytest.mark.parametrize("k", [0, -3])
    def test_k_below_one_raises(self, k: int) -> None:
        items, queries = random_data()
        with pytest.raises(ValueError, match="k"):
            self.make(items).search(queries, k)

    @pytest.mark.parametrize("shape", [(3, DIM + 1), (3, DIM - 1), (DIM,), (2, 3, DIM)])
    def test_wrong_query_shape_raises(self, shape: tuple[int, ...]) -> None:
        items, _ = random_data()
        with pytest.raises(ValueError):
            self.make(items).search(np.zeros(shape, dtype=np.float32), 3)

    def test_exclude_length_mismatch_raises(self) -> None:
        items, queries = random_data()
        with pytest.raises(ValueError, match="exclude"):
            self.make(items).search(queries, 3, [np.array([1])])

    def test_empty_query_batch(self) -> None:
        items, _ = random_data()
        index = self.make(items)
        for exclude in (None, []):
            result = index.search(np.zeros((0, DIM), dtype=np.float32), 4, exclude)
            assert result.idx.shape == (0, 4) and result.scores.shape == (0, 4)
            assert result.idx.dtype == np.int64 and result.scores.dtype == np.float32

    def test_empty_catalogue_rejected(self) -> None:
        with pytest.raises(ValueError):
            self.make(np.zeros((0, DIM), dtype=np.float32))


class TestExactIndex(IndexContract):
    def make(self, items):
        return ExactIndex(items, device="cpu")


class TestExactIndexSmallChunks(IndexContract):
    """Chunking the queries must not change anything (chunk smaller than the batch)."""

    def make(self, items):
        return ExactIndex(items, device="cpu", chunk=2)


@needs_faiss
class TestFaissFlat(IndexContract):
    def make(self, items):
        return FaissIndex.build(items, "Flat", use_gpu=False)


class TestBuildIndexExact(IndexContract):
    def make(self, items):
        index = build_index(items, backend="exact")
        assert isinstance(index, ExactIndex)
        return index


@needs_faiss
class TestBuildIndexFaiss(IndexContract):
    def make(self, items):
        index = build_index(items, "Flat", backend="faiss")
        assert isinstance(index, FaissIndex) and index.factory == "Flat"
        return index


class TestBuildIndexAuto(IndexContract):
    def make(self, items):
        index = build_index(items, "Flat", backend="auto")
        assert isinstance(index, FaissIndex if faiss_available() else ExactIndex)
        return index


def test_build_index_unknown_backend() -> None:
    items, _ = random_data()
    with pytest.raises(ValueError, match="backend"):
        build_index(items, backend="annoy")


# ----------------------------------------------------------------------------- faiss specifics


@needs_faiss
@pytest.mark.parametrize("factory", ["Flat", "IVF4,Flat"])
def test_faiss_save_load_round_trip(tmp_path, factory: str) -> None:
    items, queries = random_data(n_items=300, n_queries=20, seed=8)
    index = FaissIndex.build(items, factory, use_gpu=False)
    path = tmp_path / "index.faiss"
    index.save(path)
    loaded = FaissIndex.load(path, factory, use_gpu=False)
    assert loaded.ntotal == index.ntotal and loaded.dim == index.dim
    assert loaded.factory == factory
    exclude = [np.arange(row, row + 5) for row in range(len(queries))]
    for ex in (None, exclude):
        a, b = index.search(queries, 10, ex), loaded.search(queries, 10, ex)
        np.testing.assert_array_equal(a.idx, b.idx)
        np.testing.assert_array_equal(a.scores, b.scores)


def clustered_data(n_items: int = 2000, n_queries: int = 100, dim: int = 16, seed: int = 0):
    """Gaussian blobs: the data an inverted file can partition (like real embeddings)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((32, dim)) * 3
    items = centers[rng.integers(0, 32, n_items)] + rng.standard_normal((n_items, dim))
    queries = centers[rng.integers(0, 32, n_queries)] + rng.standard_normal((n_queries, dim))
    return items.astype(np.float32), queries.astype(np.float32)


@pytest.fixture(scope="module")
def clustered():
    items, queries = clustered_data()
    exact = ExactIndex(items, device="cpu").search(queries, 10)
    ref_idx, _ = brute_force(items, queries, 10)
    np.testing.assert_array_equal(exact.idx, ref_idx)  # the reference itself is right
    return items, queries, exact


@needs_faiss
@pytest.mark.parametrize(
    ("factory", "floor"),
    [("Flat", 1.0), ("IVF16,Flat", 0.8), ("HNSW16", 0.85)],
)
def test_approximate_recall_vs_exact(clustered, factory: str, floor: float) -> None:
    items, queries, exact = clustered
    approx = FaissIndex.build(items, factory, use_gpu=False).search(queries, 10)
    recall = recall_vs_exact(approx.idx, exact.idx)
    print(f"{factory}: recall@10 vs exact = {recall:.3f}")
    assert recall >= floor
    if factory == "Flat":
        np.testing.assert_array_equal(approx.idx, exact.idx)
    # Every score an approximate index reports is the true inner product.
    valid = approx.idx >= 0
    true = np.einsum("nd,nkd->nk", queries, items[np.where(valid, approx.idx, 0)])
    np.testing.assert_allclose(approx.scores[valid], true[valid], rtol=1e-4, atol=1e-4)


@needs_faiss
def test_recall_check_can_fail(clustered) -> None:
    """The recall measure is not vacuous: a shifted ranking scores 0."""
    _, _, exact = clustered
    assert recall_vs_exact(exact.idx, exact.idx) == 1.0
    assert recall_vs_exact((exact.idx + 1) % 2000 + 10_000, exact.idx) == 0.0


@needs_faiss
def test_approximate_exclusion_never_returns_banned(clustered) -> None:
    items, queries, exact = clustered
    index = FaissIndex.build(items, "IVF16,Flat", use_gpu=False)
    exclude = [exact.idx[row, :5] for row in range(len(queries))]
    result = index.search(queries, 10, exclude)
    for row, banned in enumerate(exclude):
        assert not np.isin(result.idx[row], banned).any()


# ----------------------------------------------------------------------------- helpers


def test_drop_excluded_keeps_order_and_pads() -> None:
    idx = np.array(
        [
            [4, 2, 9, 7, 1],
            [3, -1, 5, -1, -1],  # approximate index returned fewer candidates
            [8, 6, 0, 5, 2],
        ],
        dtype=np.int64,
    )
    scores = np.array(
        [
            [5.0, 4.0, 3.0, 2.0, 1.0],
            [9.0, -np.inf, 8.0, -np.inf, -np.inf],
            [0.5, 0.4, 0.3, 0.2, 0.1],
        ],
        dtype=np.float32,
    )
    exclude = [np.array([2, 7]), np.array([], dtype=np.int64), np.array([8, 6, 0, 5, 2])]
    out = drop_excluded(idx, scores, 3, exclude)
    np.testing.assert_array_equal(out.idx, [[4, 9, 1], [3, 5, -1], [-1, -1, -1]])
    np.testing.assert_array_equal(
        out.scores, np.array([[5, 3, 1], [9, 8, -np.inf], [-np.inf] * 3], dtype=np.float32)
    )
    assert out.idx.dtype == np.int64 and out.scores.dtype == np.float32


def test_drop_excluded_without_exclusion_truncates() -> None:
    idx = np.array([[1, 0, 2]], dtype=np.int64)
    scores = np.array([[3.0, 2.0, 1.0]], dtype=np.float32)
    out = drop_excluded(idx, scores, 2, None)
    np.testing.assert_array_equal(out.idx, [[1, 0]])
    np.testing.assert_array_equal(out.scores, [[3.0, 2.0]])


def test_drop_excluded_pads_when_fewer_candidates_than_k() -> None:
    idx = np.array([[1, 0], [0, 1]], dtype=np.int64)
    scores = np.array([[3.0, 2.0], [7.0, 6.0]], dtype=np.float32)
    out = drop_excluded(idx, scores, 4, [np.array([0]), np.array([], dtype=np.int64)])
    np.testing.assert_array_equal(out.idx, [[1, -1, -1, -1], [0, 1, -1, -1]])
    np.testing.assert_array_equal(
        out.scores, np.array([[3, -np.inf, -np.inf, -np.inf], [7, 6, -np.inf, -np.inf]], np.float32)
    )


@pytest.mark.parametrize("budget", [1 << 22, 0], ids=["broadcast", "per-row"])
def test_drop_excluded_matches_naive_loop_on_random_input(monkeypatch, budget: int) -> None:
    """Both exclusion paths (one broadcast comparison, or np.isin per row when the
    broadcast would be too large) agree with a naive loop."""
    import recxfer.index.base

    monkeypatch.setattr(recxfer.index.base, "_BROADCAST_BUDGET", budget)
    rng = np.random.default_rng(11)
    n, k_fetch, k = 20, 12, 5
    idx = np.stack([rng.permutation(30)[:k_fetch] for _ in range(n)]).astype(np.int64)
    idx[rng.random(idx.shape) < 0.1] = -1
    scores = -np.sort(rng.random((n, k_fetch)), axis=1).astype(np.float32)
    exclude = [rng.choice(30, size=int(rng.integers(0, 15)), replace=False) for _ in range(n)]
    out = drop_excluded(idx, scores, k, exclude)
    for row in range(n):
        kept = [(i, s) for i, s in zip(idx[row], scores[row]) if i >= 0 and i not in set(exclude[row])][:k]
        kept += [(-1, -np.inf)] * (k - len(kept))
        assert out.idx[row].tolist() == [i for i, _ in kept]
        np.testing.assert_array_equal(out.scores[row], np.array([s for _, s in kept], np.float32))


@pytest.mark.parametrize(
    ("k", "ntotal", "exclude", "expected"),
    [
        (5, 100, None, 5),
        (5, 100, [], 5),
        (5, 100, [np.array([1, 2, 3]), np.arange(7), np.array([], dtype=np.int64)], 12),
        (5, 10, [np.arange(7)], 10),  # capped at the catalogue
        (50, 10, None, 10),
        (1, 1, None, 1),
        (3, 100, [[1, 1, 1, 1]], 7),  # plain lists count by length
    ],
)
def test_fetch_size(k: int, ntotal: int, exclude, expected: int) -> None:
    assert fetch_size(k, ntotal, exclude) == expected

"""``topk_dense``: exact top-k over precomputed scores, checked against a naive loop
(ties by lower position, exclusions, allow-lists, k larger than the catalogue)."""

from __future__ import annotations

import numpy as np
import pytest

from recxfer.index import topk_dense


def naive(scores, k, exclude=(), allow=None):
    """Loop: float64 scores, best first, ties by position."""
    n_items = len(scores)
    cands = set(range(n_items)) if allow is None else {int(a) for a in allow if 0 <= a < n_items}
    cands -= {int(e) for e in exclude}
    return [c for _, c in sorted((-float(scores[c]), c) for c in cands)[:k]]


@pytest.mark.parametrize("k", [1, 3, 7, 40])
def test_topk_dense_equals_a_naive_loop(k):
    rng = np.random.default_rng(5)
    # Rounded scores: many ties, including at the k-th place.
    scores = np.round(rng.standard_normal((5, 30)), 1).astype(np.float32)
    scores[4] = 0.0  # one row all tied
    exclude = [np.array([0, 1]), np.array([], np.int64), np.arange(0, 30, 2), np.array([29, 99]),
               np.array([3])]
    allow = [None, np.array([5, 5, 2, 17, 40]), None, np.array([], np.int64), None]
    result = topk_dense(scores, k, exclude, allow)
    assert result.idx.shape == (5, k) and result.idx.dtype == np.int64
    assert result.scores.dtype == np.float32
    for row in range(5):
        want = naive(scores[row], k, exclude[row], allow[row])
        got = result.idx[row]
        assert got[: len(want)].tolist() == want, row
        assert (got[len(want):] == -1).all() and np.isneginf(result.scores[row, len(want):]).all()
        np.testing.assert_array_equal(result.scores[row, : len(want)], scores[row, want])


def test_topk_dense_without_filters_and_prefix_property():
    rng = np.random.default_rng(1)
    scores = np.round(rng.standard_normal((3, 50)), 1).astype(np.float32)
    full = topk_dense(scores, 50)
    for k in (1, 5, 17):
        np.testing.assert_array_equal(topk_dense(scores, k).idx, full.idx[:, :k])
    assert sorted(full.idx[0].tolist()) == list(range(50))


def test_topk_dense_validates():
    scores = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="k must be"):
        topk_dense(scores, 0)
    with pytest.raises(ValueError, match="one row per query"):
        topk_dense(scores, 1, [np.array([0])])
    with pytest.raises(ValueError, match="one row per query"):
        topk_dense(scores, 1, allow=[None])
    with pytest.raises(ValueError, match="n, n_items"):
        topk_dense(np.zeros(3, np.float32), 1)
    with pytest.raises(ValueError, match="NaN"):
        topk_dense(np.array([[0.0, np.nan]], np.float32), 1)


def test_topk_dense_with_infinite_scores_and_exclusions():
    """Rows with -inf / +inf scores of their own (the fast path marks exclusions with
    -inf: a row whose own -inf reach its k best is ranked by the gathering path),
    duplicate and out-of-range exclusions, k beyond the admissible count."""
    scores = np.array([
        [0.5, -np.inf, 0.1, -np.inf, 0.3, 0.2],
        [np.inf, 0.0, -np.inf, 0.0, 1.0, np.inf],
        [-np.inf, -np.inf, -np.inf, -np.inf, -np.inf, -np.inf],
    ], np.float32)
    exclude = [np.array([0, 0, 7, -1]), np.array([5]), np.array([2])]
    for k in (1, 3, 4, 6, 9):
        result = topk_dense(scores, k, exclude)
        for row in range(3):
            want = naive(scores[row], k, exclude[row])
            assert result.idx[row, : len(want)].tolist() == want, (k, row)
            assert (result.idx[row, len(want):] == -1).all()


def test_topk_dense_keeps_float64_precision():
    """Scores closer than float32 can tell apart are still ordered exactly."""
    scores = np.array([[1.0, 1.0 + 1e-12, 1.0 - 1e-12, 0.5]], np.float64)
    assert topk_dense(scores, 3).idx[0].tolist() == [1, 0, 2]
    assert topk_dense(scores, 2, [np.array([1])]).idx[0].tolist() == [0, 2]

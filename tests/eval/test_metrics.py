"""Ranking metrics against naive per-user loops and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recxfer.eval.metrics import hit_rate_at_k, mrr, mrr_from_scores, ndcg_at_k, recall_at_k

# ----------------------------------------------------------------------------- naive references


def naive_hits(ranked_row, rel, k):
    rel = set(int(r) for r in rel)
    return [int(i) >= 0 and int(i) in rel for i in ranked_row[:k]]


def naive_recall(ranked, relevant, k, n_relevant=None):
    out = []
    for u, rel in enumerate(relevant):
        n = len(set(int(r) for r in rel)) if n_relevant is None else n_relevant[u]
        out.append(math.nan if n == 0 else sum(naive_hits(ranked[u], rel, k)) / n)
    return np.array(out)


def naive_hit_rate(ranked, relevant, k, n_relevant=None):
    out = []
    for u, rel in enumerate(relevant):
        n = len(set(int(r) for r in rel)) if n_relevant is None else n_relevant[u]
        out.append(math.nan if n == 0 else float(any(naive_hits(ranked[u], rel, k))))
    return np.array(out)


def naive_ndcg(ranked, relevant, k, n_relevant=None):
    out = []
    for u, rel in enumerate(relevant):
        n = len(set(int(r) for r in rel)) if n_relevant is None else n_relevant[u]
        if n == 0:
            out.append(math.nan)
            continue
        dcg = sum(1.0 / math.log2(pos + 2) for pos, hit in enumerate(naive_hits(ranked[u], rel, k)) if hit)
        idcg = sum(1.0 / math.log2(pos + 2) for pos in range(int(min(n, k))))
        out.append(dcg / idcg)
    return np.array(out)


def naive_mrr(ranked, relevant, n_relevant=None):
    out = []
    for u, rel in enumerate(relevant):
        n = len(set(int(r) for r in rel)) if n_relevant is None else n_relevant[u]
        if n == 0:
            out.append(math.nan)
            continue
        hits = naive_hits(ranked[u], rel, len(ranked[u]))
        out.append(1.0 / (hits.index(True) + 1) if any(hits) else 0.0)
    return np.array(out)


def assert_same(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(a[~np.isnan(a)], b[~np.isnan(b)], rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- hand-made rankings

RANKED = np.array(
    [
        [3, 1, 7, 2],  # relevant {1, 2}: hits at ranks 2 and 4
        [5, -1, -1, -1],  # relevant {5, 9}: hit at rank 1, then padding
        [0, 4, 6, 8],  # relevant {}: nan everywhere
        [9, 8, 7, 6],  # relevant {1}: no hit
        [2, 0, 1, 3],  # relevant {2, 1}: hits at ranks 1 and 3
    ],
    dtype=np.int64,
)
RELEVANT = [np.array([1, 2]), np.array([5, 9]), np.array([], dtype=np.int64), np.array([1]), np.array([2, 1])]


def test_hand_made_recall_hit_rate_mrr() -> None:
    assert_same(recall_at_k(RANKED, RELEVANT, 1), [0.0, 0.5, math.nan, 0.0, 0.5])
    assert_same(recall_at_k(RANKED, RELEVANT, 2), [0.5, 0.5, math.nan, 0.0, 0.5])
    assert_same(recall_at_k(RANKED, RELEVANT, 4), [1.0, 0.5, math.nan, 0.0, 1.0])
    assert_same(hit_rate_at_k(RANKED, RELEVANT, 1), [0.0, 1.0, math.nan, 0.0, 1.0])
    assert_same(hit_rate_at_k(RANKED, RELEVANT, 4), [1.0, 1.0, math.nan, 0.0, 1.0])
    assert_same(mrr(RANKED, RELEVANT), [0.5, 1.0, math.nan, 0.0, 1.0])


def test_hand_computed_ndcg() -> None:
    # user 0: DCG = 1/log2(3) + 1/log2(5), IDCG = 1 + 1/log2(3)
    # user 1: DCG = 1,                     IDCG = 1 + 1/log2(3)
    # user 4: DCG = 1 + 1/log2(4),         IDCG = 1 + 1/log2(3)
    expected = [0.6509209298071326, 0.6131471927654584, math.nan, 0.0, 0.9197207891481876]
    assert_same(ndcg_at_k(RANKED, RELEVANT, 4), expected)
    # k = 1: IDCG = 1 for everybody with a relevant item
    assert_same(ndcg_at_k(RANKED, RELEVANT, 1), [0.0, 1.0, math.nan, 0.0, 1.0])


def test_hand_computed_ndcg_with_off_catalogue_relevant() -> None:
    # One hit at rank 1, but 3 relevant items (one cannot be ranked):
    # IDCG = 1 + 1/log2(3) + 1/log2(4) -> NDCG = 0.46927872602275644
    ranked = np.array([[5, -1, -1]])
    assert_same(ndcg_at_k(ranked, [np.array([5, 9])], 3, np.array([3])), [0.46927872602275644])


def test_padding_never_counts_even_if_listed_as_relevant() -> None:
    ranked = np.array([[-1, 4, -1]])
    relevant = [np.array([-1, 4])]
    assert_same(recall_at_k(ranked, relevant, 3), [0.5])
    assert_same(recall_at_k(ranked, relevant, 1), [0.0])
    assert_same(hit_rate_at_k(ranked, relevant, 1), [0.0])
    assert_same(mrr(ranked, relevant), [0.5])
    all_pad = np.full((1, 3), -1)
    assert_same(recall_at_k(all_pad, [np.array([-1])], 3), [0.0])
    assert_same(ndcg_at_k(all_pad, [np.array([-1])], 3), [0.0])


def test_n_relevant_larger_counts_misses() -> None:
    ranked = np.array([[1, 2, 3], [4, 5, 6]])
    relevant = [np.array([1, 2]), np.array([], dtype=np.int64)]
    n_rel = np.array([4, 2])  # user 1: all relevant items are off-catalogue
    assert_same(recall_at_k(ranked, relevant, 3, n_rel), [0.5, 0.0])
    assert_same(hit_rate_at_k(ranked, relevant, 3, n_rel), [1.0, 0.0])
    assert_same(mrr(ranked, relevant, n_rel), [1.0, 0.0])
    # DCG = 1 + 1/log2(3); IDCG = min(4, 3) items = 1 + 1/log2(3) + 1/2
    assert_same(ndcg_at_k(ranked, relevant, 3, n_rel), [(1 + 1 / math.log2(3)) / (1.5 + 1 / math.log2(3)), 0.0])


def test_duplicate_relevant_items_count_once() -> None:
    ranked = np.array([[7, 8, 9]])
    assert_same(recall_at_k(ranked, [np.array([7, 7, 3])], 3), [0.5])


@pytest.mark.parametrize(
    "call",
    [
        lambda: recall_at_k(RANKED, RELEVANT, 0),
        lambda: recall_at_k(RANKED, RELEVANT, 5),  # k beyond the ranking width
        lambda: ndcg_at_k(RANKED, RELEVANT[:3], 2),  # one ranking row per user
        lambda: hit_rate_at_k(RANKED[0], RELEVANT[:1], 2),  # 1-d ranking
        lambda: recall_at_k(RANKED, RELEVANT, 2, np.array([1, 1, 0, 1, 1])),  # < relevant given
        lambda: recall_at_k(RANKED, RELEVANT, 2, np.array([2, 2, 0])),  # wrong shape
        lambda: mrr(RANKED, RELEVANT[:2]),
    ],
)
def test_invalid_arguments_raise(call) -> None:
    with pytest.raises(ValueError):
        call()


def test_metrics_match_naive_loops_on_random_rankings() -> None:
    rng = np.random.default_rng(0)
    n_users, n_items, width = 50, 40, 15
    ranked = np.stack([rng.permutation(n_items)[:width] for _ in range(n_users)]).astype(np.int64)
    for u in range(0, n_users, 7):  # some rows end in padding
        ranked[u, width - int(rng.integers(1, 6)) :] = -1
    relevant = [rng.choice(n_items, size=int(rng.integers(0, 6)), replace=False) for _ in range(n_users)]
    extra = rng.integers(0, 3, n_users)
    for n_rel in (None, np.array([len(r) for r in relevant]) + extra):
        for k in (1, 3, 10, width):
            assert_same(recall_at_k(ranked, relevant, k, n_rel), naive_recall(ranked, relevant, k, n_rel))
            assert_same(ndcg_at_k(ranked, relevant, k, n_rel), naive_ndcg(ranked, relevant, k, n_rel))
            assert_same(hit_rate_at_k(ranked, relevant, k, n_rel), naive_hit_rate(ranked, relevant, k, n_rel))
        assert_same(mrr(ranked, relevant, n_rel), naive_mrr(ranked, relevant, n_rel))
    # a perfect ranking has recall = ndcg = 1 when k covers the relevant set
    perfect = np.stack([np.concatenate([r, np.full(width - len(r), -1)]) for r in relevant])
    vals = ndcg_at_k(perfect, relevant, width)
    assert_same(vals[~np.isnan(vals)], np.ones(int((~np.isnan(vals)).sum())))


# ----------------------------------------------------------------------------- mrr_from_scores


def naive_mrr_from_scores(scores, relevant):
    # Only for scores without ties (the stable argsort puts the lowest index first;
    # mrr_from_scores breaks ties at random, see test_ties.py).
    out = []
    for u, rel in enumerate(relevant):
        if len(rel) == 0:
            out.append(math.nan)
            continue
        order = [int(j) for j in np.argsort(-scores[u], kind="stable") if np.isfinite(scores[u, j])]
        ranks = [order.index(int(r)) + 1 for r in rel if int(r) in order]
        out.append(1.0 / min(ranks) if ranks else 0.0)
    return np.array(out)


def test_mrr_from_scores_hand_made() -> None:
    scores = np.array(
        [
            [0.1, 0.9, 0.5, 0.3],  # relevant {2, 0}: best is item 2 at rank 2
            [0.1, 0.9, -np.inf, 0.3],  # relevant {2}: excluded -> 0
            [0.1, 0.9, 0.5, 0.3],  # none -> nan
            [-np.inf, 0.2, 0.7, 0.3],  # relevant {2}: rank 1 (the -inf item is not above it)
        ]
    )
    relevant = [np.array([2, 0]), np.array([2]), np.array([], dtype=np.int64), np.array([2])]
    assert_same(mrr_from_scores(scores, relevant), [0.5, 0.0, math.nan, 1.0])


def test_mrr_from_scores_matches_naive_and_truncated_mrr() -> None:
    rng = np.random.default_rng(1)
    n_users, n_items = 30, 25
    scores = rng.standard_normal((n_users, n_items))
    scores[rng.random(scores.shape) < 0.2] = -np.inf  # excluded items
    relevant = [rng.choice(n_items, size=int(rng.integers(0, 4)), replace=False) for _ in range(n_users)]
    got = mrr_from_scores(scores, relevant)
    assert_same(got, naive_mrr_from_scores(scores, relevant))
    # The full-ranking MRR equals ``mrr`` over the full ranking (excluded removed, padded).
    ranked = np.full((n_users, n_items), -1, dtype=np.int64)
    for u in range(n_users):
        order = [j for j in np.argsort(-scores[u], kind="stable") if np.isfinite(scores[u, j])]
        ranked[u, : len(order)] = order
    assert_same(got, mrr(ranked, relevant))

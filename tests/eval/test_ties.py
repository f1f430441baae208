"""Full ranking with a seeded random tie-break (recxfer/eval/metrics.py, protocol.py).

The reference is a per-user Python loop that sorts the catalogue by
``(-score, tie_break_keys(user, item, seed))``; the scores are small integers, so
ties are everywhere and the comparison is exact.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from recxfer.eval.metrics import mrr_from_scores, rank_metrics, relevant_ranks, tie_break_keys
from recxfer.eval.protocol import full_ranking_metrics, full_ranking_metrics_scores

# ----------------------------------------------------------------------------- references


def naive_ranks(scores: np.ndarray, relevant, exclude=None, seed: int = 0) -> list[dict[int, float]]:
    """Per user: {relevant item: 1-based rank (inf = not ranked)}, by a full sort."""
    out = []
    for u, rel in enumerate(relevant):
        banned = set() if exclude is None else {int(b) for b in exclude[u]}
        row = scores[u]
        ranked = [
            j for j in range(len(row))
            if j not in banned and not math.isnan(row[j]) and row[j] != -math.inf
        ]
        ranked.sort(key=lambda j: (-row[j], int(tie_break_keys(u, j, seed))))
        position = {j: p + 1 for p, j in enumerate(ranked)}
        out.append({
            int(r): float(position.get(int(r), math.inf))
            for r in rel if 0 <= int(r) < len(row)
        })
    return out


def naive_metrics(ranks: list[dict[int, float]], n_relevant, ks, n_items: int) -> dict[str, float]:
    per_user: dict[str, list[float]] = {}
    for u, by_item in enumerate(ranks):
        n = int(n_relevant[u])
        if n == 0:
            continue
        for k in ks:
            kk = min(k, n_items)
            hits = [r for r in by_item.values() if r <= kk]
            dcg = sum(1 / math.log2(r + 1) for r in hits)
            idcg = sum(1 / math.log2(p + 2) for p in range(min(n, kk)))
            per_user.setdefault(f"recall@{k}", []).append(len(hits) / n)
            per_user.setdefault(f"ndcg@{k}", []).append(dcg / idcg)
            per_user.setdefault(f"hr@{k}", []).append(float(bool(hits)))
        best = min(by_item.values(), default=math.inf)
        per_user.setdefault("mrr", []).append(1 / best)
    out = {name: float(np.mean(vals)) for name, vals in per_user.items()}
    out["users"] = float(len(ranks))
    return out


def tied_problem(seed: int, n_users: int = 37, n_items: int = 23, levels: int = 4, zero_share: float = 0.0):
    """Integer scores in ``[0, levels)`` (many ties), a ``zero_share`` of them 0 (a
    popularity tail), some ``-inf`` and ``nan``; exclusions, duplicate, excluded
    and off-catalogue relevant items."""
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, levels, size=(n_users, n_items)).astype(np.float32)
    scores[rng.random(scores.shape) < zero_share] = 0.0
    scores[rng.random(scores.shape) < 0.05] = -np.inf
    scores[rng.random(scores.shape) < 0.03] = np.nan
    exclude = [rng.choice(n_items, size=int(rng.integers(0, 6)), replace=False) for _ in range(n_users)]
    relevant = []
    for _ in range(n_users):
        rel = rng.choice(n_items, size=int(rng.integers(0, 5)), replace=False)
        if rng.random() < 0.2:
            rel = np.concatenate([rel, rel[:1]])  # a duplicate counts once
        if rng.random() < 0.2:
            rel = np.concatenate([rel, [n_items + 3]])  # off the catalogue: a miss
        relevant.append(rel.astype(np.int64))
    relevant[0] = np.zeros(0, np.int64)  # nothing held out: left out of the means
    n_relevant = np.array([len(np.unique(r)) for r in relevant])
    return scores, relevant, exclude, n_relevant


def excluded_copy(scores, exclude):
    out = scores.copy()
    for u, banned in enumerate(exclude):
        out[u, banned] = -np.inf
    return out


def assert_metrics_close(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for name in want:
        assert got[name] == pytest.approx(want[name], rel=1e-12, abs=1e-15), name


# ----------------------------------------------------------------------------- tie_break_keys


def test_tie_break_keys_are_a_permutation_per_user_and_vary_with_user_and_seed() -> None:
    items = np.arange(5000)
    keys = tie_break_keys(np.arange(6)[:, None], items[None, :], seed=3)  # (6, 5000)
    assert keys.dtype == np.uint64 and keys.shape == (6, 5000)
    for row in keys:
        assert len(np.unique(row)) == len(items)
    orders = [tuple(np.argsort(row)[:50]) for row in keys]
    assert len(set(orders)) == len(orders)  # every user has its own order
    assert not np.array_equal(keys, tie_break_keys(np.arange(6)[:, None], items[None, :], seed=4))
    np.testing.assert_array_equal(keys[2, 17], tie_break_keys(2, 17, seed=3))  # pairwise, no state


def test_tie_break_keys_order_items_uniformly() -> None:
    # Where item 0 lands among 10 items, over 20,000 users: about uniform.
    keys = tie_break_keys(np.arange(20_000)[:, None], np.arange(10)[None, :], seed=0)
    position = np.argsort(np.argsort(keys, axis=1), axis=1)[:, 0]
    share = np.bincount(position, minlength=10) / len(position)
    np.testing.assert_allclose(share, 0.1, atol=0.01)


# ----------------------------------------------------------------------------- relevant_ranks


# few items per tie (keys of the tied items only), many (keys of the whole row), both
SHAPES = {"dense": (23, 4, 0.0), "sparse": (200, 60, 0.0), "mixed": (200, 60, 0.5)}


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_relevant_ranks_equal_a_naive_sort_with_ties(seed: int, shape: str) -> None:
    n_items, levels, zero_share = SHAPES[shape]
    scores, relevant, exclude, _ = tied_problem(seed, n_items=n_items, levels=levels, zero_share=zero_share)
    masked = excluded_copy(scores, exclude)
    owner, item, rank = relevant_ranks(masked, relevant, seed=seed)
    want = naive_ranks(scores, relevant, exclude, seed)
    got: list[dict[int, float]] = [{} for _ in relevant]
    for o, j, r in zip(owner, item, rank):
        got[int(o)][int(j)] = float(r)
    assert got == want
    assert np.isinf(rank).any() and np.isfinite(rank).any()


def test_relevant_ranks_of_every_item_are_a_permutation() -> None:
    scores = np.zeros((3, 40), dtype=np.float32)
    scores[1, ::2] = 1.0  # two tied groups
    _, _, rank = relevant_ranks(scores, [np.arange(40)] * 3, seed=5)
    for u in range(3):
        np.testing.assert_array_equal(np.sort(rank[u * 40 : (u + 1) * 40]), np.arange(1, 41))
    assert rank[40:80][::2].max() == 20  # user 1's score-1 items take ranks 1..20


def test_relevant_ranks_in_small_blocks(monkeypatch) -> None:
    import recxfer.eval.metrics as metrics

    scores, relevant, exclude, _ = tied_problem(7, n_items=200, levels=60, zero_share=0.5)
    masked = excluded_copy(scores, exclude)
    whole = relevant_ranks(masked, relevant, seed=7)
    monkeypatch.setattr(metrics, "_PAIR_BUDGET", 1)  # one pair per block
    for a, b in zip(whole, relevant_ranks(masked, relevant, seed=7)):
        np.testing.assert_array_equal(a, b)


def test_relevant_ranks_hand_made_ties() -> None:
    scores = np.array([[1.0, 1.0, 0.0, 2.0]])
    _, _, rank = relevant_ranks(scores, [np.array([1])], seed=0)
    item0_first = tie_break_keys(0, 0, 0) < tie_break_keys(0, 1, 0)
    assert rank[0] == 2 + int(item0_first)  # item 3 is above; item 0 only if its key is smaller
    # -0.0 ties with 0.0; -inf is never above anything
    _, _, rank = relevant_ranks(np.array([[-0.0, 0.0, -np.inf]]), [np.array([1, 2])], seed=0)
    assert rank[0] == 1 + int(tie_break_keys(0, 0, 0) < tie_break_keys(0, 1, 0))
    assert rank[1] == math.inf


def test_rank_metrics_hand_computed() -> None:
    # user 0: ranks 1 and 3 of 2 relevant; user 1: one miss of 2; user 2: none
    owner = np.array([0, 0, 1])
    rank = np.array([1.0, 3.0, np.inf])
    m = rank_metrics(owner, rank, np.array([2, 2, 0]), (1, 2, 5), n_items=10)
    np.testing.assert_allclose(m["recall@2"][:2], [0.5, 0.0])
    np.testing.assert_allclose(m["recall@5"][:2], [1.0, 0.0])
    np.testing.assert_allclose(m["hr@1"][:2], [1.0, 0.0])
    np.testing.assert_allclose(m["ndcg@5"][0], (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3)))
    np.testing.assert_allclose(m["mrr"][:2], [1.0, 0.0])
    assert all(math.isnan(values[2]) for values in m.values())


# ----------------------------------------------------------------------------- full ranking


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_full_ranking_scores_equal_a_naive_sort_with_ties(seed: int, shape: str) -> None:
    n_items, levels, zero_share = SHAPES[shape]
    scores, relevant, exclude, n_relevant = tied_problem(seed, n_items=n_items, levels=levels, zero_share=zero_share)
    ks = (1, 3, 10, 500)  # 500 > n_items: the whole ranking
    got = full_ranking_metrics_scores(lambda rows: scores[rows], len(relevant), relevant, ks, exclude, seed=seed)
    want = naive_metrics(naive_ranks(scores, relevant, exclude, seed), n_relevant, ks, scores.shape[1])
    assert_metrics_close(got, want)


def test_full_ranking_does_not_depend_on_the_chunking() -> None:
    scores, relevant, exclude, _ = tied_problem(4, n_users=60)
    calls: list[np.ndarray] = []

    def score_fn(rows):
        calls.append(rows)
        return scores[rows]

    whole = full_ranking_metrics_scores(score_fn, 60, relevant, (5,), exclude, seed=4)
    chunked = full_ranking_metrics_scores(score_fn, 60, relevant, (5,), exclude, seed=4, chunk_size=7)
    assert whole == chunked
    assert [len(c) for c in calls] == [60] + [7] * 8 + [4]
    assert all(c.dtype == np.int64 for c in calls)
    np.testing.assert_array_equal(np.concatenate(calls[1:]), np.arange(60))


def test_full_ranking_does_not_write_to_the_scorers_array() -> None:
    scores, relevant, exclude, _ = tied_problem(5)
    before = scores.copy()

    def view(rows):  # a view of the scorer's own array, not a copy
        return scores[rows[0] : rows[-1] + 1]

    full_ranking_metrics_scores(view, len(relevant), relevant, (5,), exclude, chunk_size=10)
    np.testing.assert_array_equal(scores, before)


@pytest.mark.parametrize("same_item", [False, True])
def test_a_constant_scorer_gets_random_ranking_metrics(same_item: bool) -> None:
    n_users, n_items = 6000, 50
    rng = np.random.default_rng(0)
    # one relevant item each: a random one, or item 0 for everyone (the item an
    # index that breaks ties by position would always put first)
    relevant = [np.array([0 if same_item else int(j)]) for j in rng.integers(0, n_items, n_users)]
    ks = (1, 10, 20)
    m = full_ranking_metrics_scores(
        lambda rows: np.zeros((len(rows), n_items), np.float32), n_users, relevant, ks, seed=0
    )
    for k in ks:
        assert m[f"recall@{k}"] == pytest.approx(k / n_items, abs=0.02), k
        assert m[f"hr@{k}"] == m[f"recall@{k}"]
        want_ndcg = sum(1 / math.log2(r + 1) for r in range(1, k + 1)) / n_items
        assert m[f"ndcg@{k}"] == pytest.approx(want_ndcg, abs=0.02), k
    harmonic = sum(1 / r for r in range(1, n_items + 1))
    assert m["mrr"] == pytest.approx(harmonic / n_items, abs=0.01)  # ~0.09, not 1.0


def test_the_embeddings_wrapper_equals_the_scorer_version() -> None:
    rng = np.random.default_rng(3)
    # small integer embeddings: exact float32 products (whatever the order) with many ties
    user_emb = rng.integers(-2, 3, size=(45, 3)).astype(np.float32)
    item_emb = rng.integers(-2, 3, size=(30, 3)).astype(np.float32)
    relevant = [rng.choice(30, size=int(rng.integers(0, 4)), replace=False) for _ in range(45)]
    exclude = [rng.choice(30, size=3, replace=False) for _ in range(45)]
    n_rel = np.array([len(r) for r in relevant]) + 1
    ks = (1, 5, 10)
    got = full_ranking_metrics(user_emb, item_emb, relevant, ks, exclude, n_rel, seed=2)
    want = full_ranking_metrics_scores(
        lambda rows: user_emb[rows] @ item_emb.T, 45, relevant, ks, exclude, n_rel, seed=2
    )
    assert got == want
    scores = user_emb @ item_emb.T
    naive = naive_metrics(naive_ranks(scores, relevant, exclude, 2), n_rel, ks, 30)
    assert_metrics_close(got, naive)


def test_metrics_are_seeded() -> None:
    scores, relevant, exclude, _ = tied_problem(6)

    def run(seed):
        return full_ranking_metrics_scores(lambda rows: scores[rows], len(relevant), relevant, (3,), exclude, seed=seed)

    assert run(1) == run(1)
    assert run(1) != run(2)  # ties fall differently
    # without ties the seed does not matter
    distinct = np.random.default_rng(0).permutation(40 * 23).reshape(40, 23).astype(np.float32)
    a = full_ranking_metrics_scores(lambda rows: distinct[rows], 37, relevant, (3,), exclude, seed=1)
    b = full_ranking_metrics_scores(lambda rows: distinct[rows], 37, relevant, (3,), exclude, seed=2)
    assert a == b


def test_exclusion_is_respected_with_ties() -> None:
    scores = np.zeros((1, 6), np.float32)  # everything tied
    keep = 4
    exclude = [np.array([j for j in range(6) if j != keep] + [-1, 99])]  # padding excludes nothing
    m = full_ranking_metrics_scores(lambda rows: scores[rows], 1, [np.array([keep])], (1,), exclude)
    assert m["recall@1"] == 1.0 and m["mrr"] == 1.0  # alone in the ranking
    m = full_ranking_metrics_scores(lambda rows: scores[rows], 1, [np.array([keep])], (6,), [np.array([keep])])
    assert m["recall@6"] == 0.0 and m["hr@6"] == 0.0 and m["mrr"] == 0.0  # excluded: a miss
    # a scorer's own -inf is not ranked either
    minus = np.full((1, 6), -np.inf, np.float32)
    m = full_ranking_metrics_scores(lambda rows: minus[rows], 1, [np.array([keep])], (6,))
    assert m["recall@6"] == 0.0 and m["mrr"] == 0.0


def test_n_relevant_is_respected() -> None:
    scores = np.arange(10, dtype=np.float32)[::-1][None, :].repeat(3, axis=0)  # item j at rank j+1
    relevant = [np.array([0]), np.zeros(0, np.int64), np.zeros(0, np.int64)]
    # user 0: 1 of 4 relevant items in the catalogue; user 1: 2, none in it; user 2: none
    m = full_ranking_metrics_scores(lambda rows: scores[rows], 3, relevant, (1,), n_relevant=np.array([4, 2, 0]))
    assert m["recall@1"] == pytest.approx(0.25 / 2)
    assert m["hr@1"] == pytest.approx(0.5)
    assert m["ndcg@1"] == pytest.approx(0.5)
    assert m["mrr"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        full_ranking_metrics_scores(lambda rows: scores[rows], 3, [np.array([0, 1])] * 3, (1,), n_relevant=np.ones(3))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_users": 0, "relevant": []},
        {"n_users": 2, "relevant": [np.array([0])]},
        {"n_users": 1, "relevant": [np.array([0])], "ks": (0,)},
        {"n_users": 1, "relevant": [np.array([0])], "exclude": []},
    ],
)
def test_invalid_arguments_raise(kwargs) -> None:
    with pytest.raises(ValueError):
        full_ranking_metrics_scores(lambda rows: np.zeros((len(rows), 4)), **kwargs)


def test_a_scorer_of_the_wrong_shape_raises() -> None:
    with pytest.raises(ValueError):
        full_ranking_metrics_scores(lambda rows: np.zeros((len(rows) + 1, 4)), 2, [np.array([0])] * 2, (1,))


def test_nan_scores_are_never_ranked() -> None:
    scores = np.array([[np.nan, np.nan, 1.0, 0.0]], np.float32)
    m = full_ranking_metrics_scores(lambda rows: scores[rows], 1, [np.array([3])], (1, 2))
    assert m["recall@2"] == 1.0 and m["mrr"] == 0.5  # the nans are not above it
    m = full_ranking_metrics_scores(lambda rows: scores[rows], 1, [np.array([0])], (4,))
    assert m["recall@4"] == 0.0 and m["mrr"] == 0.0  # a nan relevant item is a miss


# ----------------------------------------------------------------------------- mrr_from_scores


def test_mrr_from_scores_of_a_constant_scorer_is_not_one() -> None:
    n_users, n_items = 4000, 30
    relevant = [np.array([0])] * n_users
    rr = mrr_from_scores(np.zeros((n_users, n_items)), relevant, seed=0)
    assert rr.mean() == pytest.approx(sum(1 / r for r in range(1, n_items + 1)) / n_items, abs=0.01)


@pytest.mark.parametrize("seed", [0, 1])
def test_mrr_from_scores_equals_the_naive_best_rank_with_ties(seed: int) -> None:
    scores, relevant, exclude, _ = tied_problem(seed)
    masked = excluded_copy(scores, exclude)
    want = [
        math.nan if len(rel) == 0 else 1 / min(by_item.values(), default=math.inf)
        for rel, by_item in zip(relevant, naive_ranks(scores, relevant, exclude, seed))
    ]
    np.testing.assert_array_equal(mrr_from_scores(masked, relevant, seed=seed), want)


def test_float64_and_integer_scores_are_ranked_as_given() -> None:
    rng = np.random.default_rng(8)
    relevant = [rng.choice(15, size=2, replace=False) for _ in range(20)]
    # float64 scores 1e-12 apart stay distinct (no cast to float32 merges them)
    scores64 = np.tile(1.0 + 1e-12 * np.arange(15)[::-1], (20, 1))  # item j at rank j + 1
    a = full_ranking_metrics_scores(lambda rows: scores64[rows], 20, relevant, (1, 15))
    want = np.mean([1 / (1 + min(rel)) for rel in relevant])
    assert a["mrr"] == pytest.approx(want, rel=1e-12)
    ints = rng.integers(0, 3, size=(20, 15))
    c = full_ranking_metrics_scores(lambda rows: ints[rows], 20, relevant, (3,))
    d = full_ranking_metrics_scores(lambda rows: ints[rows].astype(np.float64), 20, relevant, (3,))
    assert c == d


# ----------------------------------------------------------------------------- max_rank


@pytest.mark.parametrize("max_rank", [1, 3, 10, 57, 500])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_relevant_ranks_with_max_rank_equal_the_naive_sort_up_to_it(shape: str, max_rank: int) -> None:
    n_items, levels, zero_share = SHAPES[shape]
    scores, relevant, exclude, _ = tied_problem(3, n_items=n_items, levels=levels, zero_share=zero_share)
    masked = excluded_copy(scores, exclude)
    owner, item, rank = relevant_ranks(masked, relevant, seed=3, max_rank=max_rank)
    want = naive_ranks(scores, relevant, exclude, 3)
    got: list[dict[int, float]] = [{} for _ in relevant]
    for o, j, r in zip(owner, item, rank):
        got[int(o)][int(j)] = float(r)
    capped = [{j: (r if r <= max_rank else math.inf) for j, r in by_item.items()} for by_item in want]
    assert got == capped
    if max_rank >= 10:  # not vacuous: some relevant items are ranked exactly
        assert any(r <= max_rank for by_item in got for r in by_item.values())


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_full_ranking_without_mrr_gives_the_same_at_k_metrics(shape: str) -> None:
    n_items, levels, zero_share = SHAPES[shape]
    scores, relevant, exclude, n_relevant = tied_problem(5, n_items=n_items, levels=levels, zero_share=zero_share)
    ks = (1, 3, 10)
    full = full_ranking_metrics_scores(lambda rows: scores[rows], len(relevant), relevant, ks, exclude, seed=5)
    fast = full_ranking_metrics_scores(lambda rows: scores[rows], len(relevant), relevant, ks, exclude,
                                       seed=5, mrr=False)
    assert "mrr" not in fast
    assert_metrics_close(fast, {name: value for name, value in full.items() if name != "mrr"})


def test_max_rank_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_rank"):
        relevant_ranks(np.zeros((1, 3)), [np.array([0])], max_rank=0)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kth_largest_equals_a_sort_on_either_path(threads: int, dtype) -> None:
    """The threshold of ``max_rank``: torch's top-k (several threads) and numpy's
    partition (one) give each row's exact k-th largest, ties, -inf and nan included."""
    import torch

    from recxfer.eval.metrics import _kth_largest

    rng = np.random.default_rng(11)
    scores = np.round(rng.standard_normal((7, 40)), 1).astype(dtype)
    scores[1] = 0.0  # all tied
    scores[2, :35] = -np.inf  # fewer finite items than k
    scores[3, ::4] = np.nan  # nan counts as -inf
    want = {k: np.sort(np.where(np.isnan(scores), -np.inf, scores), axis=1)[:, -k] for k in (1, 5, 10, 40)}
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for k, expected in want.items():
            np.testing.assert_array_equal(_kth_largest(scores, k), expected)
        assert np.isneginf(_kth_largest(scores, 41)).all()
    finally:
        torch.set_num_threads(before)

"""The sampled protocol (recxfer/eval/sampled.py) against naive per-instance loops.

Scores in the exact-match tests use dyadic embeddings (multiples of 1/1024, d=8),
so every dot product is exact in float32 and float64 whatever the summation
order: the reference and the implementation see identical scores.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recxfer.eval.sampled import (
    SAMPLED_KEYS,
    expected_sampled_metrics_scores,
    instance_metrics,
    metrics_from_ranks,
    sample_negatives,
    sampled_metrics,
    sampled_metrics_scores,
    sampled_ranks,
    sampled_ranks_scores,
)

# ----------------------------------------------------------------------------- references


def naive_counts(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per instance: number of negatives scoring above, and equal to, the positive."""
    greater = np.zeros(len(pos), dtype=np.int64)
    equal = np.zeros(len(pos), dtype=np.int64)
    for i in range(len(pos)):
        for s in neg[i]:
            if s > pos[i]:
                greater[i] += 1
            elif s == pos[i]:
                equal[i] += 1
    return greater, equal


def naive_metrics(ranks) -> dict[str, float]:
    """Mean metrics of 1-based ranks, one instance at a time."""
    total = dict.fromkeys(SAMPLED_KEYS, 0.0)
    for r in ranks:
        r = int(r)
        total["MRR"] += 1.0 / r
        total["NDCG@5"] += 1.0 / math.log2(r + 1) if r <= 5 else 0.0
        total["NDCG@10"] += 1.0 / math.log2(r + 1) if r <= 10 else 0.0
        total["HR@1"] += float(r <= 1)
        total["HR@5"] += float(r <= 5)
        total["HR@10"] += float(r <= 10)
    return {k: v / len(ranks) for k, v in total.items()}


def dyadic(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Random multiples of 1/1024 in [-1, 1]: exact float32 dot products for d <= 8."""
    return (rng.integers(-1024, 1025, size=shape) / 1024.0).astype(np.float32)


def naive_instance_scores(user_emb, item_emb, inst_user, inst_item, negatives):
    """float64 positive and negative scores, one instance at a time."""
    u64, i64 = user_emb.astype(np.float64), item_emb.astype(np.float64)
    pos = np.empty(len(inst_user))
    neg = np.empty(negatives.shape)
    for n, (u, j) in enumerate(zip(inst_user, inst_item)):
        pos[n] = u64[u] @ i64[j]
        neg[n] = [u64[u] @ i64[k] for k in negatives[n]]
    return pos, neg


# ----------------------------------------------------------------------------- sample_negatives


def test_sample_negatives_shape_dtype_and_range() -> None:
    neg = sample_negatives(7, 13, 50, seed=3)
    assert neg.shape == (7, 50)
    assert neg.dtype == np.int64
    assert neg.min() >= 0 and neg.max() < 13


def test_sample_negatives_is_seeded() -> None:
    np.testing.assert_array_equal(sample_negatives(5, 100, 20, 1), sample_negatives(5, 100, 20, 1))
    assert not np.array_equal(sample_negatives(5, 100, 20, 1), sample_negatives(5, 100, 20, 2))


def test_sample_negatives_is_uniform_with_replacement() -> None:
    neg = sample_negatives(200, 10, 50, seed=0)  # 10,000 draws over 10 items
    counts = np.bincount(neg.ravel(), minlength=10)
    assert np.all(np.abs(counts - 1000) < 150), counts
    # with replacement: a row of 50 draws over 10 items must repeat items
    assert all(len(np.unique(row)) < 50 for row in neg)


def test_sample_negatives_single_item_and_zero_instances() -> None:
    assert np.all(sample_negatives(3, 1, 4) == 0)
    assert sample_negatives(0, 10, 4).shape == (0, 4)


@pytest.mark.parametrize("n_items, n_neg", [(0, 5), (5, 0), (-1, 5)])
def test_sample_negatives_rejects_empty_sizes(n_items: int, n_neg: int) -> None:
    with pytest.raises(ValueError):
        sample_negatives(3, n_items, n_neg)


# ----------------------------------------------------------------------------- sampled_ranks


def test_sampled_ranks_without_ties_match_a_naive_loop() -> None:
    rng = np.random.default_rng(0)
    pos = rng.standard_normal(300)
    neg = rng.standard_normal((300, 40))
    greater, equal = naive_counts(pos, neg)
    assert equal.sum() == 0  # continuous scores: no ties
    ranks = sampled_ranks(pos, neg, seed=5)
    assert ranks.dtype == np.int64
    np.testing.assert_array_equal(ranks, 1 + greater)


def test_sampled_ranks_with_ties_stay_within_the_tie_range() -> None:
    rng = np.random.default_rng(1)
    pos = rng.integers(0, 4, size=500).astype(np.float32)  # few distinct values: many ties
    neg = rng.integers(0, 4, size=(500, 30)).astype(np.float32)
    greater, equal = naive_counts(pos, neg)
    ranks = sampled_ranks(pos, neg, seed=2)
    assert np.all(ranks >= 1 + greater)
    assert np.all(ranks <= 1 + greater + equal)
    # ties are really broken at random: some instances land above the best case
    assert np.any(ranks > 1 + greater)
    np.testing.assert_array_equal(ranks, sampled_ranks(pos, neg, seed=2))  # seeded


def test_constant_scorer_gets_the_expected_random_rank() -> None:
    n, n_neg = 20_000, 99
    ranks = sampled_ranks(np.zeros(n), np.zeros((n, n_neg)), seed=0)
    assert ranks.min() == 1 and ranks.max() == n_neg + 1
    assert not np.all(ranks == 1)
    expected_mean = (n_neg + 2) / 2  # uniform over 1 .. n_neg + 1
    assert abs(ranks.mean() - expected_mean) < 0.02 * expected_mean
    counts = np.bincount(ranks, minlength=n_neg + 2)[1:]
    assert np.all(np.abs(counts - n / (n_neg + 1)) < 80), counts  # roughly uniform
    # so a constant scorer's HR@10 is about 10 / (n_neg + 1), not 1
    assert abs(metrics_from_ranks(ranks)["HR@10"] - 10 / (n_neg + 1)) < 0.01


def test_sampled_ranks_of_a_perfect_and_a_worst_scorer() -> None:
    neg = np.zeros((4, 9))
    np.testing.assert_array_equal(sampled_ranks(np.ones(4), neg), [1, 1, 1, 1])
    np.testing.assert_array_equal(sampled_ranks(-np.ones(4), neg), [10, 10, 10, 10])


# ----------------------------------------------------------------------------- metrics_from_ranks


def test_metrics_from_ranks_hand_computed() -> None:
    m = metrics_from_ranks(np.array([1, 2, 11]))
    assert set(SAMPLED_KEYS) <= set(m)
    assert m["HR@10"] == pytest.approx(2 / 3)
    assert m["HR@5"] == pytest.approx(2 / 3)
    assert m["HR@1"] == pytest.approx(1 / 3)
    assert m["MRR"] == pytest.approx((1 + 1 / 2 + 1 / 11) / 3)
    assert m["NDCG@10"] == pytest.approx((1 + 1 / math.log2(3)) / 3)
    assert m["NDCG@5"] == pytest.approx((1 + 1 / math.log2(3)) / 3)
    assert m["instances"] == 3


def test_metrics_from_ranks_cutoffs_are_inclusive() -> None:
    m = metrics_from_ranks([5, 10])
    assert m["HR@5"] == pytest.approx(0.5)
    assert m["HR@10"] == pytest.approx(1.0)
    assert m["NDCG@5"] == pytest.approx((1 / math.log2(6)) / 2)
    assert m["NDCG@10"] == pytest.approx((1 / math.log2(6) + 1 / math.log2(11)) / 2)
    assert m["HR@1"] == 0.0


def test_metrics_from_ranks_vs_naive_on_random_ranks() -> None:
    ranks = np.random.default_rng(0).integers(1, 30, size=200)
    got = metrics_from_ranks(ranks)
    for key, value in naive_metrics(ranks).items():
        assert got[key] == pytest.approx(value), key


def test_instance_metrics_are_per_instance_values_whose_means_are_the_metrics() -> None:
    ranks = np.random.default_rng(1).integers(1, 30, size=200)
    per = instance_metrics(ranks)
    means = metrics_from_ranks(ranks)
    assert set(per) | {"instances"} == set(means)
    for key, values in per.items():
        assert values.shape == (200,) and values.dtype == np.float64
        assert values.mean() == means[key], key
    for r, ndcg, hr in zip(ranks, per["NDCG@10"], per["HR@10"]):  # one instance at a time
        assert hr == float(r <= 10) and ndcg == pytest.approx(1 / math.log2(r + 1) if r <= 10 else 0.0)


def test_metrics_from_ranks_rejects_no_instances() -> None:
    with pytest.raises(ValueError):
        metrics_from_ranks(np.array([], dtype=np.int64))


# ----------------------------------------------------------------------------- sampled_metrics

N_USERS, N_ITEMS, DIM, N_NEG = 80, 300, 8, 50
N_INSTANCES = 1500  # > 1024: two chunks


@pytest.fixture(scope="module")
def embeddings():
    rng = np.random.default_rng(0)
    user_emb, item_emb = dyadic(rng, (N_USERS, DIM)), dyadic(rng, (N_ITEMS, DIM))
    inst_user = rng.integers(0, N_USERS, size=N_INSTANCES)
    return rng, user_emb, item_emb, inst_user


def test_sampled_metrics_match_a_naive_computation_with_the_same_negatives(embeddings) -> None:
    rng, user_emb, item_emb, inst_user = embeddings
    seed = 4
    negatives = sample_negatives(N_INSTANCES, N_ITEMS, N_NEG, seed)
    # positives chosen outside each instance's negatives: with distinct scores the
    # rank is then fully determined (no tie to break)
    inst_item = np.array([rng.choice(np.setdiff1d(np.arange(N_ITEMS), row)) for row in negatives])
    pos, neg = naive_instance_scores(user_emb, item_emb, inst_user, inst_item, negatives)
    greater, equal = naive_counts(pos, neg)
    assert equal.sum() == 0, "fixture precondition: no tied scores"
    expected = naive_metrics(1 + greater)
    got = sampled_metrics(user_emb, item_emb, inst_user, inst_item, N_NEG, seed)
    assert got["instances"] == N_INSTANCES
    for key in SAMPLED_KEYS:
        assert got[key] == pytest.approx(expected[key], abs=1e-12), key


def test_sampled_metrics_with_ties_lie_between_the_tie_bounds(embeddings) -> None:
    """Uniform negatives include the positive itself (a tie); the reported metrics
    must lie between the best case (every tie won) and the worst (every tie lost)."""
    rng, user_emb, item_emb, inst_user = embeddings
    small = item_emb[:20]  # 20 items, 50 negatives: the positive is often drawn
    inst_item = rng.integers(0, 20, size=N_INSTANCES)
    negatives = sample_negatives(N_INSTANCES, 20, N_NEG, seed=9)
    pos, neg = naive_instance_scores(user_emb, small, inst_user, inst_item, negatives)
    greater, equal = naive_counts(pos, neg)
    assert equal.sum() > 0
    best, worst = naive_metrics(1 + greater), naive_metrics(1 + greater + equal)
    got = sampled_metrics(user_emb, small, inst_user, inst_item, N_NEG, seed=9)
    for key in SAMPLED_KEYS:
        assert worst[key] - 1e-12 <= got[key] <= best[key] + 1e-12, key
    assert got["MRR"] < best["MRR"]  # ties are not all won


def test_sampled_metrics_are_seeded_and_bounded_over_chunks(embeddings) -> None:
    _, user_emb, item_emb, inst_user = embeddings
    inst_item = np.arange(N_INSTANCES) % N_ITEMS
    a = sampled_metrics(user_emb, item_emb, inst_user, inst_item, N_NEG, seed=1)
    assert a == sampled_metrics(user_emb, item_emb, inst_user, inst_item, N_NEG, seed=1)
    assert a != sampled_metrics(user_emb, item_emb, inst_user, inst_item, N_NEG, seed=2)
    # both chunks (1024 + 476 instances) agree with the naive bounds
    negatives = sample_negatives(N_INSTANCES, N_ITEMS, N_NEG, 1)
    pos, neg = naive_instance_scores(user_emb, item_emb, inst_user, inst_item, negatives)
    greater, equal = naive_counts(pos, neg)
    best, worst = naive_metrics(1 + greater), naive_metrics(1 + greater + equal)
    for key in SAMPLED_KEYS:
        assert worst[key] - 1e-12 <= a[key] <= best[key] + 1e-12, key


def test_sampled_metrics_of_a_constant_scorer_are_random_level() -> None:
    n = 3000
    users, items = np.zeros((5, 4), np.float32), np.zeros((100, 4), np.float32)
    m = sampled_metrics(users, items, np.arange(n) % 5, np.arange(n) % 100, n_neg=99, seed=0)
    assert m["HR@10"] == pytest.approx(0.1, abs=0.02)
    assert m["HR@1"] == pytest.approx(0.01, abs=0.01)
    assert m["MRR"] < 0.1


def test_sampled_metrics_of_an_oracle_are_perfect() -> None:
    # one-hot users and items: the positive scores 1, every other item 0
    n = 40
    eye = np.eye(n, dtype=np.float32)
    inst = np.arange(n)
    # negatives may contain the positive itself; with n=40 items and 5 negatives
    # most instances avoid it, and those are rank 1
    m = sampled_metrics(eye, eye, inst, inst, n_neg=5, seed=0)
    negatives = sample_negatives(n, n, 5, 0)
    clean = ~(negatives == inst[:, None]).any(axis=1)
    assert m["HR@1"] >= clean.mean() - 1e-12
    assert m["HR@10"] == 1.0  # at most 5 ties with 5 negatives: rank <= 6


def test_nan_scores_are_not_a_perfect_rank() -> None:
    users = np.full((2, 4), np.nan, np.float32)
    items = np.random.default_rng(0).random((10, 4)).astype(np.float32)
    try:
        m = sampled_metrics(users, items, np.array([0, 1]), np.array([0, 1]), n_neg=9)
    except ValueError:
        return  # refusing NaN scores is fine too
    assert m["HR@1"] < 1.0 and m["MRR"] < 1.0


# ----------------------------------------------------------------------------- sampled_metrics_scores


def legacy_sampled_metrics(user_emb, item_emb, instance_user, instance_item, n_neg=999, seed=0):
    """``sampled_metrics`` as it was before the scorer entry point, kept verbatim."""
    negatives = sample_negatives(len(instance_user), item_emb.shape[0], n_neg, seed)
    items = torch.as_tensor(np.ascontiguousarray(item_emb, dtype=np.float32))
    pos, neg = [], []
    for start in range(0, len(instance_user), 1024):
        stop = start + 1024
        users = torch.as_tensor(
            np.ascontiguousarray(user_emb[instance_user[start:stop]], dtype=np.float32)
        )
        scores = (users @ items.T).numpy()
        rows = np.arange(scores.shape[0])
        pos.append(scores[rows, instance_item[start:stop]])
        neg.append(scores[rows[:, None], negatives[start:stop]])
    return metrics_from_ranks(sampled_ranks(np.concatenate(pos), np.concatenate(neg), seed + 1))


@pytest.mark.parametrize("n_users,n_items,dim,n", [(3, 40, 16, 700), (80, 300, 33, 2500), (1, 20, 7, 50)])
def test_sampled_metrics_are_unchanged_on_float_embeddings(n_users, n_items, dim, n) -> None:
    rng = np.random.default_rng(n)
    user_emb = rng.standard_normal((n_users, dim)).astype(np.float32)  # not exact: BLAS rounding
    item_emb = rng.standard_normal((n_items, dim)).astype(np.float32)
    inst_user, inst_item = rng.integers(0, n_users, n), rng.integers(0, n_items, n)
    for seed in (0, 5):
        got = sampled_metrics(user_emb, item_emb, inst_user, inst_item, 30, seed)
        assert got == legacy_sampled_metrics(user_emb, item_emb, inst_user, inst_item, 30, seed)


def test_sampled_metrics_scores_score_unique_users_and_equal_the_embeddings_version(embeddings) -> None:
    _, user_emb, item_emb, inst_user = embeddings  # dyadic: exact in any batch
    inst_item = np.arange(N_INSTANCES) % N_ITEMS
    calls: list[np.ndarray] = []

    def score_fn(rows):
        calls.append(rows)
        return user_emb[rows] @ item_emb.T  # numpy, not torch: same exact values

    got = sampled_metrics_scores(score_fn, inst_user, inst_item, N_ITEMS, N_NEG, seed=3)
    assert got == sampled_metrics(user_emb, item_emb, inst_user, inst_item, N_NEG, seed=3)
    assert len(calls) == 2  # 1024 + 476 instances
    for rows, chunk in zip(calls, (inst_user[:1024], inst_user[1024:])):
        np.testing.assert_array_equal(rows, np.unique(chunk))
    # chunking and repeats change nothing
    small = sampled_metrics_scores(score_fn, inst_user, inst_item, N_ITEMS, N_NEG, 3, chunk_size=100)
    repeats = sampled_metrics_scores(score_fn, inst_user, inst_item, N_ITEMS, N_NEG, 3, unique_users=False)
    assert small == got == repeats
    ranks = sampled_ranks_scores(score_fn, inst_user, inst_item, N_ITEMS, N_NEG, seed=3)
    assert ranks.shape == (N_INSTANCES,) and metrics_from_ranks(ranks) == got


def test_sampled_metrics_scores_of_a_constant_scorer_are_random_level() -> None:
    n = 3000
    m = sampled_metrics_scores(
        lambda rows: np.zeros((len(rows), 100)), np.arange(n) % 5, np.arange(n) % 100, 100, n_neg=99
    )
    assert m["HR@10"] == pytest.approx(0.1, abs=0.02)
    assert m["MRR"] < 0.1


def test_sampled_metrics_scores_reject_bad_input() -> None:
    with pytest.raises(ValueError):  # wrong width
        sampled_metrics_scores(lambda rows: np.zeros((len(rows), 9)), np.array([0]), np.array([0]), 10, 5)
    with pytest.raises(ValueError):  # no instances
        sampled_metrics_scores(lambda rows: np.zeros((len(rows), 10)), np.zeros(0, int), np.zeros(0, int), 10, 5)
    with pytest.raises(ValueError):  # mismatched instances
        sampled_metrics_scores(lambda rows: np.zeros((len(rows), 10)), np.array([0, 1]), np.array([0]), 10, 5)


def test_expected_sampled_metrics_are_the_mean_over_negative_draws() -> None:
    """The closed form against the drawn protocol averaged over 400 seeds."""
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((30, 200)).astype(np.float32)
    scores[:, :20] = np.round(scores[:, :20])  # some ties
    inst_user, inst_item = rng.integers(0, 30, 300), rng.integers(0, 200, 300)
    got = expected_sampled_metrics_scores(lambda r: scores[r], inst_user, inst_item, 200, 49, chunk_size=64)
    drawn = [sampled_metrics_scores(lambda r: scores[r], inst_user, inst_item, 200, 49, seed=s) for s in range(400)]
    assert got["instances"] == 300.0 and set(got) == set(SAMPLED_KEYS) | {"instances"}
    for key in SAMPLED_KEYS:
        values = np.array([d[key] for d in drawn])
        assert abs(got[key] - values.mean()) < 4 * values.std() / np.sqrt(len(values)) + 1e-3, key


def test_expected_sampled_metrics_of_exact_cases() -> None:
    n_items, n_neg = 100, 99
    inst_user, inst_item = np.arange(5), np.arange(5)
    oracle = np.full((5, n_items), -1.0)
    oracle[inst_user, inst_item] = 1.0  # each positive alone on top: q = 1 / n_items (itself, a tie)
    got = expected_sampled_metrics_scores(lambda r: oracle[r], inst_user, inst_item, n_items, n_neg)
    q = 0.5 / n_items
    assert got["HR@1"] == pytest.approx((1 - q) ** n_neg)
    assert got["MRR"] == pytest.approx((1 - (1 - q) ** (n_neg + 1)) / ((n_neg + 1) * q))
    constant = expected_sampled_metrics_scores(lambda r: np.zeros((len(r), n_items)), inst_user, inst_item,
                                               n_items, n_neg)  # q = 1/2: rank about 50 of 100
    assert constant["HR@10"] < 1e-10 and constant["MRR"] == pytest.approx(1 / 50, rel=0.05)
    with pytest.raises(ValueError, match="nan"):
        expected_sampled_metrics_scores(lambda r: np.full((len(r), n_items), np.nan), inst_user, inst_item,
                                        n_items, n_neg)


def test_sampled_ranks_scores_refuse_nan_and_rank_infinities() -> None:
    """A nan among the scores is refused; +inf beside -inf (whose sum is nan too) is
    ranked, as a naive count over the drawn negatives ranks it."""
    n_items, n_neg = 30, 7
    inst_user, inst_item = np.arange(40) % 4, np.arange(40) % n_items
    scores = np.random.default_rng(0).random((4, n_items)).astype(np.float32)
    scores[0, :5], scores[1, :5] = np.inf, -np.inf
    ranks = sampled_ranks_scores(lambda r: scores[r], inst_user, inst_item, n_items, n_neg, seed=2, chunk_size=16)
    neg = scores[inst_user[:, None], sample_negatives(40, n_items, n_neg, 2)]
    pos = scores[inst_user, inst_item]
    np.testing.assert_array_equal(ranks, sampled_ranks(pos, neg, seed=3))
    with_nan = scores.copy()
    with_nan[2, 7] = np.nan
    with pytest.raises(ValueError, match="nan"):
        sampled_ranks_scores(lambda r: with_nan[r], inst_user, np.full(40, 7), n_items, n_neg)

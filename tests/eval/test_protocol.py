"""Full-ranking protocol against a naive implementation (full argsort, excluded removed)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recxfer.eval.protocol import DEFAULT_KS, full_ranking_metrics, full_ranking_per_user


def naive_full_ranking(user_emb, item_emb, relevant, ks, exclude=None, n_relevant=None, per_user=None):
    # Gaussian embeddings give no tied scores, so the stable argsort's tie rule
    # (lowest index first) never applies here; ties are tested in test_ties.py.
    scores = user_emb.astype(np.float64) @ item_emb.astype(np.float64).T  # (U, I)
    per_user = {} if per_user is None else per_user  # name -> values of the users with n > 0
    for u, rel in enumerate(relevant):
        banned = set() if exclude is None else {int(b) for b in exclude[u]}
        ranking = [int(j) for j in np.argsort(-scores[u], kind="stable") if int(j) not in banned]
        rel_set = {int(r) for r in rel}
        n = len(rel_set) if n_relevant is None else int(n_relevant[u])
        if n == 0:
            if per_user is not None:
                per_user.setdefault("skipped", []).append(u)
            continue
        for k in ks:
            top = ranking[:k]
            hits = [j in rel_set for j in top]
            dcg = sum(1 / math.log2(p + 2) for p, h in enumerate(hits) if h)
            idcg = sum(1 / math.log2(p + 2) for p in range(min(n, k, len(scores[u]))))
            per_user.setdefault(f"recall@{k}", []).append(sum(hits) / n)
            per_user.setdefault(f"ndcg@{k}", []).append(dcg / idcg)
            per_user.setdefault(f"hr@{k}", []).append(float(any(hits)))
        ranks = [p + 1 for p, j in enumerate(ranking) if j in rel_set]
        per_user.setdefault("mrr", []).append(1 / ranks[0] if ranks else 0.0)
    out = {name: float(np.mean(vals)) for name, vals in per_user.items() if name != "skipped"}
    out["users"] = float(len(relevant))
    return out


def random_problem(seed: int, n_users: int = 40, n_items: int = 70, dim: int = 8):
    rng = np.random.default_rng(seed)
    user_emb = rng.standard_normal((n_users, dim)).astype(np.float32)
    item_emb = rng.standard_normal((n_items, dim)).astype(np.float32)
    exclude = [rng.choice(n_items, size=int(rng.integers(0, 10)), replace=False) for _ in range(n_users)]
    relevant = []
    for u in range(n_users):
        allowed = np.setdiff1d(np.arange(n_items), exclude[u])
        relevant.append(rng.choice(allowed, size=int(rng.integers(0, 5)), replace=False).astype(np.int64))
    relevant[0] = np.array([], dtype=np.int64)  # a user with nothing held out: ignored (nan)
    return user_emb, item_emb, relevant, exclude


def assert_metrics_equal(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for name in want:
        assert got[name] == pytest.approx(want[name], rel=1e-9, abs=1e-12), name


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_naive_full_ranking(seed: int) -> None:
    user_emb, item_emb, relevant, exclude = random_problem(seed)
    ks = (1, 5, 10, 20)
    got = full_ranking_metrics(user_emb, item_emb, relevant, ks, exclude)
    assert_metrics_equal(got, naive_full_ranking(user_emb, item_emb, relevant, ks, exclude))
    assert got["users"] == 40.0
    assert 0 < got["recall@20"] < 1


def test_per_user_values_match_the_naive_ones() -> None:
    """``full_ranking_per_user``: each user's own value, ``nan`` for a user with nothing
    held out; its nan-mean is ``full_ranking_metrics``."""
    user_emb, item_emb, relevant, exclude = random_problem(5)
    ks = (1, 10)
    want: dict[str, list] = {}
    naive_full_ranking(user_emb, item_emb, relevant, ks, exclude, per_user=want)
    scores = user_emb @ item_emb.T
    got = full_ranking_per_user(lambda rows: scores[rows], len(relevant), relevant, ks, exclude)
    assert set(got) == set(want) - {"skipped"}
    kept = np.setdiff1d(np.arange(len(relevant)), want["skipped"])
    for name, values in got.items():
        assert values.shape == (len(relevant),)
        assert np.isnan(values[want["skipped"]]).all()
        np.testing.assert_allclose(values[kept], want[name], rtol=1e-9, atol=1e-12)
    assert_metrics_equal(full_ranking_metrics(user_emb, item_emb, relevant, ks, exclude),
                         {n: float(np.nanmean(v)) for n, v in got.items()} | {"users": 40.0})


def test_matches_naive_without_exclusion_and_with_n_relevant() -> None:
    user_emb, item_emb, relevant, _ = random_problem(3)
    n_rel = np.array([len(r) for r in relevant]) + np.arange(len(relevant)) % 3
    ks = (3, 10)
    got = full_ranking_metrics(user_emb, item_emb, relevant, ks, None, n_rel)
    assert_metrics_equal(got, naive_full_ranking(user_emb, item_emb, relevant, ks, None, n_rel))


def test_k_beyond_catalogue_uses_the_whole_ranking() -> None:
    user_emb, item_emb, relevant, exclude = random_problem(4, n_items=15)
    ks = (5, 50)
    got = full_ranking_metrics(user_emb, item_emb, relevant, ks, exclude)
    assert_metrics_equal(got, naive_full_ranking(user_emb, item_emb, relevant, ks, exclude))
    assert got["recall@50"] == pytest.approx(1.0)  # every admissible relevant item is ranked


def test_default_ks() -> None:
    user_emb, item_emb, relevant, exclude = random_problem(5)
    got = full_ranking_metrics(user_emb, item_emb, relevant, exclude=exclude)
    assert_metrics_equal(got, naive_full_ranking(user_emb, item_emb, relevant, DEFAULT_KS, exclude))


def test_exclude_is_honoured() -> None:
    # One user, items on a line: scores are 3 > 2 > 1 > 0 for items 0..3.
    user = np.array([[1.0]], dtype=np.float32)
    items = np.array([[3.0], [2.0], [1.0], [0.0]], dtype=np.float32)
    relevant = [np.array([1])]
    plain = full_ranking_metrics(user, items, relevant, (1, 2))
    assert plain["recall@1"] == 0.0 and plain["recall@2"] == 1.0 and plain["mrr"] == 0.5
    # Excluding item 0 moves the relevant item to the top.
    moved = full_ranking_metrics(user, items, relevant, (1, 2), [np.array([0])])
    assert moved["recall@1"] == 1.0 and moved["mrr"] == 1.0 and moved["ndcg@1"] == 1.0
    # Excluding the relevant item itself makes it a miss everywhere, MRR included.
    gone = full_ranking_metrics(user, items, relevant, (1, 4), [np.array([1])])
    assert gone["recall@4"] == 0.0 and gone["hr@4"] == 0.0 and gone["mrr"] == 0.0


def test_no_users_raises() -> None:
    with pytest.raises(ValueError):
        full_ranking_metrics(np.zeros((0, 2), np.float32), np.ones((3, 2), np.float32), [], (1,))

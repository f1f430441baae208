"""Top-k ranking metrics for implicit feedback, one value per user.

The list metrics (``recall_at_k``, ``hit_rate_at_k``, ``ndcg_at_k``, ``mrr``) take
``ranked``: ``(n_users, >=k)`` item positions, best first (``-1`` = padding, never
relevant), and ``relevant``: one array of relevant item positions per user.
``n_relevant`` (``(n_users,)``) may count relevant items that cannot be ranked
(e.g. absent from the catalogue); it defaults to ``len(relevant[u])``. Users with
no relevant item get ``nan``.

The score functions (``relevant_ranks``, ``rank_metrics``, ``mrr_from_scores``)
rank the whole catalogue from ``(n_users, n_items)`` scores. Ties are broken by a
seeded random order of the items, one per user (``tie_break_keys``): each user's
ranking orders items by score, descending, then by key, ascending. So a constant
scorer gets the metrics of a random ranking, not those of a perfect one, and no
item wins ties for being first in the catalogue. Items scored ``-inf`` (excluded)
or ``nan`` are not ranked: they are never counted above anything, and a relevant
one is a miss.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from recxfer.types import row_counts


def hit_matrix(ranked: np.ndarray, relevant: Sequence[np.ndarray], k: int) -> np.ndarray:
    """``(n_users, k)`` bool: whether ``ranked[u, r]`` is relevant to user ``u``."""
    if ranked.ndim != 2 or ranked.shape[0] != len(relevant):
        raise ValueError(f"ranked {ranked.shape} must be (n_users={len(relevant)}, >=k)")
    if not 1 <= k <= ranked.shape[1]:
        raise ValueError(f"k must be in [1, {ranked.shape[1]}], got {k}")
    top = ranked[:, :k].astype(np.int64)  # (n_users, k)
    lengths = np.array([len(rel) for rel in relevant], dtype=np.int64)
    flat = (
        np.concatenate([np.asarray(rel, dtype=np.int64).ravel() for rel in relevant])
        if lengths.sum() else np.zeros(0, dtype=np.int64)
    )
    # One isin over (user, item) pairs encoded as user * width + item, instead of a
    # Python loop over users; padding (-1) and negative positions never match.
    width = int(max(top.max(initial=0), flat.max(initial=0))) + 1
    owners = np.repeat(np.arange(len(relevant), dtype=np.int64), lengths)
    flat_ok = flat >= 0
    rel_keys = owners[flat_ok] * width + flat[flat_ok]  # (n_relevant,)
    top_keys = np.arange(top.shape[0], dtype=np.int64)[:, None] * width + top  # (n_users, k)
    return np.isin(top_keys, rel_keys) & (top >= 0)


def _n_relevant(relevant: Sequence[np.ndarray], n_relevant: np.ndarray | None) -> np.ndarray:
    counts = np.array([len(np.unique(r)) for r in relevant], dtype=np.float64)
    if n_relevant is None:
        return counts
    n_relevant = np.asarray(n_relevant, dtype=np.float64)
    if n_relevant.shape != counts.shape or (n_relevant < counts).any():
        raise ValueError("n_relevant must be (n_users,) and >= the relevant items given")
    return n_relevant


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def recall_at_k(
    ranked: np.ndarray, relevant: Sequence[np.ndarray], k: int, n_relevant: np.ndarray | None = None
) -> np.ndarray:
    """``(n_users,)``: relevant items in the top ``k`` / number of relevant items."""
    hits = hit_matrix(ranked, relevant, k).sum(axis=1)
    return _safe_div(hits.astype(np.float64), _n_relevant(relevant, n_relevant))


def hit_rate_at_k(
    ranked: np.ndarray, relevant: Sequence[np.ndarray], k: int, n_relevant: np.ndarray | None = None
) -> np.ndarray:
    """``(n_users,)``: 1 if any relevant item is in the top ``k``, else 0."""
    hits = hit_matrix(ranked, relevant, k).any(axis=1).astype(np.float64)
    return np.where(_n_relevant(relevant, n_relevant) > 0, hits, np.nan)


def ndcg_at_k(
    ranked: np.ndarray, relevant: Sequence[np.ndarray], k: int, n_relevant: np.ndarray | None = None
) -> np.ndarray:
    """``(n_users,)`` binary-relevance NDCG: DCG of the top ``k`` over the ideal DCG
    of ``min(n_relevant, k)`` relevant items at the top."""
    discount = 1.0 / np.log2(np.arange(2, k + 2))  # (k,)
    dcg = hit_matrix(ranked, relevant, k) @ discount  # (n_users,)
    ideal_n = np.minimum(_n_relevant(relevant, n_relevant), k).astype(np.int64)
    idcg = np.concatenate([[0.0], np.cumsum(discount)])[ideal_n]
    return _safe_div(dcg, idcg)


def mrr(
    ranked: np.ndarray, relevant: Sequence[np.ndarray], n_relevant: np.ndarray | None = None
) -> np.ndarray:
    """``(n_users,)`` reciprocal rank of the first relevant item within ``ranked``
    (0 if none there). Pass a full ranking for the untruncated MRR."""
    hits = hit_matrix(ranked, relevant, ranked.shape[1])
    first = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, np.inf)
    rr = 1.0 / first
    return np.where(_n_relevant(relevant, n_relevant) > 0, rr, np.nan)


# splitmix64 (Steele, Lea & Flood 2014): an odd increment and a bijective finaliser.
_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_SEED_SALT = np.uint64(0x5851F42D4C957F2D)
_PAIR_BUDGET = 1 << 22  # score comparisons done at once by relevant_ranks


def _mix64(z: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, in place on a fresh uint64 array: a bijection of
    uint64 onto itself (wraps mod 2**64)."""
    z ^= z >> np.uint64(30)
    z *= _MIX1
    z ^= z >> np.uint64(27)
    z *= _MIX2
    z ^= z >> np.uint64(31)
    return z


def tie_break_keys(users: np.ndarray, items: np.ndarray, seed: int = 0) -> np.ndarray:
    """uint64 tie-break key of each ``(user, item)`` pair (broadcast together).

    Among items with equal scores, a user's ranking puts the smaller key first.
    For one user and seed, ``item -> key`` is injective (``mix64(base + item * gamma)``
    with an odd ``gamma`` and a bijective ``mix64``), so the keys order the items as a
    permutation, pseudo-random and different for every user and seed. A key depends
    only on ``(seed, user, item)``, never on how users are chunked.
    """
    users = np.asarray(users, dtype=np.int64).astype(np.uint64)
    items = np.asarray(items, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        salt = _mix64(np.array([seed % (1 << 64)], dtype=np.uint64) ^ _SEED_SALT)[0]
        base = _mix64(np.atleast_1d((users + np.uint64(1)) * _GAMMA ^ salt))
        keys = _mix64(np.atleast_1d(base.reshape(users.shape) + items * _GAMMA))
        return keys.reshape(np.broadcast_shapes(users.shape, items.shape))


def _relevant_pairs(relevant: Sequence[np.ndarray], n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Unique ``(owner, item)`` pairs of relevant items inside ``[0, n_items)``, sorted."""
    lengths = np.array([len(rel) for rel in relevant], dtype=np.int64)
    if not lengths.sum() or n_items == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    flat = np.concatenate([np.asarray(rel, dtype=np.int64).ravel() for rel in relevant])
    owners = np.repeat(np.arange(len(relevant), dtype=np.int64), lengths)
    ok = (flat >= 0) & (flat < n_items)  # off-catalogue positions are misses
    codes = np.unique(owners[ok] * n_items + flat[ok])
    return codes // n_items, codes % n_items


def relevant_ranks(
    scores: np.ndarray,
    relevant: Sequence[np.ndarray],
    users: np.ndarray | None = None,
    seed: int = 0,
    max_rank: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1-based full-catalogue rank of every relevant item, ties broken at random.

    Args:
        scores: ``(n, n_items)``; excluded items must already be ``-inf``.
        relevant: relevant item positions per row of ``scores``; duplicates count
            once, positions outside ``[0, n_items)`` are left out (misses).
        users: ``(n,)`` user row of each score row, which seeds its tie-break order
            (``tie_break_keys``); defaults to ``arange(n)``.
        max_rank: when given, ranks above it are reported as ``inf`` and only items
            scored at least a row's ``max_rank``-th largest score are ranked exactly
            (one partition per row instead of a catalogue scan per relevant item):
            metrics at ``k <= max_rank`` are unchanged, MRR is not available.

    Returns:
        ``(owner, item, rank)``, one entry per unique relevant pair, sorted by owner
        then item: ``rank = 1 + #(score > s) + #(score == s and key < own key)``
        over the owner's row, where ``s`` is the item's score, as float64; ``inf``
        when ``s`` is ``-inf`` or ``nan`` (not ranked). ``-inf`` and ``nan`` items
        never count. Cost: ``O(n_items)`` per relevant pair, memory bounded.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[0] != len(relevant):
        raise ValueError(f"scores {scores.shape} must be (n_users={len(relevant)}, n_items)")
    n, n_items = scores.shape
    users = np.arange(n, dtype=np.int64) if users is None else np.asarray(users, dtype=np.int64)
    if users.shape != (n,):
        raise ValueError(f"users {users.shape} must be ({n},)")
    owner, item = _relevant_pairs(relevant, n_items)
    own = scores[owner, item]  # (P,)
    rank = np.full(len(owner), np.inf)
    ranked = np.flatnonzero(own > -np.inf)  # False for -inf and nan
    if max_rank is not None:
        if max_rank < 1:
            raise ValueError(f"max_rank must be >= 1, got {max_rank}")
        # an item below its row's max_rank-th largest score has max_rank items above it
        threshold = _kth_largest(scores, max_rank)  # (n,)
        ranked = ranked[own[ranked] >= threshold[owner[ranked]]]
    block = max(1, _PAIR_BUDGET // max(n_items, 1))
    for start in range(0, len(ranked), block):
        pick = ranked[start : start + block]  # (b,) pairs
        rows = scores[owner[pick]]  # (b, I)
        s = own[pick][:, None]  # (b, 1)
        above = row_counts(rows > s)  # (b,)
        tied = rows == s  # (b, I), the item itself included
        n_tied = row_counts(tied)  # (b,)
        ahead = np.zeros(len(pick), dtype=np.int64)  # tied items whose key comes first
        multi = np.flatnonzero(n_tied > 1)  # pairs with a real tie
        who = users[owner[pick[multi]]]  # (m,)
        own_key = tie_break_keys(who, item[pick[multi]], seed)  # (m,)
        dense = n_tied[multi] * 8 > n_items  # many ties (a popularity tail): key every item
        if dense.any():
            # one key row per distinct user (a user's relevant items share it)
            distinct, which = np.unique(who[dense], return_inverse=True)  # (u,), (d,)
            keys = tie_break_keys(distinct[:, None], np.arange(n_items)[None, :], seed)  # (u, I)
            first = tied[multi[dense]] & (keys[which] < own_key[dense][:, None])  # (d, I)
            ahead[multi[dense]] = row_counts(first)
        if not dense.all():
            sparse = multi[~dense]
            pair, other = np.nonzero(tied[sparse])  # (t,), (t,): each tied item of each pair
            before = tie_break_keys(who[~dense][pair], other, seed) < own_key[~dense][pair]  # (t,)
            ahead[sparse] = np.bincount(pair, weights=before, minlength=len(sparse)).astype(np.int64)
        rank[pick] = 1 + above + ahead
    if max_rank is not None:
        rank[rank > max_rank] = np.inf
    return owner, item, rank


def _kth_largest(scores: np.ndarray, k: int) -> np.ndarray:
    """``(n,)`` each row's ``k``-th largest rankable score (``nan`` counted as
    ``-inf``); ``-inf`` for rows with fewer than ``k`` items."""
    n, n_items = scores.shape
    if k > n_items:
        return np.full(n, -np.inf)
    out = np.empty(n, dtype=np.float64)
    block = max(1, _PAIR_BUDGET // max(n_items, 1))
    for start in range(0, n, block):
        rows = scores[start : start + block]  # (b, I), partitioned in its own float type
        if not np.issubdtype(rows.dtype, np.floating):
            rows = rows.astype(np.float64)
        elif np.isnan(rows).any():
            rows = np.where(np.isnan(rows), -np.inf, rows)
        out[start : start + block] = _kth_of_rows(rows, k)
    return out


def _kth_of_rows(rows: np.ndarray, k: int) -> np.ndarray:
    """``(b,)`` the ``k``-th largest of each row of a ``(b, I)`` float block without
    nan: torch's row-parallel top-k when torch has several threads (1.4x faster at
    2 threads and 18 k items), else numpy's partition (faster at one thread; it
    copies, float32 rows are not widened: 2.5x faster at 18 k items)."""
    if torch.get_num_threads() > 1 and rows.dtype in (np.float32, np.float64):
        # the k-th largest is the smallest of the k largest: exact, whatever selects them
        return torch.topk(torch.from_numpy(np.ascontiguousarray(rows)), k, dim=1,
                          sorted=False).values.min(dim=1).values.numpy()
    return np.partition(rows, rows.shape[1] - k, axis=1)[:, rows.shape[1] - k]


def rank_metrics(
    owner: np.ndarray,
    rank: np.ndarray,
    n_relevant: np.ndarray,
    ks: Sequence[int],
    n_items: int,
) -> dict[str, np.ndarray]:
    """Per-user ``recall@k``, ``ndcg@k``, ``hr@k`` (each ``k`` in ``ks``) and ``mrr``
    from the ranks of relevant items (``relevant_ranks``).

    Args:
        owner: ``(P,)`` user of each ranked relevant item, in ``[0, n_users)``.
        rank: ``(P,)`` its 1-based rank (``inf`` = not ranked).
        n_relevant: ``(n_users,)`` relevant items per user, unranked ones included.
        n_items: catalogue size; a ``k`` beyond it is cut to it (as in the ideal DCG).

    Returns:
        ``(n_users,)`` float64 arrays; ``nan`` for users with ``n_relevant == 0``.
        NDCG has binary gains and the ideal DCG of ``min(n_relevant, k)`` hits.
    """
    n_relevant = np.asarray(n_relevant, dtype=np.float64)
    n_users = len(n_relevant)
    owner = np.asarray(owner, dtype=np.int64)
    rank = np.asarray(rank, dtype=np.float64)
    has = n_relevant > 0
    gain = 1.0 / np.log2(rank + 1.0)  # (P,), 0 for inf
    out: dict[str, np.ndarray] = {}
    for k in ks:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        kk = min(int(k), n_items)
        hit = rank <= kk  # (P,)
        hits = np.bincount(owner, weights=hit, minlength=n_users)  # (n_users,)
        dcg = np.bincount(owner, weights=np.where(hit, gain, 0.0), minlength=n_users)
        ideal = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, kk + 2)))])
        idcg = ideal[np.minimum(n_relevant, kk).astype(np.int64)]
        out[f"recall@{k}"] = _safe_div(hits, n_relevant)
        out[f"ndcg@{k}"] = _safe_div(dcg, idcg)
        out[f"hr@{k}"] = np.where(has, (hits > 0).astype(np.float64), np.nan)
    best = np.full(n_users, np.inf)
    np.minimum.at(best, owner, rank)
    out["mrr"] = np.where(has, 1.0 / best, np.nan)
    return out


def mrr_from_scores(
    scores: np.ndarray, relevant: Sequence[np.ndarray], seed: int = 0
) -> np.ndarray:
    """``(n_users,)`` full-ranking reciprocal rank of the best relevant item.

    Args:
        scores: ``(n_users, n_items)``; excluded items must already be ``-inf``.
        relevant: relevant item positions per user.
        seed: seeds the random tie-break (``tie_break_keys``, user = row).

    The rank is ``relevant_ranks``'s: ties are broken at random, so equal scores
    do not flatter (a constant scorer gets a random rank, not rank 1). ``0`` when no
    relevant item can be ranked, ``nan`` with none at all.
    """
    owner, _, rank = relevant_ranks(scores, relevant, seed=seed)
    best = np.full(len(relevant), np.inf)
    np.minimum.at(best, owner, rank)
    has = np.array([len(rel) > 0 for rel in relevant], dtype=bool)
    return np.where(has, 1.0 / best, np.nan)

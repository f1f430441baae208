"""Top-k ranking metrics for implicit feedback, one value per user.

Every function takes ``ranked``: ``(n_users, >=k)`` item positions, best first
(``-1`` = padding, never relevant), and ``relevant``: one array of relevant item
positions per user. ``n_relevant`` (``(n_users,)``) may count relevant items that
cannot be ranked (e.g. absent from the catalogue); it defaults to
``len(relevant[u])``. Users with no relevant item get ``nan``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


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


def mrr_from_scores(scores: np.ndarray, relevant: Sequence[np.ndarray]) -> np.ndarray:
    """``(n_users,)`` full-ranking reciprocal rank of the best relevant item.

    Args:
        scores: ``(n_users, n_items)``; excluded items must already be ``-inf``.
        relevant: relevant item positions per user.

    The rank is 1 + the number of items scored strictly higher than the best
    relevant item; 0 when no relevant item can be ranked, ``nan`` with none at all.
    """
    out = np.full(len(relevant), np.nan)
    for u, rel in enumerate(relevant):
        if len(rel) == 0:
            continue
        best = scores[u, rel].max()
        out[u] = 0.0 if not np.isfinite(best) else 1.0 / (1 + int((scores[u] > best).sum()))
    return out

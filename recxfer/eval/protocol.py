"""Evaluation protocols: full ranking over the whole catalogue.

Every item of the catalogue is ranked for every user; ties are broken by a seeded
random order of the items, one per user (see ``recxfer.eval.metrics``), so equal
scores neither flatter a model (a constant scorer gets random-ranking metrics) nor
favour the items that come first in the catalogue.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from recxfer.eval.metrics import _n_relevant, rank_metrics, relevant_ranks

DEFAULT_KS: tuple[int, ...] = (10, 20, 50)
CHUNK_USERS = 1024  # users scored at once: bounds memory to CHUNK_USERS x n_items scores

ScoreFn = Callable[[np.ndarray], np.ndarray]


def _chunk_scores(score_fn: ScoreFn, rows: np.ndarray, n_items: int | None,
                  writable: bool = True) -> np.ndarray:
    """``score_fn(rows)`` as floats, shape-checked: a copy when ``writable`` (excluded
    items are then overwritten), else possibly the caller's own array, only read."""
    scores = np.array(score_fn(rows)) if writable else np.asarray(score_fn(rows))
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)
    if scores.ndim != 2 or scores.shape[0] != len(rows) or scores.shape[1] == 0:
        raise ValueError(f"score_fn gave {scores.shape} for {len(rows)} users, want (users, n_items >= 1)")
    if n_items is not None and scores.shape[1] != n_items:
        raise ValueError(f"score_fn gave {scores.shape[1]} items, earlier chunks {n_items}")
    return scores


def _exclude(scores: np.ndarray, banned: Sequence[np.ndarray]) -> None:
    """Sets ``scores[row, banned[row]]`` to ``-inf``; positions outside the catalogue
    (e.g. ``-1`` padding) exclude nothing."""
    lengths = np.array([len(b) for b in banned], dtype=np.int64)
    if not lengths.sum():
        return
    flat = np.concatenate([np.asarray(b, dtype=np.int64).ravel() for b in banned])
    rows = np.repeat(np.arange(len(banned), dtype=np.int64), lengths)
    ok = (flat >= 0) & (flat < scores.shape[1])
    scores[rows[ok], flat[ok]] = -np.inf


def full_ranking_per_user(
    score_fn: ScoreFn,
    n_users: int,
    relevant: Sequence[np.ndarray],
    ks: Sequence[int] = DEFAULT_KS,
    exclude: Sequence[np.ndarray] | None = None,
    n_relevant: np.ndarray | None = None,
    seed: int = 0,
    chunk_size: int = CHUNK_USERS,
    mrr: bool = True,
) -> dict[str, np.ndarray]:
    """Per-user recall@k, ndcg@k, hr@k (each ``k`` in ``ks``) and MRR, of any scorer.

    Each user's ranking orders the whole catalogue by score, descending, then by a
    seeded random permutation of the items (``tie_break_keys(user, item, seed)``);
    ``exclude`` (e.g. training items) is removed from it first.

    Args:
        score_fn: ``score_fn(rows)`` with ``rows`` ``(c,)`` int64 user positions in
            ``[0, n_users)`` gives their ``(c, n_items)`` float scores; called once
            per chunk of ``chunk_size`` users, in order. Its array is copied, never
            written to. ``-inf`` and ``nan`` scores are not ranked.
        n_users: users to evaluate; ``relevant`` (and ``exclude``) have one entry each.
        relevant: held-out item positions per user (duplicates count once).
        exclude: item positions per user removed from the ranking; a relevant item
            excluded is a miss.
        n_relevant: ``(n_users,)`` counts including relevant items missing from the
            catalogue (they count as misses); defaults to ``len(unique(relevant[u]))``.
        seed: seeds the tie-break; same seed, same metrics.
        mrr: ``False`` leaves MRR out, so only items within ``max(ks)`` of the top are
            ranked exactly (``relevant_ranks(max_rank=...)``): the same ``@k`` metrics,
            several times faster on catalogues where users have many relevant items
            (the choice of validation searches).

    Returns:
        ``{"recall@10": (n_users,), "ndcg@10": ..., "hr@10": ..., ..., "mrr": ...}``
        float64, ``nan`` for users with ``n_relevant == 0``.
    """
    if n_users < 1 or len(relevant) == 0:
        raise ValueError("no users to evaluate")
    if len(relevant) != n_users:
        raise ValueError(f"relevant has {len(relevant)} users, n_users is {n_users}")
    if exclude is not None and len(exclude) != n_users:
        raise ValueError(f"exclude has {len(exclude)} users, n_users is {n_users}")
    if len(ks) == 0 or min(ks) < 1:
        raise ValueError(f"ks must be non-empty and >= 1, got {tuple(ks)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n_rel = _n_relevant(relevant, n_relevant)  # (n_users,), validated
    n_items: int | None = None
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, n_users, chunk_size):
        stop = min(start + chunk_size, n_users)
        rows = np.arange(start, stop, dtype=np.int64)
        scores = _chunk_scores(score_fn, rows, n_items, writable=exclude is not None)  # (c, I)
        n_items = scores.shape[1]
        if exclude is not None:
            _exclude(scores, exclude[start:stop])
        owner, _, rank = relevant_ranks(scores, relevant[start:stop], rows, seed,
                                        max_rank=None if mrr else min(max(ks), n_items))
        for name, values in rank_metrics(owner, rank, n_rel[start:stop], ks, n_items).items():
            if mrr or name != "mrr":
                parts.setdefault(name, []).append(values)
    return {name: np.concatenate(values) for name, values in parts.items()}


def full_ranking_metrics_scores(
    score_fn: ScoreFn,
    n_users: int,
    relevant: Sequence[np.ndarray],
    ks: Sequence[int] = DEFAULT_KS,
    exclude: Sequence[np.ndarray] | None = None,
    n_relevant: np.ndarray | None = None,
    seed: int = 0,
    chunk_size: int = CHUNK_USERS,
    mrr: bool = True,
) -> dict[str, float]:
    """Mean recall@k, ndcg@k, hr@k (each ``k`` in ``ks``) and MRR over users, of any
    scorer: the means of ``full_ranking_per_user`` (same arguments) over users with
    ``n_relevant > 0``, and ``"users": n_users``."""
    per_user = full_ranking_per_user(score_fn, n_users, relevant, ks, exclude, n_relevant, seed, chunk_size, mrr)
    return per_user_means(per_user)


def per_user_means(per_user: dict[str, np.ndarray]) -> dict[str, float]:
    """``full_ranking_per_user``'s values averaged over the users with held-out items
    (``nan`` left out), and ``"users"``: how many users were evaluated."""
    n_users = len(next(iter(per_user.values()))) if per_user else 0
    return {name: float(np.nanmean(values)) for name, values in per_user.items()} | {"users": float(n_users)}


def full_ranking_metrics(
    user_emb: np.ndarray,
    item_emb: np.ndarray,
    relevant: Sequence[np.ndarray],
    ks: Sequence[int] = DEFAULT_KS,
    exclude: Sequence[np.ndarray] | None = None,
    n_relevant: np.ndarray | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """``full_ranking_metrics_scores`` of embeddings: score = ``user_emb @ item_emb.T``
    (float32).

    Args:
        user_emb: ``(n_users, d)``, one row per entry of ``relevant``.
        item_emb: ``(n_items, d)``.
        relevant, ks, exclude, n_relevant, seed: as in ``full_ranking_metrics_scores``.

    Returns:
        ``{"recall@10": ..., "ndcg@10": ..., "hr@10": ..., ..., "mrr": ..., "users": n}``.
    """
    if len(relevant) == 0:
        raise ValueError("no users to evaluate")
    if user_emb.ndim != 2 or user_emb.shape[0] != len(relevant):
        raise ValueError(f"user_emb {user_emb.shape} must be (n_users={len(relevant)}, d)")
    items = torch.as_tensor(np.ascontiguousarray(item_emb, dtype=np.float32))  # (I, d)

    def score_fn(rows: np.ndarray) -> np.ndarray:
        queries = torch.as_tensor(np.ascontiguousarray(user_emb[rows], dtype=np.float32))  # (c, d)
        return (queries @ items.T).numpy()  # (c, I)

    return full_ranking_metrics_scores(
        score_fn, len(relevant), relevant, ks, exclude, n_relevant, seed
    )

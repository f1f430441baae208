"""Exact top-k restricted to a candidate set (allow-lists), without the index.

An allow-list is usually short, so scoring its items directly is both exact and
cheaper than over-fetching from the index until enough allowed items come back.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from recxfer.types import SearchResult


def topk_among(
    queries: np.ndarray,
    item_emb: np.ndarray,
    candidates: Sequence[np.ndarray],
    k: int,
    exclude: Sequence[np.ndarray] | None = None,
) -> SearchResult:
    """Top-``k`` items per query among that query's candidates.

    Args:
        queries: ``(n, d)`` float32.
        item_emb: ``(n_items, d)`` float32, the whole item table.
        candidates: ``n`` arrays of item positions allowed for each query
            (duplicates and order do not matter).
        k: results wanted per query, ``k >= 1``.
        exclude: ``n`` arrays of item positions that must not be returned.

    Returns:
        ``(n, k)`` positions and scores, best first (ties: lower position first),
        padded with ``-1`` / ``-inf`` when fewer than ``k`` candidates are admissible.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n = queries.shape[0]
    if len(candidates) != n or (exclude is not None and len(exclude) != n):
        raise ValueError(f"candidates/exclude must have one row per query ({n})")
    out_idx = np.full((n, k), -1, dtype=np.int64)
    out_scores = np.full((n, k), -np.inf, dtype=np.float32)
    for row in range(n):
        cand = np.unique(np.asarray(candidates[row], dtype=np.int64))  # (m,) sorted
        if exclude is not None and len(exclude[row]):
            cand = cand[~np.isin(cand, exclude[row])]
        if cand.size == 0:
            continue
        scores = item_emb[cand] @ np.asarray(queries[row], dtype=np.float32)  # (m,)
        order = np.argsort(-scores, kind="stable")[:k]
        out_idx[row, : order.size] = cand[order]
        out_scores[row, : order.size] = scores[order]
    return SearchResult(out_idx, out_scores)

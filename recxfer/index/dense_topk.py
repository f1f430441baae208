"""Exact top-k over precomputed dense scores (no embeddings, no index).

The item-to-item transfer scores every target item of a query at once (an
``(n, n_items)`` matrix); serving then needs the admissible top-k of each row
with the same conventions as the index searches: best first, ties broken by the
lower item position, exclusions and allow-lists applied, rows padded with
``-1`` / ``-inf`` when fewer than ``k`` items are admissible.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from recxfer.types import SearchResult


def topk_dense(
    scores: np.ndarray,
    k: int,
    exclude: Sequence[np.ndarray] | None = None,
    allow: Sequence[np.ndarray | None] | None = None,
) -> SearchResult:
    """Top-``k`` item positions per row of ``scores``.

    Args:
        scores: ``(n, n_items)`` float scores (finite; NaN rows are refused).
        k: results wanted per row, ``k >= 1``.
        exclude: ``n`` arrays of item positions never returned (out-of-range
            positions are ignored).
        allow: ``n`` entries, ``None`` (every item) or the positions that may be
            returned (duplicates, order and out-of-range positions do not matter).

    Returns:
        ``(n, k)`` int64 positions and float32 scores, best first (ties: lower
        position first), padded with ``-1`` / ``-inf``.

    Raises:
        ValueError: bad ``k``, shapes, or NaN scores.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (n, n_items), got {scores.shape}")
    n, n_items = scores.shape
    if (exclude is not None and len(exclude) != n) or (allow is not None and len(allow) != n):
        raise ValueError(f"exclude/allow must have one row per query ({n})")
    if np.isnan(scores).any():
        raise ValueError("scores hold NaN")
    out_idx = np.full((n, k), -1, dtype=np.int64)
    out_scores = np.full((n, k), -np.inf, dtype=np.float32)
    for row in range(n):
        if allow is None or allow[row] is None:
            fast = _topk_row_excluding(scores[row], k, None if exclude is None else exclude[row])
            if fast is not None:
                out_idx[row, : fast[0].size], out_scores[row, : fast[0].size] = fast
                continue
        admissible = np.ones(n_items, dtype=bool) if allow is None or allow[row] is None else None
        if admissible is None:
            admissible = np.zeros(n_items, dtype=bool)
            admissible[_in_range(allow[row], n_items)] = True  # type: ignore[index]
        if exclude is not None and len(exclude[row]):
            admissible[_in_range(exclude[row], n_items)] = False
        cand = np.flatnonzero(admissible)  # (m,) ascending positions
        if cand.size == 0:
            continue
        idx, top = _topk_row(scores[row, cand], cand, min(k, cand.size))
        out_idx[row, : idx.size] = idx
        out_scores[row, : idx.size] = top
    return SearchResult(out_idx, out_scores)


def _in_range(positions: np.ndarray, n_items: int) -> np.ndarray:
    positions = np.asarray(positions, dtype=np.int64)
    return positions[(positions >= 0) & (positions < n_items)]


def _topk_row_excluding(values: np.ndarray, k: int,
                        exclude: np.ndarray | None) -> tuple[np.ndarray, np.ndarray] | None:
    """The ``k`` best of a whole row (``(n_items,)``) but ``exclude``, as ``_topk_row``
    ranks them, without gathering the admissible items: the excluded are set to
    ``-inf`` in a copy. ``None`` (the caller gathers instead) when the row holds
    ``-inf`` scores of its own among the ``k`` best, which the mark would confuse."""
    neg = np.negative(values)  # (n_items,) ascending = best first
    n_admissible = values.size
    if exclude is not None and len(exclude):
        gone = np.unique(_in_range(exclude, values.size))
        neg[gone] = np.inf
        n_admissible -= gone.size
    k = min(k, n_admissible)
    if k == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    kth = np.partition(neg, k - 1)[k - 1] if k < neg.size else neg.max()
    if kth == np.inf:
        return None
    above = np.flatnonzero(neg < kth)
    tied = np.flatnonzero(neg == kth)[: k - above.size]  # lowest positions first
    chosen = np.concatenate([above, tied])
    order = np.lexsort((chosen, neg[chosen].astype(np.float64)))
    chosen = chosen[order]
    return chosen.astype(np.int64), values[chosen].astype(np.float32)


def _topk_row(values: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of ``values`` (``(m,)``, aligned with ascending ``cand``),
    exactly: descending value, ties by lower position. ``O(m)`` selection, then a
    sort of the ``k`` selected."""
    if k < values.size:
        kth = -np.partition(-values, k - 1)[k - 1]  # the k-th largest value
        above = np.flatnonzero(values > kth)
        tied = np.flatnonzero(values == kth)[: k - above.size]  # lowest positions first
        chosen = np.concatenate([above, tied])
    else:
        chosen = np.arange(values.size)
    order = np.lexsort((cand[chosen], -values[chosen].astype(np.float64)))
    chosen = chosen[order]
    return cand[chosen].astype(np.int64), values[chosen].astype(np.float32)

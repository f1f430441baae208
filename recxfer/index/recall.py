"""How well an (approximate) index agrees with exact search, faiss-contrib style."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from recxfer.index.base import ItemIndex
from recxfer.index.exact import ExactIndex


def recall_vs_exact(approx_idx: np.ndarray, exact_idx: np.ndarray) -> float:
    """Mean share of each row's exact top-k found by the approximate search.

    Args:
        approx_idx: ``(n, k)`` item positions from the index under test (``-1`` pads).
        exact_idx: ``(n, k)`` item positions from exact search (``-1`` pads).

    Returns:
        ``mean_i |approx_i ∩ exact_i| / |exact_i|`` over rows with a non-empty exact
        top-k; 1.0 when there are none.
    """
    if approx_idx.shape[0] != exact_idx.shape[0]:
        raise ValueError(f"row counts differ: {approx_idx.shape} vs {exact_idx.shape}")
    shares = []
    for approx, exact in zip(approx_idx, exact_idx):
        truth = exact[exact >= 0]
        if truth.size:
            shares.append(np.isin(truth, approx[approx >= 0]).sum() / truth.size)
    return float(np.mean(shares)) if shares else 1.0


def index_recall(
    index: ItemIndex,
    item_emb: np.ndarray,
    queries: np.ndarray,
    ks: Sequence[int] = (10, 100),
    max_queries: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Recall@k of ``index`` against exact search, for the manifest.

    Args:
        index: the index under test, built over ``item_emb``.
        item_emb: ``(n_items, d)`` float32.
        queries: ``(n, d)`` float32, e.g. the artifact's own user embeddings; a
            seeded sample of at most ``max_queries`` rows is used.
        ks: cut-offs (each capped at ``n_items``).

    Returns:
        ``{"recall@10": float, ..., "queries": int}``.
    """
    if len(queries) > max_queries:
        rows = np.sort(np.random.default_rng(seed).choice(len(queries), max_queries, replace=False))
        queries = queries[rows]
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    report: dict[str, Any] = {"queries": int(len(queries))}
    if len(queries) == 0:
        return {**report, **{f"recall@{k}": 1.0 for k in ks}}
    k_max = min(max(ks), index.ntotal)
    exact = ExactIndex(item_emb).search(queries, k_max).idx  # (n, k_max)
    for k in ks:
        k_eff = min(k, index.ntotal)
        # Searched at each k: some indexes (HNSW) search wider for a larger k.
        approx = index.search(queries, k_eff).idx  # (n, k_eff)
        report[f"recall@{k}"] = recall_vs_exact(approx, exact[:, :k_eff])
    return report

"""Evaluation protocols: full ranking over the whole catalogue."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from recxfer.eval.metrics import hit_rate_at_k, mrr_from_scores, ndcg_at_k, recall_at_k
from recxfer.index.exact import ExactIndex

DEFAULT_KS: tuple[int, ...] = (10, 20, 50)


def full_ranking_metrics(
    user_emb: np.ndarray,
    item_emb: np.ndarray,
    relevant: Sequence[np.ndarray],
    ks: Sequence[int] = DEFAULT_KS,
    exclude: Sequence[np.ndarray] | None = None,
    n_relevant: np.ndarray | None = None,
) -> dict[str, float]:
    """Mean recall@k, ndcg@k, hr@k (each ``k`` in ``ks``) and MRR over users.

    Every item of the catalogue is ranked; ``exclude`` (e.g. training items) is
    removed from each user's ranking first.

    Args:
        user_emb: ``(n_users, d)``.
        item_emb: ``(n_items, d)``; score = ``user_emb @ item_emb.T``.
        relevant: held-out item positions per user.
        n_relevant: ``(n_users,)`` counts including relevant items missing from the
            catalogue (they count as misses); defaults to ``len(relevant[u])``.

    Returns:
        ``{"recall@10": ..., "ndcg@10": ..., "hr@10": ..., ..., "mrr": ..., "users": n}``.
    """
    if len(relevant) == 0:
        raise ValueError("no users to evaluate")
    k_max = min(max(ks), item_emb.shape[0])
    index = ExactIndex(item_emb, device="cpu")
    ranked = index.search(user_emb, k_max, exclude).idx  # (n_users, k_max)
    result: dict[str, float] = {}
    for k in ks:
        kk = min(k, k_max)
        result[f"recall@{k}"] = float(np.nanmean(recall_at_k(ranked, relevant, kk, n_relevant)))
        result[f"ndcg@{k}"] = float(np.nanmean(ndcg_at_k(ranked, relevant, kk, n_relevant)))
        result[f"hr@{k}"] = float(np.nanmean(hit_rate_at_k(ranked, relevant, kk, n_relevant)))
    rr = []
    items = torch.as_tensor(np.ascontiguousarray(item_emb, dtype=np.float32))
    for start in range(0, len(relevant), 1024):
        stop = min(start + 1024, len(relevant))
        queries = torch.as_tensor(np.ascontiguousarray(user_emb[start:stop], dtype=np.float32))
        scores = (queries @ items.T).numpy()  # (chunk, n_items)
        if exclude is not None:
            for row, banned in enumerate(exclude[start:stop]):
                scores[row, banned] = -np.inf
        rr.append(mrr_from_scores(scores, relevant[start:stop]))
    rr_all = np.concatenate(rr)
    if n_relevant is not None:  # users whose relevant items are all off-catalogue
        rr_all = np.where(np.isnan(rr_all) & (np.asarray(n_relevant) > 0), 0.0, rr_all)
    result["mrr"] = float(np.nanmean(rr_all))
    result["users"] = float(len(relevant))
    return result

"""The sampled protocol of the cold-start CDR papers (CDRIB family).

Each held-out line is one instance: its positive item is ranked against
``n_neg`` negatives drawn uniformly, with replacement, from the domain's training
items (seeded). Ties are broken at random (seeded), so a constant scorer gets the
expected rank of a random one rather than rank 1.
"""

from __future__ import annotations

import numpy as np
import torch

SAMPLED_KEYS = ("MRR", "NDCG@5", "NDCG@10", "HR@1", "HR@5", "HR@10")


def sample_negatives(n_instances: int, n_items: int, n_neg: int = 999, seed: int = 0) -> np.ndarray:
    """``(n_instances, n_neg)`` int64 item positions drawn uniformly with replacement."""
    if n_items < 1 or n_neg < 1:
        raise ValueError(f"need n_items >= 1 and n_neg >= 1, got {n_items}, {n_neg}")
    return np.random.default_rng(seed).integers(0, n_items, size=(n_instances, n_neg))


def sampled_ranks(pos_scores: np.ndarray, neg_scores: np.ndarray, seed: int = 0) -> np.ndarray:
    """1-based rank of each positive among its negatives.

    Args:
        pos_scores: ``(n,)``.
        neg_scores: ``(n, n_neg)``.

    Returns:
        ``(n,)`` int64: ``1 + #(neg > pos) + U{0..#(neg == pos)}``.
    """
    if np.isnan(pos_scores).any() or np.isnan(neg_scores).any():
        raise ValueError("scores contain nan (a diverged model?)")
    greater = (neg_scores > pos_scores[:, None]).sum(axis=1)
    equal = (neg_scores == pos_scores[:, None]).sum(axis=1)
    rng = np.random.default_rng(seed)
    return (1 + greater + rng.integers(0, equal + 1)).astype(np.int64)


def metrics_from_ranks(ranks: np.ndarray) -> dict[str, float]:
    """Mean ``MRR, NDCG@5, NDCG@10, HR@1, HR@5, HR@10`` of ``(n,)`` 1-based ranks."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        raise ValueError("no instances")
    ndcg = 1.0 / np.log2(ranks + 1.0)
    return {
        "MRR": float(np.mean(1.0 / ranks)),
        "NDCG@5": float(np.mean(np.where(ranks <= 5, ndcg, 0.0))),
        "NDCG@10": float(np.mean(np.where(ranks <= 10, ndcg, 0.0))),
        "HR@1": float(np.mean(ranks <= 1)),
        "HR@5": float(np.mean(ranks <= 5)),
        "HR@10": float(np.mean(ranks <= 10)),
        "instances": float(ranks.size),
    }


def sampled_metrics(
    user_emb: np.ndarray,
    item_emb: np.ndarray,
    instance_user: np.ndarray,
    instance_item: np.ndarray,
    n_neg: int = 999,
    seed: int = 0,
) -> dict[str, float]:
    """Sampled-protocol metrics of embeddings.

    Args:
        user_emb: ``(n_users, d)``.
        item_emb: ``(n_items, d)``: the catalogue negatives are drawn from.
        instance_user: ``(n,)`` row of ``user_emb`` of each instance.
        instance_item: ``(n,)`` positive item position of each instance.
    """
    negatives = sample_negatives(len(instance_user), item_emb.shape[0], n_neg, seed)
    items = torch.as_tensor(np.ascontiguousarray(item_emb, dtype=np.float32))  # (I, d)
    pos, neg = [], []
    for start in range(0, len(instance_user), 1024):  # bounds memory to 1024 x I scores
        stop = start + 1024
        users = torch.as_tensor(
            np.ascontiguousarray(user_emb[instance_user[start:stop]], dtype=np.float32)
        )  # (c, d)
        scores = (users @ items.T).numpy()  # (c, I)
        rows = np.arange(scores.shape[0])
        pos.append(scores[rows, instance_item[start:stop]])  # (c,)
        neg.append(scores[rows[:, None], negatives[start:stop]])  # (c, n_neg)
    return metrics_from_ranks(sampled_ranks(np.concatenate(pos), np.concatenate(neg), seed + 1))

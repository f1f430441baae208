"""The sampled protocol of the cold-start CDR papers (CDRIB family).

Each held-out line is one instance: its positive item is ranked against
``n_neg`` negatives drawn uniformly, with replacement, from the domain's training
items (seeded). Ties are broken at random (seeded), so a constant scorer gets the
expected rank of a random one rather than rank 1.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import numpy as np
import torch

from recxfer.types import row_counts

SAMPLED_KEYS = ("MRR", "NDCG@5", "NDCG@10", "HR@1", "HR@5", "HR@10")


def sample_negatives(n_instances: int, n_items: int, n_neg: int = 999, seed: int = 0) -> np.ndarray:
    """``(n_instances, n_neg)`` int64 item positions drawn uniformly with replacement
    (read-only: the same arguments give the same array, kept for the next call, as
    a validation loop scores one split many times)."""
    if n_items < 1 or n_neg < 1:
        raise ValueError(f"need n_items >= 1 and n_neg >= 1, got {n_items}, {n_neg}")
    return _negatives(int(n_instances), int(n_items), int(n_neg), int(seed))


@functools.lru_cache(maxsize=4)
def _negatives(n_instances: int, n_items: int, n_neg: int, seed: int) -> np.ndarray:
    out = np.random.default_rng(seed).integers(0, n_items, size=(n_instances, n_neg))
    out.setflags(write=False)
    return out


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
    greater, equal = _counts(np.asarray(pos_scores)[:, None], np.asarray(neg_scores))
    return _tie_broken(greater, equal, seed)


def _counts(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(n,)`` int64 ``#(neg > pos)`` and ``#(neg == pos)`` per row of ``neg``
    ``(n, n_neg)`` against ``pos`` ``(n, 1)``."""
    return (row_counts(neg > pos), row_counts(neg == pos))


def _tie_broken(greater: np.ndarray, equal: np.ndarray, seed: int) -> np.ndarray:
    """``(n,)`` int64 ranks ``1 + greater + U{0..equal}``, the tie-break seeded."""
    rng = np.random.default_rng(seed)
    return (1 + greater + rng.integers(0, equal + 1)).astype(np.int64)


def instance_metrics(ranks: np.ndarray) -> dict[str, np.ndarray]:
    """Per-instance ``MRR, NDCG@5, NDCG@10, HR@1, HR@5, HR@10`` (``(n,)`` float64
    each) of ``(n,)`` 1-based ranks: ``metrics_from_ranks`` is their mean."""
    ranks = np.asarray(ranks, dtype=np.float64)
    ndcg = 1.0 / np.log2(ranks + 1.0)
    return {
        "MRR": 1.0 / ranks,
        "NDCG@5": np.where(ranks <= 5, ndcg, 0.0),
        "NDCG@10": np.where(ranks <= 10, ndcg, 0.0),
        "HR@1": (ranks <= 1).astype(np.float64),
        "HR@5": (ranks <= 5).astype(np.float64),
        "HR@10": (ranks <= 10).astype(np.float64),
    }


def metrics_from_ranks(ranks: np.ndarray) -> dict[str, float]:
    """Mean ``MRR, NDCG@5, NDCG@10, HR@1, HR@5, HR@10`` of ``(n,)`` 1-based ranks."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        raise ValueError("no instances")
    return {name: float(np.mean(values)) for name, values in instance_metrics(ranks).items()} | {
        "instances": float(ranks.size)}


def _checked_instances(instance_user: np.ndarray, instance_item: np.ndarray,
                       chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(n,)`` int64 instance users and items, refused when empty or misshapen."""
    instance_user = np.asarray(instance_user, dtype=np.int64)
    instance_item = np.asarray(instance_item, dtype=np.int64)
    if instance_user.ndim != 1 or instance_user.shape != instance_item.shape:
        raise ValueError(f"instance_user {instance_user.shape} and instance_item {instance_item.shape} must be (n,)")
    if len(instance_user) == 0:
        raise ValueError("no instances")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return instance_user, instance_item


def _instance_chunks(score_fn: Callable[[np.ndarray], np.ndarray], instance_user: np.ndarray, n_items: int,
                     chunk_size: int, unique_users: bool) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """Per chunk of ``chunk_size`` instances: ``(start, stop, scores, owner)``, the
    ``(u, n_items)`` scores of the chunk's users (each once when ``unique_users``)
    and ``owner`` ``(c,)``, each instance's row of them."""
    for start in range(0, len(instance_user), chunk_size):
        stop = start + chunk_size
        users = instance_user[start:stop]  # (c,)
        if unique_users:
            rows, owner = np.unique(users, return_inverse=True)  # (u,), (c,)
        else:
            rows, owner = users, np.arange(len(users))
        scores = np.asarray(score_fn(rows))  # (u, I)
        if scores.shape != (len(rows), n_items):
            raise ValueError(f"score_fn gave {scores.shape}, want ({len(rows)}, {n_items})")
        yield start, stop, scores, owner


def sampled_ranks_scores(
    score_fn: Callable[[np.ndarray], np.ndarray],
    instance_user: np.ndarray,
    instance_item: np.ndarray,
    n_items: int,
    n_neg: int = 999,
    seed: int = 0,
    chunk_size: int = 1024,
    unique_users: bool = True,
) -> np.ndarray:
    """``(n,)`` 1-based sampled-protocol rank of each instance's positive, of any scorer.

    Negatives are ``sample_negatives(n, n_items, n_neg, seed)``; ranks are
    ``sampled_ranks(..., seed + 1)`` (ties broken at random).

    Args:
        score_fn: ``score_fn(rows)`` with ``rows`` ``(c,)`` int64 user rows gives
            their ``(c, n_items)`` scores.
        instance_user: ``(n,)`` user row of each instance.
        instance_item: ``(n,)`` positive item position of each instance.
        n_items: the catalogue negatives are drawn from (``score_fn``'s width).
        chunk_size: instances per ``score_fn`` call (bounds memory to
            ``chunk_size x n_items`` scores).
        unique_users: score each chunk's distinct users once; ``False`` passes the
            chunk's ``instance_user`` as is, repeats included.
    """
    instance_user, instance_item = _checked_instances(instance_user, instance_item, chunk_size)
    n = len(instance_user)
    negatives = sample_negatives(n, n_items, n_neg, seed)  # (n, n_neg)
    greater, equal = np.empty(n, np.int64), np.empty(n, np.int64)
    # one chunk's flat positions and gathered scores, reused by every chunk (fresh
    # (n, n_neg) arrays per call cost more than the gather itself)
    width = min(chunk_size, n)
    index, values = np.empty((width, n_neg), np.int64), None
    for start, stop, scores, owner in _instance_chunks(score_fn, instance_user, n_items, chunk_size, unique_users):
        flat = scores.reshape(-1)  # one take on flat positions: cheaper than 2-d fancy indexing
        if values is None or values.dtype != flat.dtype:
            values = np.empty((width, n_neg), flat.dtype)
        c = len(owner)
        base = owner.astype(np.int64) * n_items  # (c,) row offsets
        pos = flat.take(base + instance_item[start:stop])[:, None]  # (c, 1)
        neg = flat.take(np.add(negatives[start:stop], base[:, None], out=index[:c]), out=values[:c])  # (c, n_neg)
        # a nan makes the sum nan; +inf beside -inf too, so look again before refusing
        with np.errstate(invalid="ignore", over="ignore"):
            total = neg.sum() + pos.sum()
        if not np.isfinite(total) and (np.isnan(neg).any() or np.isnan(pos).any()):
            raise ValueError("scores contain nan (a diverged model?)")
        greater[start:stop], equal[start:stop] = _counts(pos, neg)
    return _tie_broken(greater, equal, seed + 1)


def sampled_metrics_scores(
    score_fn: Callable[[np.ndarray], np.ndarray],
    instance_user: np.ndarray,
    instance_item: np.ndarray,
    n_items: int,
    n_neg: int = 999,
    seed: int = 0,
    chunk_size: int = 1024,
    unique_users: bool = True,
) -> dict[str, float]:
    """Sampled-protocol metrics of any scorer: ``metrics_from_ranks`` of
    ``sampled_ranks_scores`` (same arguments)."""
    return metrics_from_ranks(sampled_ranks_scores(score_fn, instance_user, instance_item, n_items, n_neg,
                                                   seed, chunk_size, unique_users))


def expected_sampled_metrics_scores(
    score_fn: Callable[[np.ndarray], np.ndarray],
    instance_user: np.ndarray,
    instance_item: np.ndarray,
    n_items: int,
    n_neg: int = 999,
    chunk_size: int = 1024,
) -> dict[str, float]:
    """The sampled-protocol metrics' expectation over the negatives' draw, of any
    scorer: what ``sampled_metrics_scores`` averages to over its seeds, without the
    draw's noise (a selection between close candidates then compares the models,
    not their negatives).

    Each of the ``n_neg`` negatives is drawn uniformly from the ``n_items`` columns,
    so for an instance whose positive has ``g`` items scoring above it and ``t``
    equal to it (itself included) a negative ranks above it with probability ``q =
    (g + t / 2) / n_items`` (a tie broken by a fair coin; the protocol's uniform
    tie-break has the same mean) and its rank is ``1 + Binomial(n_neg, q)``:
    ``HR@k = P(B <= k - 1)``, ``NDCG@k = sum_{j < k} P(B = j) / log2(j + 2)``,
    ``MRR = E[1 / (1 + B)] = (1 - (1 - q)^(n_neg + 1)) / ((n_neg + 1) q)``.

    Args: as ``sampled_ranks_scores`` (no seed: nothing is drawn).

    Returns:
        the means of ``SAMPLED_KEYS`` over the instances, and ``"instances"``.
    """
    from scipy.stats import binom

    instance_user, instance_item = _checked_instances(instance_user, instance_item, chunk_size)
    q = np.empty(len(instance_user), np.float64)  # (n,) chance that one negative ranks above
    for start, stop, scores, owner in _instance_chunks(score_fn, instance_user, n_items, chunk_size, True):
        if np.isnan(scores).any():
            raise ValueError("scores contain nan (a diverged model?)")
        per = scores[owner]  # (c, I): each instance's user row
        pos = per[np.arange(len(owner)), instance_item[start:stop]][:, None]  # (c, 1)
        greater, equal = _counts(pos, per)
        q[start:start + len(owner)] = (greater + 0.5 * equal) / n_items
    j = np.arange(10)
    pmf = binom.pmf(j[None, :], n_neg, q[:, None])  # (n, 10): P(B = j)
    gain = 1.0 / np.log2(j + 2.0)
    with np.errstate(divide="ignore"):  # q = 1: log1p(-1) = -inf, the limit is right
        tail = -np.expm1((n_neg + 1) * np.log1p(-q))  # 1 - (1 - q)^(n_neg + 1)
    mrr = np.divide(tail, (n_neg + 1) * q, out=np.ones_like(q), where=q > 0)
    return {
        "MRR": float(mrr.mean()),
        "NDCG@5": float((pmf[:, :5] @ gain[:5]).mean()),
        "NDCG@10": float((pmf @ gain).mean()),
        "HR@1": float(pmf[:, 0].mean()),
        "HR@5": float(pmf[:, :5].sum(axis=1).mean()),
        "HR@10": float(pmf.sum(axis=1).mean()),
        "instances": float(len(q)),
    }


def sampled_metrics(
    user_emb: np.ndarray,
    item_emb: np.ndarray,
    instance_user: np.ndarray,
    instance_item: np.ndarray,
    n_neg: int = 999,
    seed: int = 0,
) -> dict[str, float]:
    """Sampled-protocol metrics of embeddings: ``sampled_metrics_scores`` with
    score = ``user_emb @ item_emb.T`` (float32).

    Args:
        user_emb: ``(n_users, d)``.
        item_emb: ``(n_items, d)``: the catalogue negatives are drawn from.
        instance_user: ``(n,)`` row of ``user_emb`` of each instance.
        instance_item: ``(n,)`` positive item position of each instance.
    """
    items = torch.as_tensor(np.ascontiguousarray(item_emb, dtype=np.float32))  # (I, d)

    def score_fn(rows: np.ndarray) -> np.ndarray:
        users = torch.as_tensor(np.ascontiguousarray(user_emb[rows], dtype=np.float32))  # (c, d)
        return (users @ items.T).numpy()  # (c, I)

    # One score row per instance, as this function always did: a BLAS product's
    # last bits depend on the batch, and these metrics stay bit-for-bit the same.
    return sampled_metrics_scores(
        score_fn, instance_user, instance_item, item_emb.shape[0], n_neg, seed, unique_users=False
    )

"""Ranking losses for implicit feedback: in-batch sampled softmax and BPR.

The maths lives in plain functions of embeddings/scores (testable without a model);
the ``nn.Module`` wrappers validate inputs, then delegate.
"""

from __future__ import annotations

import torch
from torch import nn


def in_batch_softmax_loss(
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    item_log_q: torch.Tensor | None = None,
    item_idx: torch.Tensor | None = None,
    temperature: float = 1.0,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sampled softmax where each row's positive is the batch's other rows' negative.

    Args:
        user_emb: ``(B, d)`` query embeddings.
        item_emb: ``(B, d)`` embeddings of each query's positive item.
        item_log_q: ``(B,)`` log sampling probability of each item in a batch; it is
            subtracted from the logits (log-Q correction, Yi et al. 2019) so that
            popular items are not over-penalised as negatives.
        item_idx: ``(B,)`` item row positions; when given, another row holding the
            same item is not used as a negative.
        temperature: logits are divided by it.
        weight: ``(B,)`` per-row weights (mean over rows when ``None``).

    Returns:
        Scalar loss.
    """
    logits = user_emb @ item_emb.T / temperature  # (B, B)
    if item_log_q is not None:
        logits = logits - item_log_q.unsqueeze(0)  # (B, B): correct each column
    if item_idx is not None:
        same = item_idx.unsqueeze(0) == item_idx.unsqueeze(1)  # (B, B)
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    labels = torch.arange(user_emb.shape[0], device=user_emb.device)  # (B,)
    per_row = nn.functional.cross_entropy(logits, labels, reduction="none")  # (B,)
    if weight is None:
        return per_row.mean()
    return (per_row * weight).sum() / weight.sum()


def bpr_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """Bayesian personalised ranking: ``-mean(log sigmoid(pos - neg))``.

    Args:
        pos_scores: ``(B,)`` scores of positives.
        neg_scores: ``(B,)`` or ``(B, n_neg)`` scores of sampled negatives.

    Returns:
        Scalar loss.
    """
    if neg_scores.ndim == 2:
        pos_scores = pos_scores.unsqueeze(1)  # (B, 1), broadcast over negatives
    return -nn.functional.logsigmoid(pos_scores - neg_scores).mean()


class InBatchSoftmaxLoss(nn.Module):
    """Module form of ``in_batch_softmax_loss``."""

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(
        self,
        user_emb: torch.Tensor,
        item_emb: torch.Tensor,
        item_log_q: torch.Tensor | None = None,
        item_idx: torch.Tensor | None = None,
        weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if user_emb.ndim != 2 or user_emb.shape != item_emb.shape:
            raise ValueError(
                f"user_emb {tuple(user_emb.shape)} and item_emb {tuple(item_emb.shape)} "
                "must both be (B, d)"
            )
        batch = user_emb.shape[0]
        for name, value in (("item_log_q", item_log_q), ("item_idx", item_idx), ("weight", weight)):
            if value is not None and tuple(value.shape) != (batch,):
                raise ValueError(f"{name} {tuple(value.shape)} must be ({batch},)")
        if batch == 0:
            return user_emb.sum() * 0.0
        return in_batch_softmax_loss(
            user_emb, item_emb, item_log_q, item_idx, self.temperature, weight
        )


class BPRLoss(nn.Module):
    """Module form of ``bpr_loss``."""

    def forward(self, pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
        if (
            pos_scores.ndim != 1
            or neg_scores.ndim not in (1, 2)
            or neg_scores.shape[0] != pos_scores.shape[0]
        ):
            raise ValueError(
                f"pos_scores {tuple(pos_scores.shape)} must be (B,) and neg_scores "
                f"{tuple(neg_scores.shape)} (B,) or (B, n_neg)"
            )
        if pos_scores.shape[0] == 0:
            return pos_scores.sum() * 0.0
        return bpr_loss(pos_scores, neg_scores)

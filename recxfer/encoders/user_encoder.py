"""Shared user encoder: pools a user's interaction history into one vector.

The same module encodes a user from source-domain or target-domain item
embeddings (hence "shared"): it has no per-user parameters, so it also works for
users never seen in training (cold start).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

POOLINGS = ("mean", "attention")


@dataclass(frozen=True)
class UserEncoderConfig:
    """Configures ``HistoryUserEncoder``.

    Attributes:
        dim: item (and user) embedding size ``d``.
        pooling: ``"mean"`` (masked mean) or ``"attention"`` (a learned query).
        hidden: when set, a residual MLP ``x + Linear(ReLU(Linear(x)))`` with this
            hidden width follows the pooling.
        dropout: dropout after the MLP's ReLU (needs ``hidden``).
    """

    dim: int
    pooling: str = "mean"
    hidden: int | None = None
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.dim <= 0:
            raise ValueError(f"dim must be > 0, got {self.dim}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.hidden is not None and self.hidden <= 0:
            raise ValueError(f"hidden must be > 0 or None, got {self.hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.dropout > 0 and self.hidden is None:
            raise ValueError("dropout only applies inside the MLP: set hidden as well")


class HistoryUserEncoder(nn.Module):
    """``(B, L, d)`` history embeddings + ``(B, L)`` mask -> ``(B, d)`` user embeddings.

    * ``mean``: masked mean over the kept positions.
    * ``attention``: ``softmax(hist_emb @ q / sqrt(d))`` over the kept positions, with
      a learned query ``q`` initialised to zeros (so training starts from the mean).

    A position is kept when ``mask`` is True and ``exclude`` (if given) is False.
    A row with no kept position gives a zero vector (also after the MLP), never
    ``nan``; values at dropped positions have no influence (even ``inf``/``nan``).
    Fully vectorised over users.
    """

    def __init__(self, config: UserEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.query = (
            nn.Parameter(torch.zeros(config.dim)) if config.pooling == "attention" else None
        )
        self.mlp: nn.Sequential | None = None
        if config.hidden is not None:
            self.mlp = nn.Sequential(
                nn.Linear(config.dim, config.hidden),
                nn.ReLU(),
                nn.Dropout(config.dropout),
                nn.Linear(config.hidden, config.dim),
            )

    # ------------------------------------------------------------------ helpers
    def _kept(
        self, hist_emb: torch.Tensor, mask: torch.Tensor, exclude: torch.Tensor | None
    ) -> torch.Tensor:
        """Validate the inputs; return the ``(B, L)`` bool positions to pool over."""
        if hist_emb.ndim != 3:
            raise ValueError(f"hist_emb must be (B, L, d), got shape {tuple(hist_emb.shape)}")
        if hist_emb.shape[-1] != self.config.dim:
            raise ValueError(f"hist_emb has d={hist_emb.shape[-1]} but dim={self.config.dim}")
        if not hist_emb.is_floating_point():
            raise ValueError(f"hist_emb must be floating point, got {hist_emb.dtype}")
        for name, value in (("mask", mask), ("exclude", exclude)):
            if value is None:
                continue
            if tuple(value.shape) != tuple(hist_emb.shape[:2]):
                raise ValueError(
                    f"{name} {tuple(value.shape)} must be (B, L) = {tuple(hist_emb.shape[:2])}"
                )
            if value.dtype != torch.bool:
                raise ValueError(f"{name} must be a bool tensor, got {value.dtype}")
        return mask if exclude is None else mask & ~exclude  # (B, L)

    def pooling_weights(
        self,
        hist_emb: torch.Tensor,
        mask: torch.Tensor,
        exclude: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(B, L)`` weights of each history position: they sum to 1 over the kept
        positions of a row, are 0 elsewhere, and are all 0 for a row with none kept."""
        kept = self._kept(hist_emb, mask, exclude)  # (B, L)
        return self._weights(hist_emb, kept)

    def _weights(self, hist_emb: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        kept_f = kept.to(hist_emb.dtype)  # (B, L)
        if self.query is None:
            count = kept_f.sum(dim=1, keepdim=True).clamp_min(1.0)  # (B, 1)
            return kept_f / count  # (B, L)
        safe = torch.where(kept.unsqueeze(-1), hist_emb, 0.0)
        scores = safe @ self.query.to(hist_emb.dtype) / math.sqrt(self.config.dim)  # (B, L)
        scores = scores.masked_fill(~kept, torch.finfo(scores.dtype).min)  # (B, L)
        # A fully dropped row softmaxes to uniform; multiplying by kept zeroes it.
        return torch.softmax(scores, dim=1) * kept_f  # (B, L)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        hist_emb: torch.Tensor,
        mask: torch.Tensor,
        exclude: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Args:
            hist_emb: ``(B, L, d)`` embeddings of each user's history items (padded).
            mask: ``(B, L)`` bool, True at real (non-padding) positions.
            exclude: ``(B, L)`` bool, True at positions to leave out, e.g. the target
                item itself in leave-one-out training.

        Returns:
            ``(B, d)`` user embeddings.
        """
        kept = self._kept(hist_emb, mask, exclude)  # (B, L)
        weights = self._weights(hist_emb, kept)  # (B, L)
        safe = torch.where(kept.unsqueeze(-1), hist_emb, 0.0)
        pooled = (weights.unsqueeze(-1) * safe).sum(dim=1)  # (B, d)
        if self.mlp is None:
            return pooled
        out = pooled + self.mlp(pooled)  # (B, d)
        has_history = kept.any(dim=1, keepdim=True)  # (B, 1)
        return torch.where(has_history, out, 0.0)  # (B, d)

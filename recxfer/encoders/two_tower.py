"""Two-tower retrieval model over ids (matrix factorisation): score = <user, item>."""

from __future__ import annotations

import torch
from torch import nn

from recxfer.encoders.id_embedding import IdEmbeddingConfig, IdEmbeddingEncoder


class TwoTowerIdModel(nn.Module):
    """User tower and item tower, each an id embedding."""

    def __init__(self, n_users: int, n_items: int, dim: int, init_std: float = 0.1) -> None:
        super().__init__()
        self.user_tower = IdEmbeddingEncoder(IdEmbeddingConfig(n_users, dim, init_std))
        self.item_tower = IdEmbeddingEncoder(IdEmbeddingConfig(n_items, dim, init_std))

    def forward(
        self, user_idx: torch.Tensor, item_idx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B,)``, ``(B,)`` positions -> ``(B, d)`` user and ``(B, d)`` item embeddings."""
        return self.user_tower(user_idx), self.item_tower(item_idx)

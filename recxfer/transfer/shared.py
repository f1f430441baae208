"""The flagship transfer model: one item space over every domain and one shared
user encoder over a user's history in any domain.

A user is represented by pooling the embeddings of the items they interacted
with, whatever the domain; scores are inner products with item embeddings. A
cold-start user of a target domain is therefore served from their source
history alone, in the same space, with no mapping step. Training (see
``recxfer.train.shared``) teaches the encoder to predict target items from
source history (simulated cold start) and aligns source- and target-based user
representations with domain-adaptation losses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from recxfer.encoders.text import ItemTower, ItemTowerConfig
from recxfer.encoders.user_encoder import HistoryUserEncoder, UserEncoderConfig


@dataclass(frozen=True)
class SharedModelConfig:
    """Configures ``SharedTransferModel``."""

    dim: int = 64
    pooling: str = "mean"
    hidden: int | None = None
    dropout: float = 0.0
    init_std: float = 0.05

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"dim must be >= 1, got {self.dim}")
        if self.hidden is not None and self.hidden < 1:
            raise ValueError(f"hidden must be >= 1 (or null), got {self.hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.init_std > 0:
            raise ValueError(f"init_std must be > 0, got {self.init_std}")


class SharedTransferModel(nn.Module):
    """Item tower over all domains' items (id, plus text when given) and a shared
    history encoder for users."""

    def __init__(
        self, n_items: int, config: SharedModelConfig, text_emb: np.ndarray | None = None
    ) -> None:
        """Args:
        n_items: items of all domains together (global positions).
        text_emb: ``(n_items, text_dim)`` frozen text embeddings, or ``None``.
        """
        super().__init__()
        self.config = config
        self.item_tower = ItemTower(
            ItemTowerConfig(n_items, config.dim, id_init_std=config.init_std), text_emb
        )
        self.user_encoder = HistoryUserEncoder(
            UserEncoderConfig(config.dim, config.pooling, config.hidden, config.dropout)
        )

    def items(self, item_pos: torch.Tensor) -> torch.Tensor:
        """``(...)`` global item positions -> ``(..., dim)``."""
        if self.item_tower.text_tower is None:
            return self.item_tower(item_pos)  # an embedding lookup, any shape
        # With text, project the whole (small) text table once rather than once per
        # history position: (n_items, 384) @ (384, dim) instead of (B * L, 384) @ ...
        n_items = self.item_tower.config.num_items
        table = self.item_tower(torch.arange(n_items, device=item_pos.device))  # (I, dim)
        return table[item_pos]  # (..., dim)

    def users(self, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` global item positions (``-1`` pads) and ``(B, L)`` bool mask of
        the positions to use -> ``(B, dim)`` user embeddings."""
        emb = self.items(history.clamp(min=0))  # (B, L, dim)
        return self.user_encoder(emb, mask & (history >= 0))

    @torch.no_grad()
    def export_items(self, start: int, stop: int, batch: int = 65536) -> np.ndarray:
        """Embeddings of global item positions ``start..stop-1``: ``(stop-start, dim)``."""
        device = next(self.parameters()).device
        out = [
            self.items(torch.arange(s, min(s + batch, stop), device=device)).float().cpu()
            for s in range(start, stop, batch)
        ]
        return torch.cat(out).numpy()

    @torch.no_grad()
    def export_users(self, history: np.ndarray, batch: int = 4096) -> np.ndarray:
        """Embeddings of users given by ``(n, L)`` histories (``-1`` pads): ``(n, dim)``."""
        device = next(self.parameters()).device
        out = []
        for s in range(0, history.shape[0], batch):
            hist = torch.as_tensor(history[s : s + batch], device=device)
            out.append(self.users(hist, hist >= 0).float().cpu())
        if not out:
            return np.zeros((0, self.config.dim), dtype=np.float32)
        return torch.cat(out).numpy()

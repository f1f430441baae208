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


def _rows(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``table[idx]`` for ``(...)`` row positions -> ``(..., dim)``, by ``index_select``
    (several times faster than advanced indexing on CPU, forward and backward)."""
    return table.index_select(0, idx.reshape(-1)).view(*idx.shape, table.shape[-1])


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
        """``(...)`` global item positions -> ``(..., dim)``.

        With text, each distinct position is projected once (``(n_distinct, 384) @
        (384, dim)``): the work follows the positions asked for, never the catalogue.
        """
        if self.item_tower.text_tower is None:
            return self.item_tower(item_pos)  # an embedding lookup, any shape
        uniq, inverse = torch.unique(item_pos, return_inverse=True)  # (n,), item_pos.shape
        return self.item_tower(uniq)[inverse]  # (..., dim)

    def users(self, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` global item positions (``-1`` pads) and ``(B, L)`` bool mask of
        the positions to use -> ``(B, dim)`` user embeddings."""
        emb = self.items(history.clamp(min=0))  # (B, L, dim)
        return self.user_encoder(emb, mask & (history >= 0))

    def step_vectors(
        self,
        history: torch.Tensor,
        mask: torch.Tensor,
        items: torch.Tensor,
        extra: torch.Tensor | None = None,
        extra_masks: tuple[torch.Tensor, ...] = (),
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """One training step's vectors with one projection of the items it touches.

        Args:
            history, mask: ``(B, L)`` the batch's histories (``-1`` pads) and positions used.
            items: ``(B,)`` their positive items (the in-batch candidates).
            extra: ``(A, L)`` more histories (users to align), or ``None``.
            extra_masks: ``(A, L)`` or ``(1, L)`` masks, one user vector of ``extra`` each.

        Returns:
            ``(user_vec (B, dim), item_vec (B, dim), [extra user vecs (A, dim)])``. Each
            distinct item among ``history``, ``items`` and ``extra`` goes through the
            item tower once, so the step's work is proportional to the batch.
        """
        valid = history >= 0  # (B, L)
        parts = [history[valid], items.reshape(-1).to(history.dtype)]
        extra_valid = None
        if extra is not None:
            extra_valid = extra >= 0
            parts.append(extra[extra_valid].to(history.dtype))
        uniq, inverse = torch.unique(torch.cat(parts), return_inverse=True)  # real positions only
        table = self.item_tower(uniq)  # (n_touched, dim)
        n_real, n_items = parts[0].numel(), items.numel()
        slot = torch.zeros(history.shape, dtype=torch.int64, device=history.device)
        slot[valid] = inverse[:n_real]  # pads point at row 0, masked out below
        user_vec = self.user_encoder(_rows(table, slot), mask & valid)  # (B, dim)
        item_vec = _rows(table, inverse[n_real : n_real + n_items])  # (B, dim)
        out = []
        if extra is not None:
            extra_slot = torch.zeros(extra.shape, dtype=torch.int64, device=extra.device)
            extra_slot[extra_valid] = inverse[n_real + n_items :]
            extra_emb = _rows(table, extra_slot)  # (A, L, dim)
            out = [self.user_encoder(extra_emb, m.expand_as(extra) & extra_valid) for m in extra_masks]
        return user_vec, item_vec, out

    def id_table(self) -> nn.Parameter:
        """The ``(n_items, dim)`` id-embedding weight (what a sparse optimiser owns)."""
        return self.item_tower.id_encoder.table.weight

    def set_sparse_grad(self, sparse: bool) -> None:
        """Make the id embedding produce sparse (row-wise) gradients, or dense ones."""
        self.item_tower.id_encoder.table.sparse = bool(sparse)

    @torch.no_grad()
    def item_table(self, start: int = 0, stop: int | None = None, batch: int = 65536) -> torch.Tensor:
        """``(stop - start, dim)`` embeddings of global positions ``start..stop-1`` on
        the model's device (whole catalogue by default), projected once, no grad."""
        device = next(self.parameters()).device
        stop = self.item_tower.config.num_items if stop is None else stop
        parts = [self.item_tower(torch.arange(s, min(s + batch, stop), device=device))
                 for s in range(start, stop, batch)]
        if not parts:
            return torch.zeros((0, self.config.dim), device=device)
        return torch.cat(parts)

    @torch.no_grad()
    def export_items(self, start: int, stop: int, batch: int = 65536) -> np.ndarray:
        """Embeddings of global item positions ``start..stop-1``: ``(stop-start, dim)``."""
        return self.item_table(start, stop, batch).float().cpu().numpy()

    @torch.no_grad()
    def users_from_table(self, table: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """``(n, L)`` histories (``-1`` pads) pooled over a precomputed ``item_table()``:
        ``(n, dim)``, no item projection."""
        emb = _rows(table, history.clamp(min=0))  # (n, L, dim)
        return self.user_encoder(emb, history >= 0)

    @torch.no_grad()
    def export_users(
        self, history: np.ndarray, batch: int = 4096, table: torch.Tensor | None = None
    ) -> np.ndarray:
        """Embeddings of users given by ``(n, L)`` histories (``-1`` pads): ``(n, dim)``.

        The item table is projected once (or ``table``, an ``item_table()``, is used),
        not once per chunk of users."""
        device = next(self.parameters()).device
        if history.shape[0] == 0:
            return np.zeros((0, self.config.dim), dtype=np.float32)
        table = self.item_table() if table is None else table
        out = []
        for s in range(0, history.shape[0], batch):
            hist = torch.as_tensor(history[s : s + batch], device=device)
            out.append(self.users_from_table(table, hist).float().cpu())
        return torch.cat(out).numpy()

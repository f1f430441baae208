"""Id embedding tower: one trainable vector per row position."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class IdEmbeddingConfig:
    """Configures ``IdEmbeddingEncoder``."""

    num_embeddings: int
    dim: int = 32
    init_std: float = 0.1


class IdEmbeddingEncoder(nn.Module):
    """Maps ``(B,)`` int64 row positions to ``(B, dim)`` embeddings."""

    def __init__(self, config: IdEmbeddingConfig) -> None:
        super().__init__()
        if config.num_embeddings <= 0 or config.dim <= 0:
            raise ValueError(f"bad {config}")
        self.config = config
        self.table = nn.Embedding(config.num_embeddings, config.dim)
        nn.init.normal_(self.table.weight, std=config.init_std)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.table(idx)  # (B, dim)

    def export(self) -> torch.Tensor:
        """A copy of the whole table on CPU: ``(num_embeddings, dim)`` float32."""
        return self.table.weight.detach().float().cpu().clone()

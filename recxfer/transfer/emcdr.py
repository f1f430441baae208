"""EMCDR (Man et al., IJCAI 2017): a mapping from source to target user space.

Fitted on users with history in both domains: ``f(src_user_emb) ≈ tgt_user_emb``
(an MLP with a tanh hidden layer, mean squared error). A cold-start user's target
embedding is then ``f`` of their source embedding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class EMCDRConfig:
    """Configures ``fit_emcdr``."""

    hidden: int = 128
    epochs: int = 300
    lr: float = 5e-3
    weight_decay: float = 1e-4
    seed: int = 0

    def __post_init__(self) -> None:
        for name, low in (("hidden", 1), ("epochs", 0)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if self.lr < 0:
            raise ValueError(f"lr must be >= 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")


class EMCDRMapping(nn.Module):
    """MLP mapping ``(B, d_src)`` source user embeddings to ``(B, d_tgt)``."""

    def __init__(self, src_dim: int, tgt_dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(src_dim, hidden), nn.Tanh(), nn.Linear(hidden, tgt_dim))

    def forward(self, src_user_emb: torch.Tensor) -> torch.Tensor:
        return self.net(src_user_emb)  # (B, d_tgt)


def fit_emcdr(
    src_user_emb: np.ndarray,
    tgt_user_emb: np.ndarray,
    config: EMCDRConfig = EMCDRConfig(),
    device: torch.device | str = "cpu",
) -> EMCDRMapping:
    """Fit the mapping on overlapping users (full batch, Adam).

    Args:
        src_user_emb: ``(n, d_src)`` source embeddings of the overlapping users.
        tgt_user_emb: ``(n, d_tgt)`` target embeddings of the same users, same order.

    Returns:
        The fitted mapping, in eval mode, on ``device``.
    """
    if src_user_emb.shape[0] != tgt_user_emb.shape[0] or src_user_emb.shape[0] == 0:
        raise ValueError(
            f"need the same non-zero number of users, got {src_user_emb.shape[0]} and "
            f"{tgt_user_emb.shape[0]}"
        )
    torch.manual_seed(config.seed)
    src = torch.as_tensor(src_user_emb, dtype=torch.float32, device=device)  # (n, d_src)
    tgt = torch.as_tensor(tgt_user_emb, dtype=torch.float32, device=device)  # (n, d_tgt)
    mapping = EMCDRMapping(src.shape[1], tgt.shape[1], config.hidden).to(device)
    optim = torch.optim.Adam(mapping.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    for _ in range(config.epochs):
        optim.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(mapping(src), tgt)
        loss.backward()
        optim.step()
    return mapping.eval()


@torch.no_grad()
def apply_emcdr(mapping: EMCDRMapping, src_user_emb: np.ndarray) -> np.ndarray:
    """``(n, d_src)`` -> ``(n, d_tgt)`` float32 target embeddings."""
    first = mapping.net[0]
    if src_user_emb.ndim != 2 or src_user_emb.shape[1] != first.in_features:
        raise ValueError(f"src_user_emb must be (n, {first.in_features}), got {src_user_emb.shape}")
    device = first.weight.device
    src = torch.as_tensor(src_user_emb, dtype=torch.float32, device=device)
    return mapping(src).float().cpu().numpy()

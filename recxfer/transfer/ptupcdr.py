"""PTUPCDR (Zhu et al., WSDM 2022): a personalized bridge per user.

A meta network reads the user's source history (attention pooling of the source
item embeddings: the "characteristic" ``p_u``) and emits a ``d x d`` bridge
``W_u``; the user's target embedding is ``u_src @ W_u``. It is trained
task-oriented: the transferred embeddings of overlapping users must rank their
target items (in-batch softmax against fixed target item embeddings).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from recxfer.losses.ranking import in_batch_softmax_loss


@dataclass(frozen=True)
class PTUPCDRConfig:
    """Configures ``fit_ptupcdr``."""

    hidden: int = 64
    epochs: int = 20
    batch_size: int = 1024
    lr: float = 2e-3
    seed: int = 0

    def __post_init__(self) -> None:
        for name, low in (("hidden", 1), ("epochs", 0), ("batch_size", 1)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if self.lr < 0:
            raise ValueError(f"lr must be >= 0, got {self.lr}")


class PersonalizedBridge(nn.Module):
    """``(B, d)`` source user embeddings + ``(B, L, d)`` history -> ``(B, d)`` target."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.dim = dim
        self.attention = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 1, bias=False))
        self.meta = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim * dim))
        with torch.no_grad():  # start as the identity bridge
            self.meta[-1].weight.mul_(0.01)
            self.meta[-1].bias.copy_(torch.eye(dim).flatten())

    def forward(self, src_user: torch.Tensor, hist_emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = self.attention(hist_emb).squeeze(-1).masked_fill(~mask, float("-inf"))  # (B, L)
        weights = torch.softmax(logits, dim=1).nan_to_num(0.0)  # (B, L); empty rows -> 0
        characteristic = (weights.unsqueeze(-1) * hist_emb).sum(1)  # (B, d)
        bridge = self.meta(characteristic).view(-1, self.dim, self.dim)  # (B, d, d)
        return torch.bmm(src_user.unsqueeze(1), bridge).squeeze(1)  # (B, d)


def _gather(src_item_emb: torch.Tensor, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mask = history >= 0  # (B, L)
    return src_item_emb[history.clamp(min=0)], mask  # (B, L, d), (B, L)


def fit_ptupcdr(
    src_user_emb: np.ndarray,
    src_item_emb: np.ndarray,
    history: np.ndarray,
    tgt_item_emb: np.ndarray,
    pair_user: np.ndarray,
    pair_item: np.ndarray,
    config: PTUPCDRConfig = PTUPCDRConfig(),
    device: torch.device | str = "cpu",
) -> PersonalizedBridge:
    """Fit the bridge.

    Args:
        src_user_emb: ``(U, d)`` source user embeddings.
        src_item_emb: ``(I_s, d)`` source item embeddings.
        history: ``(U, L)`` source item positions per user, ``-1`` padded.
        tgt_item_emb: ``(I_t, d)`` target item embeddings (kept fixed).
        pair_user, pair_item: ``(P,)`` user rows and target item positions of the
            overlapping users' target interactions.
    """
    if len(pair_user) == 0:
        raise ValueError("no overlapping users' target rows to fit the bridge on")
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    users = torch.as_tensor(src_user_emb, dtype=torch.float32, device=device)
    items_s = torch.as_tensor(src_item_emb, dtype=torch.float32, device=device)
    items_t = torch.as_tensor(tgt_item_emb, dtype=torch.float32, device=device)
    hist = torch.as_tensor(history, device=device)
    p_user = torch.as_tensor(pair_user, device=device)
    p_item = torch.as_tensor(pair_item, device=device)
    bridge = PersonalizedBridge(users.shape[1], config.hidden).to(device)
    optim = torch.optim.Adam(bridge.parameters(), lr=config.lr)
    for _ in range(config.epochs):
        perm = torch.randperm(p_user.shape[0], generator=gen).to(device)
        for start in range(0, perm.shape[0], config.batch_size):
            sel = perm[start : start + config.batch_size]
            u, j = p_user[sel], p_item[sel]
            hist_emb, mask = _gather(items_s, hist[u])
            out = bridge(users[u], hist_emb, mask)  # (B, d)
            loss = in_batch_softmax_loss(out, items_t[j], item_idx=j)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
    return bridge.eval()


@torch.no_grad()
def apply_ptupcdr(
    bridge: PersonalizedBridge, src_user_emb: np.ndarray, src_item_emb: np.ndarray, history: np.ndarray
) -> np.ndarray:
    """``(n, d)`` target embeddings of users given by ``(n, d)`` source embeddings
    and ``(n, L)`` source histories."""
    device = next(bridge.parameters()).device
    items_s = torch.as_tensor(src_item_emb, dtype=torch.float32, device=device)
    hist_emb, mask = _gather(items_s, torch.as_tensor(history, device=device))
    users = torch.as_tensor(src_user_emb, dtype=torch.float32, device=device)
    return bridge(users, hist_emb, mask).float().cpu().numpy()

"""Train a two-tower id model (matrix factorisation) on one domain's interactions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from recxfer.data.dataset import DomainMatrix
from recxfer.encoders.two_tower import TwoTowerIdModel
from recxfer.losses.ranking import BPRLoss, InBatchSoftmaxLoss


@dataclass(frozen=True)
class MFConfig:
    """Configures ``train_mf``.

    ``loss`` is ``"softmax"`` (in-batch sampled softmax, log-Q corrected when
    ``logq``) or ``"bpr"`` (one uniform negative per positive).
    """

    dim: int = 32
    epochs: int = 40
    batch_size: int = 512
    lr: float = 0.01
    weight_decay: float = 0.0
    loss: str = "softmax"
    temperature: float = 0.2
    logq: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.loss not in ("softmax", "bpr"):
            raise ValueError(f"loss must be 'softmax' or 'bpr', got {self.loss!r}")


@dataclass(frozen=True)
class MFResult:
    """Trained embeddings.

    Attributes:
        user_emb: ``(n_users, dim)`` float32, rows of ``matrix.users``.
        item_emb: ``(n_items, dim)`` float32, rows of ``matrix.items``.
        epoch_losses: mean training loss per epoch.
    """

    user_emb: np.ndarray
    item_emb: np.ndarray
    epoch_losses: list[float]


def train_mf(matrix: DomainMatrix, config: MFConfig, device: torch.device) -> MFResult:
    """Train user and item embeddings of one domain; batches are sliced from a
    per-epoch permutation of tensors already on ``device`` (no per-row Python work)."""
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    torch.manual_seed(config.seed)
    n_items = len(matrix.items)
    model = TwoTowerIdModel(len(matrix.users), n_items, config.dim).to(device)
    user_idx = torch.as_tensor(matrix.user_idx, device=device)  # (nnz,)
    item_idx = torch.as_tensor(matrix.item_idx, device=device)  # (nnz,)
    weight = torch.as_tensor(matrix.weight, device=device)  # (nnz,)
    counts = torch.bincount(item_idx, minlength=n_items).float()  # (I,)
    log_q = torch.log(counts.clamp(min=1) / counts.sum())  # (I,)
    softmax, bpr = InBatchSoftmaxLoss(config.temperature), BPRLoss()
    optim = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    nnz = user_idx.shape[0]
    losses: list[float] = []
    bar = tqdm(range(config.epochs), desc=f"train {matrix.domain}", leave=False, disable=None)
    for _ in bar:
        perm = torch.randperm(nnz, generator=generator).to(device)  # (nnz,)
        total = torch.zeros((), device=device)
        for start in range(0, nnz, config.batch_size):
            rows = perm[start : start + config.batch_size]  # (B,)
            users, items = user_idx[rows], item_idx[rows]
            user_vec, item_vec = model(users, items)  # (B, d), (B, d)
            if config.loss == "softmax":
                loss = softmax(
                    user_vec, item_vec, log_q[items] if config.logq else None, items, weight[rows]
                )
            else:
                neg = torch.randint(0, n_items, (rows.shape[0],), generator=generator).to(device)
                neg_vec = model.item_tower(neg)  # (B, d)
                loss = bpr((user_vec * item_vec).sum(-1), (user_vec * neg_vec).sum(-1))
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            total += loss.detach() * rows.shape[0]
        losses.append(float(total) / nnz)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    return MFResult(
        model.user_tower.export().numpy(), model.item_tower.export().numpy(), losses
    )

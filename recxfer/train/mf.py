"""Train a two-tower id model (matrix factorisation) on one domain's interactions."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from recxfer.data.dataset import DomainMatrix
from recxfer.encoders.two_tower import TwoTowerIdModel
from recxfer.losses.ranking import BPRLoss, InBatchSoftmaxLoss
from recxfer.train.checkpoint import Checkpointer

log = logging.getLogger(__name__)


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
        for name, low in (("dim", 1), ("epochs", 0), ("batch_size", 1)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        for name in ("lr", "weight_decay"):  # lr 0: the weights stay as initialised
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class MFResult:
    """Trained embeddings.

    Attributes:
        user_emb: ``(n_users, dim)`` float32, rows of ``matrix.users``.
        item_emb: ``(n_items, dim)`` float32, rows of ``matrix.items``.
        epoch_losses: mean training loss per epoch (all epochs, resumed ones included).
        resumed_from: completed epochs read from a checkpoint (0: trained from the start).
        warm_rows: ``(users, items)`` rows initialised from ``MFInit`` (0, 0 without).
    """

    user_emb: np.ndarray
    item_emb: np.ndarray
    epoch_losses: list[float]
    resumed_from: int = 0
    warm_rows: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class MFInit:
    """Warm-start rows for ``train_mf``: rows where a mask is true start from the
    given embedding instead of the random initialisation.

    Attributes:
        user_emb: ``(n_users, dim)`` float32, rows of ``matrix.users``.
        user_mask: ``(n_users,)`` bool, rows to take from ``user_emb``.
        item_emb: ``(n_items, dim)`` float32, rows of ``matrix.items``.
        item_mask: ``(n_items,)`` bool, rows to take from ``item_emb``.
    """

    user_emb: np.ndarray
    user_mask: np.ndarray
    item_emb: np.ndarray
    item_mask: np.ndarray

    @staticmethod
    def from_ids(
        user_ids: np.ndarray,
        item_ids: np.ndarray,
        prior_user_ids: np.ndarray,
        prior_user_emb: np.ndarray,
        prior_item_ids: np.ndarray,
        prior_item_emb: np.ndarray,
    ) -> "MFInit":
        """Align a prior model's rows (e.g. the production artifact's) with new id maps.

        Args:
            user_ids: ``(n_users,)`` external ids of the new user rows.
            item_ids: ``(n_items,)`` external ids of the new item rows.
            prior_user_ids: ``(m_users,)`` ids of ``prior_user_emb`` rows (``(m_users, d)``).
            prior_item_ids: ``(m_items,)`` ids of ``prior_item_emb`` rows (``(m_items, d)``).

        Ids unknown to the prior keep their random rows (mask false).
        """
        def align(ids: np.ndarray, prior_ids: np.ndarray, prior: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            pos = _lookup(prior_ids, ids)  # (n,), -1 for new ids
            emb = np.zeros((len(ids), prior.shape[1]), dtype=np.float32)
            emb[pos >= 0] = prior[pos[pos >= 0]]
            return emb, pos >= 0

        user_emb, user_mask = align(user_ids, prior_user_ids, prior_user_emb)
        item_emb, item_mask = align(item_ids, prior_item_ids, prior_item_emb)
        return MFInit(user_emb, user_mask, item_emb, item_mask)

    def check(self, n_users: int, n_items: int, dim: int) -> None:
        """Raise ``ValueError`` unless the shapes fit ``(n_users, n_items, dim)``."""
        shapes = (self.user_emb.shape, self.user_mask.shape, self.item_emb.shape, self.item_mask.shape)
        if shapes != ((n_users, dim), (n_users,), (n_items, dim), (n_items,)):
            raise ValueError(
                f"warm-start shapes {shapes} do not fit {n_users} users, {n_items} items, dim {dim}"
            )


def _lookup(known_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    return pd.Index(np.asarray(known_ids, dtype=object)).get_indexer(
        np.asarray(ids, dtype=object)
    ).astype(np.int64)


def train_mf(
    matrix: DomainMatrix,
    config: MFConfig,
    device: torch.device,
    init: MFInit | None = None,
    checkpointer: Checkpointer | None = None,
) -> MFResult:
    """Train user and item embeddings of one domain; batches are sliced from a
    per-epoch permutation of tensors already on ``device`` (no per-row Python work).

    Args:
        init: warm-start rows (e.g. from the production artifact); others stay random.
        checkpointer: saves a checkpoint after every epoch; when it holds one for
            this run, training resumes after its epoch (bit-identical on CPU).

    Without ``init`` and ``checkpointer`` the result is exactly the plain training.
    """
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    torch.manual_seed(config.seed)
    n_items = len(matrix.items)
    model = TwoTowerIdModel(len(matrix.users), n_items, config.dim).to(device)
    warm_rows = (0, 0)
    if init is not None:
        init.check(len(matrix.users), n_items, config.dim)
        with torch.no_grad():
            for table, emb, mask in (
                (model.user_tower.table.weight, init.user_emb, init.user_mask),
                (model.item_tower.table.weight, init.item_emb, init.item_mask),
            ):
                rows = torch.as_tensor(np.flatnonzero(mask), device=device)  # (n_warm,)
                table[rows] = torch.as_tensor(emb[mask], device=device)
        warm_rows = (int(init.user_mask.sum()), int(init.item_mask.sum()))
    user_idx = torch.as_tensor(matrix.user_idx, device=device)  # (nnz,)
    item_idx = torch.as_tensor(matrix.item_idx, device=device)  # (nnz,)
    weight = torch.as_tensor(matrix.weight, device=device)  # (nnz,)
    counts = torch.bincount(item_idx, minlength=n_items).float()  # (I,)
    log_q = torch.log(counts.clamp(min=1) / counts.sum())  # (I,)
    softmax, bpr = InBatchSoftmaxLoss(config.temperature), BPRLoss()
    optim = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    nnz = user_idx.shape[0]
    losses: list[float] = []
    start_epoch = 0
    if checkpointer is not None and (found := checkpointer.load_latest()) is not None:
        start_epoch = found.restore(model, optim, {"perm": generator})
        losses = [float(x) for x in found.extra["losses"]]
        log.info(
            "mf[%s]: resumed from checkpoint epoch %d/%d (%s)",
            matrix.domain, start_epoch, config.epochs, found.path,
        )
    bar = tqdm(
        range(start_epoch, config.epochs), desc=f"train {matrix.domain}", leave=False, disable=None
    )
    for epoch in bar:
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
        if checkpointer is not None:
            checkpointer.save(epoch + 1, model, optim, {"losses": losses}, {"perm": generator})
    return MFResult(
        model.user_tower.export().numpy(),
        model.item_tower.export().numpy(),
        losses,
        resumed_from=start_epoch,
        warm_rows=warm_rows,
    )

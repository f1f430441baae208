"""Cold-start transfer methods behind one interface: each fits on a training frame
and returns target embeddings for the requested cold users plus the target's
item embeddings.

Methods: ``target_only`` (no transfer: popularity for cold users), ``emcdr``
(MF per domain + mapping), ``shared`` (shared encoders + adaptation losses).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from recxfer.data.dataset import domain_matrix
from recxfer.train.cross_domain import CrossDomainConfig, train_cross_domain
from recxfer.train.device import resolve_device
from recxfer.train.histories import build_multi_domain_index
from recxfer.train.mf import MFConfig, train_mf
from recxfer.train.shared import SharedTrainConfig, train_shared
from recxfer.transfer.emcdr import EMCDRConfig
from recxfer.transfer.ptupcdr import PTUPCDRConfig, apply_ptupcdr, fit_ptupcdr

METHODS = ("target_only", "emcdr", "ptupcdr", "shared")


@dataclass(frozen=True)
class ColdStartConfig:
    """Hyper-parameters of every method (only the chosen one's are used)."""

    mf: MFConfig = field(default_factory=lambda: MFConfig(dim=64, epochs=20, batch_size=1024, lr=0.01))
    emcdr: EMCDRConfig = field(default_factory=EMCDRConfig)
    ptupcdr: PTUPCDRConfig = field(default_factory=PTUPCDRConfig)
    shared: SharedTrainConfig = field(default_factory=SharedTrainConfig)
    device: str = "auto"

    def with_seed(self, seed: int) -> "ColdStartConfig":
        """This config with every model seed set to ``seed``."""
        return dataclasses.replace(
            self,
            mf=dataclasses.replace(self.mf, seed=seed),
            emcdr=dataclasses.replace(self.emcdr, seed=seed),
            ptupcdr=dataclasses.replace(self.ptupcdr, seed=seed),
            shared=dataclasses.replace(self.shared, seed=seed),
        )


@dataclass(frozen=True)
class TargetEmbeddings:
    """Scores of ``users`` over the target catalogue are ``user_emb @ item_emb.T``.

    Attributes:
        item_ids: ``(n_items,)`` target catalogue.
        item_emb: ``(n_items, d)``.
        user_ids: ``(n_users,)`` the cold users asked for, in order.
        user_emb: ``(n_users, d)``.
        epochs_trained: epochs of the main model (after early stopping).
        info: method-specific facts (e.g. validation scores).
    """

    item_ids: np.ndarray
    item_emb: np.ndarray
    user_ids: np.ndarray
    user_emb: np.ndarray
    epochs_trained: int
    info: dict


# A validation scorer: (user_emb of the valid users, item_ids, item_emb) -> higher is better.
Validator = Callable[[np.ndarray, np.ndarray, np.ndarray], float]


def fit_cold_start(
    method: str,
    train: pd.DataFrame,
    source: str,
    target: str,
    cold_users: Sequence[str],
    config: ColdStartConfig = ColdStartConfig(),
    valid_users: Sequence[str] = (),
    validator: Validator | None = None,
) -> TargetEmbeddings:
    """Fit ``method`` and embed ``cold_users`` (users with no target rows) in the target.

    ``validator`` scores the ``valid_users``' embeddings; methods with epochs use it
    for early stopping (only ``shared`` does so here).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {METHODS}")
    cold_users = np.asarray(cold_users, dtype=object)
    if method == "target_only":
        matrix = domain_matrix(train, target)
        result = train_mf(matrix, config.mf, resolve_device(config.device))
        popularity = matrix.item_popularity.astype(np.float32)[:, None]  # (I, 1)
        return TargetEmbeddings(
            matrix.items.ids, popularity, cold_users, np.ones((len(cold_users), 1), np.float32),
            len(result.epoch_losses), {"note": "cold users have no target history: popularity"},
        )
    if method == "emcdr":
        model = train_cross_domain(
            train, CrossDomainConfig(source, (target,), config.mf, config.emcdr, config.device)
        )
        emb = model.domains[target]
        rows = pd.Index(emb.user_ids).get_indexer(cold_users)
        if (rows < 0).any():
            raise ValueError(f"{int((rows < 0).sum())} cold users have no source history")
        return TargetEmbeddings(emb.item_ids, emb.item_emb, cold_users, emb.user_emb[rows],
                                config.mf.epochs, {})
    if method == "ptupcdr":
        return _fit_ptupcdr(train, source, target, cold_users, config)
    shared = config.shared
    index = build_multi_domain_index(train, (source, target), shared.max_history, shared.seed,
                                     extra_users=list(cold_users) + list(valid_users))
    sl = index.domain_slice(target)
    item_ids = index.items[target].ids
    valid_pos = index.users.to_idx(valid_users) if len(valid_users) else None

    def validate(model) -> float:
        user_emb = model.export_users(index.history_of(valid_pos))
        return validator(user_emb, item_ids, model.export_items(sl.start, sl.stop))

    result = train_shared(index, source, (target,), shared,
                          validate if validator is not None and valid_pos is not None else None)
    user_emb = result.model.export_users(index.history_of(index.users.to_idx(cold_users)))
    return TargetEmbeddings(
        item_ids, result.model.export_items(sl.start, sl.stop), cold_users, user_emb,
        result.best_epoch + 1,
        {"val_scores": result.val_scores, "epoch_losses": result.epoch_losses,
         "seconds_per_epoch": result.seconds_per_epoch, "device": result.device},
    )


def _fit_ptupcdr(
    train: pd.DataFrame, source: str, target: str, cold_users: np.ndarray, config: ColdStartConfig
) -> TargetEmbeddings:
    device = resolve_device(config.device)
    src, tgt = domain_matrix(train, source), domain_matrix(train, target)
    src_mf, tgt_mf = train_mf(src, config.mf, device), train_mf(tgt, config.mf, device)
    index = build_multi_domain_index(train, (source,), config.shared.max_history, config.mf.seed)
    # history rows/columns re-expressed in the source MF's user/item positions
    to_src_item = src.items.lookup(index.items[source].ids)  # (I,) index item -> MF row
    hist = np.where(index.history >= 0, to_src_item[index.history.clip(0)], -1)
    hist_of_src_user = hist[index.users.to_idx(src.users.ids)]  # (U_src, L)
    tgt_user_in_src = src.users.lookup(tgt.users.to_ids(tgt.user_idx))  # (nnz_t,)
    keep = tgt_user_in_src >= 0
    bridge = fit_ptupcdr(
        src_mf.user_emb, src_mf.item_emb, hist_of_src_user, tgt_mf.item_emb,
        tgt_user_in_src[keep], tgt.item_idx[keep], config.ptupcdr, device,
    )
    rows = src.users.lookup(cold_users)
    if (rows < 0).any():
        raise ValueError(f"{int((rows < 0).sum())} cold users have no source history")
    user_emb = apply_ptupcdr(bridge, src_mf.user_emb[rows], src_mf.item_emb, hist_of_src_user[rows])
    return TargetEmbeddings(tgt.items.ids, tgt_mf.item_emb, cold_users, user_emb,
                            config.ptupcdr.epochs, {})

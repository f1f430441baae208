"""Cold-start transfer methods behind one interface: each fits on a training frame
and returns target embeddings for the requested cold users plus the target's
item embeddings.

Methods: ``popularity`` and ``target_only`` (no transfer: popularity for cold
users), ``itemknn``, ``ease``, ``ridge``, ``userknn`` (item-to-item links from the
overlapping users, scored from a source history), ``dae`` (a history-to-target
network trained on the overlapping users), ``blend`` (the shipped default: a
validation-weighted blend of ridge, itemknn, userknn, dae and popularity), ``emcdr`` (MF
per domain + mapping), ``ptupcdr`` (personalised bridge), ``shared`` (shared encoders
+ adaptation losses).

Every method returns a ``TargetScorer``: ``score(rows)`` gives the ``(n, n_items)``
scores of the cold users at ``rows``; embedding methods are ``TargetEmbeddings``,
item-to-item ones ``HistoryScores``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from recxfer.data.dataset import domain_matrix
from recxfer.train.cross_domain import CrossDomainConfig, train_cross_domain
from recxfer.train.device import resolve_device
from recxfer.train.histories import build_multi_domain_index
from recxfer.train.mf import MFConfig, train_mf
from recxfer.train.shared import SharedTrainConfig, train_shared
from recxfer.transfer.blend import (
    BlendConfig,
    FittedScorer,
    fit_blend,
    fit_dae_scorer,
    fit_ease,
    fit_itemknn,
    fit_ridge,
    fit_twohop,
    fit_userknn,
)
from recxfer.transfer.dae import DAEConfig
from recxfer.transfer.ease import EASEConfig
from recxfer.transfer.emcdr import EMCDRConfig
from recxfer.transfer.interactions import build_matrices
from recxfer.transfer.itemknn import ItemKNNConfig
from recxfer.transfer.ptupcdr import PTUPCDRConfig, apply_ptupcdr, fit_ptupcdr
from recxfer.transfer.ridge import RidgeConfig
from recxfer.transfer.twohop import TwoHopConfig
from recxfer.transfer.userknn import UserKNNConfig
from recxfer.types import ItemToItemScorer

ITEM_TO_ITEM = ("itemknn", "ease", "ridge", "userknn", "twohop", "dae", "blend")
METHODS = ("blend", "popularity", "target_only", *ITEM_TO_ITEM[:-1], "emcdr", "ptupcdr", "shared")
DEFAULT_METHOD = "blend"


@dataclass(frozen=True)
class ColdStartConfig:
    """Hyper-parameters of every method (only the chosen one's are used)."""

    mf: MFConfig = field(default_factory=lambda: MFConfig(dim=64, epochs=20, batch_size=1024, lr=0.01))
    emcdr: EMCDRConfig = field(default_factory=EMCDRConfig)
    ptupcdr: PTUPCDRConfig = field(default_factory=PTUPCDRConfig)
    shared: SharedTrainConfig = field(default_factory=SharedTrainConfig)
    itemknn: ItemKNNConfig = field(default_factory=ItemKNNConfig)
    ease: EASEConfig = field(default_factory=EASEConfig)
    ridge: RidgeConfig = field(default_factory=RidgeConfig)
    userknn: UserKNNConfig = field(default_factory=UserKNNConfig)
    twohop: TwoHopConfig = field(default_factory=TwoHopConfig)
    dae: DAEConfig = field(default_factory=DAEConfig)
    blend: BlendConfig = field(default_factory=BlendConfig)
    device: str = "auto"
    # how a benchmark's validation reads the sampled protocol: "drawn" (seeded
    # negatives, as reported) or "expected" (the expectation over the draw)
    selection_sampled: str = "drawn"

    def __post_init__(self) -> None:
        if self.selection_sampled not in ("drawn", "expected"):
            raise ValueError(f"selection_sampled must be 'drawn' or 'expected', got {self.selection_sampled!r}")

    def with_seed(self, seed: int) -> "ColdStartConfig":
        """This config with every model seed set to ``seed``."""
        return dataclasses.replace(
            self,
            mf=dataclasses.replace(self.mf, seed=seed),
            emcdr=dataclasses.replace(self.emcdr, seed=seed),
            ptupcdr=dataclasses.replace(self.ptupcdr, seed=seed),
            shared=dataclasses.replace(self.shared, seed=seed),
            dae=dataclasses.replace(self.dae, seed=seed),
            blend=dataclasses.replace(self.blend, dae=dataclasses.replace(self.blend.dae, seed=seed)),
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

    def score(self, rows: np.ndarray) -> np.ndarray:
        """``(len(rows), n_items)`` float32 scores of the users at ``rows``."""
        return np.asarray(self.user_emb[rows], np.float32) @ np.asarray(self.item_emb, np.float32).T


@dataclass(frozen=True)
class HistoryScores:
    """Scores of ``users`` are ``scorer.score(history[rows])``: an item-to-item method.

    Attributes:
        item_ids: ``(n_items,)`` target catalogue (= ``scorer.tgt_item_ids``).
        user_ids: ``(n_users,)`` the cold users asked for, in order.
        history: ``(n_users, n_src)`` csr 0/1 source histories.
        scorer: the fitted, servable scorer.
        info: what was chosen on validation.
    """

    item_ids: np.ndarray
    user_ids: np.ndarray
    history: Any
    scorer: ItemToItemScorer
    epochs_trained: int
    info: dict
    user_emb: np.ndarray | None = None
    item_emb: np.ndarray | None = None

    def score(self, rows: np.ndarray) -> np.ndarray:
        """``(len(rows), n_items)`` float32 scores of the users at ``rows``."""
        rows = np.asarray(rows, np.int64)
        user_emb = None if self.user_emb is None else self.user_emb[rows]
        return self.scorer.score(self.history[rows], user_emb, self.item_emb)


TargetScorer = TargetEmbeddings | HistoryScores
# Scores of the validation users: (score_fn(rows) -> (n, n_items), item_ids) -> higher is better.
Validator = Callable[[Callable[[np.ndarray], np.ndarray], np.ndarray], float]


def fit_cold_start(
    method: str,
    train: pd.DataFrame,
    source: str,
    target: str,
    cold_users: Sequence[str],
    config: ColdStartConfig = ColdStartConfig(),
    valid_users: Sequence[str] = (),
    validator: Validator | None = None,
) -> TargetScorer:
    """Fit ``method`` and score ``cold_users`` (users with no target rows) in the target.

    ``validator`` scores the ``valid_users`` (in that order); ``shared`` uses it for
    early stopping, the item-to-item methods to choose their hyper-parameters and
    blend weights.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {METHODS}")
    cold_users = np.asarray(cold_users, dtype=object)
    if method in ITEM_TO_ITEM:
        return _fit_item_to_item(method, train, source, target, cold_users, config,
                                 np.asarray(valid_users, dtype=object), validator)
    if method in ("target_only", "popularity"):
        matrix = domain_matrix(train, target)
        epochs = 0
        if method == "target_only":  # the target MF is trained, but cold users have no row in it
            epochs = len(train_mf(matrix, config.mf, resolve_device(config.device)).epoch_losses)
        popularity = matrix.item_popularity.astype(np.float32)[:, None]  # (I, 1)
        return TargetEmbeddings(
            matrix.items.ids, popularity, cold_users, np.ones((len(cold_users), 1), np.float32),
            epochs, {"note": "cold users have no target history: popularity"},
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
        user_emb = model.export_users(index.history_of(valid_pos))  # (n_valid, d)
        item_emb = model.export_items(sl.start, sl.stop)  # (n_items, d)
        return validator(lambda rows: user_emb[rows] @ item_emb.T, item_ids)

    result = train_shared(index, source, (target,), shared,
                          validate if validator is not None and valid_pos is not None else None)
    user_emb = result.model.export_users(index.history_of(index.users.to_idx(cold_users)))
    return TargetEmbeddings(
        item_ids, result.model.export_items(sl.start, sl.stop), cold_users, user_emb,
        result.best_epoch + 1,
        {"val_scores": result.val_scores, "epoch_losses": result.epoch_losses,
         "seconds_per_epoch": result.seconds_per_epoch, "device": result.device},
    )


_FITTERS = {"itemknn": (fit_itemknn, "itemknn"), "ease": (fit_ease, "ease"),
            "ridge": (fit_ridge, "ridge"), "userknn": (fit_userknn, "userknn"),
            "twohop": (fit_twohop, "twohop"), "dae": (fit_dae_scorer, "dae"), "blend": (fit_blend, "blend")}


def _rows_of(scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``scores[rows]``, a view (no copy of ``(len(rows), n_items)`` floats) when
    ``rows`` is an ascending run of consecutive rows, as the metrics' chunks are."""
    rows = np.asarray(rows)
    if rows.ndim == 1 and len(rows) and (np.diff(rows) == 1).all():
        return scores[int(rows[0]) : int(rows[-1]) + 1]
    return scores[rows]


def _fit_item_to_item(
    method: str, train: pd.DataFrame, source: str, target: str, cold_users: np.ndarray,
    config: ColdStartConfig, valid_users: np.ndarray, validator: Validator | None,
) -> HistoryScores:
    matrices = build_matrices(train, source, target, extra_users=list(cold_users) + list(valid_users))
    fit, field_name = _FITTERS[method]
    valid_hist, score_validator = None, None
    if validator is not None and len(valid_users):
        valid_hist = matrices.src[matrices.user_rows(valid_users)]

        def score_validator(scores: np.ndarray) -> float:
            return validator(lambda rows: _rows_of(scores, rows), matrices.tgt_item_ids)

    history = matrices.src[matrices.user_rows(cold_users)]
    empty = np.diff(history.indptr) == 0
    if empty.any():
        raise ValueError(f"{int(empty.sum())} cold users have no source history")
    if method == "blend" and config.blend.embedding and score_validator is not None:
        # the hybrid: the shared model's embeddings as one more term of the blend
        emb = fit_cold_start("shared", train, source, target, np.union1d(cold_users, valid_users),
                             config, valid_users, validator)
        cols = pd.Index(emb.item_ids).get_indexer(pd.Index(matrices.tgt_item_ids))
        if (cols < 0).any():
            raise ValueError("the shared model lacks target items the item-to-item matrices have")
        item_emb = np.asarray(emb.item_emb[cols], np.float32)  # (n_tgt, d)
        rows_of = pd.Index(emb.user_ids)
        valid_emb = emb.user_emb[rows_of.get_indexer(pd.Index(valid_users))]  # (n_valid, d)
        fitted = fit_blend(matrices, config.blend, valid_hist, score_validator, valid_emb @ item_emb.T)
        user_emb = np.asarray(emb.user_emb[rows_of.get_indexer(pd.Index(cold_users))], np.float32)
        info = fitted.info | {"embedding_model": {"epochs": emb.epochs_trained,
                                                  "val_scores": emb.info.get("val_scores")}}
        return HistoryScores(matrices.tgt_item_ids, cold_users, history, fitted.scorer,
                             emb.epochs_trained, info, user_emb, item_emb)
    fitted: FittedScorer = fit(matrices, getattr(config, field_name), valid_hist, score_validator)
    return HistoryScores(matrices.tgt_item_ids, cold_users, history, fitted.scorer, 0, fitted.info)


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

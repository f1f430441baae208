"""EMCDR-style cross-domain training: per-domain embeddings plus a source→target
mapping that gives cold-start users a target embedding."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from recxfer.data.dataset import DomainMatrix, domain_matrix
from recxfer.train.device import resolve_device
from recxfer.train.mf import MFConfig, MFResult, train_mf
from recxfer.transfer.emcdr import EMCDRConfig, apply_emcdr, fit_emcdr
from recxfer.types import DomainEmbeddings, SeenItems, UserOrigin

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CrossDomainConfig:
    """Configures ``train_cross_domain``: one source into several targets."""

    source: str = "video"
    targets: tuple[str, ...] = ("books", "music")
    mf: MFConfig = field(default_factory=MFConfig)
    emcdr: EMCDRConfig = field(default_factory=EMCDRConfig)
    device: str = "auto"


@dataclass(frozen=True)
class CrossDomainModel:
    """Result of training.

    Attributes:
        domains: domain -> servable embeddings (source and every target).
        epoch_losses: domain -> mean training loss per epoch.
        device: the device used, e.g. ``"cpu"``.
    """

    domains: dict[str, DomainEmbeddings]
    epoch_losses: dict[str, list[float]]
    device: str


def _warm_embeddings(matrix: DomainMatrix, result: MFResult) -> DomainEmbeddings:
    n_users = len(matrix.users)
    return DomainEmbeddings(
        domain=matrix.domain,
        user_ids=matrix.users.ids,
        user_emb=result.user_emb,
        user_origin=np.full(n_users, UserOrigin.WARM.value, dtype=object),
        item_ids=matrix.items.ids,
        item_emb=result.item_emb,
        seen=SeenItems.from_pairs(n_users, matrix.user_idx, matrix.item_idx),
        item_popularity=matrix.item_popularity,
    )


def train_cross_domain(train: pd.DataFrame, config: CrossDomainConfig) -> CrossDomainModel:
    """Train source and target embeddings, then a mapping per target.

    Every source user without training history in a target gets a transferred
    target embedding, so the target can be served for every user known in the
    source domain.

    Args:
        train: training interactions of every domain (held-out rows removed).
    """
    device = resolve_device(config.device)
    src = domain_matrix(train, config.source)
    src_result = train_mf(src, config.mf, device)
    domains = {config.source: _warm_embeddings(src, src_result)}
    losses = {config.source: src_result.epoch_losses}
    for target in config.targets:
        tgt = domain_matrix(train, target)
        tgt_result = train_mf(tgt, config.mf, device)
        warm = _warm_embeddings(tgt, tgt_result)
        losses[target] = tgt_result.epoch_losses
        overlap_src = src.users.lookup(tgt.users.ids)  # (n_tgt_users,), -1 if not in source
        has_src = overlap_src >= 0
        mapping = fit_emcdr(
            src_result.user_emb[overlap_src[has_src]],
            tgt_result.user_emb[has_src],
            config.emcdr,
            device,
        )
        cold_src = np.flatnonzero(tgt.users.lookup(src.users.ids) < 0)  # source-only users
        cold_emb = apply_emcdr(mapping, src_result.user_emb[cold_src])
        log.info(
            "%s: fitted mapping on %d overlapping users; %d users transferred",
            target, int(has_src.sum()), len(cold_src),
        )
        n_cold = len(cold_src)
        domains[target] = DomainEmbeddings(
            domain=target,
            user_ids=np.concatenate([warm.user_ids, src.users.ids[cold_src]]),
            user_emb=np.concatenate([warm.user_emb, cold_emb]).astype(np.float32),
            user_origin=np.concatenate(
                [warm.user_origin, np.full(n_cold, UserOrigin.TRANSFER.value, dtype=object)]
            ),
            item_ids=warm.item_ids,
            item_emb=warm.item_emb,
            seen=SeenItems(
                indptr=np.concatenate(
                    [warm.seen.indptr, np.full(n_cold, warm.seen.indptr[-1], dtype=np.int64)]
                ),
                indices=warm.seen.indices,
            ),
            item_popularity=warm.item_popularity,
        )
    return CrossDomainModel(domains, losses, device.type)

"""EMCDR-style cross-domain training: per-domain embeddings plus a source→target
mapping that gives cold-start users a target embedding."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from recxfer.data.dataset import DomainMatrix, domain_matrix
from recxfer.train.checkpoint import Checkpointer
from recxfer.train.device import resolve_device
from recxfer.train.mf import MFConfig, MFInit, MFResult, train_mf
from recxfer.transfer.emcdr import EMCDRConfig, apply_emcdr, fit_emcdr
from recxfer.types import DomainEmbeddings, SeenItems, UserOrigin, DomainTransfer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CrossDomainConfig:
    """Configures ``train_cross_domain``: one source into several targets."""

    source: str = "video"
    targets: tuple[str, ...] = ("books", "music")
    mf: MFConfig = field(default_factory=MFConfig)
    emcdr: EMCDRConfig = field(default_factory=EMCDRConfig)
    device: str = "auto"

    def __post_init__(self) -> None:
        if not self.source:
            raise ValueError("source must be a non-empty domain name")
        if not self.targets or any(not t for t in self.targets) or len(set(self.targets)) < len(self.targets):
            raise ValueError(f"targets must be distinct non-empty domain names, got {list(self.targets)}")
        if self.source in self.targets:
            raise ValueError(f"targets must not include the source {self.source!r}")


@dataclass(frozen=True)
class CrossDomainModel:
    """Result of training.

    Attributes:
        domains: domain -> servable embeddings (source and every target).
        epoch_losses: domain -> mean training loss per epoch.
        device: the device used, e.g. ``"cpu"``.
        resumed_from: domain -> MF epochs read from a checkpoint (0 when none).
        warm_rows: domain -> ``(users, items)`` rows warm-started from ``init``.
        transfers: target -> item-to-item transfer scoring its cold users (``blend``).
        transfer_info: target -> what validation chose for its transfer (a refit
            on more rows reuses these choices).
    """

    domains: dict[str, DomainEmbeddings]
    epoch_losses: dict[str, list[float]]
    device: str
    resumed_from: dict[str, int] = field(default_factory=dict)
    warm_rows: dict[str, tuple[int, int]] = field(default_factory=dict)
    transfers: dict[str, DomainTransfer] = field(default_factory=dict)
    transfer_info: dict[str, dict] = field(default_factory=dict)


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


def _mf_init(
    matrix: DomainMatrix, config: MFConfig, prior: DomainEmbeddings | None
) -> MFInit | None:
    if prior is None:
        return None
    if prior.user_emb.shape[1] != config.dim:
        log.warning(
            "mf[%s]: no warm start: prior dim %d != configured dim %d",
            matrix.domain, prior.user_emb.shape[1], config.dim,
        )
        return None
    return MFInit.from_ids(
        matrix.users.ids, matrix.items.ids,
        prior.user_ids, prior.user_emb, prior.item_ids, prior.item_emb,
    )


def _train_domain(
    matrix: DomainMatrix,
    config: MFConfig,
    device: torch.device,
    prior: DomainEmbeddings | None,
    checkpoint_dir: Path | None,
) -> MFResult:
    init = _mf_init(matrix, config, prior)
    checkpointer = None
    if checkpoint_dir is not None:
        meta = {
            "loop": "mf", "domain": matrix.domain, "users": len(matrix.users),
            "items": len(matrix.items), "nnz": int(len(matrix.user_idx)),
            "config": asdict(config), "warm_start": init is not None,
        }
        checkpointer = Checkpointer(Path(checkpoint_dir) / f"mf-{matrix.domain}", meta)
    if init is not None:
        log.info(
            "mf[%s]: warm start: %d/%d users and %d/%d items from the prior model, the rest fresh",
            matrix.domain, int(init.user_mask.sum()), len(matrix.users),
            int(init.item_mask.sum()), len(matrix.items),
        )
    return train_mf(matrix, config, device, init, checkpointer)


def train_cross_domain(
    train: pd.DataFrame,
    config: CrossDomainConfig,
    init: Mapping[str, DomainEmbeddings] | None = None,
    checkpoint_dir: str | Path | None = None,
) -> CrossDomainModel:
    """Train source and target embeddings, then a mapping per target.

    Every source user without training history in a target gets a transferred
    target embedding, so the target can be served for every user known in the
    source domain.

    Args:
        train: training interactions of every domain (held-out rows removed).
        init: domain -> a prior model's embeddings (e.g. production's) to warm-start
            from: users and items it knows start from its rows, new ones from the
            random initialisation. Skipped for a domain whose dim differs.
        checkpoint_dir: when given, each domain's MF loop checkpoints every epoch
            under ``checkpoint_dir/mf-<domain>/`` and resumes from there. (The
            EMCDR mapping is a few seconds of full-batch fitting, seeded, and is
            simply refitted.)

    Without ``init`` and ``checkpoint_dir`` the result is exactly the plain training.
    """
    device = resolve_device(config.device)
    init = init or {}
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    src = domain_matrix(train, config.source)
    src_result = _train_domain(src, config.mf, device, init.get(config.source), ckpt_dir)
    domains = {config.source: _warm_embeddings(src, src_result)}
    losses = {config.source: src_result.epoch_losses}
    resumed = {config.source: src_result.resumed_from}
    warm_rows = {config.source: src_result.warm_rows}
    for target in config.targets:
        tgt = domain_matrix(train, target)
        tgt_result = _train_domain(tgt, config.mf, device, init.get(target), ckpt_dir)
        warm = _warm_embeddings(tgt, tgt_result)
        losses[target] = tgt_result.epoch_losses
        resumed[target] = tgt_result.resumed_from
        warm_rows[target] = tgt_result.warm_rows
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
    return CrossDomainModel(domains, losses, device.type, resumed, warm_rows)

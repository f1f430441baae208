"""The shared-encoder method for the product job: train one model over the source
and every target, then export servable embeddings for every domain."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from recxfer.encoders.text import TextEmbeddingCache, TextEncoderConfig
from recxfer.train.checkpoint import Checkpointer
from recxfer.train.cross_domain import CrossDomainModel
from recxfer.train.histories import MultiDomainIndex, build_multi_domain_index
from recxfer.train.shared import SharedTrainConfig, train_shared
from recxfer.train.warm_start import ID_TABLE, SharedWarmStart, weights_of
from recxfer.transfer.shared import SharedTransferModel
from recxfer.types import DomainEmbeddings, SeenItems, UserOrigin

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SharedJobConfig:
    """The shared method in the product job: training config and item text use."""

    train: SharedTrainConfig = field(default_factory=SharedTrainConfig)
    use_text: bool = True


@dataclass(frozen=True)
class SharedCrossDomainModel(CrossDomainModel):
    """``CrossDomainModel`` plus what serving needs to embed a new history.

    Attributes:
        pooling: the user encoder's pooling (``"mean"`` or ``"attention"``).
        attention_query: ``(dim,)`` learned query for attention pooling, else ``None``.
        max_history: items per domain the encoder reads.
        val_scores: validation score per epoch (epoch ``i + 1`` at index ``i``).
        weights: the model's weights for a later warm start (``warm_start.weights_of``);
            its id table's rows are the items of ``domain_order``'s domains in turn
            (exactly the exported ``domains[d].item_ids``).
        domain_order: the domains in global item-position order (source first).
        best_epoch: the epoch whose weights were kept, numbered from 1; ``0`` when
            no epoch beat the warm-started weights (those were kept).
        warm_score: validation score of the warm-started weights before training
            (``None``: no warm start or no validation).
        total_losses: mean training loss per epoch over every domain's rows.
        dropped_items: domain -> items left out of the export because no epoch
            trained their rows (new items of a warm start with no epoch run).
    """

    pooling: str = "mean"
    attention_query: np.ndarray | None = None
    max_history: int = 50
    val_scores: list[float] = field(default_factory=list)
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    domain_order: tuple[str, ...] = ()
    best_epoch: int = 0
    warm_score: float | None = None
    total_losses: list[float] = field(default_factory=list)
    dropped_items: dict[str, int] = field(default_factory=dict)

    def warm_start(self) -> SharedWarmStart:
        """This model's weights as the starting point of another run (the refit)."""
        return SharedWarmStart(self.weights, tuple((d, self.domains[d].item_ids) for d in self.domain_order))


def item_texts(index: MultiDomainIndex, items: pd.DataFrame) -> list[str]:
    """Title (and text) of every global item position, ``""`` where unknown."""
    table = items.assign(full=items["title"] + (" " + items["text"] if "text" in items else ""))
    lookup = table.set_index(["domain", "item_id"])["full"]
    texts: list[str] = []
    for domain in index.domains:
        keys = pd.MultiIndex.from_arrays([[domain] * len(index.items[domain]), index.items[domain].ids])
        texts += lookup.reindex(keys).fillna("").tolist()
    return texts


def train_shared_cross_domain(
    train: pd.DataFrame,
    source: str,
    targets: tuple[str, ...],
    config: SharedJobConfig,
    items: pd.DataFrame | None = None,
    text_cache: Path | None = None,
    validator: Callable[[dict[str, DomainEmbeddings]], float] | None = None,
    checkpoint_dir: str | Path | None = None,
    warm: SharedWarmStart | None = None,
) -> SharedCrossDomainModel:
    """Train the shared model on ``train`` and export every domain.

    Args:
        items: item titles, used by the text tower when ``config.use_text``.
        text_cache: folder caching text embeddings (encoded once).
        validator: scores exported domains (higher is better) for early stopping.
        checkpoint_dir: per-epoch checkpoints go to ``checkpoint_dir/shared``; a run
            finding one for the same data shape and config resumes from it.
        warm: an earlier model's weights to start from (item rows matched by id).

    Items new to ``warm`` whose rows no epoch trained (``config.train.epochs`` 0,
    e.g. a refit of zero epochs) are left out of the exported tables and of
    ``weights``, counted in ``dropped_items`` and logged: they are never served
    with a random row, and a later run sees them as new again.
    """
    domains = (source, *targets)
    index = build_multi_domain_index(train, domains, config.train.max_history, config.train.seed)
    text_emb = None
    if config.use_text and items is not None:
        cache = TextEmbeddingCache(text_cache or Path(".text-cache"), TextEncoderConfig())
        text_emb = cache.encode(item_texts(index, items))
        log.info("text tower: %d item texts encoded (cache %s)", len(text_emb), cache.directory)

    def validate(model: SharedTransferModel) -> float:
        return validator(export_domains(model, index))

    checkpointer = None
    if checkpoint_dir is not None:
        meta = {"config": repr(config), "users": len(index.users), "items": index.n_items_total,
                "domains": list(domains), "text": text_emb is not None}
        checkpointer = Checkpointer(Path(checkpoint_dir) / "shared", meta)
    result = train_shared(index, source, targets, config.train,
                          validate if validator is not None else None, text_emb, checkpointer,
                          warm)
    encoder = result.model.user_encoder
    query = getattr(encoder, "query", None)
    keep = np.ones(index.n_items_total, dtype=bool)
    keep[result.untrained_positions] = False
    for d in index.domains:  # a domain entirely new to the warm start is kept whole
        if not keep[index.domain_slice(d)].any():
            keep[index.domain_slice(d)] = True
    dropped = {d: int((~keep[index.domain_slice(d)]).sum()) for d in index.domains}
    if not keep.all():
        log.warning("left out %s item(s) without a trained row (new to the warm start, no epoch run)",
                    {d: n for d, n in dropped.items() if n})
    weights = weights_of(result.model)
    weights[ID_TABLE] = weights[ID_TABLE][torch.as_tensor(np.flatnonzero(keep))]
    # 1-based; 0: the warm weights were kept (index -1), or no epoch ran
    trained = result.best_epoch + 1
    return SharedCrossDomainModel(
        domains=export_domains(result.model, index, keep),
        epoch_losses=dict(result.domain_losses),
        device=result.device,
        resumed_from={"shared": result.resumed_from},
        pooling=encoder.config.pooling,
        attention_query=None if query is None else query.detach().float().cpu().numpy(),
        max_history=config.train.max_history,
        val_scores=result.val_scores,
        warm_rows={} if result.warm is None else {d: (0, n) for d, n in result.warm.item_rows.items()},
        weights=weights,
        domain_order=index.domains,
        best_epoch=trained,
        warm_score=result.warm_score,
        total_losses=list(result.epoch_losses),
        dropped_items=dropped,
    )


def export_domains(
    model: SharedTransferModel, index: MultiDomainIndex, keep: np.ndarray | None = None
) -> dict[str, DomainEmbeddings]:
    """Servable embeddings of every domain: every indexed user gets a row in every
    domain (``warm`` with history there, ``transfer`` otherwise).

    Args:
        keep: ``(index.n_items_total,)`` bool, the items to export (all when ``None``);
            a left-out item is absent from its domain's tables and seen lists.
    """
    user_emb = model.export_users(index.history)  # (U, d): all history, all domains
    out = {}
    for domain in index.domains:
        sl = index.domain_slice(domain)
        user_pos, item_pos = index.rows[domain]
        local = item_pos - sl.start  # (nnz,)
        n_items = sl.stop - sl.start
        kept = np.ones(n_items, dtype=bool) if keep is None else keep[sl]  # (n_items,)
        new_pos = np.cumsum(kept) - 1  # old local position -> exported position
        rows = kept[local]
        warm = index.has_history(domain)
        out[domain] = DomainEmbeddings(
            domain=domain,
            user_ids=index.users.ids,
            user_emb=user_emb,
            user_origin=np.where(warm, UserOrigin.WARM.value, UserOrigin.TRANSFER.value).astype(object),
            item_ids=index.items[domain].ids[kept],
            item_emb=model.export_items(sl.start, sl.stop)[kept],
            seen=SeenItems.from_pairs(len(index.users), user_pos[rows], new_pos[local[rows]]),
            item_popularity=np.bincount(local, minlength=n_items).astype(np.int64)[kept],
        )
    return out

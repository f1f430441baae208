"""The shared-encoder method for the product job: train one model over the source
and every target, then export servable embeddings for every domain."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from recxfer.encoders.text import TextEmbeddingCache, TextEncoderConfig
from recxfer.train.checkpoint import Checkpointer
from recxfer.train.cross_domain import CrossDomainModel
from recxfer.train.distributed import collective_call
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
    # Validation users scored after each epoch, per target: a seeded sample of at
    # most this many of the target's validation users (0: all of them). Only they
    # are exported for validation, not every user.
    val_users: int = 2000

    def __post_init__(self) -> None:
        if self.val_users < 0:
            raise ValueError(f"val_users must be >= 0 (0: all), got {self.val_users}")


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
        seconds_per_epoch: wall seconds of each epoch's training steps (without
            validation).
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
    seconds_per_epoch: list[float] = field(default_factory=list)

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
    validation_users: Mapping[str, Sequence[str]] | None = None,
) -> SharedCrossDomainModel:
    """Train the shared model on ``train`` and export every domain.

    Args:
        items: item titles, used by the text tower when ``config.use_text``.
        text_cache: folder caching text embeddings (encoded once).
        validator: scores exported domains (higher is better) for early stopping.
        checkpoint_dir: per-epoch checkpoints go to ``checkpoint_dir/shared``; a run
            finding one for the same data shape and config resumes from it.
        warm: an earlier model's weights to start from (item rows matched by id).
        validation_users: target -> ids of its validation users. When given,
            ``validator`` sees only a seeded sample of at most ``config.val_users``
            of them per target (their rows alone are exported each epoch);
            ``None``: every user is exported for validation.

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

    val_pos = None if validation_users is None else sample_validation_users(
        index, validation_users, config.val_users, config.train.seed)
    if val_pos is not None:
        log.info("validation: %d sampled users exported per epoch (of %d)", len(val_pos),
                 len(index.users))

    def validate(model: SharedTransferModel) -> float:
        return validator(export_domains(model, index, user_pos=val_pos))

    checkpointer = None
    if checkpoint_dir is not None:
        meta = {"config": repr(config), "users": len(index.users), "items": index.n_items_total,
                "domains": list(domains), "text": text_emb is not None}
        checkpointer = Checkpointer(Path(checkpoint_dir) / "shared", meta)
    # Under ``run_job`` (torchrun), the other ranks make this call with rank 0; the
    # validator and the checkpointer are rank 0's alone.
    result = collective_call(train_shared, index, source, targets, config.train, text_emb=text_emb,
                             warm=warm, rank0_only={"validate": validate if validator is not None else None,
                                                    "checkpointer": checkpointer})
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
        seconds_per_epoch=list(result.seconds_per_epoch),
    )


def sample_validation_users(
    index: MultiDomainIndex, users: Mapping[str, Sequence[str]], n: int, seed: int
) -> np.ndarray:
    """Sorted index positions of a seeded sample of at most ``n`` users per target
    (``n`` 0: all) among ``users[target]`` known to ``index``; the union over targets."""
    rng = np.random.default_rng([seed, 11])
    picked = []
    for target in sorted(users):
        pos = index.users.lookup(pd.Index(np.asarray(users[target], dtype=object)))
        pos = np.unique(pos[pos >= 0])
        if n and len(pos) > n:
            pos = np.sort(rng.choice(pos, size=n, replace=False))
        picked.append(pos)
    return np.unique(np.concatenate(picked)) if picked else np.zeros(0, np.int64)


def export_user_embeddings(
    model: SharedTransferModel,
    index: MultiDomainIndex,
    user_pos: np.ndarray | None = None,
    table: torch.Tensor | None = None,
    batch: int = 4096,
) -> np.ndarray:
    """``(n, dim)`` embeddings of ``user_pos`` (every user when ``None``) from all
    their history, gathered from the CSR histories chunk by chunk, over one
    projection of the item table (``table``, or projected here once)."""
    user_pos = np.arange(len(index.users)) if user_pos is None else np.asarray(user_pos, np.int64)
    if len(user_pos) == 0:
        return np.zeros((0, model.config.dim), dtype=np.float32)
    table = model.item_table() if table is None else table
    parts = [model.export_users(index.gather(user_pos[s : s + batch]), batch, table)
             for s in range(0, len(user_pos), batch)]
    return np.concatenate(parts)


def export_domains(
    model: SharedTransferModel,
    index: MultiDomainIndex,
    keep: np.ndarray | None = None,
    user_pos: np.ndarray | None = None,
) -> dict[str, DomainEmbeddings]:
    """Servable embeddings of every domain: every indexed user gets a row in every
    domain (``warm`` with history there, ``transfer`` otherwise).

    The item table is projected once (under ``no_grad``) and serves both the item
    tables and the pooling of every chunk of users.

    Args:
        keep: ``(index.n_items_total,)`` bool, the items to export (all when ``None``);
            a left-out item is absent from its domain's tables and seen lists.
        user_pos: sorted distinct index positions of the users to export (all when
            ``None``), e.g. sampled validation users; item popularity still counts
            every row.
    """
    table = model.item_table()  # (I, dim) on the model's device, once
    users = np.arange(len(index.users)) if user_pos is None else np.asarray(user_pos, np.int64)
    user_emb = export_user_embeddings(model, index, users, table)  # (n, d): all domains' history
    row_of = None
    if user_pos is not None:
        row_of = np.full(len(index.users), -1, dtype=np.int64)
        row_of[users] = np.arange(len(users))
    lengths = index.lengths[users]  # (n, n_domains)
    item_table = table.float().cpu().numpy()
    out = {}
    for d_idx, domain in enumerate(index.domains):
        sl = index.domain_slice(domain)
        seen_users, item_pos = index.rows[domain]
        local = item_pos.astype(np.int64) - sl.start  # (nnz,)
        n_items = sl.stop - sl.start
        kept = np.ones(n_items, dtype=bool) if keep is None else keep[sl]  # (n_items,)
        new_pos = np.cumsum(kept) - 1  # old local position -> exported position
        rows = kept[local]
        seen_rows = seen_users.astype(np.int64)
        if row_of is not None:
            seen_rows = row_of[seen_rows]
            rows &= seen_rows >= 0
        warm = lengths[:, d_idx] > 0
        out[domain] = DomainEmbeddings(
            domain=domain,
            user_ids=index.users.ids[users],
            user_emb=user_emb,
            user_origin=np.where(warm, UserOrigin.WARM.value, UserOrigin.TRANSFER.value).astype(object),
            item_ids=index.items[domain].ids[kept],
            item_emb=item_table[sl][kept],
            seen=SeenItems.from_pairs(len(users), seen_rows[rows], new_pos[local[rows]]),
            item_popularity=np.bincount(local, minlength=n_items).astype(np.int64)[kept],
        )
    return out

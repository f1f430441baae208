"""Warm start of the shared-encoder model from an earlier run's weights.

A nightly run starts from production's weights rather than from random ones. The
earlier model's item rows are keyed by ``(domain, item_id)``; tonight's index may
add, drop or reorder items, so each row is carried over by key: an item both runs
know keeps its learned id embedding, a new item starts from a fresh random row
(``train_shared`` keeps the trained rows of new items even when it restores the
warm weights, and reports those no epoch trained so they are not served). Every
other weight (text projection, gate, attention query, MLP head) is copied when its
name and shape match tonight's model, and left fresh otherwise (a changed ``dim``
or a tower turned on or off). Users have no rows of their own: the shared encoder
embeds a user from their history, so a new user needs nothing carried over.

The frozen text embeddings are not part of the saved weights (tonight's run
encodes its own titles, through the text cache).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from recxfer.train.histories import MultiDomainIndex
from recxfer.transfer.shared import SharedTransferModel

log = logging.getLogger(__name__)

ID_TABLE = "item_tower.id_encoder.table.weight"
FROZEN = ("item_tower.text_tower.text_emb",)


@dataclass(frozen=True)
class SharedWarmStart:
    """An earlier shared model's weights and the items its id table rows are.

    Attributes:
        state: parameter name -> CPU tensor, the frozen text table left out;
            ``state[ID_TABLE]`` is ``(sum of item counts, dim)``.
        item_ids: ``(domain, ids)`` in global-position order: the id table's rows
            are the first domain's items, then the second's, and so on.
    """

    state: dict[str, torch.Tensor]
    item_ids: tuple[tuple[str, np.ndarray], ...]

    def __post_init__(self) -> None:
        if ID_TABLE not in self.state:
            raise ValueError(f"warm-start weights lack {ID_TABLE!r}")
        rows = sum(len(ids) for _, ids in self.item_ids)
        if self.state[ID_TABLE].shape[0] != rows:
            raise ValueError(
                f"warm-start id table has {self.state[ID_TABLE].shape[0]} rows "
                f"but its item ids number {rows}"
            )


@dataclass(frozen=True)
class WarmStartReport:
    """What ``apply_warm_start`` carried over.

    Attributes:
        item_rows: domain -> id-embedding rows copied (items both runs know).
        new_items: domain -> items only tonight's run has (fresh rows).
        copied: names of the other weights copied.
        skipped: names of earlier weights not copied (absent or of another shape).
        new_positions: ``(n_new,)`` int64 global id-table positions of the new items
            (every item when the id table was not carried over).
    """

    item_rows: dict[str, int]
    new_items: dict[str, int]
    copied: tuple[str, ...]
    skipped: tuple[str, ...]
    new_positions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def carried_table(self) -> bool:
        """Whether the id table's rows were carried over (same ``dim``)."""
        return ID_TABLE in self.copied


def weights_of(model: SharedTransferModel) -> dict[str, torch.Tensor]:
    """``model``'s weights to save for a later warm start (CPU, float32, no
    frozen text table)."""
    return {
        name: tensor.detach().float().cpu().clone()
        for name, tensor in model.state_dict().items() if name not in FROZEN
    }


def save_weights(path: Path, weights: Mapping[str, torch.Tensor]) -> None:
    """Write ``weights`` to ``path`` (a tensors-only file, see ``load_weights``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(dict(weights), path)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Read a file written by ``save_weights``, without executing pickled code
    (``weights_only``); anything but a name -> tensor mapping is refused.

    Raises:
        ValueError: the file is not such a mapping or cannot be read.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a bad file
        raise ValueError(f"{path}: not a readable weights file ({exc})") from exc
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(f"{path}: expected a mapping of names to tensors")
    return state


def apply_warm_start(
    model: SharedTransferModel, warm: SharedWarmStart, index: MultiDomainIndex
) -> WarmStartReport:
    """Copy ``warm``'s weights into ``model`` (freshly initialised over ``index``'s
    items) in place, item rows by ``(domain, item_id)``; see the module docstring."""
    own = model.state_dict()
    table = own[ID_TABLE]  # (index.n_items_total, dim)
    old_table = warm.state[ID_TABLE]  # (old items, dim_old)
    item_rows: dict[str, int] = {}
    new_items: dict[str, int] = {}
    copied: list[str] = []
    skipped: list[str] = []
    new_pos: list[np.ndarray] = []
    if old_table.shape[1] == table.shape[1]:
        old_pos = _positions(warm.item_ids)
        with torch.no_grad():
            for domain in index.domains:
                ids = index.items[domain].ids
                keys = pd.MultiIndex.from_arrays([np.full(len(ids), domain, dtype=object), ids])
                found = old_pos.reindex(keys).to_numpy()  # float, NaN where new
                hit = ~np.isnan(found)
                start = index.domain_slice(domain).start
                dst = torch.as_tensor(start + np.nonzero(hit)[0], device=table.device)
                src = torch.as_tensor(found[hit].astype(np.int64))
                table[dst] = old_table[src].to(table.device, table.dtype)
                item_rows[domain], new_items[domain] = int(hit.sum()), int((~hit).sum())
                new_pos.append(start + np.nonzero(~hit)[0])
        copied.append(ID_TABLE)
    else:
        skipped.append(ID_TABLE)
        item_rows = {d: 0 for d in index.domains}
        new_items = {d: len(index.items[d]) for d in index.domains}
        new_pos.append(np.arange(index.n_items_total))
    with torch.no_grad():
        for name, tensor in warm.state.items():
            if name == ID_TABLE:
                continue
            if name in own and name not in FROZEN and own[name].shape == tensor.shape:
                own[name].copy_(tensor.to(own[name].device, own[name].dtype))
                copied.append(name)
            else:
                skipped.append(name)
    positions = np.concatenate(new_pos).astype(np.int64) if new_pos else np.zeros(0, np.int64)
    report = WarmStartReport(item_rows, new_items, tuple(copied), tuple(skipped), positions)
    log.info("warm start: item rows carried %s, new items %s; %d weights copied, skipped %s",
             report.item_rows, report.new_items, len(report.copied), list(report.skipped))
    return report


def _positions(item_ids: tuple[tuple[str, np.ndarray], ...]) -> pd.Series:
    """``(domain, item_id) -> global row`` of an earlier run's id table."""
    domains = np.concatenate([np.full(len(ids), d, dtype=object) for d, ids in item_ids]) \
        if item_ids else np.zeros(0, dtype=object)
    ids = np.concatenate([np.asarray(ids, dtype=object) for _, ids in item_ids]) \
        if item_ids else np.zeros(0, dtype=object)
    keys = pd.MultiIndex.from_arrays([domains, ids])
    if keys.has_duplicates:
        raise ValueError("warm-start item ids repeat within a domain")
    return pd.Series(np.arange(len(keys), dtype=np.float64), index=keys)

"""A validated cross-domain dataset read from a data folder."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recxfer.data.errors import DataValidationError
from recxfer.data.idmap import IdMap
from recxfer.data.tables import find_table, read_interactions, read_items


@dataclass(frozen=True)
class CrossDomainData:
    """Interactions of every domain (users matched across domains by ``user_id``)
    and, optionally, item texts.

    Attributes:
        interactions: columns ``user_id, item_id, domain[, weight, timestamp]``.
        items: columns ``item_id, domain, title[, text]`` or ``None``.
        fingerprint: sha256 over the canonical content, for the artifact manifest.
    """

    interactions: pd.DataFrame
    items: pd.DataFrame | None
    fingerprint: str


def load_data_dir(data_dir: str | Path, domains: Sequence[str]) -> CrossDomainData:
    """Read ``DATA_DIR/interactions.*`` and, when present, ``DATA_DIR/items.*``.

    Raises:
        DataValidationError: any problem, naming the file and the column.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataValidationError(f"{data_dir}: data folder does not exist")
    return load_sources(
        [find_table(data_dir, "interactions")],
        find_table(data_dir, "items", required=False),
        domains,
    )


def load_sources(
    interactions: Sequence[str | Path],
    items: str | Path | None,
    domains: Sequence[str],
) -> CrossDomainData:
    """Read several interaction sources (files, or folders of files such as Parquet
    partitions; concatenated) and optionally an items table.

    Raises:
        DataValidationError: any problem, naming the file and the column; also a
            row repeated across sources.
    """
    frame = read_interactions(list(interactions), domains=domains)
    items_frame = read_items(items, frame) if items is not None else None
    return CrossDomainData(frame, items_frame, fingerprint(frame, items_frame))


def fingerprint(interactions: pd.DataFrame, items: pd.DataFrame | None) -> str:
    """sha256 of the tables' content, independent of file format and row order."""
    digest = hashlib.sha256()
    for frame in (interactions, items):
        if frame is None:
            continue
        canonical = frame[sorted(frame.columns)]
        canonical = canonical.sort_values(list(canonical.columns), kind="stable")
        hashed = pd.util.hash_pandas_object(canonical, index=False).to_numpy()
        digest.update(np.ascontiguousarray(hashed).tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class DomainMatrix:
    """One domain's training interactions as row positions.

    Attributes:
        domain: domain name.
        users: map of the domain's users.
        items: map of the domain's items.
        user_idx: ``(nnz,)`` int64.
        item_idx: ``(nnz,)`` int64.
        weight: ``(nnz,)`` float32 (ones when the data has no weights).
    """

    domain: str
    users: IdMap
    items: IdMap
    user_idx: np.ndarray
    item_idx: np.ndarray
    weight: np.ndarray

    @property
    def item_popularity(self) -> np.ndarray:
        """``(n_items,)`` int64 interaction counts."""
        return np.bincount(self.item_idx, minlength=len(self.items)).astype(np.int64)


def domain_matrix(
    interactions: pd.DataFrame, domain: str, item_ids: Sequence[str] | None = None
) -> DomainMatrix:
    """Row-position view of ``domain``'s rows of ``interactions``.

    Args:
        item_ids: the item catalogue (defaults to items with rows); items with no
            rows keep a row in the item map.
    """
    rows = interactions[interactions["domain"] == domain]
    if rows.empty:
        raise DataValidationError(f"domain {domain!r} has no training rows")
    users = IdMap.from_values(rows["user_id"])
    items = IdMap.from_values(rows["item_id"] if item_ids is None else item_ids)
    weight = (
        rows["weight"].to_numpy(np.float32) if "weight" in rows else np.ones(len(rows), np.float32)
    )
    return DomainMatrix(
        domain, users, items, users.to_idx(rows["user_id"]), items.to_idx(rows["item_id"]), weight
    )

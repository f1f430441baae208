"""Bidirectional maps between external ids and row positions."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd


def _as_array(ids: Iterable[str]) -> np.ndarray:
    if isinstance(ids, (np.ndarray, pd.Series, pd.Index)):
        return np.asarray(ids, dtype=object)
    return np.asarray(list(ids), dtype=object)


class IdMap:
    """External string ids ``<->`` row positions ``0..n-1``.

    Vectorised: lookups of many ids go through a ``pandas.Index``.
    """

    def __init__(self, ids: Iterable[str]) -> None:
        self._index = pd.Index(_as_array(ids))
        if not self._index.is_unique:
            dup = self._index[self._index.duplicated()][0]
            raise ValueError(f"duplicate id {dup!r} in id map")

    @classmethod
    def from_values(cls, values: Iterable[str]) -> "IdMap":
        """Map of the sorted distinct ``values`` (deterministic order).

        A pandas column is deduplicated in its own (e.g. Arrow string) storage first,
        so only the distinct ids become Python objects."""
        if isinstance(values, (pd.Series, pd.Index)):
            return cls(np.sort(_as_array(pd.unique(values))))
        return cls(np.sort(pd.unique(_as_array(values))))

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, external_id: object) -> bool:
        return external_id in self._index

    @property
    def ids(self) -> np.ndarray:
        """``(n,)`` object array of external ids, in row order."""
        return self._index.to_numpy()

    def lookup(self, ids: Iterable[str]) -> np.ndarray:
        """Row positions of ``ids``: ``(m,)`` int64, ``-1`` for unknown ids."""
        return self._positions(ids)[0]

    def _positions(self, ids: Iterable[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """``(positions, values)``: a pandas column is factorised once (integer codes
        in its own storage) and only its distinct values are looked up; ``values``
        is the object array of other inputs (``None`` for a column)."""
        if isinstance(ids, (pd.Series, pd.Index)) and len(ids):
            codes, uniques = pd.factorize(ids)
            pos = self._index.get_indexer(_as_array(uniques)).astype(np.int64)
            return np.where(codes >= 0, pos[codes], -1), None
        values = _as_array(ids)
        return self._index.get_indexer(values).astype(np.int64), values

    def to_idx(self, ids: Iterable[str]) -> np.ndarray:
        """Row positions of ``ids``: ``(m,)`` int64.

        Raises:
            KeyError: an id is unknown (the message names the first).
        """
        idx, values = self._positions(ids)
        if (idx < 0).any():
            values = _as_array(ids) if values is None else values
            raise KeyError(f"{int((idx < 0).sum())} unknown id(s), first {values[idx < 0][0]!r}")
        return idx

    def to_ids(self, idx: np.ndarray) -> np.ndarray:
        """External ids of row positions ``idx`` (any shape)."""
        return self.ids[np.asarray(idx, dtype=np.int64)]

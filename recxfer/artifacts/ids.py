"""External id tables that memory-map: row -> id and id -> row without a Python
object per id.

A table of ``n`` ids is three ``.npy`` arrays (no pickle)::

    <stem>.npy       (n,) |S<w> the ids sorted (strictly increasing), UTF-8, NUL-padded to w bytes
    <stem>_rows.npy  (n,) int64 the row of each sorted id
    <stem>_pos.npy   (n,) int64 the sorted position of each row (the inverse permutation)

id -> row is a binary search of the sorted ids (``np.searchsorted``: ~2 us for
one id of a 1M table, ~0.4 us each in a batch, like a dict's per-id cost plus
its Python loop), then ``rows``; row -> id is ``ids[pos[row]]``, decoded on the
way out. Opening a table costs nothing per id, and N processes mapping one file
share it in the page cache. "Strictly increasing" also proves the ids unique.
Ids may not contain NUL (the padding).

Size: ``n * (w + 16)`` bytes: ids of very uneven lengths pay for the longest.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recxfer.artifacts.errors import ArtifactError

ROWS_SUFFIX = "_rows"
POS_SUFFIX = "_pos"
SUFFIXES = ("", ROWS_SUFFIX, POS_SUFFIX)  # the files of a table: <stem><suffix>.npy


def _encode(ids: Iterable[Any], where: str) -> np.ndarray:
    """``(n,)`` ``|S<w>`` UTF-8 bytes of ``str(id)`` for each id, in order.

    Raises:
        ValueError: an id holds NUL.
    """
    encoded = [str(i).encode("utf-8") for i in ids]
    if any(b"\x00" in e for e in encoded):
        raise ValueError(f"{where}: ids may not contain NUL characters")
    width = max((len(e) for e in encoded), default=0)
    return np.array(encoded, dtype=f"S{max(1, width)}")


class IdTable:
    """``n`` unique external ids (see the module doc); read-only.

    Behaves as the ``(n,)`` object array of ``str`` it stands for where the
    serving code uses one (``len``, ``table[i]``, ``table[positions]``,
    ``table[mask]``, ``table[a:b]``, ``tolist()``, iteration, ``np.asarray``),
    and as a read-only ``id -> row`` mapping (``id in table``,
    ``table.get(id, -1)``, ``table.rows(ids)``).

    Args:
        sorted_ids: ``(n,)`` ``|S<w>``, strictly increasing (may be ``np.memmap``).
        rows: ``(n,)`` int64, the row of each sorted id.
        pos: ``(n,)`` int64, the sorted position of each row.
        where: names the table in errors.
        check: verify the three fit (O(n); off only for tables built here).

    Raises:
        ArtifactError: wrong dtypes or shapes, ids not strictly increasing (a
            duplicate id, or unsorted), or ``rows``/``pos`` not inverse
            permutations.
    """

    def __init__(self, sorted_ids: np.ndarray, rows: np.ndarray, pos: np.ndarray,
                 where: str = "id table", check: bool = True) -> None:
        self.where = where
        if sorted_ids.ndim != 1 or sorted_ids.dtype.kind != "S":
            raise ArtifactError(f"{where}: ids must be a 1-d bytes array (|S<w>), got "
                                f"{sorted_ids.dtype} of shape {sorted_ids.shape}")
        for name, array in ((ROWS_SUFFIX, rows), (POS_SUFFIX, pos)):
            if array.shape != sorted_ids.shape or array.dtype != np.int64:
                raise ArtifactError(f"{where}: its *{name}.npy must be int64 of shape "
                                    f"{sorted_ids.shape}, got {array.dtype} of shape {array.shape}")
        self._sorted, self._rows, self._pos = sorted_ids, rows, pos
        if check:
            self._check()

    def _check(self) -> None:
        ids, n = self._sorted, len(self._sorted)
        if not n:
            return
        if not bool((ids[1:] > ids[:-1]).all()):
            dup = np.flatnonzero(ids[1:] == ids[:-1])
            if dup.size:
                raise ArtifactError(f"{self.where}: holds duplicate ids "
                                    f"(e.g. {ids[dup[0]].decode(errors='replace')!r})")
            raise ArtifactError(f"{self.where}: ids are not sorted")
        if int(self._pos.min()) < 0 or int(self._pos.max()) >= n:
            raise ArtifactError(f"{self.where}: *{POS_SUFFIX}.npy holds positions outside 0..{n - 1}")
        # rows[pos[r]] == r for every r: pos is a permutation and rows its inverse.
        if not np.array_equal(self._rows[self._pos], np.arange(n)):
            raise ArtifactError(f"{self.where}: *{ROWS_SUFFIX}.npy and *{POS_SUFFIX}.npy are not "
                                "inverse permutations")

    @classmethod
    def from_ids(cls, ids: Iterable[Any], where: str = "id table") -> "IdTable":
        """A table of ``str(id)`` for each id (row order), in memory.

        Raises:
            ValueError: an id holds NUL.
            ArtifactError: duplicate ids.
        """
        encoded = _encode(ids, where)
        order = np.argsort(encoded, kind="stable").astype(np.int64)
        pos = np.empty_like(order)
        pos[order] = np.arange(len(order), dtype=np.int64)
        table = cls(encoded[order], order, pos, where, check=False)
        table._check_sorted_only()
        return table

    def _check_sorted_only(self) -> None:
        ids = self._sorted
        if len(ids) > 1 and not bool((ids[1:] > ids[:-1]).all()):
            dup = ids[np.flatnonzero(ids[1:] == ids[:-1])[0]]
            raise ArtifactError(f"{self.where}: holds duplicate ids (e.g. {dup.decode(errors='replace')!r})")

    @staticmethod
    def paths(folder: Path, stem: str) -> tuple[Path, Path, Path]:
        """``folder/<stem>.npy``, ``<stem>_rows.npy``, ``<stem>_pos.npy``."""
        return tuple(folder / f"{stem}{suffix}.npy" for suffix in SUFFIXES)  # type: ignore[return-value]

    @classmethod
    def load(cls, paths: Sequence[Path], mmap: bool = False, where: str | None = None) -> "IdTable":
        """Read (or, ``mmap``, map read-only) a table saved by ``save``; ``paths``
        as ``IdTable.paths`` gives them.

        Raises:
            ArtifactError: a file missing, truncated or not a plain ``.npy``, or the
                three do not fit (see the class doc); naming the file.
        """
        mode = "r" if mmap else None
        arrays = []
        for path in paths:
            try:
                arrays.append(np.load(path, allow_pickle=False, mmap_mode=mode))
            except (OSError, ValueError, EOFError) as exc:
                raise ArtifactError(f"{path}: cannot be read as an id table: {exc}") from exc
        return cls(*arrays, where=where or str(paths[0]))

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(sorted ids, rows, pos)``, as saved."""
        return self._sorted, self._rows, self._pos

    def save(self, folder: Path, stem: str) -> tuple[str, str, str]:
        """Write the three files (``IdTable.paths``); returns their names."""
        paths = self.paths(folder, stem)
        for path, array in zip(paths, self.arrays()):
            np.save(path, np.ascontiguousarray(array), allow_pickle=False)
        return tuple(p.name for p in paths)  # type: ignore[return-value]

    # --- the array side: row -> id -------------------------------------------------

    @property
    def width(self) -> int:
        """Bytes per id: the UTF-8 length of the longest (at least 1)."""
        return int(self._sorted.dtype.itemsize)

    @property
    def nbytes(self) -> int:
        return int(self._sorted.nbytes + self._rows.nbytes + self._pos.nbytes)

    def __len__(self) -> int:
        return len(self._sorted)

    @property
    def shape(self) -> tuple[int]:
        return (len(self._sorted),)

    def __getitem__(self, key: Any) -> Any:
        """``table[i]`` -> ``str``; ``table[positions | mask | slice]`` -> ``(m,)``
        object array of ``str``."""
        if isinstance(key, (int, np.integer)):
            return bytes(self._sorted[self._pos[key]]).decode("utf-8")
        picked = self._sorted[self._pos[key]]
        out = np.empty(len(picked), dtype=object)
        out[:] = [b.decode("utf-8") for b in picked.tolist()]
        return out

    def tolist(self) -> list[str]:
        return [b.decode("utf-8") for b in self._sorted[self._pos].tolist()]

    def __iter__(self) -> Iterator[str]:
        return iter(self.tolist())

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.empty(len(self), dtype=object)
        out[:] = self.tolist()
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"IdTable({self.where}, {len(self)} ids of up to {self.width} bytes)"

    # --- the mapping side: id -> row -----------------------------------------------

    def _key(self, item: Any) -> bytes | None:
        """``item``'s bytes if it can be in the table, else ``None``."""
        if not isinstance(item, str):
            return None
        try:
            key = item.encode("utf-8")
        except UnicodeEncodeError:  # (a lone surrogate: no stored id has one)
            return None
        if len(key) > self.width or b"\x00" in key:
            return None
        return key

    def get(self, item: Any, default: Any = None) -> Any:
        """The row of id ``item``, or ``default`` when it is not in the table."""
        key = self._key(item)
        n = len(self._sorted)
        if key is None or not n:
            return default
        at = int(np.searchsorted(self._sorted, key))
        if at < n and self._sorted[at] == key:
            return int(self._rows[at])
        return default

    def __contains__(self, item: Any) -> bool:
        return self.get(item) is not None

    def rows(self, items: Sequence[Any]) -> np.ndarray:
        """``(m,)`` int64 rows of ``items``, ``-1`` where an id is not in the table."""
        if len(items) <= 4:  # below the batch path's fixed cost (~10 us)
            return np.array([self.get(item, -1) for item in items], dtype=np.int64)
        out = np.full(len(items), -1, dtype=np.int64)
        n, width = len(self._sorted), self.width
        if not n:
            return out
        try:  # the common case, all str: no Python work per id past the encoding
            keys = [item.encode("utf-8") for item in items]
        except (AttributeError, TypeError, UnicodeEncodeError):
            keys = [b"\x00" if key is None else key  # (NUL: in no table)
                    for key in map(self._key, items)]
        # Ids longer than the table's or holding NUL are in no table; the probe
        # below (of the table's dtype, so the search copies nothing) would
        # truncate the one and strip the other's trailing NULs.
        fits = np.fromiter(map(len, keys), dtype=np.int64, count=len(keys)) <= width
        if b"\x00" in b"".join(keys):
            fits &= np.array([b"\x00" not in key for key in keys], dtype=bool)
        probe = np.array(keys, dtype=self._sorted.dtype)
        at = np.minimum(np.searchsorted(self._sorted, probe), n - 1)
        hit = (self._sorted[at] == probe) & fits
        out[hit] = self._rows[at[hit]]
        return out


def as_id_table(ids: Any, where: str = "id table") -> IdTable:
    """``ids`` itself when it is an ``IdTable``, else a table of its ``str`` ids.

    Raises:
        ArtifactError: duplicate ids; ValueError: an id holds NUL.
    """
    return ids if isinstance(ids, IdTable) else IdTable.from_ids(
        ids.tolist() if isinstance(ids, np.ndarray) else ids, where)

"""Binary user × item matrices of a source and a target domain over one user index:
the input of the item-to-item methods (``itemknn``, ``ease``, ``ridge``, ``userknn``,
``blend``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recxfer.types import row_counts


@dataclass(frozen=True)
class SourceTargetMatrices:
    """Interactions of ``source`` and ``target`` over one user index.

    Attributes:
        user_ids: ``(n_users,)`` every user with a row in either domain (and any
            ``extra_users``), sorted.
        src_item_ids: ``(n_src,)`` sorted source catalogue.
        tgt_item_ids: ``(n_tgt,)`` sorted target catalogue (items with target rows).
        src: ``(n_users, n_src)`` csr float32 0/1.
        tgt: ``(n_users, n_tgt)`` csr float32 0/1.
    """

    user_ids: np.ndarray
    src_item_ids: np.ndarray
    tgt_item_ids: np.ndarray
    src: sp.csr_matrix
    tgt: sp.csr_matrix

    @property
    def overlap_rows(self) -> np.ndarray:
        """``(n_overlap,)`` rows of users with rows in both domains: the only users
        that link the two catalogues."""
        both = (np.diff(self.src.indptr) > 0) & (np.diff(self.tgt.indptr) > 0)
        return np.flatnonzero(both)

    def user_rows(self, user_ids: Sequence[str]) -> np.ndarray:
        """``(n,)`` rows of ``user_ids``; raises ``ValueError`` naming unknown ones."""
        rows = pd.Index(self.user_ids).get_indexer(pd.Index(np.asarray(user_ids, dtype=object)))
        if (rows < 0).any():
            missing = np.asarray(user_ids, dtype=object)[rows < 0][:5]
            raise ValueError(f"{int((rows < 0).sum())} users unknown to the matrices, e.g. {list(missing)}")
        return rows

    def user_weights(self, alpha: float) -> np.ndarray:
        """``(n_users,)`` float32 ``|s_u|^-alpha``, ``|s_u|`` the user's number of source
        items (all ones for ``alpha = 0``; 0 for users without source rows, who link
        nothing): inverse-user-frequency weights of the item-to-item methods."""
        length = np.diff(self.src.indptr).astype(np.float64)  # (n_users,)
        if alpha == 0:
            return np.ones(len(length), np.float32)
        return np.where(length > 0, np.maximum(length, 1.0) ** -alpha, 0.0).astype(np.float32)

    def target_popularity(self) -> np.ndarray:
        """``(n_tgt,)`` float32 number of users per target item."""
        return np.asarray(self.tgt.sum(axis=0), dtype=np.float32).ravel()


def _binary(users: np.ndarray, items: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    matrix = sp.csr_matrix((np.ones(len(users), np.float32), (users, items)), shape=shape)
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def build_matrices(
    train: pd.DataFrame, source: str, target: str, extra_users: Sequence[str] = ()
) -> SourceTargetMatrices:
    """Matrices of canonical rows (``user_id, item_id, domain``); repeated rows count once."""
    src_rows = train[train["domain"] == source]
    tgt_rows = train[train["domain"] == target]
    if src_rows.empty:
        raise ValueError(f"no training rows in the source domain {source!r}")
    if tgt_rows.empty:
        raise ValueError(f"no training rows in the target domain {target!r}")
    user_ids = np.unique(np.concatenate([
        src_rows["user_id"].to_numpy(dtype=object).astype(str),
        tgt_rows["user_id"].to_numpy(dtype=object).astype(str),
        np.asarray(list(extra_users), dtype=object).astype(str),
    ])).astype(object)
    users = pd.Index(user_ids)
    src_items = np.unique(src_rows["item_id"].to_numpy(dtype=object).astype(str)).astype(object)
    tgt_items = np.unique(tgt_rows["item_id"].to_numpy(dtype=object).astype(str)).astype(object)
    src = _binary(users.get_indexer(src_rows["user_id"].astype(str)),
                  pd.Index(src_items).get_indexer(src_rows["item_id"].astype(str)),
                  (len(user_ids), len(src_items)))
    tgt = _binary(users.get_indexer(tgt_rows["user_id"].astype(str)),
                  pd.Index(tgt_items).get_indexer(tgt_rows["item_id"].astype(str)),
                  (len(user_ids), len(tgt_items)))
    return SourceTargetMatrices(user_ids, src_items, tgt_items, src, tgt)


def top_n_per_row(matrix: np.ndarray | sp.spmatrix, n: int) -> sp.csr_matrix:
    """csr float32 keeping the ``n`` largest-magnitude entries of each row (ties: lower
    column first); zeros are dropped. ``matrix``: ``(rows, cols)`` dense or sparse."""
    if n < 1:
        raise ValueError(f"top_n must be >= 1, got {n}")
    if not sp.issparse(matrix):
        dense = np.asarray(matrix, dtype=np.float32)
        return _stacked([_top_n_dense(dense[lo:lo + _DENSE_ROWS], n)
                         for lo in range(0, dense.shape[0], _DENSE_ROWS)], dense.shape)
    matrix = sp.csr_matrix(matrix, dtype=np.float32)
    matrix.eliminate_zeros()
    counts = np.diff(matrix.indptr)
    if (counts <= n).all():
        return matrix.sorted_indices()  # canonical, as the cut paths' results are
    n_rows, n_cols = matrix.shape
    if matrix.nnz >= _DENSE_SHARE * n_rows * n_cols:
        # dense enough (e.g. a two-hop product): row blocks densified, one partition per row
        step = max(1, _DENSE_CELLS // max(n_cols, 1))
        return _stacked([_top_n_dense(matrix[lo:lo + step].toarray(), n) for lo in range(0, n_rows, step)],
                        matrix.shape)
    rows, cols, vals = [], [], []
    for r in range(n_rows):  # only rows over n entries are cut
        lo, hi = matrix.indptr[r], matrix.indptr[r + 1]
        c, v = matrix.indices[lo:hi], matrix.data[lo:hi]
        if len(v) > n:
            keep = np.lexsort((c, -np.abs(v)))[:n]
            c, v = c[keep], v[keep]
        rows.append(np.full(len(c), r)); cols.append(c); vals.append(v)
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                         shape=matrix.shape, dtype=np.float32)


# a sparse matrix at least this dense is cut through dense row blocks of about
# _DENSE_CELLS cells (measured on Douban's matrices: the per-row sort is 3.5x slower
# at 58 % density, level at 31 %, 3x faster at 11 %); dense input goes in blocks of
# _DENSE_ROWS rows (bounds the temporary arrays)
_DENSE_SHARE = 0.3
_DENSE_CELLS = 1 << 22
_DENSE_ROWS = 1024


def _stacked(blocks: list[sp.csr_matrix], shape: tuple[int, int]) -> sp.csr_matrix:
    return sp.vstack(blocks, format="csr", dtype=np.float32) if blocks else sp.csr_matrix(shape, dtype=np.float32)


def _top_n_dense(block: np.ndarray, n: int) -> sp.csr_matrix:
    """``top_n_per_row`` of a dense ``(b, cols)`` float32 block."""
    n_rows, n_cols = block.shape
    if n >= n_cols:
        out = sp.csr_matrix(block, dtype=np.float32)
    else:
        keep = _top_n_columns(np.abs(block), n)  # (b, n), ascending per row
        vals = np.take_along_axis(block, keep, axis=1)
        out = sp.csr_matrix((vals.ravel(), keep.ravel(), np.arange(0, n_rows * n + 1, n)), shape=block.shape,
                            dtype=np.float32)
    out.eliminate_zeros()
    return out


def _top_n_columns(magnitude: np.ndarray, n: int) -> np.ndarray:
    """``(rows, n)`` columns of the ``n`` largest values per row, ascending, ties to the
    lower column (linear per row: a partition for the threshold, then a cumulative
    count of the ties, only in rows where some tie is left out)."""
    n_cols = magnitude.shape[1]
    threshold = np.partition(magnitude, n_cols - n, axis=1)[:, n_cols - n : n_cols - n + 1]  # (rows, 1) n-th largest
    above = magnitude > threshold
    tied = magnitude == threshold
    need = n - row_counts(above)  # (rows,) ties to take, lowest columns first
    take = above | tied
    cut = np.flatnonzero(row_counts(tied) > need)  # rows with more ties than places
    if len(cut):
        ties = tied[cut]
        take[cut] = above[cut] | (ties & (np.cumsum(ties, axis=1) <= need[cut, None]))
    return np.nonzero(take)[1].reshape(magnitude.shape[0], n)

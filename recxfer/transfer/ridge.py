"""``ridge``: a linear map from a user's source history to their target row, fit by
ridge regression on the overlapping users: the cold-start task itself as a
regression (``B = (S^T S + l2 I)^-1 S^T T``, ``S``/``T`` the overlapping users'
source/target rows). One eigendecomposition of the ``(n_src, n_src)`` Gram matrix
serves every ``l2`` (float64; peak memory about ``8 (2 n_src^2 + 3 n_src n_tgt)``
bytes); source catalogues above ``max_items`` are refused (``blend`` then leaves
ridge out).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from recxfer.transfer.ease import check_size
from recxfer.transfer.interactions import SourceTargetMatrices, top_n_per_row


@dataclass(frozen=True)
class RidgeConfig:
    """``l2`` chosen on validation from ``l2_grid`` when non-empty."""

    l2: float = 100.0
    l2_grid: tuple[float, ...] = (10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0)
    top_n: int = 200
    max_items: int = 8_000

    def __post_init__(self) -> None:
        if self.l2 <= 0 or any(v <= 0 for v in self.l2_grid):
            raise ValueError("l2 must be > 0")


def ridge_matrices(m: SourceTargetMatrices, l2_values: tuple[float, ...], top_n: int,
                   max_items: int) -> dict[float, sp.csr_matrix]:
    """``l2 -> (n_src, n_tgt)`` csr regression weights, ``top_n`` largest per row."""
    check_size(m.src.shape[1], max_items, "ridge")
    rows = m.overlap_rows
    if len(rows) == 0:
        raise ValueError("ridge: no user has rows in both domains")
    src, tgt = m.src[rows], m.tgt[rows]
    gram = torch.from_numpy((src.T @ src).toarray().astype(np.float64))  # (n_src, n_src)
    cross = torch.from_numpy((src.T @ tgt).toarray().astype(np.float64))  # (n_src, n_tgt)
    evals, evecs = torch.linalg.eigh(gram)
    projected = evecs.T @ cross  # (n_src, n_tgt)
    out = {}
    for l2 in l2_values:
        weights = evecs @ (projected / (evals + l2)[:, None])  # (n_src, n_tgt)
        out[l2] = top_n_per_row(weights.numpy().astype(np.float32), top_n)
    return out

"""``ease``: the closed-form linear item-item model (Steck, 2019) on the joint
source ∪ target item matrix; its source → target block scores a cold user's history.

``B = I - P / diag(P)`` with ``P = (X^T X + l2 I)^-1``; ``diag(B) = 0``. The dense
``(n, n)`` inverse needs ``8 n^2`` bytes and ``O(n^3)`` time for ``n`` joint items, so
catalogues above ``max_items`` are refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from recxfer.transfer.interactions import SourceTargetMatrices, top_n_per_row


@dataclass(frozen=True)
class EASEConfig:
    """``l2`` chosen on validation from ``l2_grid`` when non-empty; ``top_n`` target
    links kept per source item; ``max_items`` joint items at most."""

    l2: float = 300.0
    l2_grid: tuple[float, ...] = (30.0, 100.0, 300.0, 1000.0, 3000.0)
    top_n: int = 200
    max_items: int = 20_000

    def __post_init__(self) -> None:
        if self.l2 <= 0 or any(v <= 0 for v in self.l2_grid):
            raise ValueError("l2 must be > 0")
        for name in ("top_n", "max_items"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


class CatalogueTooLargeError(ValueError):
    """A closed-form method was asked to invert a matrix that does not fit."""


def check_size(n: int, max_items: int, method: str) -> None:
    """Refuse ``n`` items above ``max_items`` with the memory it would take."""
    if n > max_items:
        raise CatalogueTooLargeError(
            f"{method}: {n} items need a dense {n}x{n} inverse ({8 * n * n / 2**30:.1f} GiB); "
            f"the limit is max_items={max_items}: use itemknn or blend on this catalogue"
        )


def ease_matrices(m: SourceTargetMatrices, l2_values: tuple[float, ...], top_n: int,
                  max_items: int) -> dict[float, sp.csr_matrix]:
    """``l2 -> (n_src, n_tgt)`` csr source → target block of EASE's ``B`` (one Gram
    matrix and one eigendecomposition serve every ``l2``)."""
    n_src = m.src.shape[1]
    check_size(n_src + m.tgt.shape[1], max_items, "ease")
    joint = sp.hstack([m.src, m.tgt]).tocsr()
    gram = torch.from_numpy((joint.T @ joint).toarray().astype(np.float64))  # (n, n)
    evals, evecs = torch.linalg.eigh(gram)
    out = {}
    src_vecs, tgt_vecs = evecs[:n_src], evecs[n_src:]  # (n_src, n), (n_tgt, n)
    for l2 in l2_values:
        # only the source -> target block of P = (G + l2 I)^-1 and P's target diagonal
        inv_block = (src_vecs / (evals + l2)) @ tgt_vecs.T  # (n_src, n_tgt)
        inv_diag = ((tgt_vecs**2) / (evals + l2)).sum(dim=1)  # (n_tgt,)
        block = -inv_block / inv_diag[None, :]  # (n_src, n_tgt)
        out[l2] = top_n_per_row(block.numpy().astype(np.float32), top_n)
    return out

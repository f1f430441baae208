"""``itemknn``: cross-domain item-to-item cosine with shrinkage.

Over the joint user × (source ∪ target) binary matrix, the similarity of source item
``i`` and target item ``j`` is ``c_ij / (sqrt(n_i) sqrt(n_j) + shrink)`` where ``c_ij``
counts users with both and ``n_i`` users with ``i`` (all users count in ``n``; only
overlapping users link the catalogues). A cold user's target scores are their source
history times the kept ``top_n`` neighbours of each source item.

``user_alpha > 0`` weights each overlapping user's co-occurrences by
``|s_u|^-user_alpha`` (``|s_u|``: their number of source items), so a user with a
long source history, who links many items weakly, counts less than one with a short
one (the inverse-user-frequency weighting of neighbourhood methods). The ``itemknn``
baseline keeps 0; ``blend`` chooses it on validation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from recxfer.transfer.interactions import SourceTargetMatrices, top_n_per_row


@dataclass(frozen=True)
class ItemKNNConfig:
    """``shrink`` is chosen on validation from ``shrink_grid`` when that is non-empty;
    ``top_n`` target neighbours are kept per source item."""

    shrink: float = 100.0
    shrink_grid: tuple[float, ...] = (0.0, 10.0, 50.0, 100.0, 200.0, 500.0)
    top_n: int = 200
    user_alpha_grid: tuple[float, ...] = (0.0,)

    def __post_init__(self) -> None:
        if self.shrink < 0 or any(s < 0 for s in self.shrink_grid):
            raise ValueError("shrink must be >= 0")
        if not self.user_alpha_grid or any(a < 0 for a in self.user_alpha_grid):
            raise ValueError(f"user_alpha_grid must be non-empty and >= 0, got {self.user_alpha_grid}")
        if self.top_n < 1:
            raise ValueError(f"top_n must be >= 1, got {self.top_n}")


def itemknn_matrix(m: SourceTargetMatrices, shrink: float, top_n: int,
                   user_alpha: float = 0.0) -> sp.csr_matrix:
    """``(n_src, n_tgt)`` csr float32 shrunk cosine, ``top_n`` largest per source item."""
    n_src = np.asarray(m.src.sum(axis=0), dtype=np.float64).ravel()  # (n_src,)
    n_tgt = np.asarray(m.tgt.sum(axis=0), dtype=np.float64).ravel()  # (n_tgt,)
    weighted = sp.diags(m.user_weights(user_alpha)) @ m.tgt  # (n_users, n_tgt)
    co = sp.csr_matrix(m.src.T.tocsr() @ weighted)  # (n_src, n_tgt) weighted co-occurrence counts
    rows = np.repeat(np.arange(co.shape[0]), np.diff(co.indptr))  # (nnz,) each entry's row
    sim = co.data / (np.sqrt(n_src[rows]) * np.sqrt(n_tgt[co.indices]) + shrink)
    matrix = sp.csr_matrix((sim.astype(np.float32), co.indices, co.indptr), shape=co.shape)
    return top_n_per_row(matrix, top_n)

"""``userknn``: a cold user's target scores are the target rows of the overlapping
users, weighted by the cosine between source histories. With every neighbour kept it
is linear in the history: ``B = S^T diag(1 / |s_v|^alpha) T`` over overlapping users
``v`` (``alpha = 0.5``: cosine up to the query's own norm, which does not change its
ranking), so it is served like the item-to-item methods.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from recxfer.transfer.interactions import SourceTargetMatrices, top_n_per_row


@dataclass(frozen=True)
class UserKNNConfig:
    """``alpha`` normalises a neighbour by ``|s_v|^alpha``; ``top_n`` links kept."""

    alpha: float = 0.5
    top_n: int = 200

    def __post_init__(self) -> None:
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")
        if self.top_n < 1:
            raise ValueError(f"top_n must be >= 1, got {self.top_n}")


def userknn_matrix(m: SourceTargetMatrices, alpha: float, top_n: int) -> sp.csr_matrix:
    """``(n_src, n_tgt)`` csr float32."""
    rows = m.overlap_rows
    src, tgt = m.src[rows], m.tgt[rows]
    norm = np.asarray(src.sum(axis=1), dtype=np.float64).ravel() ** alpha  # (n_overlap,)
    weighted = sp.diags((1.0 / np.maximum(norm, 1e-12)).astype(np.float32)) @ tgt
    return top_n_per_row(src.T.tocsr() @ weighted, top_n)

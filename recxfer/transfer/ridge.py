"""``ridge``: a linear map from a user's source history to their target row, fit by
ridge regression on the overlapping users: the cold-start task itself as a
regression, ``B = (S^T S + l2 I)^-1 S^T T`` with ``S`` / ``T`` the overlapping users'
``(n_overlap, n_src)`` source / ``(n_overlap, n_tgt)`` target rows.

The same ``B`` has a dual (user-space) form, ``B = S^T (S S^T + l2 I)^-1 T``; the
solver takes whichever system is smaller (``min(n_overlap, n_src)``), so a large
source catalogue with a few thousand overlapping users is cheap. One float64
eigendecomposition serves every ``l2``: validation scores of a ``l2`` cost one
product, and only the chosen ``l2`` is materialised (``top_n`` per source item).
Systems above ``max_items`` rows are refused (``blend`` then leaves ridge out).

``user_alpha > 0`` makes it a weighted regression, user ``u``'s squared error
weighted by ``|s_u|^-user_alpha`` (as ``itemknn``'s user weights): ``B = (S^T W S +
l2 I)^-1 S^T W T``. The ``ridge`` baseline keeps 0; ``blend`` chooses it.
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
    """``l2`` chosen on validation from ``l2_grid`` when non-empty; ``max_items``
    bounds the solved system, ``min(n_overlap, n_src)``."""

    l2: float = 100.0
    l2_grid: tuple[float, ...] = (10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0)
    top_n: int = 200
    max_items: int = 6_000
    user_alpha_grid: tuple[float, ...] = (0.0,)

    def __post_init__(self) -> None:
        if self.l2 <= 0 or any(v <= 0 for v in self.l2_grid):
            raise ValueError("l2 must be > 0")
        for name in ("top_n", "max_items"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.user_alpha_grid or any(a < 0 for a in self.user_alpha_grid):
            raise ValueError(f"user_alpha_grid must be non-empty and >= 0, got {self.user_alpha_grid}")


class RidgeSolver:
    """The eigendecomposition behind ``B(l2)`` for every ``l2``.

    With ``G = V diag(e) V^T`` the decomposed Gram matrix, ``B(l2) = L diag(1 / (e +
    l2)) R``: primal (``G = S^T S``) ``L = V`` ``(n_src, r)``, ``R = V^T S^T T``
    ``(r, n_tgt)``; dual (``G = S S^T``) ``L = S^T V`` ``(n_src, r)``, ``R = V^T T``.
    """

    def __init__(self, m: SourceTargetMatrices, max_items: int, user_alpha: float = 0.0) -> None:
        rows = m.overlap_rows
        if len(rows) == 0:
            raise ValueError("ridge: no user has rows in both domains")
        root_w = sp.diags(np.sqrt(m.user_weights(user_alpha)[rows]))  # W^(1/2) over overlapping users
        src, tgt = root_w @ m.src[rows], root_w @ m.tgt[rows]  # (n_ov, n_src), (n_ov, n_tgt)
        self.dual = src.shape[0] < src.shape[1]
        check_size(min(src.shape), max_items, "ridge")
        if self.dual:
            gram = (src @ src.T).toarray()  # (n_ov, n_ov)
        else:
            gram = (src.T @ src).toarray()  # (n_src, n_src)
        evals, evecs = torch.linalg.eigh(torch.from_numpy(gram.astype(np.float64)))
        self.evals = evals  # (r,)
        if self.dual:
            self.left = torch.from_numpy(src.T.toarray().astype(np.float64)) @ evecs  # (n_src, r)
            self.right = evecs.T @ torch.from_numpy(tgt.toarray().astype(np.float64))  # (r, n_tgt)
        else:
            cross = (src.T @ tgt).toarray().astype(np.float64)  # (n_src, n_tgt)
            self.left = evecs  # (n_src, r)
            self.right = evecs.T @ torch.from_numpy(cross)  # (r, n_tgt)

    def _right(self, l2: float) -> torch.Tensor:
        return self.right / (self.evals + l2)[:, None]  # (r, n_tgt)

    def scores(self, hist: sp.spmatrix, l2: float) -> np.ndarray:
        """``(n, n_tgt)`` float32 ``hist @ B(l2)`` (no ``top_n`` cut); ``hist``:
        ``(n, n_src)`` sparse."""
        left = torch.from_numpy(sp.csr_matrix(hist, dtype=np.float64) @ self.left.numpy())  # (n, r)
        return (left @ self._right(l2)).numpy().astype(np.float32)

    def matrix(self, l2: float, top_n: int) -> sp.csr_matrix:
        """``(n_src, n_tgt)`` csr float32 ``B(l2)``, ``top_n`` largest per source item
        (built 2048 source rows at a time)."""
        right = self._right(l2)
        blocks = [top_n_per_row((self.left[i:i + 2048] @ right).numpy().astype(np.float32), top_n)
                  for i in range(0, self.left.shape[0], 2048)]
        return sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix((0, right.shape[1]), dtype=np.float32)


def ridge_matrices(m: SourceTargetMatrices, l2_values: tuple[float, ...], top_n: int,
                   max_items: int, user_alpha: float = 0.0) -> dict[float, sp.csr_matrix]:
    """``l2 -> (n_src, n_tgt)`` csr regression weights, ``top_n`` largest per row."""
    solver = RidgeSolver(m, max_items, user_alpha)
    return {l2: solver.matrix(l2, top_n) for l2 in l2_values}

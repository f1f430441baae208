"""``ease``: the closed-form linear item-item model (Steck, 2019) on the joint
source ∪ target item matrix; its source → target block scores a cold user's history.

``B = I - P / diag(P)`` with ``P = (X^T X + l2 I)^-1``; ``diag(B) = 0``. It is solved
in the smaller of two spaces: the items' (the ``(n, n)`` Gram ``X^T X`` of ``n`` joint
items) or, with fewer users than joint items, the users' (Woodbury:
``P = (I - X^T (X X^T + l2 I)^-1 X) / l2``, the ``(u, u)`` Gram of ``u`` users). One
eigendecomposition serves every ``l2`` either way; its dense matrix needs ``8 r^2``
bytes and ``O(r^3)`` time, ``r = min(n, u)``, so above ``max_items`` it is refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from recxfer.transfer.interactions import SourceTargetMatrices, top_n_per_row


@dataclass(frozen=True)
class EASEConfig:
    """``l2`` chosen on validation from ``l2_grid`` when non-empty; ``top_n`` target
    links kept per source item; ``max_items`` bounds the solved system (joint items
    or users, the smaller)."""

    l2: float = 300.0
    # up to 1e5: Douban's dense users want the strong end (valid, seed 0: books->music
    # 0.0494 at 3000 -> 0.0540 at 1e4, music->books 0.0642 -> 0.0707 at 1e5); one
    # product per value once the system is decomposed
    l2_grid: tuple[float, ...] = (30.0, 100.0, 300.0, 1000.0, 3000.0, 10_000.0, 30_000.0, 100_000.0)
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


def check_size(n: int, max_items: int, method: str, unit: str = "items") -> None:
    """Refuse a dense ``n x n`` system above ``max_items`` with the memory it would
    take; ``unit`` names what ``n`` counts (``"items"``, ``"users"``)."""
    if n > max_items:
        raise CatalogueTooLargeError(
            f"{method}: {n} {unit} need a dense {n}x{n} inverse ({8 * n * n / 2**30:.1f} GiB); "
            f"the limit is max_items={max_items}: use itemknn or blend on this catalogue"
        )


def ease_matrices(m: SourceTargetMatrices, l2_values: tuple[float, ...], top_n: int,
                  max_items: int, space: str = "auto") -> dict[float, sp.csr_matrix]:
    """``l2 -> (n_src, n_tgt)`` csr source → target block of EASE's ``B``, the
    ``top_n`` largest magnitudes per source item.

    ``space``: ``"primal"`` (the joint items' Gram), ``"dual"`` (the users' Gram: the
    same ``B`` by Woodbury) or ``"auto"``, the smaller one; ``max_items`` bounds its
    size. Only the block and ``P``'s target diagonal are formed, never ``P``."""
    if space not in ("auto", "primal", "dual"):
        raise ValueError(f"space must be 'auto', 'primal' or 'dual', got {space!r}")
    joint = sp.hstack([m.src, m.tgt]).tocsr()
    joint = joint[np.diff(joint.indptr) > 0]  # (u, n) users with a row: the others add nothing
    n_src, (n_users, n_items) = m.src.shape[1], joint.shape
    dual = n_users < n_items if space == "auto" else space == "dual"
    if dual:
        check_size(n_users, max_items, "ease", "users")
        if n_users * n_items > max_items**2:  # Y = U^T X is (u, n) dense: no larger than the primal's limit
            raise CatalogueTooLargeError(
                f"ease: {n_users} users x {n_items} joint items need a dense {n_users}x{n_items} "
                f"projection ({8 * n_users * n_items / 2**30:.1f} GiB); the limit is max_items^2="
                f"{max_items**2}: use itemknn or blend on this catalogue")
        blocks = _dual_blocks(joint, n_src, l2_values)
    else:
        check_size(n_items, max_items, "ease")
        blocks = _primal_blocks(joint, n_src, l2_values)
    out: dict[float, sp.csr_matrix] = {}
    for l2, chunks in blocks:
        parts = [top_n_per_row(chunk.numpy().astype(np.float32), top_n) for chunk in chunks]
        out[l2] = sp.vstack(parts, format="csr")
    return out


# Source rows of the block formed at once: bounds a dense chunk to _CHUNK x n_tgt floats.
_CHUNK = 2048
Blocks = Iterator[tuple[float, Iterator[torch.Tensor]]]


def _primal_blocks(joint: sp.csr_matrix, n_src: int, l2_values: tuple[float, ...]) -> Blocks:
    """``(l2, chunks)`` pairs, ``chunks`` the ``(n_src, n_tgt)`` block of ``B`` as
    float64 row chunks, from ``G = X^T X = V diag(e) V^T``: ``P_st = sum_k V_sk V_tk /
    (e_k + l2)``, ``B_st = -P_st / P_tt`` (the block is at most ``n^2`` floats: one chunk)."""
    gram = torch.from_numpy((joint.T @ joint).toarray().astype(np.float64))  # (n, n)
    evals, evecs = torch.linalg.eigh(gram)
    src_vecs, tgt_vecs = evecs[:n_src], evecs[n_src:]  # (n_src, n), (n_tgt, n)
    for l2 in l2_values:
        inv_block = (src_vecs / (evals + l2)) @ tgt_vecs.T  # (n_src, n_tgt) P's block
        inv_diag = ((tgt_vecs**2) / (evals + l2)).sum(dim=1)  # (n_tgt,) P's target diagonal
        yield l2, iter([-inv_block / inv_diag[None, :]])


def _dual_blocks(joint: sp.csr_matrix, n_src: int, l2_values: tuple[float, ...]) -> Blocks:
    """The same pairs from ``K = X X^T = U diag(e) U^T`` and ``Y = U^T X``: off the
    diagonal ``l2 P_st = -sum_k Y_ks Y_kt / (e_k + l2)``, on it ``l2 P_tt = 1 -
    sum_k Y_kt^2 / (e_k + l2)``, so ``B_st = (Y_s^T W Y_t) / (1 - Y_t^T W Y_t)``,
    ``W = diag(1 / (e + l2))``; the block in chunks of ``_CHUNK`` source rows (its
    ``n_src x n_tgt`` is not bounded by the users' system)."""
    gram = torch.from_numpy((joint @ joint.T).toarray().astype(np.float64))  # (u, u)
    evals, evecs = torch.linalg.eigh(gram)
    proj = torch.from_numpy(joint.T.tocsr().astype(np.float64) @ evecs.numpy()).T  # (u, n) Y
    src_proj, tgt_proj = proj[:, :n_src], proj[:, n_src:]  # (u, n_src), (u, n_tgt)
    for l2 in l2_values:
        weights = 1.0 / (evals + l2)  # (u,)
        weighted = src_proj * weights[:, None]  # (u, n_src)
        diag = 1.0 - (tgt_proj**2 * weights[:, None]).sum(dim=0)  # (n_tgt,) l2 P_tt > 0
        yield l2, ((weighted[:, i:i + _CHUNK].T @ tgt_proj) / diag[None, :]  # (chunk, n_tgt)
                   for i in range(0, n_src, _CHUNK))

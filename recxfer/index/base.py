"""The item-index interface shared by every backend, and exclusion helpers."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from typing import ContextManager, Protocol

import numpy as np

from recxfer.types import SearchResult


class ItemIndex(Protocol):
    """Maximum-inner-product search over a fixed item table."""

    @property
    def ntotal(self) -> int:
        """Number of items."""

    @property
    def dim(self) -> int:
        """Embedding dimension."""

    def search(
        self, queries: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None = None
    ) -> SearchResult:
        """Top-``k`` items per query.

        Args:
            queries: ``(n, d)`` float32.
            k: results wanted per query, ``k >= 1``.
            exclude: ``n`` arrays of item positions that must not be returned.

        Returns:
            ``(n, k)`` positions and scores, best first; when fewer than ``k``
            admissible items exist the row is padded with ``-1`` / ``-inf``.
        """


def check_search_args(
    queries: np.ndarray, k: int, dim: int, exclude: Sequence[np.ndarray] | None
) -> np.ndarray:
    """Validate search arguments; return ``queries`` as C-contiguous float32 ``(n, d)``."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if queries.ndim != 2 or queries.shape[1] != dim:
        raise ValueError(f"queries must be (n, {dim}), got {queries.shape}")
    if exclude is not None and len(exclude) != queries.shape[0]:
        raise ValueError(f"exclude has {len(exclude)} rows for {queries.shape[0]} queries")
    return queries


# The largest k (and IVF nprobe) one faiss GPU search takes (faiss's
# GPU_MAX_SELECTION_K); beyond it the GPU search fails.
FAISS_GPU_MAX_K = 2048


def device_lock(on_device: bool) -> ContextManager[object]:
    """What an index holds around each search: a ``threading.Lock`` when it lives
    on a GPU (faiss GPU indexes are not thread-safe, and one device serves one
    search at a time anyway), else a no-op, so CPU searches stay concurrent."""
    return threading.Lock() if on_device else contextlib.nullcontext()


_BROADCAST_BUDGET = 1 << 22  # comparisons done at once by drop_excluded (4 MiB of bools)


def drop_excluded(
    idx: np.ndarray, scores: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None
) -> SearchResult:
    """Keep, per row, the first ``k`` results of ``(n, k_fetch)`` candidates that are
    not excluded (and not ``-1``), padding with ``-1`` / ``-inf``."""
    n = idx.shape[0]
    keep = idx >= 0  # (n, k_fetch)
    width = max((len(e) for e in exclude), default=0) if exclude is not None else 0
    if width and n * idx.shape[1] * width <= _BROADCAST_BUDGET:
        # One broadcast comparison against the exclusions padded to (n, width):
        # much faster than a np.isin call per row for serving-size batches.
        banned = np.full((n, width), -2, dtype=np.int64)  # -2 matches no position
        for row, items in enumerate(exclude):
            banned[row, : len(items)] = items
        keep &= ~(idx[:, :, None] == banned[:, None, :]).any(axis=2)  # (n, k_fetch)
    elif width:
        for row, items in enumerate(exclude):
            if len(items):
                keep[row] &= ~np.isin(idx[row], items)
    # Stable sort puts kept candidates first, in their original (best-first) order.
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # (n, k')
    out_idx = np.take_along_axis(idx, order, axis=1)
    out_scores = np.take_along_axis(scores, order, axis=1).astype(np.float32)
    kept = np.take_along_axis(keep, order, axis=1)
    out_idx = np.where(kept, out_idx, -1).astype(np.int64)
    out_scores = np.where(kept, out_scores, -np.inf).astype(np.float32)
    if out_idx.shape[1] < k:  # catalogue smaller than k
        pad = k - out_idx.shape[1]
        out_idx = np.pad(out_idx, ((0, 0), (0, pad)), constant_values=-1)
        out_scores = np.pad(out_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    return SearchResult(out_idx.reshape(n, k), out_scores.reshape(n, k))


def fetch_size(k: int, ntotal: int, exclude: Sequence[np.ndarray] | None) -> int:
    """How many candidates to fetch so that ``k`` remain after exclusion."""
    extra = max((len(e) for e in exclude), default=0) if exclude is not None else 0
    return max(1, min(ntotal, k + extra))

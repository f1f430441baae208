"""Exact maximum-inner-product search with torch (CPU, or CUDA when present).

This is the reference every approximate index is checked against, and the GPU
path on hosts where faiss has no GPU build (``device="cuda"``: the scores and
the top-k stay on the device, one search at a time per index).

torch is imported on first use, not with this module: a server answering from a
faiss index never loads it (~150 MB of private memory in each server process).
"""

from __future__ import annotations

import glob
import sys
import warnings
from collections.abc import Sequence

import numpy as np

from recxfer.index.base import check_search_args, device_lock, drop_excluded, fetch_size
from recxfer.types import SearchResult


SCORE_BUDGET = 1 << 26  # floats of scores held at once by default (256 MiB)


def cuda_available() -> bool:
    """Whether torch sees a CUDA device. On Linux without an NVIDIA device node
    (``/dev/nvidia*``) there is none, and torch is not imported to be asked."""
    if "torch" not in sys.modules and sys.platform.startswith("linux") and not glob.glob("/dev/nvidia*"):
        return False
    import torch

    return bool(torch.cuda.is_available())


class ExactIndex:
    """Brute-force top-k: ``scores = queries @ items.T`` in chunks, then ``topk``."""

    def __init__(
        self, item_emb: np.ndarray, device: str = "auto", chunk: int | None = None,
        serialize: bool | None = None,
    ) -> None:
        """Args:
        item_emb: ``(n_items, d)`` float32.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``: the
            scores and the top-k are computed there, only the ``(n, k)`` results
            come back to the host.
        chunk: queries scored per step (bounds memory to ``chunk * n_items``
            floats); by default as many as fit in ``SCORE_BUDGET`` floats (256 MiB),
            at most 4096 and at least 1.
        serialize: one search at a time (a per-index lock, as for every GPU
            index); by default on CUDA only, CPU searches run concurrently.
        """
        import torch

        if item_emb.ndim != 2 or item_emb.shape[0] == 0:
            raise ValueError(f"item_emb must be a non-empty (n, d) array, got {item_emb.shape}")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        with warnings.catch_warnings():
            # A read-only (memory-mapped) table is shared, not copied, on CPU; the
            # index only reads it.
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            self._items = torch.as_tensor(
                np.ascontiguousarray(item_emb, dtype=np.float32), device=self.device
            )  # (I, d)
        self._chunk = chunk or max(1, min(4096, SCORE_BUDGET // self.ntotal))
        self.on_gpu = self.device.type == "cuda"
        self._lock = device_lock(self.on_gpu if serialize is None else serialize)

    @property
    def ntotal(self) -> int:
        return int(self._items.shape[0])

    @property
    def dim(self) -> int:
        return int(self._items.shape[1])

    def search(
        self, queries: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None = None
    ) -> SearchResult:
        queries = check_search_args(queries, k, self.dim, exclude)
        if queries.shape[0] == 0:
            return SearchResult(np.zeros((0, k), np.int64), np.zeros((0, k), np.float32))
        k_fetch = fetch_size(k, self.ntotal, exclude)
        with self._lock:  # GPU: one search at a time; CPU: a no-op
            idx, scores = self._topk(queries, k_fetch)
        return drop_excluded(idx, scores, k, exclude)

    def _topk(self, queries: np.ndarray, k_fetch: int) -> tuple[np.ndarray, np.ndarray]:
        """``(n, k_fetch)`` positions and scores, best first, of ``(n, d)`` queries:
        chunked ``matmul`` + ``topk`` on the index's device, results copied to the host."""
        import torch

        all_idx, all_scores = [], []
        with torch.no_grad():
            for start in range(0, queries.shape[0], self._chunk):
                q = torch.as_tensor(queries[start : start + self._chunk], device=self.device)
                scores = q @ self._items.T  # (chunk, I)
                top = torch.topk(scores, k_fetch, dim=1)  # (chunk, k_fetch)
                all_idx.append(top.indices.cpu().numpy())
                all_scores.append(top.values.float().cpu().numpy())
        return np.concatenate(all_idx), np.concatenate(all_scores)

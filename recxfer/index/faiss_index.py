"""FAISS inner-product index built from a factory string; on GPU when faiss has one."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from recxfer.index.base import (
    FAISS_GPU_MAX_K,
    ItemIndex,
    check_search_args,
    device_lock,
    drop_excluded,
    fetch_size,
)
from recxfer.types import SearchResult

try:  # faiss comes as an extra (faiss-cpu / faiss-gpu)
    import faiss
except ImportError:  # pragma: no cover - depends on the install
    faiss = None

log = logging.getLogger(__name__)


def faiss_available() -> bool:
    """Whether the faiss package can be imported."""
    return faiss is not None


def faiss_gpu_count() -> int:
    """GPUs faiss can use (0 with faiss-cpu)."""
    if faiss is None:
        return 0
    return int(getattr(faiss, "get_num_gpus", lambda: 0)())


def set_search_threads(n: int) -> None:
    """Threads the faiss searches *of the calling thread* may use (OpenMP keeps the
    setting per thread: a thread started later gets the default, all cores);
    ``0`` restores the default.

    A server answering concurrent requests is best with 1 in each worker thread:
    requests already run in parallel, and an OpenMP team per single-query search
    costs more than it gives on a few (shared) cores.
    """
    if n < 0:
        raise ValueError(f"search threads must be >= 0, got {n}")
    if faiss is not None:
        faiss.omp_set_num_threads(n or os.cpu_count() or 1)
    if n:
        # BLAS (numpy's matmul in exact scoring and the transfer's embedding term)
        # keeps a process-wide pool: capped alike, else every request thread fans
        # out over all cores (measured 8.0 vs 2.6 ms for u @ V.T at 100k items).
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=n, user_api="blas")


class FaissIndex:
    """Wraps a faiss index with inner-product metric and seen-item exclusion.

    Exclusion over-fetches ``k + max(len(excluded))`` candidates, so a row gets
    exactly ``k`` results whenever the catalogue has that many admissible items.

    On a GPU: searches of one index are serialised by a lock (faiss GPU indexes
    are not thread-safe); a search fetching more than ``FAISS_GPU_MAX_K``
    candidates (faiss GPU's limit) goes to ``large_k_index`` when one is set
    (``load_index`` sets the torch exact index when the serve limits can get
    there), else to the CPU copy of the index, which has no such limit. An IVF
    index whose ``nprobe`` exceeds the limit stays on CPU.

    Attributes:
        on_gpu: the index is searched on a GPU.
        large_k_index: searched instead of the GPU index past ``FAISS_GPU_MAX_K``.
    """

    def __init__(self, index: "faiss.Index", factory: str, use_gpu: bool = False) -> None:
        if faiss is None:
            raise RuntimeError("faiss is not installed: install recxfer[cpu] or recxfer[gpu]")
        self.factory = factory
        self._cpu_index = index
        self._index = index
        self.large_k_index: ItemIndex | None = None
        if use_gpu and faiss_gpu_count() > 0:
            nprobe = _nprobe(index)
            if nprobe > FAISS_GPU_MAX_K:
                log.warning("faiss index %r stays on CPU: nprobe %d is over faiss GPU's limit "
                            "of %d", factory, nprobe, FAISS_GPU_MAX_K)
            else:
                try:
                    self._index = faiss.index_cpu_to_all_gpus(index)
                except RuntimeError as exc:  # e.g. HNSW has no GPU implementation
                    log.warning("faiss index %r stays on CPU: %s", factory, exc)
        self.on_gpu = self._index is not index
        self._lock = device_lock(self.on_gpu)

    @classmethod
    def build(
        cls, item_emb: np.ndarray, factory: str = "Flat", use_gpu: bool = True, params: str = ""
    ) -> "FaissIndex":
        """Build from ``(n_items, d)`` float32 embeddings; trains the index if needed.

        Args:
            params: faiss search parameters, e.g. ``"nprobe=16"`` (IVF) or
                ``"efSearch=128"`` (HNSW); stored in the index, so ``save``/``load``
                keep them.
        """
        if faiss is None:
            raise RuntimeError("faiss is not installed: install recxfer[cpu] or recxfer[gpu]")
        items = np.ascontiguousarray(item_emb, dtype=np.float32)
        if items.ndim != 2 or items.shape[0] == 0:
            raise ValueError(f"item_emb must be a non-empty (n, d) array, got {items.shape}")
        index = faiss.index_factory(items.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:
            index.train(items)
        index.add(items)
        if params:
            faiss.ParameterSpace().set_index_parameters(index, params)
        return cls(index, factory, use_gpu)

    @classmethod
    def load(
        cls, path: str | Path, factory: str, use_gpu: bool = True, mmap: bool = False
    ) -> "FaissIndex":
        """Read an index written by ``save``.

        Args:
            mmap: map the index's vectors from the file (``IO_FLAG_MMAP_IFC``, faiss
                >= 1.9; read-only: serving never adds to an index) so that processes
                serving one file share one copy in the page cache. Where faiss has
                no such flag or refuses it for this index type, it is read as usual.
        """
        if faiss is None:
            raise RuntimeError("faiss is not installed: install recxfer[cpu] or recxfer[gpu]")
        flag = getattr(faiss, "IO_FLAG_MMAP_IFC", None) if mmap else None
        if flag is not None:
            try:
                return cls(faiss.read_index(str(path), flag), factory, use_gpu)
            except RuntimeError as exc:
                log.debug("faiss index %s cannot be mapped, reading it: %s", path, exc)
        return cls(faiss.read_index(str(path)), factory, use_gpu)

    def save(self, path: str | Path) -> None:
        """Write the (CPU copy of the) index to ``path``."""
        faiss.write_index(self._cpu_index, str(path))

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    @property
    def dim(self) -> int:
        return int(self._index.d)

    def search(
        self, queries: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None = None
    ) -> SearchResult:
        queries = check_search_args(queries, k, self.dim, exclude)
        if queries.shape[0] == 0:
            return SearchResult(np.zeros((0, k), np.int64), np.zeros((0, k), np.float32))
        k_fetch = fetch_size(k, self.ntotal, exclude)
        if self.on_gpu and k_fetch > FAISS_GPU_MAX_K:  # past what faiss GPU searches
            if self.large_k_index is not None:
                return self.large_k_index.search(queries, k, exclude)
            scores, idx = self._cpu_index.search(queries, k_fetch)  # CPU: concurrent, no limit
        else:
            with self._lock:  # GPU: one search at a time; CPU: a no-op
                scores, idx = self._index.search(queries, k_fetch)  # (n, k_fetch) each
        return drop_excluded(idx.astype(np.int64), scores, k, exclude)


def _nprobe(index: "faiss.Index") -> int:
    """The IVF ``nprobe`` of ``index`` (0 when it is not an IVF index)."""
    try:
        ivf = faiss.extract_index_ivf(index)
    except (RuntimeError, AttributeError, TypeError):  # not an IVF index
        return 0
    return int(getattr(ivf, "nprobe", 0) or 0)

"""Item indexes: FAISS (factory strings, GPU when present) and an exact torch reference."""

from __future__ import annotations

import numpy as np

from recxfer.index.base import ItemIndex
from recxfer.index.exact import ExactIndex
from recxfer.index.faiss_index import FaissIndex, faiss_available, faiss_gpu_count


def build_index(item_emb: np.ndarray, factory: str = "Flat", backend: str = "auto") -> ItemIndex:
    """Build an index over ``(n_items, d)`` embeddings.

    Args:
        factory: faiss factory string (``"Flat"``, ``"IVF256,Flat"``, ``"HNSW32"``...).
        backend: ``"faiss"``, ``"exact"`` (torch) or ``"auto"`` (faiss when
            installed, else exact torch search, which uses CUDA when present).
    """
    if backend == "auto":
        backend = "faiss" if faiss_available() else "exact"
    if backend == "faiss":
        return FaissIndex.build(item_emb, factory)
    if backend == "exact":
        return ExactIndex(item_emb)
    raise ValueError(f"unknown index backend {backend!r}; use 'faiss', 'exact' or 'auto'")


__all__ = [
    "ExactIndex",
    "FaissIndex",
    "ItemIndex",
    "build_index",
    "faiss_available",
    "faiss_gpu_count",
]

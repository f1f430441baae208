"""Item indexes: FAISS (factory strings, GPU when present) and an exact torch reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recxfer.index.base import ItemIndex
from recxfer.index.dense_topk import topk_dense
from recxfer.index.exact import ExactIndex, cuda_available
from recxfer.index.faiss_index import (
    FaissIndex,
    faiss_available,
    faiss_gpu_count,
    set_search_threads,
)
from recxfer.index.filtering import topk_among
from recxfer.index.recall import index_recall, recall_vs_exact

EXACT_FACTORIES = frozenset({"Flat", "IDMap,Flat"})


def build_index(
    item_emb: np.ndarray, factory: str = "Flat", backend: str = "auto", params: str = ""
) -> ItemIndex:
    """Build an index over ``(n_items, d)`` embeddings.

    Args:
        factory: faiss factory string (``"Flat"``, ``"IVF256,Flat"``, ``"HNSW32"``...).
        backend: ``"faiss"``, ``"exact"`` (torch) or ``"auto"`` (faiss when
            installed, else exact torch search, which uses CUDA when present).
        params: faiss search parameters kept in the index (``"nprobe=16"``).
    """
    if backend == "auto":
        backend = "faiss" if faiss_available() else "exact"
    if backend == "faiss":
        return FaissIndex.build(item_emb, factory, params=params)
    if backend == "exact":
        return ExactIndex(item_emb)
    raise ValueError(f"unknown index backend {backend!r}; use 'faiss', 'exact' or 'auto'")


def load_index(
    path: str | Path | None, factory: str, item_emb: np.ndarray, device: str = "auto",
    mmap: bool = False,
) -> ItemIndex:
    """The index to serve ``(n_items, d)`` ``item_emb`` with.

    With ``device="auto"``: a stored faiss index goes to the GPU when faiss has a
    GPU build; where it has none but torch sees CUDA, an exact (``Flat``) index is
    served by torch exact top-k on CUDA instead; otherwise the stored index runs
    on CPU. Without a stored index (or without faiss), exact torch search.
    ``device="cpu"`` keeps everything on CPU. ``mmap``: a stored faiss index is
    mapped from its file where faiss can (``FaissIndex.load``).
    """
    if device not in ("auto", "cpu"):
        raise ValueError(f"unknown index device {device!r}; use 'auto' or 'cpu'")
    gpu = device == "auto"
    if path is not None and faiss_available():
        if gpu and faiss_gpu_count() == 0 and cuda_available() and factory in EXACT_FACTORIES:
            return ExactIndex(item_emb, device="cuda")
        return FaissIndex.load(path, factory, use_gpu=gpu, mmap=mmap)
    return ExactIndex(item_emb, device="auto" if gpu else "cpu")


__all__ = [
    "EXACT_FACTORIES",
    "ExactIndex",
    "FaissIndex",
    "ItemIndex",
    "build_index",
    "cuda_available",
    "faiss_available",
    "faiss_gpu_count",
    "index_recall",
    "load_index",
    "recall_vs_exact",
    "set_search_threads",
    "topk_among",
    "topk_dense",
]

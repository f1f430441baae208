"""Item indexes: FAISS (factory strings, GPU when present) and an exact torch reference."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from recxfer.index.base import FAISS_GPU_MAX_K, ItemIndex
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
INDEX_DEVICES = ("auto", "cpu", "cuda")

log = logging.getLogger(__name__)


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
    mmap: bool = False, max_fetch: int = 1,
) -> ItemIndex:
    """The index to serve ``(n_items, d)`` ``item_emb`` with.

    With ``device="auto"``: a stored faiss index goes to the GPU when faiss has a
    GPU build; where it has none but torch sees CUDA, an exact (``Flat``) index is
    served by torch exact top-k on CUDA instead; otherwise the stored index runs
    on CPU. Without a stored index (or without faiss), exact torch search.
    ``device="cpu"`` keeps everything on CPU. ``device="cuda"`` requires a GPU:
    faiss's GPU build when it has one and takes the index, else torch exact
    top-k on CUDA for any factory (an approximate index is then searched
    exactly). ``mmap``: a stored faiss index is mapped from its file where faiss
    can (``FaissIndex.load``).

    ``max_fetch``: the most candidates one search may fetch (the serve limits:
    ``max_k`` + the longest exclusion). Past ``FAISS_GPU_MAX_K`` (faiss GPU's
    limit) on a faiss GPU index, such searches go to a torch exact index on
    CUDA (made here, when torch sees CUDA), else to the CPU copy of the index.

    Raises:
        ValueError: an unknown ``device``, or ``"cuda"`` on a host with no GPU.
    """
    if device not in INDEX_DEVICES:
        raise ValueError(f"unknown index device {device!r}; use 'auto', 'cpu' or 'cuda'")
    if device == "cuda" and faiss_gpu_count() == 0 and not cuda_available():
        raise ValueError("index device 'cuda': no GPU here (torch sees no CUDA device and "
                         "faiss has no GPU build); use 'auto' or 'cpu'")
    gpu = device != "cpu"
    if path is None or not faiss_available():
        return ExactIndex(item_emb, device=device)
    if gpu and faiss_gpu_count() == 0 and cuda_available() and (
        factory in EXACT_FACTORIES or device == "cuda"
    ):
        if factory not in EXACT_FACTORIES:
            log.info("index %r searched exactly by torch on CUDA (faiss has no GPU build)", factory)
        return ExactIndex(item_emb, device="cuda")
    index = FaissIndex.load(path, factory, use_gpu=gpu, mmap=mmap)
    if device == "cuda" and not index.on_gpu and cuda_available():
        log.info("index %r searched exactly by torch on CUDA (faiss GPU does not take it)", factory)
        return ExactIndex(item_emb, device="cuda")
    if index.on_gpu and max_fetch > FAISS_GPU_MAX_K:
        if cuda_available():
            index.large_k_index = ExactIndex(item_emb, device="cuda")
        log.info(
            "searches fetching over %d candidates (faiss GPU's limit; up to %d here) go to %s",
            FAISS_GPU_MAX_K, max_fetch,
            "torch exact top-k on CUDA" if index.large_k_index is not None else "the CPU index",
        )
    return index


__all__ = [
    "EXACT_FACTORIES",
    "ExactIndex",
    "FAISS_GPU_MAX_K",
    "INDEX_DEVICES",
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

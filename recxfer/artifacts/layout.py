"""Where each domain's tables live inside an artifact, and how they are (de)serialised.

Per domain ``D`` (no pickle anywhere: ``.npy`` loaded with ``allow_pickle=False``,
ids as JSON lists of strings)::

    domains/D/user_ids.json      (n_users,) external ids
    domains/D/user_emb.npy       (n_users, d) float32
    domains/D/user_origin.npy    (n_users,) uint8: 0 warm, 1 transfer
    domains/D/item_ids.json      (n_items,) external ids
    domains/D/item_emb.npy       (n_items, d) float32
    domains/D/item_popularity.npy (n_items,) int64
    domains/D/seen_indptr.npy    (n_users + 1,) int64
    domains/D/seen_indices.npy   (nnz,) int64
    domains/D/index.faiss        optional, written by the index stage

Per target ``T`` with an item-to-item transfer (``DomainTransfer``), aligned to the
source's and the target's item tables::

    transfer/T/meta.json         {"source", "names", "weights", "pop_weight", "embedding_weight"}
    transfer/T/popularity.npy    (n_tgt,) float32
    transfer/T/<name>_{indptr,indices,data}.npy   csr (n_src, n_tgt) per component
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from recxfer.artifacts.errors import ArtifactError
from recxfer.artifacts.store import Artifact
from recxfer.types import DomainEmbeddings, DomainTransfer, ItemToItemScorer, SeenItems, UserOrigin

_DOMAIN_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_ORIGINS = (UserOrigin.WARM.value, UserOrigin.TRANSFER.value)


def domain_dir(domain: str) -> str:
    """Relative folder of a domain's files.

    Raises:
        ValueError: a domain name unsafe as a folder name.
    """
    if not isinstance(domain, str) or not _DOMAIN_RE.fullmatch(domain):
        raise ValueError(f"domain name {domain!r} must match {_DOMAIN_RE.pattern}")
    return f"domains/{domain}"


def index_file(domain: str) -> str:
    """Relative path of a domain's faiss index."""
    return f"{domain_dir(domain)}/index.faiss"


def save_domain(folder: Path, emb: DomainEmbeddings) -> None:
    """Write ``emb`` under ``folder/domains/<domain>/``."""
    out = folder / domain_dir(emb.domain)
    out.mkdir(parents=True, exist_ok=True)
    (out / "user_ids.json").write_text(json.dumps([str(u) for u in emb.user_ids]))
    (out / "item_ids.json").write_text(json.dumps([str(i) for i in emb.item_ids]))
    origin = np.array([_ORIGINS.index(str(o)) for o in emb.user_origin], dtype=np.uint8)
    arrays = {
        "user_emb": np.ascontiguousarray(emb.user_emb, dtype=np.float32),
        "user_origin": origin,
        "item_emb": np.ascontiguousarray(emb.item_emb, dtype=np.float32),
        "item_popularity": emb.item_popularity.astype(np.int64),
        "seen_indptr": emb.seen.indptr.astype(np.int64),
        "seen_indices": emb.seen.indices.astype(np.int64),
    }
    for name, array in arrays.items():
        np.save(out / f"{name}.npy", array, allow_pickle=False)


def _load_ids(path: Path) -> np.ndarray:
    ids = json.loads(path.read_text())
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ArtifactError(f"{path}: expected a JSON list of string ids")
    return np.array(ids, dtype=object)


def load_domain(artifact: Artifact, domain: str, mmap: bool = False) -> DomainEmbeddings:
    """Read one domain's tables from a verified artifact.

    Args:
        mmap: map the ``.npy`` arrays read-only (``np.memmap``) instead of reading
            them: processes serving one artifact then share one copy in the page
            cache. Writing into them raises; callers that change them must copy.

    Raises:
        ArtifactError: a file is missing or its content is inconsistent.
    """
    base = domain_dir(domain)
    try:
        arrays = {
            name: _load_array(artifact.file(f"{base}/{name}.npy"), mmap)
            for name in (
                "user_emb", "user_origin", "item_emb", "item_popularity",
                "seen_indptr", "seen_indices",
            )
        }
        origin_codes = arrays["user_origin"]
        if origin_codes.dtype != np.uint8 or origin_codes.ndim != 1 or (
            origin_codes.size and origin_codes.max() >= len(_ORIGINS)
        ):
            raise ArtifactError(
                f"{artifact.path}: {domain}: user_origin must be 1-d uint8 codes < {len(_ORIGINS)}"
            )
        for name in ("user_emb", "item_emb"):
            if arrays[name].ndim != 2 or arrays[name].dtype != np.float32:
                raise ArtifactError(f"{artifact.path}: {domain}: {name} must be 2-d float32")
        return DomainEmbeddings(
            domain=domain,
            user_ids=_load_ids(artifact.file(f"{base}/user_ids.json")),
            user_emb=arrays["user_emb"],
            user_origin=np.array(_ORIGINS, dtype=object)[origin_codes],
            item_ids=_load_ids(artifact.file(f"{base}/item_ids.json")),
            item_emb=arrays["item_emb"],
            seen=SeenItems(arrays["seen_indptr"], arrays["seen_indices"]),
            item_popularity=arrays["item_popularity"],
        )
    except (ValueError, IndexError, OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{artifact.path}: domain {domain!r} cannot be loaded: {exc}") from exc


def _load_array(path: Path, mmap: bool) -> np.ndarray:
    """A ``.npy`` array, read or (``mmap``) mapped read-only."""
    return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)


def transfer_dir(target: str) -> str:
    """Relative folder of a target's item-to-item transfer."""
    return "transfer/" + domain_dir(target).split("/", 1)[1]


def save_transfer(folder: Path, transfer: DomainTransfer) -> None:
    """Write ``transfer`` under ``folder/transfer/<target>/``."""
    out = folder / transfer_dir(transfer.target)
    out.mkdir(parents=True, exist_ok=True)
    scorer = transfer.scorer
    for name, matrix in zip(scorer.names, scorer.matrices):
        if not _DOMAIN_RE.fullmatch(name):
            raise ValueError(f"component name {name!r} must match {_DOMAIN_RE.pattern}")
        csr = matrix.tocsr()
        np.save(out / f"{name}_indptr.npy", csr.indptr.astype(np.int64), allow_pickle=False)
        np.save(out / f"{name}_indices.npy", csr.indices.astype(np.int32), allow_pickle=False)
        np.save(out / f"{name}_data.npy", csr.data.astype(np.float32), allow_pickle=False)
    np.save(out / "popularity.npy", scorer.popularity.astype(np.float32), allow_pickle=False)
    (out / "meta.json").write_text(json.dumps({
        "source": transfer.source, "names": list(scorer.names),
        "weights": [float(w) for w in scorer.weights], "pop_weight": float(scorer.pop_weight),
        "embedding_weight": float(scorer.embedding_weight),
    }))


def load_transfer(
    artifact: Artifact, target: str, src_item_ids: np.ndarray, tgt_item_ids: np.ndarray,
    mmap: bool = False,
) -> DomainTransfer:
    """Read a target's transfer; its matrices must fit the two item tables.

    Args:
        mmap: map the csr arrays read-only (see ``load_domain``); a matrix whose
            indices are not canonical (sorted, no duplicates: scipy would fix them
            in place) is copied into memory instead.

    Raises:
        ArtifactError: a file is missing or inconsistent.
    """
    import scipy.sparse as sp

    base = transfer_dir(target)
    where = f"{artifact.path}: transfer into {target!r}"
    try:
        meta = json.loads(artifact.file(f"{base}/meta.json").read_text())
        names, weights = meta["names"], meta["weights"]
        if not (isinstance(names, list) and isinstance(weights, list) and len(names) == len(weights)):
            raise ArtifactError(f"{where}: meta.json names/weights must be lists of one length")
        shape = (len(src_item_ids), len(tgt_item_ids))
        matrices = []
        for name in names:
            parts = [_load_array(artifact.file(f"{base}/{name}_{p}.npy"), mmap)
                     for p in ("indptr", "indices", "data")]
            indptr, indices, data = parts
            if (indptr.shape != (shape[0] + 1,) or indptr[0] != 0 or indptr[-1] != len(indices)
                    or len(indices) != len(data) or np.any(np.diff(indptr) < 0)
                    or (len(indices) and (indices.min() < 0 or indices.max() >= shape[1]))):
                raise ArtifactError(f"{where}: component {name!r} does not fit the item tables {shape}")
            # copy=False: a mapped float32 ``data`` stays mapped (scipy keeps int32
            # ``indices`` as they are; only ``indptr``, n_src + 1 ints, may be converted).
            matrix = sp.csr_matrix((data.astype(np.float32, copy=False), indices, indptr), shape=shape)
            if mmap and not matrix.has_canonical_format:
                matrix = sp.csr_matrix((np.array(data, np.float32), np.array(indices), np.array(indptr)),
                                       shape=shape)
            matrices.append(matrix)
        popularity = _load_array(artifact.file(f"{base}/popularity.npy"), mmap)
        scorer = ItemToItemScorer(src_item_ids, tgt_item_ids, tuple(str(n) for n in names),
                                  tuple(matrices), tuple(float(w) for w in weights),
                                  popularity.astype(np.float32, copy=False), float(meta["pop_weight"]),
                                  float(meta.get("embedding_weight", 0.0)))
        return DomainTransfer(str(meta["source"]), target, scorer)
    except ArtifactError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{where} cannot be loaded: {exc}") from exc

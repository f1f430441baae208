"""Where each domain's tables live inside an artifact, and how they are (de)serialised.

No pickle anywhere: ``.npy`` is loaded with ``allow_pickle=False``. Per domain ``D``
(artifact formats 2 and 3, ``store.FORMAT``; 3 adds the transfer's ``dae`` files)::

    domains/D/tables.json         {"layout": 2, "tables": {name: artifact-relative path}}
    domains/D/user_ids.npy        (n_users,) |S<w> UTF-8 external ids, sorted } an ``IdTable``
    domains/D/user_ids_rows.npy   (n_users,) int64 row of each sorted id    }  (``ids.py``)
    domains/D/user_ids_pos.npy    (n_users,) int64 sorted position of each row }
    domains/D/user_emb.npy        (n_users, d) float32
    domains/D/user_origin.npy     (n_users,) uint8: 0 warm, 1 transfer
    domains/D/item_ids{,_rows,_pos}.npy   the item ``IdTable``
    domains/D/item_emb.npy        (n_items, d) float32
    domains/D/item_popularity.npy (n_items,) int64
    domains/D/seen_indptr.npy     (n_users + 1,) int64
    domains/D/seen_indices.npy    (nnz,) int64
    domains/D/index.faiss         optional, written by the index stage

``tables.json`` names the file of each table. The user table is stored once:
``save_domain`` points ``user_ids*`` (and ``user_emb``) at an
earlier domain's files when they hold the same ids (and the same embeddings)
byte for byte, as the shared encoder exports them for every domain. Readers
given one ``cache`` (``load_domain(..., cache=)``) then map each file once.

Format 1 artifacts (ids as JSON lists of strings ``user_ids.json`` /
``item_ids.json``, every table under its own domain, no ``tables.json``) are still
read, their id tables built in memory.

Per target ``T`` with an item-to-item transfer (``DomainTransfer``), aligned to the
source's and the target's item tables::

    transfer/T/meta.json         {"source", "names", "weights", "pop_weight", "embedding_weight",
                                  "dae_weight" (only with a dae term), "head", "head_size"
                                  (only with a head: a component's name and how many of its
                                  top items lead)}
    transfer/T/popularity.npy    (n_tgt,) float32
    transfer/T/<name>_{indptr,indices,data}.npy   csr (n_src, n_tgt) per component
    transfer/T/dae_{w_in,b_in,w_out,b_out}.npy  float32 (n_src, h), (h,), (n_tgt, h),
                                  (n_tgt,): the ``DAEScorer`` (``dae``), when present
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from recxfer.artifacts.errors import ArtifactError
from recxfer.artifacts.ids import SUFFIXES, IdTable
from recxfer.artifacts.store import Artifact
from recxfer.types import (
    DomainEmbeddings,
    DomainTransfer,
    DAEScorer,
    ItemToItemScorer,
    SeenItems,
    UserOrigin,
)

_DOMAIN_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_ORIGINS = (UserOrigin.WARM.value, UserOrigin.TRANSFER.value)
LAYOUT = 2  # the ``layout`` of tables.json (artifact format 2)
TABLES = "tables.json"
_ARRAYS = ("user_emb", "user_origin", "item_emb", "item_popularity", "seen_indptr", "seen_indices")
_ID_TABLES = ("user_ids", "item_ids")
# Every table a domain names in tables.json.
TABLE_NAMES = (*(f"{t}{suffix}" for t in _ID_TABLES for suffix in SUFFIXES), *_ARRAYS)


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


def _same_bytes(path: Path, array: np.ndarray) -> bool:
    """Whether ``path`` (a ``.npy``) holds ``array`` exactly (dtype, shape, bytes)."""
    try:
        stored = np.load(path, allow_pickle=False, mmap_mode="r")
    except (OSError, ValueError):
        return False
    if stored.dtype != array.dtype or stored.shape != array.shape:
        return False
    if not array.size:
        return True
    view = f"u{array.dtype.itemsize}" if array.dtype.itemsize in (1, 2, 4, 8) else None
    a, b = np.ascontiguousarray(stored), np.ascontiguousarray(array)
    if view is not None:
        return bool(np.array_equal(a.view(view), b.view(view)))
    return a.tobytes() == b.tobytes()


def _earlier_tables(folder: Path, domain: str) -> list[dict[str, str]]:
    """The ``tables`` of the domains already saved under ``folder`` (not ``domain``)."""
    out = []
    for file in sorted((folder / "domains").glob(f"*/{TABLES}")):
        if file.parent.name == domain:
            continue
        try:
            out.append(json.loads(file.read_text())["tables"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


def save_domain(folder: Path, emb: DomainEmbeddings) -> None:
    """Write ``emb`` under ``folder/domains/<domain>/`` (the format-2 layout; the
    user table shared with an earlier domain of ``folder`` when it is the same).

    Raises:
        ValueError: an unsafe domain name, or an id holding NUL.
        ArtifactError: duplicate user or item ids.
    """
    base = domain_dir(emb.domain)
    out = folder / base
    users = IdTable.from_ids(_as_list(emb.user_ids), f"domain {emb.domain!r}: user_ids")
    items = IdTable.from_ids(_as_list(emb.item_ids), f"domain {emb.domain!r}: item_ids")
    origin = np.array([_ORIGINS.index(str(o)) for o in emb.user_origin], dtype=np.uint8)
    arrays = {
        "user_emb": np.ascontiguousarray(emb.user_emb, dtype=np.float32),
        "user_origin": origin,
        "item_emb": np.ascontiguousarray(emb.item_emb, dtype=np.float32),
        "item_popularity": np.asarray(emb.item_popularity).astype(np.int64),
        "seen_indptr": np.asarray(emb.seen.indptr).astype(np.int64),
        "seen_indices": np.asarray(emb.seen.indices).astype(np.int64),
    }
    out.mkdir(parents=True, exist_ok=True)
    tables: dict[str, str] = {}
    user_tables = [f"user_ids{suffix}" for suffix in SUFFIXES]
    for earlier in _earlier_tables(folder, emb.domain):
        rels = [earlier.get(name) for name in user_tables]
        if not all(isinstance(rel, str) for rel in rels):
            continue
        if all(_same_bytes(folder / rel, array) for rel, array in zip(rels, users.arrays())):
            tables.update(zip(user_tables, rels))
            emb_rel = earlier.get("user_emb")
            if isinstance(emb_rel, str) and _same_bytes(folder / emb_rel, arrays["user_emb"]):
                tables["user_emb"] = emb_rel
            break
    if "user_ids" not in tables:
        for name in users.save(out, "user_ids"):
            tables[name[: -len(".npy")]] = f"{base}/{name}"
    for name in items.save(out, "item_ids"):
        tables[name[: -len(".npy")]] = f"{base}/{name}"
    for name, array in arrays.items():
        if name in tables:
            continue
        np.save(out / f"{name}.npy", array, allow_pickle=False)
        tables[name] = f"{base}/{name}.npy"
    (out / TABLES).write_text(json.dumps(
        {"layout": LAYOUT, "tables": {name: tables[name] for name in TABLE_NAMES}}, indent=1))


def _as_list(ids: Any) -> list:
    return ids.tolist() if hasattr(ids, "tolist") else list(ids)


def _load_ids(path: Path) -> np.ndarray:
    """A format-1 JSON list of string ids."""
    ids = json.loads(path.read_text())
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ArtifactError(f"{path}: expected a JSON list of string ids")
    return np.array(ids, dtype=object)


def _domain_tables(artifact: Artifact, domain: str) -> dict[str, str]:
    """``table name -> relative path`` of a format-2 domain (its ``tables.json``).

    Raises:
        ArtifactError: no or a malformed ``tables.json``, or it names a file the
            manifest does not list.
    """
    rel = f"{domain_dir(domain)}/{TABLES}"
    path = artifact.file(rel)
    try:
        entry = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: unreadable: {exc}") from exc
    if not isinstance(entry, dict) or entry.get("layout") != LAYOUT or not isinstance(entry.get("tables"), dict):
        raise ArtifactError(f"{path}: expected {{'layout': {LAYOUT}, 'tables': {{...}}}}")
    tables = entry["tables"]
    missing = [t for t in TABLE_NAMES if not isinstance(tables.get(t), str)]
    if missing:
        raise ArtifactError(f"{path}: names no file for {missing}")
    for name in TABLE_NAMES:
        if not tables[name].endswith(".npy"):
            raise ArtifactError(f"{path}: table {name!r} is not a .npy file: {tables[name]!r}")
        artifact.file(tables[name])  # listed (so checksummed and inside the artifact)
    return {name: tables[name] for name in TABLE_NAMES}


def load_domain(
    artifact: Artifact, domain: str, mmap: bool = False, id_tables: bool = False,
    cache: dict[str, Any] | None = None,
) -> DomainEmbeddings:
    """Read one domain's tables from a verified artifact.

    Args:
        mmap: map the ``.npy`` arrays read-only (``np.memmap``) instead of reading
            them: processes serving one artifact then share one copy in the page
            cache. Writing into them raises; callers that change them must copy.
        id_tables: give ``user_ids``/``item_ids`` as ``IdTable`` (row -> id and
            id -> row, mapped with ``mmap``; what serving uses) instead of ``(n,)``
            object arrays of ``str``.
        cache: artifact-relative path -> what was read from it, shared by the
            calls of one load, so a table several domains point at is read (or
            mapped) once and is one object.

    Raises:
        ArtifactError: a file is missing, truncated or its content is inconsistent
            (naming the file or the domain).
    """
    base = domain_dir(domain)
    cache = {} if cache is None else cache
    legacy = artifact.manifest.get("format") == 1
    try:
        if legacy:
            tables = {name: f"{base}/{name}.npy" for name in _ARRAYS}
        else:
            tables = _domain_tables(artifact, domain)
        arrays = {name: _cached_array(artifact, tables[name], mmap, cache) for name in _ARRAYS}
        origin_codes = arrays["user_origin"]
        if origin_codes.dtype != np.uint8 or origin_codes.ndim != 1 or (
            origin_codes.size and origin_codes.max() >= len(_ORIGINS)
        ):
            raise ArtifactError(
                f"{artifact.path}: domain {domain!r}: user_origin must be 1-d uint8 codes < {len(_ORIGINS)}"
            )
        for name in ("user_emb", "item_emb"):
            if arrays[name].ndim != 2 or arrays[name].dtype != np.float32:
                raise ArtifactError(f"{artifact.path}: domain {domain!r}: {name} must be 2-d float32")
        ids: dict[str, Any] = {}
        for name in _ID_TABLES:
            if legacy:
                rel = f"{base}/{name}.json"
                if rel not in cache:
                    cache[rel] = _load_ids(artifact.file(rel))
                ids[name] = (_legacy_table(cache, rel, f"{artifact.path}: domain {domain!r}: {name}")
                             if id_tables else cache[rel])
            else:
                table = _cached_table(artifact, [tables[f"{name}{suffix}"] for suffix in SUFFIXES],
                                      mmap, cache)
                ids[name] = table if id_tables else np.asarray(table)
        return DomainEmbeddings(
            domain=domain,
            user_ids=ids["user_ids"],
            user_emb=arrays["user_emb"],
            user_origin=np.array(_ORIGINS, dtype=object)[origin_codes],
            item_ids=ids["item_ids"],
            item_emb=arrays["item_emb"],
            seen=SeenItems(arrays["seen_indptr"], arrays["seen_indices"]),
            item_popularity=arrays["item_popularity"],
        )
    except (ValueError, IndexError, OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{artifact.path}: domain {domain!r} cannot be loaded: {exc}") from exc


def _cached_array(artifact: Artifact, rel: str, mmap: bool, cache: dict[str, Any]) -> np.ndarray:
    if rel not in cache:
        cache[rel] = _load_array(artifact.file(rel), mmap)
    return cache[rel]


def _cached_table(artifact: Artifact, rels: list[str], mmap: bool, cache: dict[str, Any]) -> IdTable:
    key = "|".join(rels)
    if key not in cache:
        cache[key] = IdTable.load([artifact.file(rel) for rel in rels], mmap,
                                  where=str(artifact.path / rels[0]))
    return cache[key]


def _legacy_table(cache: dict[str, Any], rel: str, where: str) -> IdTable:
    key = f"{rel}|table"
    if key not in cache:
        try:
            cache[key] = IdTable.from_ids(cache[rel].tolist(), where)
        except ValueError as exc:  # an id holding NUL
            raise ArtifactError(f"{where}: {exc}") from exc
    return cache[key]


def _load_array(path: Path, mmap: bool) -> np.ndarray:
    """A ``.npy`` array, read or (``mmap``) mapped read-only.

    Raises:
        ArtifactError: the file is not a plain ``.npy`` or holds fewer bytes than
            its header says (truncated), naming it.
    """
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (OSError, ValueError, EOFError) as exc:
        raise ArtifactError(f"{path}: cannot be read as a .npy array: {exc}") from exc


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
    meta = {
        "source": transfer.source, "names": list(scorer.names),
        "weights": [float(w) for w in scorer.weights], "pop_weight": float(scorer.pop_weight),
        "embedding_weight": float(scorer.embedding_weight),
    }
    if scorer.dae is not None:
        for part, array in scorer.dae.arrays.items():
            np.save(out / f"dae_{part}.npy", np.asarray(array, np.float32), allow_pickle=False)
        meta["dae_weight"] = float(scorer.dae_weight)
    if scorer.head_size:
        meta["head"], meta["head_size"] = scorer.head, int(scorer.head_size)
    (out / "meta.json").write_text(json.dumps(meta))


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
        dae = None
        if "dae_weight" in meta:  # written with a dae term; shapes checked by the scorer below
            dae = DAEScorer(**{f.name: _load_array(artifact.file(f"{base}/dae_{f.name}.npy"), mmap)
                               .astype(np.float32, copy=False) for f in dataclasses.fields(DAEScorer)})
        scorer = ItemToItemScorer(src_item_ids, tgt_item_ids, tuple(str(n) for n in names),
                                  tuple(matrices), tuple(float(w) for w in weights),
                                  popularity.astype(np.float32, copy=False), float(meta["pop_weight"]),
                                  float(meta.get("embedding_weight", 0.0)), dae,
                                  float(meta.get("dae_weight", 0.0)), str(meta.get("head", "")),
                                  int(meta.get("head_size", 0)))
        return DomainTransfer(str(meta["source"]), target, scorer)
    except ArtifactError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{where} cannot be loaded: {exc}") from exc

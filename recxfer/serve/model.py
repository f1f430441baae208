"""The serving model: an artifact's domains loaded for search. Read-only once built.

Every search path goes through ``DomainServing.search``, which answers many
queries of one domain with one index call (``BatchRecommend`` and ``Recommend``
share it), and restricts allow-listed queries to their candidates exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recxfer.artifacts import Artifact, ArtifactError, load_domain, read_artifact
from recxfer.index import ItemIndex, load_index, topk_among
from recxfer.serve.history import HistoryEncoder
from recxfer.types import DomainEmbeddings, UserOrigin

log = logging.getLogger(__name__)

POPULARITY = "popularity"  # user_origin of a popularity-fallback answer


class UnknownDomainError(KeyError):
    """The requested domain is not in the model."""


class UnknownUserError(KeyError):
    """The user has no embedding in the requested domain."""


class NoHistoryEncoderError(RuntimeError):
    """The artifact cannot embed a new history (its method is not inductive)."""


class UnknownItemError(KeyError):
    """The item is not in the requested domain."""


@dataclass(frozen=True)
class ItemFilter:
    """Restricts the items a query may return.

    Attributes:
        allow: external item ids that may be returned (``None``: every item);
            ids unknown to the domain are ignored.
        deny: external item ids never returned; unknown ids are ignored.
    """

    allow: tuple[str, ...] | None = None
    deny: tuple[str, ...] = ()


@dataclass(frozen=True)
class RecommendQuery:
    """One ``Recommend`` request, already validated by the caller (``k >= 1``)."""

    user_id: str
    domain: str
    k: int
    exclude_seen: bool = True
    item_filter: ItemFilter | None = None


@dataclass(frozen=True)
class Recommendation:
    """Top-k for one user: ``(k',)`` item ids and scores, best first (``k' <= k``).

    ``user_origin`` is ``"warm"``, ``"transfer"`` or ``"popularity"`` (unknown user
    answered by the popularity fallback; scores are then interaction counts).
    """

    item_ids: np.ndarray
    scores: np.ndarray
    user_origin: str


@dataclass(frozen=True)
class SimilarItems:
    """Items closest to a query item: ``(k',)`` ids and scores, best first.
    ``popularity_fallback``: the item was unknown; these are the most popular."""

    item_ids: np.ndarray
    scores: np.ndarray
    popularity_fallback: bool


@dataclass(frozen=True)
class DomainServing:
    """One domain ready to search.

    Attributes:
        emb: the domain's tables.
        index: search over ``emb.item_emb``.
        user_rows: external user id -> row of ``emb.user_emb`` (a dict: a lookup
            costs ~0.1 us, a pandas ``get_indexer`` call ~0.5 ms).
        item_rows: external item id -> row of ``emb.item_emb``.
        popular_idx: ``(n_items,)`` item positions by decreasing popularity
            (ties: lower position first).
    """

    emb: DomainEmbeddings
    index: ItemIndex
    user_rows: dict[str, int]
    item_rows: dict[str, int]
    popular_idx: np.ndarray

    @classmethod
    def build(cls, emb: DomainEmbeddings, index: ItemIndex) -> "DomainServing":
        return cls(
            emb=emb,
            index=index,
            user_rows=_row_map(emb.user_ids, "user_ids", emb.domain),
            item_rows=_row_map(emb.item_ids, "item_ids", emb.domain),
            popular_idx=np.argsort(-emb.item_popularity, kind="stable"),
        )

    def item_positions(self, item_ids: Sequence[str]) -> np.ndarray:
        """``(m,)`` int64 positions of the known ones among ``item_ids`` (unknown
        ids dropped, order kept)."""
        rows = self.item_rows
        return np.array([rows[i] for i in item_ids if i in rows], dtype=np.int64)

    def filter_positions(
        self, item_filter: ItemFilter | None
    ) -> tuple[np.ndarray | None, np.ndarray]:
        """``(allowed positions or None, denied positions)`` of a filter."""
        if item_filter is None:
            return None, np.zeros(0, dtype=np.int64)
        allow = None if item_filter.allow is None else self.item_positions(item_filter.allow)
        return allow, self.item_positions(item_filter.deny)

    def search(
        self,
        queries: np.ndarray,
        ks: Sequence[int],
        exclude: Sequence[np.ndarray],
        allow: Sequence[np.ndarray | None],
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Top-``ks[i]`` items for each query, with exclusion and allow-lists.

        Queries without an allow-list go to the index in ONE call (at the largest
        k, each row then cut to its own k: the top-k of the admissible top-K is the
        admissible top-k); allow-listed queries are scored exactly over their
        candidates.

        Args:
            queries: ``(n, d)`` float32.
            ks: ``n`` values of k, each ``>= 1``.
            exclude: ``n`` arrays of item positions never returned.
            allow: ``n`` entries, ``None`` or the positions that may be returned.

        Returns:
            ``n`` pairs ``(idx (k',), scores (k',))``, best first, ``k' <= k``
            (fewer only when fewer items are admissible).
        """
        n = len(ks)
        out: list[tuple[np.ndarray, np.ndarray]] = [None] * n  # type: ignore[list-item]
        groups = {
            "index": [i for i in range(n) if allow[i] is None],
            "allow": [i for i in range(n) if allow[i] is not None],
        }
        for kind, rows in groups.items():
            if not rows:
                continue
            k_max = max(ks[i] for i in rows)
            if kind == "index":
                result = self.index.search(
                    queries[rows], min(k_max, self.index.ntotal), [exclude[i] for i in rows]
                )
            else:
                result = topk_among(
                    queries[rows], self.emb.item_emb, [allow[i] for i in rows], k_max,
                    [exclude[i] for i in rows],
                )
            for out_row, i in enumerate(rows):
                idx, scores = result.idx[out_row, : ks[i]], result.scores[out_row, : ks[i]]
                keep = idx >= 0
                out[i] = (idx[keep], scores[keep])
        return out

    def popular(
        self, k: int, exclude: np.ndarray, allow: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most popular admissible items: ``(idx (k',), counts (k',))``."""
        if allow is None:
            candidates = self.popular_idx[: k + len(exclude)]
        else:
            allow = np.unique(allow)
            candidates = allow[np.argsort(-self.emb.item_popularity[allow], kind="stable")]
        if len(exclude):
            candidates = candidates[~np.isin(candidates, exclude)]
        idx = candidates[:k].astype(np.int64)
        return idx, self.emb.item_popularity[idx].astype(np.float32)


@dataclass(frozen=True)
class ServingModel:
    """All domains of one artifact."""

    version: str
    domains: dict[str, DomainServing]
    history_encoder: HistoryEncoder | None = None

    @classmethod
    def from_artifact(cls, path: str | Path, device: str = "auto") -> "ServingModel":
        """Verify and load an artifact, then check it can answer.

        A domain's stored faiss index is used when faiss is installed (on GPU
        when faiss has one, or exact torch top-k on CUDA for ``Flat`` where it
        has none, see ``recxfer.index.load_index``); else exact torch search.

        Args:
            device: ``"auto"`` or ``"cpu"``.

        Raises:
            ArtifactError: the artifact is missing, partial, corrupt, or its
                index disagrees with its tables.
        """
        artifact = read_artifact(path)
        listed = artifact.manifest.get("domains")
        if not isinstance(listed, dict) or not listed:
            raise ArtifactError(f"{artifact.path}: manifest lists no servable 'domains'")
        domains = {name: _load_domain(artifact, name, device) for name in listed}
        model = cls(artifact.version, domains, HistoryEncoder.from_artifact(artifact))
        model.self_check(artifact.path)
        log.info("loaded artifact %s (%s)", artifact.version, ", ".join(domains),
                 extra={"event": "artifact_loaded", "version": artifact.version})
        return model

    def self_check(self, where: str | Path = "model") -> None:
        """Each domain's index matches its tables and answers one query.

        Raises:
            ArtifactError: naming the domain and what disagrees.
        """
        for name, served in self.domains.items():
            emb = served.emb
            if served.index.ntotal != len(emb.item_ids) or served.index.dim != emb.item_emb.shape[1]:
                raise ArtifactError(
                    f"{where}: domain {name!r}: index holds {served.index.ntotal} items of dim "
                    f"{served.index.dim}, tables {len(emb.item_ids)} of dim {emb.item_emb.shape[1]}"
                )
            if len(emb.user_ids):
                result = served.index.search(emb.user_emb[:1], 1)
                if not 0 <= result.idx[0, 0] < served.index.ntotal:
                    raise ArtifactError(f"{where}: domain {name!r}: the index returned no item")

    def domain(self, name: str) -> DomainServing:
        """Raises ``UnknownDomainError``."""
        try:
            return self.domains[name]
        except KeyError:
            raise UnknownDomainError(
                f"unknown domain {name!r}; known: {sorted(self.domains)}"
            ) from None

    def recommend_many(
        self, queries: Sequence[RecommendQuery], popularity_fallback: bool = False
    ) -> list[Recommendation | UnknownUserError]:
        """Answer many queries; those of one domain are searched as one batch.

        Returns:
            One entry per query, in order: a ``Recommendation``, or the
            ``UnknownUserError`` of a user unknown in that domain (with
            ``popularity_fallback`` such a user gets the most popular items).

        Raises:
            UnknownDomainError: a query names an unknown domain.
        """
        out: list[Recommendation | UnknownUserError] = [None] * len(queries)  # type: ignore[list-item]
        by_domain: dict[str, list[int]] = {}
        for i, query in enumerate(queries):
            by_domain.setdefault(query.domain, []).append(i)
        for name, positions in by_domain.items():
            served = self.domain(name)
            known, ks, exclude, allow = [], [], [], []
            for i in positions:
                query = queries[i]
                allowed, denied = served.filter_positions(query.item_filter)
                row = served.user_rows.get(query.user_id, -1)
                if row < 0:
                    if not popularity_fallback:
                        out[i] = UnknownUserError(
                            f"user {query.user_id!r} is unknown in domain {name!r}"
                        )
                        continue
                    idx, scores = served.popular(query.k, denied, allowed)
                    out[i] = Recommendation(served.emb.item_ids[idx], scores, POPULARITY)
                    continue
                seen = served.emb.seen.row(row) if query.exclude_seen else None
                known.append((i, row))
                ks.append(query.k)
                allow.append(allowed)
                exclude.append(
                    denied if seen is None else (np.concatenate([seen, denied]) if len(denied) else seen)
                )
            if not known:
                continue
            user_rows = np.array([row for _, row in known], dtype=np.int64)
            results = served.search(served.emb.user_emb[user_rows], ks, exclude, allow)
            for (i, row), (idx, scores) in zip(known, results):
                out[i] = Recommendation(
                    served.emb.item_ids[idx], scores, str(served.emb.user_origin[row])
                )
        return out

    def recommend(
        self,
        user_id: str,
        domain: str,
        k: int,
        exclude_seen: bool = True,
        item_filter: ItemFilter | None = None,
        popularity_fallback: bool = False,
    ) -> Recommendation:
        """Top-``k`` items of ``domain`` for a known user.

        Raises:
            UnknownDomainError, UnknownUserError.
        """
        (result,) = self.recommend_many(
            [RecommendQuery(user_id, domain, k, exclude_seen, item_filter)], popularity_fallback
        )
        if isinstance(result, UnknownUserError):
            raise result
        return result

    def similar_items(
        self,
        domain: str,
        item_id: str,
        k: int,
        item_filter: ItemFilter | None = None,
        popularity_fallback: bool = False,
    ) -> SimilarItems:
        """The ``k`` items closest to ``item_id`` by inner product, itself left out.

        Raises:
            UnknownDomainError, UnknownItemError (unless ``popularity_fallback``).
        """
        served = self.domain(domain)
        allowed, denied = served.filter_positions(item_filter)
        row = served.item_positions([item_id])
        if row.size == 0:
            if not popularity_fallback:
                raise UnknownItemError(f"item {item_id!r} is unknown in domain {domain!r}")
            idx, scores = served.popular(k, denied, allowed)
            return SimilarItems(served.emb.item_ids[idx], scores, True)
        exclude = np.concatenate([row, denied])
        ((idx, scores),) = served.search(served.emb.item_emb[row], [k], [exclude], [allowed])
        return SimilarItems(served.emb.item_ids[idx], scores, False)

    def recommend_from_history(
        self,
        source_domain: str,
        source_item_ids: Sequence[str],
        target_domain: str,
        k: int,
        item_filter: ItemFilter | None = None,
    ) -> Recommendation:
        """Top-``k`` target items for a user known only by a source history
        (oldest first; unknown ids are ignored), embedded at query time.

        Raises:
            UnknownDomainError; NoHistoryEncoderError when the artifact's method
            has no inductive user encoder; UnknownItemError when no id is known.
        """
        if self.history_encoder is None:
            raise NoHistoryEncoderError(
                f"artifact {self.version} has no inductive user encoder (train with method 'shared')"
            )
        source, target = self.domain(source_domain), self.domain(target_domain)
        positions = source.item_positions(source_item_ids)
        if positions.size == 0:
            raise UnknownItemError(
                f"none of the {len(source_item_ids)} ids is known in domain {source_domain!r}"
            )
        query = self.history_encoder.encode(source.emb.item_emb[positions])[None, :]  # (1, d)
        allowed, denied = target.filter_positions(item_filter)
        ((idx, scores),) = target.search(query, [k], [denied], [allowed])
        return Recommendation(target.emb.item_ids[idx], scores, UserOrigin.TRANSFER.value)

    def known_items(self, domain: str, item_ids: Sequence[str]) -> np.ndarray:
        """``(m,)`` positions of the ids of ``item_ids`` known in ``domain``.

        Raises:
            UnknownDomainError.
        """
        return self.domain(domain).item_positions(item_ids)

    @property
    def index_sizes(self) -> dict[str, int]:
        """Items indexed per domain."""
        return {name: served.index.ntotal for name, served in self.domains.items()}


def _row_map(ids: np.ndarray, what: str, domain: str) -> dict[str, int]:
    """External id -> row; duplicate ids are refused (they would be ambiguous)."""
    rows = {str(i): row for row, i in enumerate(ids.tolist())}
    if len(rows) != len(ids):
        raise ArtifactError(f"domain {domain!r}: {what} holds duplicate ids")
    return rows


def _load_domain(artifact: Artifact, name: str, device: str) -> DomainServing:
    emb = load_domain(artifact, name)
    meta = artifact.manifest["domains"][name].get("index") or {}
    file = meta.get("file")
    try:
        index = load_index(
            artifact.file(file) if file else None, meta.get("factory", "Flat"), emb.item_emb, device
        )
    except RuntimeError as exc:  # faiss cannot read the index
        raise ArtifactError(f"{artifact.path}: domain {name!r}: index cannot be loaded: {exc}") from exc
    return DomainServing.build(emb, index)

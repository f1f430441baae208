"""The serving model: an artifact's domains loaded for search. Read-only once built.

Every embedding search goes through ``DomainServing.search``, which answers many
queries of one domain with one index call (``BatchRecommend`` and ``Recommend``
share it), and restricts allow-listed queries to their candidates exactly.

A target domain with an item-to-item transfer (``DomainTransfer``, stored under
``transfer/<target>/`` and listed in the manifest's ``"transfer"``) scores its
cold-start users from their source history instead: a known ``transfer`` user
with a source history in ``Recommend``/``BatchRecommend``, and every
``RecommendFromHistory`` from that source. Those answers are the exact top-k of
``scorer.score`` (``transfer_search``), the same formula as offline evaluation
(``recxfer/eval/scoring.py``); a scorer's embedding term takes the user's stored
target embedding, or for a query-time history the history encoder's output.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from recxfer.artifacts import Artifact, ArtifactError, load_domain, load_transfer, read_artifact
from recxfer.artifacts.ids import IdTable, as_id_table
from recxfer.index import ItemIndex, load_index, topk_among, topk_dense
from recxfer.serve.history import HistoryEncoder
from recxfer.serve.limits import echo
from recxfer.types import DomainEmbeddings, DomainTransfer, ItemToItemScorer, UserOrigin

log = logging.getLogger(__name__)

POPULARITY = "popularity"  # user_origin of a popularity-fallback answer
# Dense transfer scores held at once (floats): a batch is scored in one
# ``scorer.score`` call unless ``n_queries * n_target_items`` exceeds this (64 MiB).
TRANSFER_SCORE_BUDGET = 1 << 24


class UnknownDomainError(KeyError):
    """The requested domain is not in the model."""


class UnknownUserError(KeyError):
    """The user has no embedding in the requested domain."""


class NoHistoryEncoderError(RuntimeError):
    """The artifact cannot answer a new history: its method is not inductive and it
    has no item-to-item transfer from that source into that target."""


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
        emb: the domain's tables; its ``user_ids``/``item_ids`` are the
            ``IdTable`` objects below (row -> ``str`` id, as object arrays do).
        index: search over ``emb.item_emb``.
        user_rows: external user id -> row of ``emb.user_emb``: an ``IdTable``
            (``get``/``in``/``rows``: a binary search over the artifact's mapped
            id table, ~3 us for one id of 1M, <1 us each in a batch; no Python
            object per id, so a 1M-id table opens in milliseconds).
        item_rows: external item id -> row of ``emb.item_emb`` (an ``IdTable``).
        popular_idx: ``(n_items,)`` item positions by decreasing popularity
            (ties: lower position first).
    """

    emb: DomainEmbeddings
    index: ItemIndex
    user_rows: IdTable
    item_rows: IdTable
    popular_idx: np.ndarray

    @classmethod
    def build(cls, emb: DomainEmbeddings, index: ItemIndex) -> "DomainServing":
        """Serve ``emb`` with ``index``; ids given as arrays (not ``IdTable``) get
        an in-memory table.

        Raises:
            ArtifactError: duplicate user or item ids.
        """
        users = _id_table(emb.user_ids, "user_ids", emb.domain)
        items = _id_table(emb.item_ids, "item_ids", emb.domain)
        if users is not emb.user_ids or items is not emb.item_ids:
            emb = replace(emb, user_ids=users, item_ids=items)
        served = cls(
            emb=emb,
            index=index,
            user_rows=users,
            item_rows=items,
            popular_idx=np.argsort(-np.asarray(emb.item_popularity), kind="stable"),
        )
        served.max_item_id_bytes  # computed at load, off the request path
        return served

    @cached_property
    def max_item_id_bytes(self) -> int:
        """UTF-8 bytes of the longest item id (bounds the size of an answer)."""
        return self.item_rows.width if len(self.item_rows) else 0

    def item_positions(self, item_ids: Sequence[str]) -> np.ndarray:
        """``(m,)`` int64 positions of the known ones among ``item_ids`` (unknown
        ids dropped, order kept)."""
        if not len(item_ids):
            return np.zeros(0, dtype=np.int64)
        rows = self.item_rows.rows(item_ids)
        return rows[rows >= 0]

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


def transfer_search(
    scorer: ItemToItemScorer,
    histories: Sequence[np.ndarray],
    ks: Sequence[int],
    exclude: Sequence[np.ndarray],
    allow: Sequence[np.ndarray | None],
    user_emb: np.ndarray | None = None,
    item_emb: np.ndarray | None = None,
    item_emb_t: np.ndarray | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Top-``ks[i]`` target items of each source history through ``scorer``.

    The histories are scored in one ``scorer.score`` call (in chunks only past
    ``TRANSFER_SCORE_BUDGET`` floats), then cut exactly: score descending, ties by
    lower target position, ``exclude`` removed, ``allow`` applied.

    Args:
        histories: ``n`` arrays of source item positions (duplicates ignored).
        ks: ``n`` values of k, each ``>= 1``.
        exclude: ``n`` arrays of target positions never returned.
        allow: ``n`` entries, ``None`` or the target positions that may be returned.
        user_emb: ``(n, d)`` the users' target embeddings and ``item_emb``
            ``(n_tgt, d)`` the target's item table, for a scorer with an embedding
            term (``scorer.embedding_weight``); unused otherwise. ``item_emb_t``
            (``(d, n_tgt)``, ``DomainTransfer.item_emb_t``) is used instead when given.

    Returns:
        ``n`` pairs ``(idx (k',), scores (k',) float32)``, best first; ``k' < k``
        only when fewer items are admissible.
    """
    n, n_tgt = len(histories), len(scorer.tgt_item_ids)
    step = max(1, TRANSFER_SCORE_BUDGET // max(1, n_tgt))
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for start in range(0, n, step):
        rows = range(start, min(n, start + step))
        hist = scorer.history_matrix([histories[i] for i in rows])  # (m, n_src)
        chunk_emb = None if user_emb is None else user_emb[rows.start : rows.stop]  # (m, d)
        scores = scorer.score(hist, chunk_emb, item_emb, item_emb_t)  # (m, n_tgt)
        k_max = min(max(ks[i] for i in rows), max(1, n_tgt))
        result = topk_dense(scores, k_max, [exclude[i] for i in rows], [allow[i] for i in rows])
        for out_row, i in enumerate(rows):
            idx, top = result.idx[out_row, : ks[i]], result.scores[out_row, : ks[i]]
            keep = idx >= 0
            out.append((idx[keep], top[keep]))
    return out


@dataclass(frozen=True)
class ServingModel:
    """All domains of one artifact.

    Attributes:
        transfers: target domain -> its item-to-item transfer (empty for artifacts
            without one; their answers are unchanged).
    """

    version: str
    domains: dict[str, DomainServing]
    history_encoder: HistoryEncoder | None = None
    transfers: dict[str, DomainTransfer] = field(default_factory=dict)

    @classmethod
    def from_artifact(
        cls, path: str | Path, device: str = "auto", mmap: bool = True, max_k: int = 1,
        max_filter_ids: int = 0,
    ) -> "ServingModel":
        """Verify and load an artifact, then check it can answer.

        A domain's stored faiss index is used when faiss is installed (on GPU
        when faiss has one, or exact torch top-k on CUDA for ``Flat`` where it
        has none, see ``recxfer.index.load_index``); else exact torch search.

        Checksums are verified here, once per load, skipping the files' sha256
        when the verification record shows them unchanged; a load that had to
        hash them all records the result for the next one
        (``read_artifact(trust_marker=True, record=True)``); requests never
        re-read files. Id tables are mapped (``IdTable``), not turned into
        Python objects, and a user table the domains share is opened once.

        Args:
            device: ``"auto"``, ``"cpu"`` or ``"cuda"`` (``load_index``).
            mmap: map the ``.npy`` arrays and the faiss index read-only from the
                artifact's files (``np.memmap``, ``IO_FLAG_MMAP_IFC``) instead of
                reading them into this process: server processes of one host then
                share one copy in the page cache. The model never writes into them.
            max_k, max_filter_ids: the serve limits (``ServeConfig``). A search
                then fetches at most ``max_k`` + the longest seen list (or 1, the
                query item) + ``max_filter_ids`` candidates: past faiss GPU's
                limit (2048) such searches go to torch exact top-k on CUDA
                (``load_index``), and the self-check searches at ``max_k`` and at
                that worst case.

        Raises:
            ArtifactError: the artifact is missing, partial, corrupt, its index
                disagrees with its tables, or a transfer is malformed or does not
                fit its domains' item tables.
        """
        artifact = read_artifact(path, trust_marker=True, record=True)
        listed = artifact.manifest.get("domains")
        if not isinstance(listed, dict) or not listed:
            raise ArtifactError(f"{artifact.path}: manifest lists no servable 'domains'")
        cache: dict = {}  # a table shared by domains (the user table) is opened once
        domains = {name: _load_domain(artifact, name, device, mmap, max_k, max_filter_ids, cache)
                   for name in listed}
        model = cls(artifact.version, domains, HistoryEncoder.from_artifact(artifact),
                    _load_transfers(artifact, domains, mmap))
        model.self_check(artifact.path, max_k, max_filter_ids)
        log.info("loaded artifact %s (%s)%s", artifact.version, ", ".join(domains),
                 "".join(f"; transfer {t.source} -> {t.target}" for t in model.transfers.values()),
                 extra={"event": "artifact_loaded", "version": artifact.version})
        return model

    def self_check(
        self, where: str | Path = "model", max_k: int = 1, max_filter_ids: int = 0
    ) -> None:
        """Each domain's index matches its tables and answers one query at the
        largest ``k`` served (``max_k``, at most the catalogue), then one that
        fetches the most candidates a request can (``max_k`` + the longest
        exclusion, see ``from_artifact``); each transfer fits its two item
        tables, holds finite values and scores one history.

        Raises:
            ArtifactError: naming the domain (or transfer) and what disagrees.
        """
        for name, served in self.domains.items():
            emb = served.emb
            ntotal = served.index.ntotal
            if ntotal != len(emb.item_ids) or served.index.dim != emb.item_emb.shape[1]:
                raise ArtifactError(
                    f"{where}: domain {name!r}: index holds {ntotal} items of dim "
                    f"{served.index.dim}, tables {len(emb.item_ids)} of dim {emb.item_emb.shape[1]}"
                )
            if not len(emb.user_ids):
                continue
            k = max(1, min(max_k, ntotal))
            n_excluded = min(_max_fetch(emb, max_k, max_filter_ids) - max_k, ntotal - 1)
            exclude = np.arange(n_excluded, dtype=np.int64)
            try:
                result = served.index.search(emb.user_emb[:1], k)
                # The worst case: k + the longest exclusion (past faiss GPU's limit?).
                worst = served.index.search(emb.user_emb[:1], k, [exclude]) if n_excluded else None
            except (RuntimeError, ValueError) as exc:  # e.g. a faiss GPU limit
                raise ArtifactError(
                    f"{where}: domain {name!r}: the index cannot search at k={k} with up to "
                    f"{n_excluded} items excluded (serve max_k {max_k}, max_filter_ids "
                    f"{max_filter_ids}): {exc}"
                ) from exc
            if not 0 <= result.idx[0, 0] < ntotal:
                raise ArtifactError(f"{where}: domain {name!r}: the index returned no item")
            if worst is not None and (
                worst.idx.shape != (1, k) or np.isin(worst.idx[0], exclude).any()
            ):
                raise ArtifactError(
                    f"{where}: domain {name!r}: a search at k={k} with {n_excluded} items "
                    "excluded returned excluded items or the wrong shape"
                )
        for target, transfer in self.transfers.items():
            _check_transfer(where, target, transfer, self.domains)

    def domain(self, name: str) -> DomainServing:
        """Raises ``UnknownDomainError``."""
        try:
            return self.domains[name]
        except KeyError:
            raise UnknownDomainError(
                f"unknown domain {echo(name)}; known: {sorted(self.domains)}"
            ) from None

    def recommend_many(
        self, queries: Sequence[RecommendQuery], popularity_fallback: bool = False
    ) -> list[Recommendation | UnknownUserError]:
        """Answer many queries; those of one domain are searched as one batch.

        A ``transfer`` user of a domain with an item-to-item transfer, known in
        the transfer's source with a non-empty source history, is scored by the
        transfer (all such queries of a domain in one ``transfer_search``); every
        other known user by its embedding.

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
            transfer = self.transfers.get(name)
            source = self.domains.get(transfer.source) if transfer is not None else None
            known, ks, exclude, allow = [], [], [], []
            via_transfer: list[tuple[int, int, np.ndarray]] = []  # (query, row, source history)
            t_ks, t_exclude, t_allow = [], [], []
            rows_of = served.user_rows.rows([queries[i].user_id for i in positions])
            for i, row in zip(positions, rows_of.tolist()):
                query = queries[i]
                allowed, denied = served.filter_positions(query.item_filter)
                if row < 0:
                    if not popularity_fallback:
                        out[i] = UnknownUserError(
                            f"user {echo(query.user_id)} is unknown in domain {name!r}"
                        )
                        continue
                    idx, scores = served.popular(query.k, denied, allowed)
                    out[i] = Recommendation(served.emb.item_ids[idx], scores, POPULARITY)
                    continue
                seen = served.emb.seen.row(row) if query.exclude_seen else None
                excluded = (
                    denied if seen is None else (np.concatenate([seen, denied]) if len(denied) else seen)
                )
                history = _source_history(served, row, source, query.user_id)
                if history is not None:
                    via_transfer.append((i, row, history))
                    t_ks.append(query.k)
                    t_allow.append(allowed)
                    t_exclude.append(excluded)
                    continue
                known.append((i, row))
                ks.append(query.k)
                allow.append(allowed)
                exclude.append(excluded)
            if via_transfer:
                assert transfer is not None
                t_rows = np.array([row for _, row, _ in via_transfer], dtype=np.int64)
                results = transfer_search(
                    transfer.scorer, [h for _, _, h in via_transfer], t_ks, t_exclude, t_allow,
                    served.emb.user_emb[t_rows], served.emb.item_emb, transfer.item_emb_t,
                )
                for (i, _, _), (idx, scores) in zip(via_transfer, results):
                    out[i] = Recommendation(served.emb.item_ids[idx], scores, UserOrigin.TRANSFER.value)
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
        (result,) = self.similar_items_many(domain, [item_id], [k], [item_filter], popularity_fallback)
        if isinstance(result, UnknownItemError):
            raise result
        return result

    def similar_items_many(
        self,
        domain: str,
        item_ids: Sequence[str],
        ks: Sequence[int],
        item_filters: Sequence[ItemFilter | None],
        popularity_fallback: bool = False,
    ) -> list[SimilarItems | UnknownItemError]:
        """``similar_items`` of many query items of one domain (the same rules),
        searched in one ``DomainServing.search`` (the dynamic batcher's path).

        Returns:
            One entry per query item, in order: ``SimilarItems``, or the
            ``UnknownItemError`` of an unknown item (without ``popularity_fallback``).

        Raises:
            UnknownDomainError.
        """
        served = self.domain(domain)
        out: list[SimilarItems | UnknownItemError] = [None] * len(item_ids)  # type: ignore[list-item]
        known, rows, search_ks, exclude, allow = [], [], [], [], []
        for i, (item_id, k, item_filter) in enumerate(zip(item_ids, ks, item_filters)):
            allowed, denied = served.filter_positions(item_filter)
            row = served.item_positions([item_id])
            if row.size == 0:
                if not popularity_fallback:
                    out[i] = UnknownItemError(f"item {echo(item_id)} is unknown in domain {domain!r}")
                    continue
                idx, scores = served.popular(k, denied, allowed)
                out[i] = SimilarItems(served.emb.item_ids[idx], scores, True)
                continue
            known.append(i)
            rows.append(int(row[0]))
            search_ks.append(k)
            exclude.append(np.concatenate([row, denied]))
            allow.append(allowed)
        if known:
            results = served.search(
                served.emb.item_emb[np.array(rows, dtype=np.int64)], search_ks, exclude, allow
            )
            for i, (idx, scores) in zip(known, results):
                out[i] = SimilarItems(served.emb.item_ids[idx], scores, False)
        return out

    def recommend_from_history(
        self,
        source_domain: str,
        source_item_ids: Sequence[str],
        target_domain: str,
        k: int,
        item_filter: ItemFilter | None = None,
    ) -> Recommendation:
        """Top-``k`` target items for a user known only by a source history
        (oldest first; unknown ids are ignored).

        Scored by the item-to-item transfer into ``target_domain`` when it has one
        from ``source_domain`` (the known ids, deduplicated); otherwise embedded at
        query time by the artifact's inductive user encoder. A transfer with an
        embedding term takes the user's embedding from that encoder; without an
        encoder the term is left out (the item-to-item part alone ranks). No
        seen-item exclusion (the user is new); ``item_filter`` applies either way.

        Raises:
            UnknownDomainError; NoHistoryEncoderError when the artifact has neither
            an inductive user encoder nor a transfer from ``source_domain`` into
            ``target_domain``; UnknownItemError when no id is known.
        """
        (result,) = self.recommend_from_histories(
            source_domain, [source_item_ids], target_domain, k, item_filter
        )
        if isinstance(result, UnknownItemError):
            raise result
        return result

    def recommend_from_histories(
        self,
        source_domain: str,
        histories: Sequence[Sequence[str]],
        target_domain: str,
        k: int | Sequence[int],
        item_filter: ItemFilter | None | Sequence[ItemFilter | None] = None,
    ) -> list[Recommendation | UnknownItemError]:
        """``recommend_from_history`` of many histories at once (the same rules):
        all scored in one ``transfer_search`` or one index search of the target.

        Args:
            k: one ``k`` for all histories, or one per history.
            item_filter: one filter for all histories, or one per history (a list
                or tuple of ``ItemFilter | None``).

        Returns:
            One entry per history, in order: a ``Recommendation``, or the
            ``UnknownItemError`` of a history none of whose ids is known.

        Raises:
            UnknownDomainError; NoHistoryEncoderError (see ``recommend_from_history``).
        """
        transfer = self.transfers.get(target_domain)
        if transfer is not None and transfer.source != source_domain:
            transfer = None
        if transfer is None and self.history_encoder is None:
            raise NoHistoryEncoderError(
                f"artifact {self.version} has no inductive user encoder (train with method "
                f"'shared') and no item-to-item transfer into {target_domain!r}"
                + (f" from {source_domain!r}" if target_domain in self.transfers else "")
            )
        source, target = self.domain(source_domain), self.domain(target_domain)
        out: list[Recommendation | UnknownItemError] = [None] * len(histories)  # type: ignore[list-item]
        known: list[tuple[int, np.ndarray]] = []  # (history, its known source positions)
        for i, item_ids in enumerate(histories):
            positions = source.item_positions(item_ids)
            if positions.size == 0:
                out[i] = UnknownItemError(
                    f"none of the {len(item_ids)} ids is known in domain {source_domain!r}"
                )
            else:
                known.append((i, positions))
        if not known:
            return out
        m = len(known)
        if isinstance(k, int):
            ks = [k] * m
        else:
            ks = [k[i] for i, _ in known]
        if isinstance(item_filter, (list, tuple)):
            positions = [target.filter_positions(item_filter[i]) for i, _ in known]
            allow = [a for a, _ in positions]
            deny = [d for _, d in positions]
        else:
            allowed, denied = target.filter_positions(item_filter)
            allow, deny = [allowed] * m, [denied] * m
        encoded = (
            None if self.history_encoder is None
            else np.stack([self.history_encoder.encode(source.emb.item_emb[p]) for _, p in known])  # (m, d)
        )
        if transfer is not None:
            scorer = transfer.scorer
            if scorer.embedding_weight and encoded is None:
                scorer = replace(scorer, embedding_weight=0.0)
            results = transfer_search(
                scorer, [np.unique(p) for _, p in known], ks, deny, allow,
                encoded, target.emb.item_emb, transfer.item_emb_t,
            )
        else:
            assert encoded is not None
            results = target.search(encoded, ks, deny, allow)
        for (i, _), (idx, scores) in zip(known, results):
            out[i] = Recommendation(target.emb.item_ids[idx], scores, UserOrigin.TRANSFER.value)
        return out

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


def _id_table(ids: object, what: str, domain: str) -> IdTable:
    """``ids`` as an ``IdTable`` (itself when it is one); duplicate ids are refused
    (they would be ambiguous).

    Raises:
        ArtifactError: naming the domain and the table.
    """
    try:
        return as_id_table(ids, f"domain {domain!r}: {what}")
    except ValueError as exc:  # an id holding NUL
        raise ArtifactError(f"domain {domain!r}: {what}: {exc}") from exc


def _source_history(
    served: DomainServing, row: int, source: DomainServing | None, user_id: str
) -> np.ndarray | None:
    """The source history that the transfer scores user ``row`` of ``served`` by:
    ``None`` unless the domain has a transfer (``source`` given), the user is a
    ``transfer`` user, and is known in the source with a non-empty seen row."""
    if source is None or str(served.emb.user_origin[row]) != UserOrigin.TRANSFER.value:
        return None
    src_row = source.user_rows.get(user_id, -1)
    if src_row < 0:
        return None
    history = source.emb.seen.row(src_row)
    return history if len(history) else None


def _load_transfers(
    artifact: Artifact, domains: dict[str, DomainServing], mmap: bool = False
) -> dict[str, DomainTransfer]:
    """The manifest's ``"transfer"`` entries (``{target: {"source": ...}}``) loaded
    and aligned to the domains' item tables; absent or empty: none.

    Raises:
        ArtifactError: a malformed entry, a domain that is not served, or a
            transfer whose files are missing or do not fit the tables.
    """
    listed = artifact.manifest.get("transfer")
    if listed is None or listed == {}:
        return {}
    where = f"{artifact.path}: manifest 'transfer'"
    if not isinstance(listed, dict):
        raise ArtifactError(
            f"{where} must be an object {{target: {{'source': domain}}}}, got {type(listed).__name__}"
        )
    out = {}
    for target, entry in listed.items():
        if target not in domains:
            raise ArtifactError(
                f"{where}: target {target!r} is not a served domain; served: {sorted(domains)}"
            )
        if not isinstance(entry, dict) or not isinstance(entry.get("source"), str):
            raise ArtifactError(f"{where}: entry of {target!r} must be an object with a 'source' name")
        source = entry["source"]
        if source not in domains or source == target:
            raise ArtifactError(
                f"{where}: source {source!r} of {target!r} is not another served domain; "
                f"served: {sorted(domains)}"
            )
        transfer = load_transfer(
            artifact, target, domains[source].emb.item_ids, domains[target].emb.item_ids, mmap
        )
        if transfer.source != source:
            raise ArtifactError(
                f"{artifact.path}: transfer into {target!r}: its meta.json names source "
                f"{transfer.source!r}, the manifest {source!r}"
            )
        if transfer.scorer.embedding_weight:
            # the embedding term's product reads the table transposed (hidden x items)
            item_emb_t = np.ascontiguousarray(np.asarray(domains[target].emb.item_emb, np.float32).T)
            transfer = replace(transfer, item_emb_t=item_emb_t)
        out[target] = transfer
    return out


def _check_transfer(
    where: str | Path, target: str, transfer: DomainTransfer, domains: dict[str, DomainServing]
) -> None:
    """A transfer fits its domains, holds finite numbers and scores one history.

    Raises:
        ArtifactError: naming the transfer and what is wrong.
    """
    what = f"{where}: transfer {transfer.source!r} -> {target!r}"
    if transfer.target != target or transfer.source not in domains or target not in domains:
        raise ArtifactError(f"{what}: its domains are not served (or it is filed under another target)")
    scorer, source = transfer.scorer, domains[transfer.source]
    for side, ids, table in (("source", scorer.src_item_ids, source.emb.item_ids),
                             ("target", scorer.tgt_item_ids, domains[target].emb.item_ids)):
        if ids is table:  # loaded against this table (``_load_transfers``): the same ids
            continue
        if len(ids) != len(table) or not np.array_equal(np.asarray(ids, dtype=object),
                                                        np.asarray(table, dtype=object)):
            raise ArtifactError(f"{what}: its {side} items are not the {side} domain's item table")
    numbers = [np.asarray(m.data) for m in scorer.matrices]
    numbers += [scorer.popularity, np.asarray(scorer.weights, np.float64),
                np.asarray([scorer.pop_weight, scorer.embedding_weight, scorer.dae_weight], np.float64)]
    if scorer.dae is not None:
        numbers += list(scorer.dae.arrays.values())
    if not all(np.isfinite(x).all() for x in numbers):
        raise ArtifactError(f"{what}: matrices, dae network, popularity or weights hold non-finite values")
    seen, tgt = source.emb.seen, domains[target].emb
    rows = np.flatnonzero(np.diff(seen.indptr) > 0)
    history = seen.row(int(rows[0])) if rows.size else np.zeros(min(1, len(source.emb.item_ids)), np.int64)
    user_emb = tgt.user_emb[:1] if len(tgt.user_ids) else np.zeros((1, tgt.item_emb.shape[1]), np.float32)
    try:
        scores = scorer.score(scorer.history_matrix([history]), user_emb, tgt.item_emb)
    except (ValueError, IndexError, TypeError) as exc:
        raise ArtifactError(f"{what}: cannot score a history: {exc}") from exc
    if scores.shape != (1, len(scorer.tgt_item_ids)) or not np.isfinite(scores).all():
        raise ArtifactError(
            f"{what}: scored a history as {scores.shape}, not (1, {len(scorer.tgt_item_ids)}) finite"
        )


def _max_fetch(emb: DomainEmbeddings, max_k: int, max_filter_ids: int) -> int:
    """The most candidates one search of ``emb``'s index may fetch under the serve
    limits: ``max_k`` + the longest exclusion (a user's seen items, or the query
    item of ``SimilarItems``, plus a deny-list)."""
    seen = np.diff(np.asarray(emb.seen.indptr))
    return max_k + max(int(seen.max(initial=0)), 1) + max_filter_ids


def _load_domain(
    artifact: Artifact, name: str, device: str, mmap: bool = False, max_k: int = 1,
    max_filter_ids: int = 0, cache: dict | None = None,
) -> DomainServing:
    emb = load_domain(artifact, name, mmap, id_tables=True, cache=cache)
    meta = artifact.manifest["domains"][name].get("index") or {}
    file = meta.get("file")
    try:
        index = load_index(
            artifact.file(file) if file else None, meta.get("factory", "Flat"), emb.item_emb, device,
            mmap, max_fetch=_max_fetch(emb, max_k, max_filter_ids),
        )
    except RuntimeError as exc:  # faiss cannot read the index
        raise ArtifactError(f"{artifact.path}: domain {name!r}: index cannot be loaded: {exc}") from exc
    return DomainServing.build(emb, index)

"""Bottom layer: small value types shared by every stage.

Naming: ``*_ids`` are external ids (strings from the data), ``*_idx`` are row
positions into an embedding table. The two are never mixed in one array.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import Enum
from typing import Any

import numpy as np


@dataclass(frozen=True)
class SearchResult:
    """Top-k result of a batch of queries, best first.

    Attributes:
        idx: ``(n_queries, k)`` int64 row positions into the item table; ``-1``
            pads rows that have fewer than ``k`` admissible items.
        scores: ``(n_queries, k)`` float32 scores; ``-inf`` where ``idx`` is ``-1``.
    """

    idx: np.ndarray
    scores: np.ndarray

    def __post_init__(self) -> None:
        if self.idx.shape != self.scores.shape or self.idx.ndim != 2:
            raise ValueError(
                f"idx {self.idx.shape} and scores {self.scores.shape} must be equal 2-d shapes"
            )


class UserOrigin(str, Enum):
    """How a user's embedding in a domain was obtained."""

    WARM = "warm"  # trained on the user's own history in that domain
    TRANSFER = "transfer"  # mapped from the source domain (cold-start)


@dataclass(frozen=True)
class SeenItems:
    """Items each user interacted with in training, as CSR rows.

    Attributes:
        indptr: ``(n_users + 1,)`` int64; user ``u``'s items are
            ``indices[indptr[u]:indptr[u + 1]]``.
        indices: ``(nnz,)`` int64 item row positions.
    """

    indptr: np.ndarray
    indices: np.ndarray

    def row(self, user_idx: int) -> np.ndarray:
        """Item positions seen by one user: ``(n_seen,)`` int64."""
        return self.indices[self.indptr[user_idx] : self.indptr[user_idx + 1]]

    def rows(self, user_idx: np.ndarray) -> list[np.ndarray]:
        """Item positions seen by each of ``user_idx`` (``(n,)``)."""
        return [self.row(int(u)) for u in user_idx]

    @property
    def n_users(self) -> int:
        return int(self.indptr.shape[0] - 1)

    @staticmethod
    def from_pairs(n_users: int, user_idx: np.ndarray, item_idx: np.ndarray) -> "SeenItems":
        """Build from ``(nnz,)`` user/item position pairs (duplicates are kept once)."""
        pairs = np.unique(np.stack([user_idx.astype(np.int64), item_idx.astype(np.int64)]), axis=1)
        counts = np.bincount(pairs[0], minlength=n_users)
        indptr = np.zeros(n_users + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        return SeenItems(indptr=indptr, indices=pairs[1].copy())


@dataclass(frozen=True)
class DomainEmbeddings:
    """Everything needed to recommend in one domain: the hand-off from training
    to serving, stored in an artifact.

    Attributes:
        domain: domain name, e.g. ``"books"``.
        user_ids: ``(n_users,)`` external user ids, row ``i`` of ``user_emb``.
        user_emb: ``(n_users, d)`` float32 user embeddings.
        user_origin: ``(n_users,)`` ``UserOrigin`` values as strings.
        item_ids: ``(n_items,)`` external item ids, row ``j`` of ``item_emb``.
        item_emb: ``(n_items, d)`` float32 item embeddings; score = ``user_emb @ item_emb.T``.
        seen: training items per user (rows aligned with ``user_ids``).
        item_popularity: ``(n_items,)`` int64 training interaction counts.
    """

    domain: str
    user_ids: np.ndarray
    user_emb: np.ndarray
    user_origin: np.ndarray
    item_ids: np.ndarray
    item_emb: np.ndarray
    seen: SeenItems
    item_popularity: np.ndarray

    def __post_init__(self) -> None:
        n_users, n_items = len(self.user_ids), len(self.item_ids)
        if self.user_emb.shape[0] != n_users or self.user_origin.shape[0] != n_users:
            raise ValueError(f"{self.domain}: user tables disagree on the number of users")
        if self.item_emb.shape[0] != n_items or self.item_popularity.shape[0] != n_items:
            raise ValueError(f"{self.domain}: item tables disagree on the number of items")
        if self.user_emb.shape[1] != self.item_emb.shape[1]:
            raise ValueError(
                f"{self.domain}: user dim {self.user_emb.shape[1]} != item dim {self.item_emb.shape[1]}"
            )
        if self.seen.n_users != n_users:
            raise ValueError(f"{self.domain}: seen items cover {self.seen.n_users} users, not {n_users}")


@dataclass(frozen=True)
class DAEScorer:
    """A one-hidden-layer network from a source history to target scores (the
    ``dae`` method's servable form): for a binary history ``h`` (``(n_src,)``)::

        z = tanh((h / ||h||) @ w_in + b_in)          # (hidden,)
        logits = z @ w_out.T + b_out                  # (n_tgt,)
        score = exp(logits - max(logits))             # in (0, 1], max 1

    i.e. the softmax over the target catalogue divided by its largest entry: the
    per-user max normalisation ``ItemToItemScorer`` gives each of its terms.

    Attributes:
        w_in: ``(n_src, hidden)`` float32.
        b_in: ``(hidden,)`` float32.
        w_out: ``(n_tgt, hidden)`` float32.
        b_out: ``(n_tgt,)`` float32.
    """

    w_in: np.ndarray
    b_in: np.ndarray
    w_out: np.ndarray
    b_out: np.ndarray

    def __post_init__(self) -> None:
        hidden = self.b_in.shape[0] if self.b_in.ndim == 1 else -1
        if (self.w_in.ndim != 2 or self.w_in.shape[1] != hidden or self.w_out.ndim != 2
                or self.w_out.shape[1] != hidden or self.b_out.shape != (self.w_out.shape[0],)):
            raise ValueError(f"dae network shapes do not fit: w_in {self.w_in.shape}, b_in "
                             f"{self.b_in.shape}, w_out {self.w_out.shape}, b_out {self.b_out.shape}")
        # ``(hidden, n_tgt)`` C-contiguous: a query's ``z @ w_out.T`` then streams
        # the matrix row by row (2.3x faster than the transposed view at 100 k
        # items, one thread; bench/results/serving_transfer_100k_dae_t.json).
        object.__setattr__(self, "_w_out_t", np.ascontiguousarray(np.asarray(self.w_out, np.float32).T))

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """The four parameter arrays by name (what an artifact stores)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def score(self, hist: Any) -> np.ndarray:
        """``(n, n_tgt)`` float32 scores of ``hist``, a ``(n, n_src)`` csr 0/1 history
        matrix; an empty history scores every item ``exp(b_out - max b_out)`` of the
        zero input. The result is a fresh array the caller may modify."""
        import scipy.sparse as sp

        hist = sp.csr_matrix(hist, dtype=np.float32)
        rows = np.repeat(np.arange(hist.shape[0]), np.diff(hist.indptr))  # (nnz,)
        norm = np.sqrt(np.bincount(rows, weights=np.square(hist.data, dtype=np.float64),
                                   minlength=hist.shape[0]))[:, None].astype(np.float32)  # (n, 1)
        hidden = np.asarray(hist @ self.w_in, np.float32)  # (n, hidden)
        np.divide(hidden, norm, out=hidden, where=norm > 0)
        z = np.tanh(hidden + self.b_in[None, :])  # (n, hidden)
        logits = z @ self._w_out_t  # (n, n_tgt)
        logits += self.b_out[None, :]
        logits -= logits.max(axis=1, keepdims=True)
        return np.exp(logits, out=logits)


@dataclass(frozen=True)
class ItemToItemScorer:
    """Target scores of a source history through sparse source→target item links:
    the servable form of the item-to-item methods (``itemknn``, ``ease``, ``ridge``,
    ``userknn``, ``blend``), written into an artifact and read by serving, so offline
    and served scores are one formula.

    For a binary history ``h`` (``(n_src,)``) the score of target item ``j`` is::

        sum_c weights[c] * (h @ B_c)[j] / max_j' |h @ B_c|  +  pop_weight * pop[j] / max(pop)
          + embedding_weight * (u @ V.T)[j] / max_j' |u @ V.T|
          + dae_weight * dae.score(h)[j]

    (a component whose row is all zero adds nothing). Ranking one component alone is
    the same as ranking ``h @ B_c``; the per-user max puts components on one scale.
    With a ``head`` (a component's name, ``head_size`` > 0) the items among that
    component's ``head_size`` best for the user (those with a positive score; ties at
    the cut all in) are placed above every other item, in that component's order:
    the top of the list from the most precise view, the rest from the blend
    (``lift_head``).
    The embedding term (a hybrid with embedding retrieval) needs the user's embedding ``u``
    (``(d,)``: a transferred row, or the history encoder's output) and the target's
    item embeddings ``V`` (``(n_tgt, d)``), given to ``score``.

    Attributes:
        src_item_ids: ``(n_src,)`` source catalogue, rows of every ``B_c``.
        tgt_item_ids: ``(n_tgt,)`` target catalogue, columns of every ``B_c``.
        names: component names, e.g. ``("ridge", "itemknn")``.
        matrices: ``scipy.sparse.csr_matrix`` ``(n_src, n_tgt)`` float32 per component.
        weights: one float per component.
        popularity: ``(n_tgt,)`` float32 training counts of the target items.
        pop_weight: weight of the popularity term (0 leaves it out).
        embedding_weight: weight of the embedding term (0 leaves it out).
        dae: a ``DAEScorer`` over the same catalogues (the ``dae`` term), or
            ``None``.
        dae_weight: weight of the dae term (0 leaves it out).
        head: name of the component whose top items lead the list ("" for none).
        head_size: how many of them (0: no head).
    """

    src_item_ids: np.ndarray
    tgt_item_ids: np.ndarray
    names: tuple[str, ...]
    matrices: tuple[Any, ...]
    weights: tuple[float, ...]
    popularity: np.ndarray
    pop_weight: float
    embedding_weight: float = 0.0
    dae: DAEScorer | None = None
    dae_weight: float = 0.0
    head: str = ""
    head_size: int = 0

    def __post_init__(self) -> None:
        n_src, n_tgt = len(self.src_item_ids), len(self.tgt_item_ids)
        if self.head_size < 0 or (self.head_size > 0) != bool(self.head) or (
                self.head_size and self.head not in self.names):
            raise ValueError(f"head {self.head!r} of size {self.head_size} must name one of the components "
                             f"{self.names} with a size >= 1 (or be '' with size 0)")
        if self.dae is not None and (self.dae.w_in.shape[0], self.dae.w_out.shape[0]) != (n_src, n_tgt):
            raise ValueError(f"dae network maps {self.dae.w_in.shape[0]} -> {self.dae.w_out.shape[0]} "
                             f"items, not ({n_src}, {n_tgt})")
        if self.dae_weight and self.dae is None:
            raise ValueError("dae_weight is set but the scorer has no dae network")
        if not (len(self.names) == len(self.matrices) == len(self.weights)):
            raise ValueError("names, matrices and weights must have one entry per component")
        for name, matrix in zip(self.names, self.matrices):
            if matrix.shape != (n_src, n_tgt):
                raise ValueError(f"component {name}: shape {matrix.shape} != ({n_src}, {n_tgt})")
        if self.popularity.shape != (n_tgt,):
            raise ValueError(f"popularity {self.popularity.shape} != ({n_tgt},)")
        if any(getattr(m, "format", None) != "csr" for m in self.matrices):
            import scipy.sparse as sp

            # scoring gathers csr rows (``_add_scaled_product``): other formats once, here
            object.__setattr__(self, "matrices", tuple(
                m if getattr(m, "format", None) == "csr" else sp.csr_matrix(m) for m in self.matrices))

    def score(self, hist: Any, user_emb: np.ndarray | None = None,
              item_emb: np.ndarray | None = None, item_emb_t: np.ndarray | None = None) -> np.ndarray:
        """``(n, n_tgt)`` float32 scores of ``hist``, a ``(n, n_src)`` sparse (or dense)
        0/1 history matrix (source item positions); ``user_emb`` ``(n, d)`` and
        ``item_emb`` ``(n_tgt, d)`` are required when ``embedding_weight`` is set, or
        instead of ``item_emb`` its C-contiguous transpose ``item_emb_t`` ``(d, n_tgt)``
        (what serving keeps: one query's product reads it about 2x faster).

        Cost per history of ``h`` items: the dense terms (popularity, dae,
        embeddings) a few passes over ``n_tgt`` floats; each sparse component only
        its ``h x per_row`` product entries (scaled and added where they fall, not
        densified)."""
        import scipy.sparse as sp

        hist = sp.csr_matrix(hist, dtype=np.float32)
        n, n_tgt = hist.shape[0], len(self.tgt_item_ids)
        if hist.shape[1] != len(self.src_item_ids):
            raise ValueError(f"history has {hist.shape[1]} columns, not {len(self.src_item_ids)}")
        if self.dae_weight:
            out = self.dae.score(hist)  # (n, n_tgt), fresh
            out *= np.float32(self.dae_weight)
        else:
            out = np.zeros((n, n_tgt), np.float32)
        if self.embedding_weight:
            if item_emb_t is None and item_emb is not None:
                item_emb_t = np.asarray(item_emb, np.float32).T  # a view
            if user_emb is None or item_emb_t is None:
                raise ValueError("this scorer blends in embeddings: give user_emb and item_emb")
            if user_emb.shape[0] != n or item_emb_t.shape != (user_emb.shape[1], n_tgt):
                raise ValueError(f"user_emb {user_emb.shape} / item_emb {item_emb_t.shape[::-1]} do not fit "
                                 f"{n} histories over {n_tgt} items")
            part = np.asarray(user_emb, np.float32) @ np.asarray(item_emb_t, np.float32)  # (n, n_tgt)
            scale = np.abs(part).max(axis=1, keepdims=True)  # (n, 1)
            np.divide(part, scale, out=part, where=scale > 0)
            part *= np.float32(self.embedding_weight)
            out += part
        if self.pop_weight:
            top = float(self.popularity.max(initial=0.0))
            if top > 0:
                out += np.float32(self.pop_weight / top) * self.popularity[None, :]
        head_at = self.names.index(self.head) if self.head_size else -1
        head = np.zeros((n, n_tgt), np.float32) if self.head_size else None
        for c, (matrix, weight) in enumerate(zip(self.matrices, self.weights)):
            if weight or c == head_at:  # the head's product is computed once, also when weighted
                _add_scaled_product(out, hist, matrix, weight, head if c == head_at else None)
        if head is not None:
            lift_head(out, head, self.head_size, self.head_offset)
        return out

    @property
    def head_offset(self) -> float:
        """A score above every blended one: each term is at most its weight in
        magnitude (each one max-normalised), so their sum is below this."""
        return 2.0 + sum(abs(w) for w in self.weights) + abs(self.pop_weight) + abs(self.embedding_weight) \
            + abs(self.dae_weight)

    def history_matrix(self, histories: "list[np.ndarray]") -> Any:
        """``(n, n_src)`` csr 0/1 matrix of per-user source item positions (``-1`` ignored)."""
        import scipy.sparse as sp

        rows = [np.unique(np.asarray(h, np.int64)) for h in histories]
        rows = [r[r >= 0] for r in rows]
        n_src = len(self.src_item_ids)
        bad = [r[-1] for r in rows if len(r) and r[-1] >= n_src]
        if bad:
            raise ValueError(f"history position {int(bad[0])} is outside the source catalogue of {n_src}")
        indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
        indices = np.concatenate(rows).astype(np.int64) if rows else np.zeros(0, np.int64)
        return sp.csr_matrix((np.ones(len(indices), np.float32), indices, indptr),
                             shape=(len(rows), len(self.src_item_ids)))


def row_counts(mask: np.ndarray) -> np.ndarray:
    """``(n,)`` int64 true values per row of a 2-D bool array (its bytes summed:
    faster than ``count_nonzero(axis=1)``)."""
    return mask.view(np.uint8).sum(axis=1, dtype=np.uint32).astype(np.int64)


def lift_head(out: np.ndarray, head: np.ndarray, size: int, offset: float) -> None:
    """Places each row's ``size`` best items of ``head`` above the rest of ``out``.

    ``out`` and ``head`` are ``(n, n_tgt)`` float32; ``head`` is max-normalised
    (entries in ``[-1, 1]``), ``offset`` above every entry of ``out`` + 1. An item is
    lifted when its head score is positive and at least the row's ``size``-th
    largest (ties at the cut all lifted): its score becomes ``offset + head``, so the
    lifted items lead in the head's order and the others keep theirs."""
    n_tgt = head.shape[1]
    if n_tgt == 0:
        return
    size = min(size, n_tgt)
    # the size-th largest, as the size-th smallest of the negated row: numpy's partition
    # near a row's end is slow over the many equal zeros of a sparse product (3.2 ms
    # against 0.15 ms at 100 k items, 7x over a validation batch)
    cut = -np.partition(-head, size - 1, axis=1)[:, size - 1 : size]  # (n, 1)
    lifted = (head > 0) & (head >= cut)  # (n, n_tgt)
    out[lifted] = np.float32(offset) + head[lifted]


# Rows of a history batch scored per pass of ``_add_scaled_product``: bounds its dense
# float64 accumulator to 32 MiB whatever the batch.
_PRODUCT_BLOCK_FLOATS = 1 << 22


def _add_scaled_product(out: np.ndarray, hist: Any, matrix: Any, weight: float,
                        normalised: np.ndarray | None = None) -> None:
    """``out += weight * p / max_j |p_j|`` row by row, ``p = hist @ matrix``.

    ``hist`` is a ``(n, n_src)`` csr history batch, ``matrix`` a ``(n_src, n_tgt)``
    csr component, ``out`` ``(n, n_tgt)`` float32; an all-zero row of ``p`` adds
    nothing (nor does ``weight`` 0). ``normalised`` (``(n, n_tgt)`` float32, or
    ``None``) also receives ``p / max_j |p_j|`` from the same product: the head's
    scores, the same float32 values a product of its own at weight 1 would give.
    The product is the history rows' entries of ``matrix`` gathered and
    summed per target column (``bincount``, float64): ``O(h x per_row)`` for a
    history of ``h`` items plus one pass over the row's ``n_tgt`` scores, with no
    sparse-product bookkeeping (2x faster than ``hist @ matrix`` for one query at
    100 k items). One formula for any ``n``, so a served query scores as offline."""
    n, n_tgt = out.shape
    step = max(1, _PRODUCT_BLOCK_FLOATS // max(1, n_tgt))
    for start in range(0, n, step):
        block = hist if step >= n else hist[start : start + step]
        src = block.indices.astype(np.int64)  # (h,) source positions, row-major
        lens = (matrix.indptr[src + 1] - matrix.indptr[src]).astype(np.int64)  # (h,)
        if lens.sum() == 0:
            continue
        first = np.repeat(matrix.indptr[src].astype(np.int64) - (np.cumsum(lens) - lens), lens)
        entries = first + np.arange(int(lens.sum()))  # (e,) positions in matrix.data
        owner = np.repeat(np.repeat(np.arange(block.shape[0]), np.diff(block.indptr)), lens)  # (e,)
        weights = matrix.data[entries].astype(np.float64) * np.repeat(block.data.astype(np.float64), lens)
        part = np.bincount(owner * n_tgt + matrix.indices[entries], weights=weights,
                           minlength=block.shape[0] * n_tgt).reshape(block.shape[0], n_tgt)
        top = np.abs(part).max(axis=1, keepdims=True)  # (m, 1)
        if normalised is not None:
            unit = np.divide(1.0, top, out=top.copy(), where=top > 0)
            normalised[start : start + step] = part * unit
        if weight:
            scale = np.divide(float(weight), top, out=top, where=top > 0)
            part *= scale
            out[start : start + step] += part.astype(np.float32)


@dataclass(frozen=True)
class DomainTransfer:
    """Item-to-item transfer into one target domain, aligned to an artifact's tables:
    row ``i`` of every matrix is item ``i`` of the source domain's item table, column
    ``j`` item ``j`` of the target's. A user without target history but with a source
    history (a known cold user, or a history given at query time) is scored by it.

    Attributes:
        source: the source domain.
        target: the target domain.
        scorer: ``scorer.src_item_ids`` / ``tgt_item_ids`` equal the two item tables.
        item_emb_t: ``(d, n_tgt)`` C-contiguous float32, the target's item embeddings
            transposed, for a scorer with an embedding term (serving sets it at load;
            ``None`` otherwise).
    """

    source: str
    target: str
    scorer: ItemToItemScorer
    item_emb_t: np.ndarray | None = None

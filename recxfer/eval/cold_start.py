"""Cold-start evaluation of one target domain: the model against popularity."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from recxfer.eval.protocol import DEFAULT_KS, full_ranking_metrics, full_ranking_metrics_scores
from recxfer.eval.scoring import domain_score_fn
from recxfer.types import DomainEmbeddings, DomainTransfer


def relevant_positions(
    rows: pd.DataFrame, users: np.ndarray, item_ids: np.ndarray
) -> tuple[list[np.ndarray], np.ndarray]:
    """Per user of ``users`` (in order), the catalogue positions of their held-out
    items (``rows``' distinct ``item_id``s, first-seen order, those outside
    ``item_ids`` left out), and ``(n_users,)`` counts of their distinct held-out
    items (the left-out ones included): one vectorised pass over the rows."""
    pairs = rows[["user_id", "item_id"]].drop_duplicates()
    owner = pd.Index(users, dtype=object).get_indexer(pairs["user_id"])  # (n_pairs,)
    pos = pd.Index(item_ids).get_indexer(pairs["item_id"])
    known = owner >= 0
    n_rel = np.bincount(owner[known], minlength=len(users))
    ok = known & (pos >= 0)
    order = np.argsort(owner[ok], kind="stable")
    split_at = np.cumsum(np.bincount(owner[ok], minlength=len(users)))[:-1]
    return np.split(pos[ok][order].astype(np.int64), split_at), n_rel


def evaluate_cold_start(
    emb: DomainEmbeddings, heldout: pd.DataFrame, ks: Sequence[int] = DEFAULT_KS,
    transfer: DomainTransfer | None = None, source: DomainEmbeddings | None = None,
) -> dict[str, dict[str, float]]:
    """Full-ranking metrics of held-out users, for the model and for popularity.

    Args:
        emb: the domain's servable embeddings (cold users carry transferred rows).
        heldout: the users' held-out rows (``user_id``, ``item_id``) in ``emb.domain``.
        transfer, source: the domain's item-to-item transfer and its source domain's
            tables: cold users with a source history are scored by it, as served
            (``recxfer.eval.scoring``).

    Returns:
        ``{"model": metrics, "popularity": metrics}`` (see ``full_ranking_metrics``);
        each user's training items in the domain are excluded from both rankings.

    Raises:
        ValueError: a held-out user has no embedding in the domain.
    """
    user_index = pd.Index(emb.user_ids)
    item_index = pd.Index(emb.item_ids)
    users = np.sort(np.asarray(pd.unique(heldout["user_id"]), dtype=object))  # groupby order
    rows = user_index.get_indexer(pd.Index(users, dtype=object))
    if (rows < 0).any():
        missing = users[rows < 0]
        raise ValueError(
            f"{emb.domain}: {len(missing)} held-out user(s) have no embedding, first {missing[0]!r}"
        )
    relevant, n_relevant = relevant_positions(heldout, users, item_index)
    exclude = emb.seen.rows(rows)
    score = domain_score_fn(emb, transfer, source)
    model = full_ranking_metrics_scores(lambda r: score(rows[r]), len(rows), relevant, ks, exclude,
                                        n_relevant)
    pop_items = emb.item_popularity.astype(np.float32)[:, None]  # (n_items, 1): score = count
    pop_users = np.ones((len(rows), 1), dtype=np.float32)
    popularity = full_ranking_metrics(pop_users, pop_items, relevant, ks, exclude, n_relevant)
    return {"model": model, "popularity": popularity}

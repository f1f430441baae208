"""Cold-start evaluation of one target domain: the model against popularity."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from recxfer.eval.protocol import DEFAULT_KS, full_ranking_metrics, full_ranking_metrics_scores
from recxfer.eval.scoring import domain_score_fn
from recxfer.types import DomainEmbeddings, DomainTransfer


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
    groups = heldout.groupby("user_id")["item_id"].unique()
    rows = user_index.get_indexer(groups.index)
    if (rows < 0).any():
        missing = groups.index[rows < 0]
        raise ValueError(
            f"{emb.domain}: {len(missing)} held-out user(s) have no embedding, first {missing[0]!r}"
        )
    relevant = []
    for items in groups.to_numpy():
        pos = item_index.get_indexer(items)
        relevant.append(pos[pos >= 0].astype(np.int64))
    n_relevant = np.array([len(items) for items in groups.to_numpy()])
    exclude = emb.seen.rows(rows)
    score = domain_score_fn(emb, transfer, source)
    model = full_ranking_metrics_scores(lambda r: score(rows[r]), len(rows), relevant, ks, exclude,
                                        n_relevant)
    pop_items = emb.item_popularity.astype(np.float32)[:, None]  # (n_items, 1): score = count
    pop_users = np.ones((len(rows), 1), dtype=np.float32)
    popularity = full_ranking_metrics(pop_users, pop_items, relevant, ks, exclude, n_relevant)
    return {"model": model, "popularity": popularity}

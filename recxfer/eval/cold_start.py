"""Cold-start evaluation of one target domain: the model against popularity."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from recxfer.eval.protocol import DEFAULT_KS, full_ranking_metrics
from recxfer.types import DomainEmbeddings


def evaluate_cold_start(
    emb: DomainEmbeddings, heldout: pd.DataFrame, ks: Sequence[int] = DEFAULT_KS
) -> dict[str, dict[str, float]]:
    """Full-ranking metrics of held-out users, for the model and for popularity.

    Args:
        emb: the domain's servable embeddings (cold users carry transferred rows).
        heldout: the users' held-out rows (``user_id``, ``item_id``) in ``emb.domain``.

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
    model = full_ranking_metrics(emb.user_emb[rows], emb.item_emb, relevant, ks, exclude, n_relevant)
    pop_items = emb.item_popularity.astype(np.float32)[:, None]  # (n_items, 1): score = count
    pop_users = np.ones((len(rows), 1), dtype=np.float32)
    popularity = full_ranking_metrics(pop_users, pop_items, relevant, ks, exclude, n_relevant)
    return {"model": model, "popularity": popularity}

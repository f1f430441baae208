"""Scores of a domain's users as serving computes them: the embedding inner product,
or, for a user without target history but with a source history, the domain's
item-to-item transfer (``DomainTransfer``) over that history. Offline reports and
the server use this one rule (``recxfer/serve/model.py`` mirrors it for requests).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from recxfer.types import DomainEmbeddings, DomainTransfer, UserOrigin

ScoreFn = Callable[[np.ndarray], np.ndarray]


def transfer_histories(
    emb: DomainEmbeddings, transfer: DomainTransfer | None, source: DomainEmbeddings | None
) -> list[np.ndarray] | None:
    """Per user of ``emb`` (``n_users`` entries): the source item positions the
    transfer scores them by, empty for users it does not serve (warm users, users
    unknown in the source); ``None`` without a transfer."""
    if transfer is None or source is None:
        return None
    if source.domain != transfer.source or emb.domain != transfer.target:
        raise ValueError(f"transfer {transfer.source}->{transfer.target} given for "
                         f"{source.domain}->{emb.domain}")
    src_rows = pd.Index(source.user_ids).get_indexer(pd.Index(emb.user_ids))  # (n_users,)
    empty = np.zeros(0, np.int64)
    cold = np.asarray(emb.user_origin == UserOrigin.TRANSFER.value)
    return [source.seen.row(int(r)) if (c and r >= 0) else empty for r, c in zip(src_rows, cold)]


def domain_score_fn(
    emb: DomainEmbeddings, transfer: DomainTransfer | None = None,
    source: DomainEmbeddings | None = None,
) -> ScoreFn:
    """``fn(user_rows) -> (n, n_items)`` float32 scores of users of ``emb`` at
    ``user_rows`` (``-1``: an unknown user, scored by the item popularity)."""
    histories = transfer_histories(emb, transfer, source)
    items = np.asarray(emb.item_emb, np.float32)  # (n_items, d)
    popularity = emb.item_popularity.astype(np.float32)  # (n_items,)

    def score(user_rows: np.ndarray) -> np.ndarray:
        user_rows = np.asarray(user_rows, np.int64)
        known = user_rows >= 0
        out = np.empty((len(user_rows), len(items)), np.float32)
        out[known] = np.asarray(emb.user_emb[user_rows[known]], np.float32) @ items.T
        out[~known] = popularity[None, :]
        if histories is not None:
            pick = [i for i, r in enumerate(user_rows) if r >= 0 and len(histories[r])]
            if pick:
                hist = transfer.scorer.history_matrix([histories[user_rows[i]] for i in pick])
                out[pick] = transfer.scorer.score(hist, emb.user_emb[user_rows[pick]], emb.item_emb)
        return out

    return score

"""Evaluate any model's embeddings on held-out rows that were not made for it.

``evaluate_cold_start`` assumes the model was trained on the split it is scored
on. The nightly job also scores the *production* artifact on the new night's
split: its users and items may differ from the split's, and its own "seen" lists
come from another training set. ``evaluate_heldout`` therefore takes the items to
exclude from the split's training rows and has an explicit policy for held-out
users the model does not know.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from recxfer.eval.protocol import DEFAULT_KS, full_ranking_metrics, full_ranking_metrics_scores
from recxfer.eval.scoring import domain_score_fn
from recxfer.types import DomainEmbeddings, DomainTransfer

UNKNOWN_USER_POLICIES = ("error", "popularity", "miss")


def _positions(index: pd.Index, values: np.ndarray) -> np.ndarray:
    pos = index.get_indexer(values)
    return pos[pos >= 0].astype(np.int64)


def evaluate_heldout(
    emb: DomainEmbeddings,
    heldout: pd.DataFrame,
    ks: Sequence[int] = DEFAULT_KS,
    exclude: pd.DataFrame | None = None,
    unknown_users: str = "error",
    transfer: DomainTransfer | None = None,
    source: DomainEmbeddings | None = None,
    popularity: np.ndarray | None = None,
) -> dict[str, dict[str, float]]:
    """Full-ranking metrics of the held-out users, for the model and for popularity.

    Args:
        emb: the domain's embeddings (any model: freshly trained or a stored artifact).
        heldout: held-out rows (``user_id``, ``item_id``) in ``emb.domain``; items
            missing from ``emb``'s catalogue count as relevant but unrankable (misses).
        exclude: rows (``user_id``, ``item_id``) whose items are removed from each
            user's ranking (the split's training rows of the domain); ``None`` uses
            ``emb.seen``.
        unknown_users: what a held-out user without a row in ``emb`` gets:
            ``"error"`` raises, ``"popularity"`` ranks ``emb``'s catalogue by its
            training popularity (what a service falling back to popularity would
            answer), ``"miss"`` scores zero on every metric (what a service that
            answers "not found" delivers).
        transfer, source: the domain's item-to-item transfer and its source tables
            (cold users with a source history are scored by it, as served).
        popularity: ``(n_items,)`` counts the popularity baseline ranks ``emb``'s
            catalogue by; ``None``: ``emb.item_popularity`` (what the model counted
            while training). ``evaluate_on_split`` passes the split's training counts.

    Returns:
        ``{"model": metrics, "popularity": metrics}``; metrics as in
        ``full_ranking_metrics`` plus ``known_users`` (held-out users ``emb`` has a
        row for). The popularity row ranks by ``popularity`` for everyone.

    Raises:
        ValueError: unknown policy, or an unknown user with ``"error"``.
    """
    if unknown_users not in UNKNOWN_USER_POLICIES:
        raise ValueError(f"unknown_users must be one of {UNKNOWN_USER_POLICIES}, got {unknown_users!r}")
    user_index, item_index = pd.Index(emb.user_ids), pd.Index(emb.item_ids)
    groups = heldout.groupby("user_id")["item_id"].unique()
    if len(groups) == 0:
        raise ValueError(f"{emb.domain}: no held-out users to evaluate")
    rows = user_index.get_indexer(groups.index)  # (n_users,), -1 when unknown
    known = rows >= 0
    if unknown_users == "error" and not known.all():
        missing = groups.index[~known]
        raise ValueError(
            f"{emb.domain}: {len(missing)} held-out user(s) have no embedding, first {missing[0]!r}"
        )
    relevant = [_positions(item_index, items) for items in groups.to_numpy()]
    n_relevant = np.array([len(items) for items in groups.to_numpy()])
    if exclude is None:
        banned = [emb.seen.row(int(r)) if r >= 0 else np.zeros(0, np.int64) for r in rows]
    else:
        seen = exclude[exclude["user_id"].isin(groups.index)].groupby("user_id")["item_id"].unique()
        banned = [
            _positions(item_index, seen[user]) if user in seen.index else np.zeros(0, np.int64)
            for user in groups.index
        ]
    counts = emb.item_popularity if popularity is None else np.asarray(popularity)
    if counts.shape != (len(emb.item_ids),):
        raise ValueError(f"popularity has shape {counts.shape}, want ({len(emb.item_ids)},)")
    popularity_col = counts.astype(np.float32)[:, None]  # (n_items, 1)
    pop_users = np.ones((len(rows), 1), dtype=np.float32)
    popularity = full_ranking_metrics(pop_users, popularity_col, relevant, ks, banned, n_relevant)

    n_known = int(known.sum())
    score = domain_score_fn(emb, transfer, source)  # row -1: popularity
    if n_known == len(rows) or unknown_users == "popularity":
        model = full_ranking_metrics_scores(lambda r: score(rows[r]), len(rows), relevant, ks,
                                            banned, n_relevant)
    elif n_known == 0:  # "miss" and nobody known: every metric is zero
        model = {key: 0.0 for key in popularity}
        model["users"] = float(len(rows))
    else:  # "miss": mean over the known users, unknown users add zeros
        pick = np.flatnonzero(known)
        model = full_ranking_metrics_scores(
            lambda r: score(rows[pick[r]]), len(pick), [relevant[i] for i in pick], ks,
            [banned[i] for i in pick], n_relevant[pick],
        )
        share = n_known / len(rows)
        model = {key: value * share for key, value in model.items()}
        model["users"] = float(len(rows))
    model["known_users"] = float(n_known)
    return {"model": model, "popularity": popularity}


def split_popularity(item_ids: np.ndarray, train: pd.DataFrame) -> np.ndarray:
    """``(len(item_ids),)`` int64: how many of the split's training rows ``train``
    (``item_id``; one domain's) name each item of the catalogue ``item_ids``.

    The popularity baseline of every report (``evaluate_on_split``): a model that
    counts the rows every other model was trained on. Not ``item_popularity`` of a
    stored artifact, which counts the rows *it* trained on (a refit: every row,
    the held-out ones included).
    """
    counts = train["item_id"].value_counts()
    return counts.reindex(pd.Index(item_ids), fill_value=0).to_numpy(dtype=np.int64)


def evaluate_on_split(
    emb: DomainEmbeddings,
    heldout: pd.DataFrame,
    ks: Sequence[int],
    train: pd.DataFrame,
    transfer: DomainTransfer | None = None,
    source: DomainEmbeddings | None = None,
    unknown_users: str = "error",
) -> dict[str, dict[str, float]]:
    """The model and the popularity baseline on held-out rows of a split: the one
    evaluation behind the nightly report and ``recxfer evaluate``.

    Each user's training rows of the split in ``emb.domain`` are excluded from
    both rankings, and popularity ranks ``emb``'s catalogue by those rows' counts
    (``split_popularity``), so the figures depend on the split, never on what a
    stored artifact happened to count. Ties are broken by the seeded per-user
    order of ``full_ranking_metrics_scores`` (seed 0): same rows, same figures.

    Args:
        train: the split's training rows (``domain``, ``user_id``, ``item_id``; any
            domains, ``emb.domain``'s are used).
        heldout, ks, transfer, source, unknown_users: as in ``evaluate_heldout``.
    """
    rows = train.loc[train["domain"] == emb.domain, ["user_id", "item_id"]]
    return evaluate_heldout(emb, heldout, ks, exclude=rows, unknown_users=unknown_users,
                            transfer=transfer, source=source,
                            popularity=split_popularity(emb.item_ids, rows))


def score_samples(
    emb: DomainEmbeddings, heldout: pd.DataFrame, n_random: int = 20, seed: int = 0
) -> dict[str, np.ndarray]:
    """Scores for a score-distribution plot.

    Returns:
        ``{"heldout": (n_pairs,), "random": (n_known_users * n_random,)}`` float32:
        ``<user, item>`` of held-out pairs (user and item known to ``emb``) and of
        the same users with items drawn uniformly from the catalogue.
    """
    user_pos = pd.Index(emb.user_ids).get_indexer(heldout["user_id"].to_numpy())
    item_pos = pd.Index(emb.item_ids).get_indexer(heldout["item_id"].to_numpy())
    ok = (user_pos >= 0) & (item_pos >= 0)
    users, items = user_pos[ok], item_pos[ok]
    pos_scores = np.einsum("nd,nd->n", emb.user_emb[users], emb.item_emb[items])  # (n_pairs,)
    rng = np.random.default_rng(seed)
    uniq = np.unique(users)
    rand_items = rng.integers(0, len(emb.item_ids), size=(len(uniq), n_random))  # (U, n_random)
    rand_scores = np.einsum("ud,urd->ur", emb.user_emb[uniq], emb.item_emb[rand_items])
    return {
        "heldout": pos_scores.astype(np.float32),
        "random": rand_scores.reshape(-1).astype(np.float32),
    }

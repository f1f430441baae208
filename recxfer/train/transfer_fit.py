"""Fit the item-to-item transfer of one target for the product job and align it
to the artifact's item tables (the conversion from the training form to the
servable ``DomainTransfer``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recxfer.transfer.blend import BlendConfig, fit_blend
from recxfer.transfer.interactions import build_matrices
from recxfer.types import DomainTransfer, DAEScorer, ItemToItemScorer

# (n_valid, n_tgt) scores of the validation users, columns in the *matrices'* target
# order (``tgt_item_ids``), -> higher is better.
ScoresValidator = Callable[[np.ndarray, np.ndarray], float]


def align_scorer(scorer: ItemToItemScorer, src_item_ids: np.ndarray, tgt_item_ids: np.ndarray) -> ItemToItemScorer:
    """``scorer`` re-indexed onto other item tables: rows onto ``src_item_ids``,
    columns onto ``tgt_item_ids`` (items the scorer lacks get zero rows/columns,
    items the tables lack are dropped)."""
    row_of = pd.Index(scorer.src_item_ids).get_indexer(pd.Index(src_item_ids))  # (n_src',)
    col_of = pd.Index(tgt_item_ids).get_indexer(pd.Index(scorer.tgt_item_ids))  # (n_tgt,)
    rows_have = np.flatnonzero(row_of >= 0)
    pick = sp.csr_matrix((np.ones(len(rows_have), np.float32), (rows_have, row_of[rows_have])),
                         shape=(len(src_item_ids), len(scorer.src_item_ids)))
    cols_have = np.flatnonzero(col_of >= 0)
    place = sp.csr_matrix((np.ones(len(cols_have), np.float32), (cols_have, col_of[cols_have])),
                          shape=(len(scorer.tgt_item_ids), len(tgt_item_ids)))
    matrices = tuple(sp.csr_matrix(pick @ m @ place, dtype=np.float32) for m in scorer.matrices)
    popularity = np.zeros(len(tgt_item_ids), np.float32)
    popularity[col_of[cols_have]] = scorer.popularity[cols_have]
    dae = None if scorer.dae is None else _align_dae(scorer.dae, row_of, col_of, len(tgt_item_ids))
    return ItemToItemScorer(np.asarray(src_item_ids, dtype=object), np.asarray(tgt_item_ids, dtype=object),
                            scorer.names, matrices, scorer.weights, popularity, scorer.pop_weight,
                            scorer.embedding_weight, dae, scorer.dae_weight, scorer.head, scorer.head_size)


def _align_dae(dae: DAEScorer, row_of: np.ndarray, col_of: np.ndarray, n_tgt: int) -> DAEScorer:
    """``dae`` on other tables: ``row_of`` ``(n_src',)`` the network's source row
    of each new source item (-1: none, a zero row), ``col_of`` ``(n_tgt_old,)`` the new
    column of each old target item (-1: dropped). New target items get a zero output
    row and a bias 50 below the lowest, so their score is ``exp(-50)``-small."""
    w_in = np.zeros((len(row_of), dae.w_in.shape[1]), np.float32)
    w_in[row_of >= 0] = dae.w_in[row_of[row_of >= 0]]
    w_out = np.zeros((n_tgt, dae.w_out.shape[1]), np.float32)
    b_out = np.full(n_tgt, float(dae.b_out.min(initial=0.0)) - 50.0, np.float32)
    have = col_of >= 0
    w_out[col_of[have]] = dae.w_out[have]
    b_out[col_of[have]] = dae.b_out[have]
    return DAEScorer(w_in, dae.b_in.copy(), w_out, b_out)


def fit_domain_transfer(
    train: pd.DataFrame,
    source: str,
    target: str,
    config: BlendConfig,
    src_item_ids: np.ndarray,
    tgt_item_ids: np.ndarray,
    valid_users: Sequence[str] = (),
    validator: ScoresValidator | None = None,
    valid_user_emb: np.ndarray | None = None,
    tgt_item_emb: np.ndarray | None = None,
) -> tuple[DomainTransfer, dict]:
    """The ``blend`` transfer ``source -> target`` on ``train``, chosen on the
    ``valid_users`` by ``validator(scores, tgt_item_ids)``, aligned to the tables.
    ``valid_user_emb`` (``(n_valid, d)``) and ``tgt_item_emb`` (``(len(tgt_item_ids), d)``,
    the tables' order) add the embedding model's scores to the search (a hybrid).

    Returns:
        ``(transfer, info)``: info says what validation chose.
    """
    valid_users = np.asarray(list(valid_users), dtype=object)
    matrices = build_matrices(train, source, target, extra_users=list(valid_users))
    valid_hist, score_validator = None, None
    if validator is not None and len(valid_users):
        valid_hist = matrices.src[matrices.user_rows(valid_users)]

        def score_validator(scores: np.ndarray) -> float:
            return validator(scores, matrices.tgt_item_ids)

    emb_scores = None
    if valid_hist is not None and valid_user_emb is not None and tgt_item_emb is not None:
        cols = pd.Index(tgt_item_ids).get_indexer(pd.Index(matrices.tgt_item_ids))  # (n_tgt,)
        if (cols < 0).any():
            raise ValueError(f"{int((cols < 0).sum())} target items have no embedding")
        emb_scores = np.asarray(valid_user_emb, np.float32) @ np.asarray(tgt_item_emb[cols], np.float32).T
    fitted = fit_blend(matrices, config, valid_hist, score_validator, emb_scores)
    scorer = align_scorer(fitted.scorer, src_item_ids, tgt_item_ids)
    return DomainTransfer(source, target, scorer), fitted.info


def refit_domain_transfer(
    train: pd.DataFrame,
    fitted: DomainTransfer,
    info: dict,
    config: BlendConfig,
    src_item_ids: np.ndarray,
    tgt_item_ids: np.ndarray,
) -> DomainTransfer:
    """``fitted`` (chosen on validation by ``fit_domain_transfer``, which returned
    ``info``) rebuilt on ``train`` (e.g. every row, validation users included) with
    the same choices: each component's hyper-parameter and the users' weighting
    (``user_alpha``) from ``info`` (``dae``: as many networks, each trained for its
    best epoch) and the weights of popularity, the
    embedding term, the dae term and every component from ``fitted``, and its head
    (the same component and size).
    Nothing is searched (there is nothing left to validate on). A component that
    cannot be built on the new catalogue is left out, as in the first fit.
    """
    chosen = info.get("components", {})
    names = [n for n in fitted.scorer.names if n in config.components]
    if fitted.scorer.dae is not None and "dae" in config.components:
        names.append("dae")
    ridge, itemknn, dae = config.ridge, config.itemknn, config.dae
    if "best_epochs" in chosen.get("dae", {}):  # one network per entry, each for its chosen epochs
        dae = dataclasses.replace(dae, fixed_epochs=tuple(int(e) for e in chosen["dae"]["best_epochs"]))
    if "l2" in chosen.get("ridge", {}):
        ridge = dataclasses.replace(ridge, l2=float(chosen["ridge"]["l2"]), l2_grid=())
    if "shrink" in chosen.get("itemknn", {}):
        itemknn = dataclasses.replace(itemknn, shrink=float(chosen["itemknn"]["shrink"]), shrink_grid=())
    twohop = config.twohop
    if "shrink" in chosen.get("twohop", {}):
        twohop = dataclasses.replace(twohop, shrink=float(chosen["twohop"]["shrink"]), shrink_grid=())
    # the users' weighting of ridge, itemknn and twohop chosen with the weights
    alphas = (float(info["user_alpha"]),) if "user_alpha" in info else config.user_alpha_grid
    weight_of = dict(zip(fitted.scorer.names, fitted.scorer.weights))
    matrices = build_matrices(train, fitted.source, fitted.target)
    scorer = ItemToItemScorer(matrices.src_item_ids, matrices.tgt_item_ids, (), (), (),
                              matrices.target_popularity(), fitted.scorer.pop_weight,
                              fitted.scorer.embedding_weight)
    if names:
        cfg = dataclasses.replace(config, components=tuple(names), ridge=ridge, itemknn=itemknn, dae=dae,
                                  twohop=twohop, user_alpha_grid=alphas)
        rebuilt = fit_blend(matrices, cfg).scorer  # no validator: every component at its default
        scorer = ItemToItemScorer(
            rebuilt.src_item_ids, rebuilt.tgt_item_ids, rebuilt.names, rebuilt.matrices,
            tuple(float(weight_of[n]) for n in rebuilt.names), rebuilt.popularity,
            fitted.scorer.pop_weight, fitted.scorer.embedding_weight,
            rebuilt.dae, fitted.scorer.dae_weight if rebuilt.dae is not None else 0.0,
            *((fitted.scorer.head, fitted.scorer.head_size) if fitted.scorer.head in rebuilt.names else ()),
        )
    return DomainTransfer(fitted.source, fitted.target, align_scorer(scorer, src_item_ids, tgt_item_ids))

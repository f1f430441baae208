"""The blend transfer's refit on more rows (recxfer/train/transfer_fit.py): the
choices validation made are kept, the matrices rebuilt on the new rows."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from recxfer.data.synthetic import DomainSpec, SyntheticConfig, generate
from recxfer.train.transfer_fit import fit_domain_transfer, refit_domain_transfer
from recxfer.transfer.blend import BlendConfig
from recxfer.transfer.itemknn import ItemKNNConfig
from recxfer.transfer.ridge import RidgeConfig
from recxfer.transfer.twohop import TwoHopConfig

SOURCE, TARGET = "video", "books"
CONFIG = BlendConfig(ridge=RidgeConfig(l2_grid=(10.0, 1000.0)), itemknn=ItemKNNConfig(shrink_grid=(0.0, 200.0)),
                     weight_grid=(0.0, 1.0), pop_grid=(0.0, 0.3))
# user weights on, every stage-2 gain taken: the refit must carry user_alpha and the
# twohop shrinkage it chose
WEIGHTED = dataclasses.replace(CONFIG, user_alpha_grid=(0.5,), twohop=TwoHopConfig(shrink_grid=(0.0, 50.0)),
                               twohop_grid=(1.0, 3.0), min_gain=0.0)


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    frame, _ = generate(SyntheticConfig(
        n_users=300, domains=(DomainSpec(SOURCE, 60, 1.0, 8.0), DomainSpec(TARGET, 40, 0.7, 5.0)), seed=3))
    return frame


def _fit(rows: pd.DataFrame, config: BlendConfig = CONFIG):
    books = rows[rows["domain"] == TARGET]
    valid_users = np.sort(books["user_id"].unique())[:40]
    train = rows[~((rows["domain"] == TARGET) & rows["user_id"].isin(valid_users))]
    held = books[books["user_id"].isin(valid_users)]
    truth = held.groupby("user_id")["item_id"].agg(set).reindex(valid_users)

    def validator(scores: np.ndarray, item_ids: np.ndarray) -> float:  # hits@5
        top = np.argsort(-scores, axis=1)[:, :5]
        return float(np.mean([len(set(item_ids[t]) & s) for t, s in zip(top, truth)]))

    src_ids = np.sort(rows.loc[rows["domain"] == SOURCE, "item_id"].unique()).astype(object)
    tgt_ids = np.sort(books["item_id"].unique()).astype(object)
    transfer, info = fit_domain_transfer(train, SOURCE, TARGET, config, src_ids, tgt_ids, valid_users,
                                         validator)
    return train, transfer, info, src_ids, tgt_ids


@pytest.mark.parametrize("config", [CONFIG, WEIGHTED], ids=["plain", "user-weighted"])
def test_refit_on_the_same_rows_reproduces_the_fit(rows, config) -> None:
    train, transfer, info, src_ids, tgt_ids = _fit(rows, config)
    again = refit_domain_transfer(train, transfer, info, config, src_ids, tgt_ids).scorer
    fitted = transfer.scorer
    assert info["user_alpha"] == config.user_alpha_grid[0]
    assert again.names == fitted.names and again.weights == fitted.weights
    assert (again.pop_weight, again.embedding_weight) == (fitted.pop_weight, fitted.embedding_weight)
    for a, b in zip(again.matrices, fitted.matrices):
        np.testing.assert_allclose(a.toarray(), b.toarray(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(again.popularity, fitted.popularity)
    # the dae term: retrained for the chosen epochs on the same rows, the same seed
    assert fitted.dae is not None and again.dae_weight == fitted.dae_weight
    assert info["components"]["dae"]["best_epoch"] >= 1
    for name, array in fitted.dae.arrays.items():
        np.testing.assert_allclose(again.dae.arrays[name], array, rtol=1e-5, atol=1e-6, err_msg=name)


def test_refit_on_every_row_keeps_the_choices_and_learns_the_rows(rows) -> None:
    train, transfer, info, src_ids, tgt_ids = _fit(rows)
    refit = refit_domain_transfer(rows, transfer, info, CONFIG, src_ids, tgt_ids).scorer
    assert refit.names == transfer.scorer.names and refit.weights == transfer.scorer.weights
    books = rows[rows["domain"] == TARGET]
    counts = books.groupby("item_id")["user_id"].nunique().reindex(tgt_ids).fillna(0).to_numpy()
    np.testing.assert_array_equal(refit.popularity, counts)  # the validation users' rows count now
    assert refit.popularity.sum() > transfer.scorer.popularity.sum()


def test_align_scorer_moves_the_dae_network_with_the_items(rows) -> None:
    """Re-indexed onto reversed tables with one unknown item on each side: every
    known (history, item) score is unchanged, the new target item scores ~0."""
    from recxfer.train.transfer_fit import align_scorer

    _, transfer, _, src_ids, tgt_ids = _fit(rows)
    scorer = transfer.scorer
    src2 = np.concatenate([src_ids[::-1], np.array(["new-src"], dtype=object)])
    tgt2 = np.concatenate([np.array(["new-tgt"], dtype=object), tgt_ids[::-1]])
    moved = align_scorer(scorer, src2, tgt2)
    rng = np.random.default_rng(0)
    histories = [rng.choice(len(src_ids), 4, replace=False) for _ in range(5)]
    before = scorer.dae.score(scorer.history_matrix(histories))  # (5, n_tgt)
    pos = {i: j for j, i in enumerate(src2)}
    after = moved.dae.score(moved.history_matrix([np.array([pos[src_ids[i]] for i in h]) for h in histories]))
    np.testing.assert_allclose(after[:, 1:][:, ::-1], before, rtol=1e-5, atol=1e-6)
    assert after[:, 0].max() < 1e-15  # the target item the network never saw
    assert not moved.dae.w_in[-1].any()  # the source item it never saw: a zero row


def test_refit_builds_twohop_with_the_chosen_shrinkage(rows) -> None:
    """A fit without validation weighs twohop 1 at its shrinkage (50); the refit, given
    a config whose default shrinkage differs, rebuilds it at the chosen 50."""
    src_ids = np.sort(rows.loc[rows["domain"] == SOURCE, "item_id"].unique()).astype(object)
    tgt_ids = np.sort(rows.loc[rows["domain"] == TARGET, "item_id"].unique()).astype(object)
    chosen = BlendConfig(components=("itemknn", "twohop"), twohop=TwoHopConfig(shrink=50.0))
    transfer, info = fit_domain_transfer(rows, SOURCE, TARGET, chosen, src_ids, tgt_ids)
    assert transfer.scorer.names == ("itemknn", "twohop") and info["components"]["twohop"] == {"shrink": 50.0}
    other_default = dataclasses.replace(chosen, twohop=TwoHopConfig(shrink=0.0))
    again = refit_domain_transfer(rows, transfer, info, other_default, src_ids, tgt_ids).scorer
    assert again.names == ("itemknn", "twohop") and again.weights == (1.0, 1.0)
    np.testing.assert_allclose(again.matrices[1].toarray(), transfer.scorer.matrices[1].toarray(), rtol=1e-6)
    at_zero = fit_domain_transfer(rows, SOURCE, TARGET, other_default, src_ids, tgt_ids)[0].scorer
    assert not np.allclose(at_zero.matrices[1].toarray(), transfer.scorer.matrices[1].toarray())


def test_refit_and_alignment_keep_the_head(rows) -> None:
    """A head validation chose (here set by hand, on a component of weight 0 too)
    survives the refit on every row and the re-indexing onto the tables."""
    from recxfer.train.transfer_fit import align_scorer

    train, transfer, info, src_ids, tgt_ids = _fit(rows)
    scorer = transfer.scorer
    for name in scorer.names:
        headed = dataclasses.replace(transfer, scorer=dataclasses.replace(scorer, head=name, head_size=3))
        again = refit_domain_transfer(rows, headed, info, CONFIG, src_ids, tgt_ids).scorer
        assert (again.head, again.head_size) == (name, 3) and again.names == scorer.names
        moved = align_scorer(headed.scorer, src_ids[::-1], tgt_ids[::-1])
        assert (moved.head, moved.head_size) == (name, 3)
        history = [np.arange(4)]
        reversed_history = [len(src_ids) - 1 - np.arange(4)]
        np.testing.assert_allclose(moved.score(moved.history_matrix(reversed_history))[:, ::-1],
                                   headed.scorer.score(headed.scorer.history_matrix(history)), rtol=1e-5, atol=1e-6)

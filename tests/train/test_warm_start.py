"""Warm start of the shared model (recxfer/train/warm_start.py): item rows carried
over by (domain, item_id) across an index that adds, drops and reorders items;
other weights copied by name and shape; a weights file read without pickle."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from recxfer.data.synthetic import DomainSpec, SyntheticConfig, generate
from recxfer.train.histories import build_multi_domain_index
from recxfer.train.shared import SharedTrainConfig, train_shared
from recxfer.train.warm_start import (
    ID_TABLE,
    SharedWarmStart,
    apply_warm_start,
    load_weights,
    save_weights,
    weights_of,
)
from recxfer.transfer.shared import SharedModelConfig, SharedTransferModel

SOURCE, TARGET = "video", "books"


@pytest.fixture(scope="module")
def interactions() -> pd.DataFrame:
    frame, _ = generate(SyntheticConfig(
        n_users=120,
        domains=(DomainSpec(SOURCE, 40, 1.0, 8.0), DomainSpec(TARGET, 25, 0.7, 4.0)),
        seed=5,
    ))
    return frame


def _warm_from(model: SharedTransferModel, index) -> SharedWarmStart:
    return SharedWarmStart(weights_of(model), tuple((d, index.items[d].ids) for d in index.domains))


def _row(model: SharedTransferModel, index, domain: str, item_id: str) -> torch.Tensor:
    local = int(np.nonzero(index.items[domain].ids == item_id)[0][0])
    return model.state_dict()[ID_TABLE][index.domain_slice(domain).start + local]


def test_item_rows_follow_their_ids_and_new_items_stay_fresh(interactions) -> None:
    old_index = build_multi_domain_index(interactions, (SOURCE, TARGET), max_history=10)
    torch.manual_seed(0)
    old = SharedTransferModel(old_index.n_items_total, SharedModelConfig(dim=8, pooling="attention"))
    # Tonight: one books item gone, a new books item, and the domains in the other order
    # (so every global position moves).
    gone = old_index.items[TARGET].ids[0]
    tonight = interactions[interactions["item_id"] != gone]
    extra = tonight[tonight["domain"] == TARGET].head(3).assign(item_id="brand-new-item")
    tonight = pd.concat([tonight, extra], ignore_index=True)
    index = build_multi_domain_index(tonight, (TARGET, SOURCE), max_history=10)
    torch.manual_seed(1)
    model = SharedTransferModel(index.n_items_total, SharedModelConfig(dim=8, pooling="attention"))
    fresh = model.state_dict()[ID_TABLE].clone()

    report = apply_warm_start(model, _warm_from(old, old_index), index)

    n_old_books = len(old_index.items[TARGET])
    assert report.item_rows == {TARGET: n_old_books - 1, SOURCE: len(old_index.items[SOURCE])}
    assert report.new_items == {TARGET: 1, SOURCE: 0}
    for domain in (SOURCE, TARGET):  # naive reference: one row at a time, by id
        for item_id in index.items[domain].ids:
            if item_id == "brand-new-item":
                new_pos = index.domain_slice(domain).start + int(
                    np.nonzero(index.items[domain].ids == item_id)[0][0])
                torch.testing.assert_close(_row(model, index, domain, item_id), fresh[new_pos])
            else:
                torch.testing.assert_close(_row(model, index, domain, item_id),
                                           _row(old, old_index, domain, item_id), rtol=0, atol=0)
    torch.testing.assert_close(model.user_encoder.query, old.user_encoder.query, rtol=0, atol=0)
    assert "user_encoder.query" in report.copied and report.skipped == ()


def test_mismatched_shapes_are_skipped_not_forced(interactions) -> None:
    index = build_multi_domain_index(interactions, (SOURCE, TARGET), max_history=10)
    old = SharedTransferModel(index.n_items_total, SharedModelConfig(dim=8, pooling="attention"))
    model = SharedTransferModel(index.n_items_total, SharedModelConfig(dim=16, pooling="mean"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = apply_warm_start(model, _warm_from(old, index), index)
    assert set(report.skipped) == {ID_TABLE, "user_encoder.query"} and report.copied == ()
    assert report.item_rows == {SOURCE: 0, TARGET: 0}
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


def test_id_table_must_match_its_item_ids() -> None:
    with pytest.raises(ValueError, match="has 3 rows but its item ids number 2"):
        SharedWarmStart({ID_TABLE: torch.zeros(3, 4)}, (("books", np.array(["a", "b"], dtype=object)),))
    with pytest.raises(ValueError, match="lack"):
        SharedWarmStart({}, ())


def test_weights_round_trip_and_refuse_pickled_objects(tmp_path, interactions) -> None:
    index = build_multi_domain_index(interactions, (SOURCE, TARGET), max_history=10)
    model = SharedTransferModel(index.n_items_total, SharedModelConfig(dim=8),
                                np.random.default_rng(0).random((index.n_items_total, 12), np.float32))
    weights = weights_of(model)
    assert "item_tower.text_tower.text_emb" not in weights  # frozen text is re-encoded
    save_weights(tmp_path / "w.pt", weights)
    loaded = load_weights(tmp_path / "w.pt")
    assert loaded.keys() == weights.keys()
    for key in weights:
        torch.testing.assert_close(loaded[key], weights[key], rtol=0, atol=0)

    class Payload:  # would run code on unpickling without weights_only
        def __reduce__(self):
            return (print, ("executed",))

    with open(tmp_path / "evil.pt", "wb") as fh:
        pickle.dump({"x": Payload()}, fh, protocol=2)
    with pytest.raises(ValueError, match="not a readable weights file"):
        load_weights(tmp_path / "evil.pt")
    torch.save({"x": [1, 2]}, tmp_path / "list.pt")
    with pytest.raises(ValueError, match="mapping of names to tensors"):
        load_weights(tmp_path / "list.pt")


def test_train_shared_starts_from_the_warm_weights(interactions) -> None:
    index = build_multi_domain_index(interactions, (SOURCE, TARGET), max_history=10)
    base = dict(model=SharedModelConfig(dim=8), batch_size=128, lr=1e-2, device="cpu")
    first = train_shared(index, SOURCE, (TARGET,), SharedTrainConfig(epochs=2, **base))
    warm = _warm_from(first.model, index)
    # No epochs: the result is exactly the warm model.
    none = train_shared(index, SOURCE, (TARGET,), SharedTrainConfig(epochs=0, seed=7, **base), warm=warm)
    for key, value in first.model.state_dict().items():
        torch.testing.assert_close(none.model.state_dict()[key], value, rtol=0, atol=0)
    assert none.warm is not None and none.warm.item_rows[TARGET] == len(index.items[TARGET])
    # One more epoch from warm weights ends with a lower loss than a cold first epoch.
    more = train_shared(index, SOURCE, (TARGET,), SharedTrainConfig(epochs=1, **base), warm=warm)
    assert more.epoch_losses[0] < first.epoch_losses[0]


def test_epochs_must_beat_the_warm_weights(interactions) -> None:
    index = build_multi_domain_index(interactions, (SOURCE, TARGET), max_history=10)
    base = dict(model=SharedModelConfig(dim=8), batch_size=128, lr=1e-2, device="cpu", patience=2)
    first = train_shared(index, SOURCE, (TARGET,), SharedTrainConfig(epochs=1, **base))
    warm = _warm_from(first.model, index)
    scores = iter([0.5, 0.4, 0.3, 0.45])  # the warm weights first, then epochs 0, 1, ...

    kept = train_shared(index, SOURCE, (TARGET,), SharedTrainConfig(epochs=5, **base),
                        lambda model: next(scores), warm=warm)
    assert kept.warm_score == 0.5 and kept.val_scores == [0.4, 0.3] and kept.best_epoch == -1
    for key, value in first.model.state_dict().items():  # stopped after patience; warm weights kept
        torch.testing.assert_close(kept.model.state_dict()[key], value, rtol=0, atol=0)

    better = iter([0.1, 0.2, 0.3])
    trained = train_shared(index, SOURCE, (TARGET,), SharedTrainConfig(epochs=2, **base),
                           lambda model: next(better), warm=warm)
    assert trained.best_epoch == 1 and trained.warm_score == 0.1
    assert not torch.equal(trained.model.state_dict()[ID_TABLE], first.model.state_dict()[ID_TABLE])


def _with_new_item(interactions: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(yesterday, tonight): tonight adds rows of a books item yesterday lacked."""
    books = interactions[interactions["domain"] == TARGET]
    gone = books["item_id"].value_counts().index[0]  # a popular item: many rows to train on
    return interactions[interactions["item_id"] != gone], interactions


def test_kept_warm_weights_still_give_new_items_trained_rows(interactions) -> None:
    """No epoch beats the warm weights: they are restored, but an item new tonight
    keeps the row training gave it (the last epoch's), never its random one."""
    yesterday, tonight = _with_new_item(interactions)
    base = dict(model=SharedModelConfig(dim=8), batch_size=128, lr=1e-2, device="cpu", patience=1)
    old_index = build_multi_domain_index(yesterday, (SOURCE, TARGET), max_history=10)
    first = train_shared(old_index, SOURCE, (TARGET,), SharedTrainConfig(epochs=1, **base))
    index = build_multi_domain_index(tonight, (SOURCE, TARGET), max_history=10)
    new_ids = set(index.items[TARGET].ids) - set(old_index.items[TARGET].ids)
    assert len(new_ids) == 1
    new_id = new_ids.pop()
    warm = _warm_from(first.model, old_index)

    # The random row the new item starts from (same seed, same construction as train_shared).
    torch.manual_seed(0)
    fresh = SharedTransferModel(index.n_items_total, SharedModelConfig(dim=8))
    apply_warm_start(fresh, warm, index)
    start_row = _row(fresh, index, TARGET, new_id).clone()
    none = train_shared(index, SOURCE, (TARGET,), SharedTrainConfig(epochs=0, **base), warm=warm)
    torch.testing.assert_close(_row(none.model, index, TARGET, new_id), start_row, rtol=0, atol=0)
    assert len(none.untrained_positions) == 1  # no epoch ran: flagged as untrained

    scores = iter([0.9, 0.1, 0.1, 0.1])  # warm weights first: no epoch beats them
    kept = train_shared(index, SOURCE, (TARGET,), SharedTrainConfig(epochs=3, **base),
                        lambda model: next(scores), warm=warm)
    assert kept.best_epoch == -1 and len(kept.epoch_losses) == 1  # patience 1: one epoch ran
    assert len(kept.untrained_positions) == 0
    assert not torch.allclose(_row(kept.model, index, TARGET, new_id), start_row)
    for item_id in old_index.items[TARGET].ids[:20]:  # known items: the warm rows, exactly
        torch.testing.assert_close(_row(kept.model, index, TARGET, item_id),
                                   _row(first.model, old_index, TARGET, item_id), rtol=0, atol=0)


def test_no_epoch_leaves_new_items_out_of_the_export(interactions) -> None:
    """Zero epochs from a warm start (a refit of 0 epochs): the new item's row is
    random, so it is left out of the tables and the weights, counted and logged."""
    from recxfer.train.shared_domains import SharedJobConfig, train_shared_cross_domain

    yesterday, tonight = _with_new_item(interactions)
    base = dict(model=SharedModelConfig(dim=8), batch_size=128, lr=1e-2, device="cpu")
    job = SharedJobConfig(SharedTrainConfig(epochs=1, **base), use_text=False)
    first = train_shared_cross_domain(yesterday, SOURCE, (TARGET,), job)
    assert first.dropped_items == {SOURCE: 0, TARGET: 0}
    zero = SharedJobConfig(SharedTrainConfig(epochs=0, **base), use_text=False)
    out = train_shared_cross_domain(tonight, SOURCE, (TARGET,), zero, warm=first.warm_start())
    assert out.dropped_items == {SOURCE: 0, TARGET: 1}
    books = out.domains[TARGET]
    assert set(books.item_ids) == set(first.domains[TARGET].item_ids)
    assert len(books.item_emb) == len(books.item_ids) == len(books.item_popularity)
    assert books.seen.indices.max() < len(books.item_ids)
    assert out.weights[ID_TABLE].shape[0] == sum(len(out.domains[d].item_ids) for d in out.domain_order)
    out.warm_start()  # consistent: a later run can start from it
    # One epoch instead: every item is trained and exported.
    one = train_shared_cross_domain(tonight, SOURCE, (TARGET,), job, warm=first.warm_start())
    assert one.dropped_items == {SOURCE: 0, TARGET: 0}
    assert len(one.domains[TARGET].item_ids) == len(books.item_ids) + 1

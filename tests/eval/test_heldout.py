"""evaluate_heldout: scoring a model on held-out rows of another split (unknown users,
exclusions from the split's training rows) against answers known by construction, on the
tiny domain of tests/eval/conftest.py (``make_domain``, ``heldout``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recxfer.eval.cold_start import evaluate_cold_start
from recxfer.eval.heldout import evaluate_heldout, evaluate_on_split, score_samples, split_popularity


def test_matches_evaluate_cold_start_when_the_model_knows_everyone(make_domain, heldout) -> None:
    emb = make_domain()
    expected = evaluate_cold_start(emb, heldout, ks=(1, 10))
    got = evaluate_heldout(emb, heldout, ks=(1, 10))
    assert got["model"].pop("known_users") == 3
    assert got == expected
    # The same exclusions given as the split's training rows.
    train = pd.DataFrame({"user_id": ["u0", "u0", "u2", "u2", "u2"], "item_id": ["i10", "i11", "i0", "i1", "i2"]})
    got = evaluate_heldout(emb, heldout, ks=(1, 10), exclude=train)
    got["model"].pop("known_users")
    assert got == expected


def test_exclusions_come_from_the_given_rows_not_from_the_model(make_domain, heldout) -> None:
    emb = make_domain()
    # u1's held-out item i25 is "seen" in this split's training rows: it can't be ranked.
    train = pd.DataFrame({"user_id": ["u1"], "item_id": ["i25"]})
    got = evaluate_heldout(emb, heldout[heldout["user_id"] == "u1"], ks=(1,), exclude=train)
    assert got["model"]["recall@1"] == 0.0


HELD_NEW = pd.DataFrame({"user_id": ["u1", "new"], "item_id": ["i25", "i4"]})


def test_unknown_users_fall_back_to_popularity(make_domain) -> None:
    got = evaluate_heldout(make_domain(), HELD_NEW, ks=(1, 5), unknown_users="popularity")
    model = got["model"]
    assert model["users"] == 2 and model["known_users"] == 1
    # u1: its item first. new: popularity ranks i4 fifth (popularity 100 - j).
    assert model["recall@1"] == pytest.approx(0.5)
    assert model["recall@5"] == pytest.approx(1.0)
    assert model["mrr"] == pytest.approx((1 + 1 / 5) / 2)


def test_unknown_users_count_as_misses(make_domain) -> None:
    got = evaluate_heldout(make_domain(), HELD_NEW, ks=(1, 5), unknown_users="miss")
    assert got["model"]["recall@5"] == pytest.approx(0.5) and got["model"]["mrr"] == pytest.approx(0.5)
    assert got["model"]["users"] == 2 and got["model"]["known_users"] == 1
    nobody = evaluate_heldout(make_domain(), HELD_NEW.iloc[1:], ks=(1,), unknown_users="miss")
    assert nobody["model"]["recall@1"] == 0.0 and nobody["model"]["known_users"] == 0
    with pytest.raises(ValueError, match="no embedding, first 'new'"):
        evaluate_heldout(make_domain(), HELD_NEW, ks=(1,))
    with pytest.raises(ValueError, match="unknown_users"):
        evaluate_heldout(make_domain(), HELD_NEW, unknown_users="guess")


def test_score_samples_separate_heldout_from_random_items(make_domain, heldout) -> None:
    samples = score_samples(make_domain(), heldout, n_random=7)
    assert samples["heldout"].shape == (4,)  # the off-catalogue row is dropped
    np.testing.assert_allclose(samples["heldout"], 1.0)
    assert samples["random"].shape == (3 * 7,)
    assert samples["random"].mean() < 0.5 and len(make_domain().item_ids) == 30


def test_evaluate_on_split_ranks_popularity_by_the_splits_training_rows(make_domain, heldout) -> None:
    """The nightly report and `recxfer evaluate` share this: popularity counts the
    split's training rows of the domain (other domains, and items off the catalogue,
    ignored), never the scored model's own ``item_popularity``."""
    emb = make_domain()  # its own counts rank i25 26th
    train = pd.DataFrame({
        "domain": ["books"] * 5 + ["video"] * 4,
        "user_id": ["u0", "u0", "u3", "u2", "u3", "u1", "u1", "u1", "u1"],
        "item_id": ["i25", "i7", "i25", "i0", "zzz", "i7", "i8", "i9", "i3"],
    })
    counts = split_popularity(emb.item_ids, train[train["domain"] == "books"])
    assert counts.dtype == np.int64 and counts.shape == (30,)
    assert counts[25] == 2 and counts[7] == 1 and counts[0] == 1 and counts.sum() == 4
    u1 = heldout[heldout["user_id"] == "u1"]
    got = evaluate_on_split(emb, u1, (1,), train)
    assert got["popularity"]["recall@1"] == 1.0  # i25 is the split's most popular item
    assert evaluate_heldout(emb, u1, (1,), exclude=train[train["domain"] == "books"])[
        "popularity"]["recall@1"] == 0.0
    # u2's training row i0 is excluded from both rankings, as the split says
    u2 = heldout[heldout["user_id"] == "u2"]
    ref = evaluate_heldout(emb, u2, (1, 10), exclude=train[train["domain"] == "books"],
                           popularity=counts)
    assert evaluate_on_split(emb, u2, (1, 10), train) == ref
    with pytest.raises(ValueError, match="popularity has shape"):
        evaluate_heldout(emb, u2, (1,), popularity=np.ones(3))

"""evaluate_heldout: scoring a model on held-out rows of another split (unknown users,
exclusions from the split's training rows) against answers known by construction."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recxfer.eval.cold_start import evaluate_cold_start
from recxfer.eval.heldout import evaluate_heldout, score_samples
from recxfer.types import DomainEmbeddings, SeenItems, UserOrigin

# The same tiny domain as tests/eval/test_cold_start.py.
N_ITEMS = 30


def make_domain() -> DomainEmbeddings:
    """30 one-hot items; user ``u1`` points at item 25, ``u2`` at item 3, ``u3`` at item 5.

    Popularity is ``100 - j`` (all distinct), so popularity ranks item ``j`` at
    ``j + 1`` minus the user's excluded items. ``u2`` has seen items 0, 1, 2.
    """
    item_emb = np.eye(N_ITEMS, dtype=np.float32)
    user_emb = np.zeros((4, N_ITEMS), dtype=np.float32)
    user_emb[0] = np.linspace(-1, 1, N_ITEMS)  # u0: warm, not held out
    user_emb[1, 25] = 1.0
    user_emb[2, 3] = 1.0
    user_emb[3, 5] = 1.0
    seen = SeenItems.from_pairs(4, np.array([0, 0, 2, 2, 2]), np.array([10, 11, 0, 1, 2]))
    return DomainEmbeddings(
        domain="books",
        user_ids=np.array(["u0", "u1", "u2", "u3"], dtype=object),
        user_emb=user_emb,
        user_origin=np.array(
            [UserOrigin.WARM.value, UserOrigin.TRANSFER.value, UserOrigin.TRANSFER.value, UserOrigin.WARM.value],
            dtype=object,
        ),
        item_ids=np.array([f"i{j}" for j in range(N_ITEMS)], dtype=object),
        item_emb=item_emb,
        seen=seen,
        item_popularity=(100 - np.arange(N_ITEMS)).astype(np.int64),
    )


HELDOUT = pd.DataFrame(
    {
        "user_id": ["u1", "u2", "u3", "u3", "u1"],
        # u3's second item is not in the catalogue: it counts as a miss; u1's row is duplicated
        "item_id": ["i25", "i3", "i5", "zzz", "i25"],
    }
)


def test_matches_evaluate_cold_start_when_the_model_knows_everyone() -> None:
    emb = make_domain()
    expected = evaluate_cold_start(emb, HELDOUT, ks=(1, 10))
    got = evaluate_heldout(emb, HELDOUT, ks=(1, 10))
    assert got["model"].pop("known_users") == 3
    assert got == expected
    # The same exclusions given as the split's training rows.
    train = pd.DataFrame({"user_id": ["u0", "u0", "u2", "u2", "u2"], "item_id": ["i10", "i11", "i0", "i1", "i2"]})
    got = evaluate_heldout(emb, HELDOUT, ks=(1, 10), exclude=train)
    got["model"].pop("known_users")
    assert got == expected


def test_exclusions_come_from_the_given_rows_not_from_the_model() -> None:
    emb = make_domain()
    # u1's held-out item i25 is "seen" in this split's training rows: it can't be ranked.
    train = pd.DataFrame({"user_id": ["u1"], "item_id": ["i25"]})
    got = evaluate_heldout(emb, HELDOUT[HELDOUT["user_id"] == "u1"], ks=(1,), exclude=train)
    assert got["model"]["recall@1"] == 0.0


HELD_NEW = pd.DataFrame({"user_id": ["u1", "new"], "item_id": ["i25", "i4"]})


def test_unknown_users_fall_back_to_popularity() -> None:
    got = evaluate_heldout(make_domain(), HELD_NEW, ks=(1, 5), unknown_users="popularity")
    model = got["model"]
    assert model["users"] == 2 and model["known_users"] == 1
    # u1: its item first. new: popularity ranks i4 fifth (popularity 100 - j).
    assert model["recall@1"] == pytest.approx(0.5)
    assert model["recall@5"] == pytest.approx(1.0)
    assert model["mrr"] == pytest.approx((1 + 1 / 5) / 2)


def test_unknown_users_count_as_misses() -> None:
    got = evaluate_heldout(make_domain(), HELD_NEW, ks=(1, 5), unknown_users="miss")
    assert got["model"]["recall@5"] == pytest.approx(0.5) and got["model"]["mrr"] == pytest.approx(0.5)
    assert got["model"]["users"] == 2 and got["model"]["known_users"] == 1
    nobody = evaluate_heldout(make_domain(), HELD_NEW.iloc[1:], ks=(1,), unknown_users="miss")
    assert nobody["model"]["recall@1"] == 0.0 and nobody["model"]["known_users"] == 0
    with pytest.raises(ValueError, match="no embedding, first 'new'"):
        evaluate_heldout(make_domain(), HELD_NEW, ks=(1,))
    with pytest.raises(ValueError, match="unknown_users"):
        evaluate_heldout(make_domain(), HELD_NEW, unknown_users="guess")


def test_score_samples_separate_heldout_from_random_items() -> None:
    samples = score_samples(make_domain(), HELDOUT, n_random=7)
    assert samples["heldout"].shape == (4,)  # the off-catalogue row is dropped
    np.testing.assert_allclose(samples["heldout"], 1.0)
    assert samples["random"].shape == (3 * 7,)
    assert samples["random"].mean() < 0.5 and N_ITEMS == 30

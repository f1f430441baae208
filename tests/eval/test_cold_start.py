"""Cold-start evaluation on a tiny domain whose answer is known by construction."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from recxfer.eval.cold_start import evaluate_cold_start
from recxfer.types import DomainEmbeddings, SeenItems, UserOrigin

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


def test_known_answer() -> None:
    result = evaluate_cold_start(make_domain(), HELDOUT, ks=(1, 10))
    model, pop = result["model"], result["popularity"]
    ideal2 = 1 + 1 / math.log2(3)  # IDCG of two relevant items
    # The model ranks each held-out item first; u3's off-catalogue item halves its recall.
    assert model["recall@1"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert model["recall@10"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert model["hr@1"] == pytest.approx(1.0)
    assert model["ndcg@1"] == pytest.approx(1.0)
    assert model["ndcg@10"] == pytest.approx((1 + 1 + 1 / ideal2) / 3)
    assert model["mrr"] == pytest.approx(1.0)
    assert model["users"] == 3.0
    # Popularity: u1's item 25 sits at rank 26, u2's item 3 at rank 1 once 0..2 are
    # excluded, u3's item 5 at rank 6.
    assert pop["recall@1"] == pytest.approx(1 / 3)
    assert pop["recall@10"] == pytest.approx((0 + 1 + 0.5) / 3)
    assert pop["hr@10"] == pytest.approx(2 / 3)
    assert pop["ndcg@10"] == pytest.approx((0 + 1 + (1 / math.log2(7)) / ideal2) / 3)
    assert pop["mrr"] == pytest.approx((1 / 26 + 1 + 1 / 6) / 3)
    assert pop["users"] == 3.0
    assert model["recall@10"] > pop["recall@10"]


def test_seen_items_are_excluded_from_both_rankings() -> None:
    emb = make_domain()
    # u2's held-out item is one it has seen in training: excluded, so a miss for both.
    heldout = pd.DataFrame({"user_id": ["u2"], "item_id": ["i1"]})
    result = evaluate_cold_start(emb, heldout, ks=(10,))
    for method in ("model", "popularity"):
        assert result[method]["recall@10"] == 0.0
        assert result[method]["mrr"] == 0.0


def test_model_recall_one_while_popularity_misses() -> None:
    heldout = pd.DataFrame({"user_id": ["u1"], "item_id": ["i25"]})
    result = evaluate_cold_start(make_domain(), heldout, ks=(10,))
    assert result["model"]["recall@10"] == 1.0
    assert result["popularity"]["recall@10"] == 0.0


def test_user_without_embedding_raises() -> None:
    heldout = pd.DataFrame({"user_id": ["u1", "ghost"], "item_id": ["i25", "i2"]})
    with pytest.raises(ValueError, match="ghost"):
        evaluate_cold_start(make_domain(), heldout, ks=(10,))

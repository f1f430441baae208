"""Cold-start evaluation on a tiny domain whose answer is known by construction
(``make_domain`` and ``heldout`` in tests/eval/conftest.py)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from recxfer.eval.cold_start import evaluate_cold_start


def test_known_answer(make_domain, heldout) -> None:
    result = evaluate_cold_start(make_domain(), heldout, ks=(1, 10))
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


def test_seen_items_are_excluded_from_both_rankings(make_domain) -> None:
    emb = make_domain()
    # u2's held-out item is one it has seen in training: excluded, so a miss for both.
    heldout = pd.DataFrame({"user_id": ["u2"], "item_id": ["i1"]})
    result = evaluate_cold_start(emb, heldout, ks=(10,))
    for method in ("model", "popularity"):
        assert result[method]["recall@10"] == 0.0
        assert result[method]["mrr"] == 0.0


def test_model_recall_one_while_popularity_misses(make_domain) -> None:
    heldout = pd.DataFrame({"user_id": ["u1"], "item_id": ["i25"]})
    result = evaluate_cold_start(make_domain(), heldout, ks=(10,))
    assert result["model"]["recall@10"] == 1.0
    assert result["popularity"]["recall@10"] == 0.0


def test_user_without_embedding_raises(make_domain) -> None:
    heldout = pd.DataFrame({"user_id": ["u1", "ghost"], "item_id": ["i25", "i2"]})
    with pytest.raises(ValueError, match="ghost"):
        evaluate_cold_start(make_domain(), heldout, ks=(10,))

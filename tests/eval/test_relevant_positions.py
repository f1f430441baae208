"""Held-out positions of many users in one vectorised pass (recxfer/eval/cold_start.py),
equal to the per-user loop they replaced (issue 11)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from recxfer.eval.cold_start import relevant_positions


def test_relevant_positions_equal_the_per_user_loop() -> None:
    rng = np.random.default_rng(0)
    rows = pd.DataFrame({"user_id": rng.choice(["a", "b", "c", "d"], 40),
                         "item_id": rng.choice([f"i{i}" for i in range(15)], 40)})
    users = np.array(["a", "c", "d", "b"], dtype=object)
    item_ids = np.array([f"i{i}" for i in range(12)], dtype=object)  # i12..i14 unknown
    relevant, n_rel = relevant_positions(rows, users, item_ids)
    groups = rows.groupby("user_id")["item_id"].unique().reindex(users)
    index = pd.Index(item_ids)
    for got, items, count in zip(relevant, groups, n_rel):
        pos = index.get_indexer(items)
        np.testing.assert_array_equal(got, pos[pos >= 0])
        assert count == len(items)

"""Shared helpers of the training tests."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest


def _block_data(n_users: int, n_items: int, per_user: int, seed: int = 0) -> pd.DataFrame:
    """Two clusters in domain ``"d"``: even users like ``per_user`` random even items,
    odd users odd items."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        liked = [i for i in range(n_items) if i % 2 == u % 2]
        for i in rng.choice(liked, size=per_user, replace=False):
            rows.append((f"u{u}", f"i{i}", "d"))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "domain"])


@pytest.fixture(scope="session")
def block_data() -> Callable[..., pd.DataFrame]:
    """``block_data(n_users, n_items, per_user, seed=0)``: see ``_block_data``."""
    return _block_data

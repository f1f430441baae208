"""A tiny one-hot domain whose evaluation results are known by construction, shared
by test_cold_start.py and test_heldout.py."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from recxfer.types import DomainEmbeddings, SeenItems, UserOrigin

N_ITEMS = 30


def _make_domain() -> DomainEmbeddings:
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


@pytest.fixture
def make_domain() -> Callable[[], DomainEmbeddings]:
    """Builds a fresh copy of the tiny domain (see ``_make_domain``) on every call."""
    return _make_domain


@pytest.fixture
def heldout() -> pd.DataFrame:
    """Held-out rows for the tiny domain: each user's held-out item is the one it points at."""
    return pd.DataFrame(
        {
            "user_id": ["u1", "u2", "u3", "u3", "u1"],
            # u3's second item is not in the catalogue: it counts as a miss; u1's row is duplicated
            "item_id": ["i25", "i3", "i5", "zzz", "i25"],
        }
    )

"""Training smoke tests at tiny sizes: the loss falls and embeddings rank positives."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from recxfer.data import domain_matrix
from recxfer.train import MFConfig, resolve_device, train_mf


def _block_data(n_users: int = 60, n_items: int = 30, seed: int = 0) -> pd.DataFrame:
    """Two clusters: even users like even items, odd users odd items."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        liked = [i for i in range(n_items) if i % 2 == u % 2]
        for i in rng.choice(liked, size=6, replace=False):
            rows.append((f"u{u}", f"i{i}", "d"))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "domain"])


@pytest.mark.parametrize("loss", ["softmax", "bpr"])
def test_training_learns_the_clusters(loss: str) -> None:
    matrix = domain_matrix(_block_data(), "d")
    result = train_mf(
        matrix, MFConfig(dim=8, epochs=30, batch_size=64, lr=0.05, loss=loss), torch.device("cpu")
    )
    assert result.epoch_losses[-1] < result.epoch_losses[0]
    scores = result.user_emb @ result.item_emb.T  # (U, I)
    user_parity = np.array([int(u[1:]) % 2 for u in matrix.users.ids])
    item_parity = np.array([int(i[1:]) % 2 for i in matrix.items.ids])
    same = user_parity[:, None] == item_parity[None, :]
    # Every user scores the items of their own cluster above the others on average.
    margin = np.array([scores[u, same[u]].mean() - scores[u, ~same[u]].mean() for u in range(len(scores))])
    assert (margin > 0).mean() > 0.95


def test_training_is_seeded() -> None:
    matrix = domain_matrix(_block_data(), "d")
    config = MFConfig(dim=4, epochs=3, batch_size=32)
    a = train_mf(matrix, config, torch.device("cpu"))
    b = train_mf(matrix, config, torch.device("cpu"))
    np.testing.assert_array_equal(a.user_emb, b.user_emb)


def test_bad_loss_and_device() -> None:
    with pytest.raises(ValueError, match="loss"):
        MFConfig(loss="hinge")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            resolve_device("cuda")
    assert resolve_device("auto").type in ("cpu", "cuda")

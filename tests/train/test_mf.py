"""Training smoke tests at tiny sizes: the loss falls and embeddings rank positives
(on ``block_data``, two clusters, from tests/train/conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recxfer.data import domain_matrix
from recxfer.train import MFConfig, resolve_device, train_mf


@pytest.mark.parametrize("loss", ["softmax", "bpr"])
def test_training_learns_the_clusters(loss: str, block_data) -> None:
    matrix = domain_matrix(block_data(60, 30, per_user=6), "d")
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


def test_training_is_seeded(block_data) -> None:
    matrix = domain_matrix(block_data(60, 30, per_user=6), "d")
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

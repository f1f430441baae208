"""Two-tower id model (recxfer/encoders/two_tower.py)."""

from __future__ import annotations

import pytest
import torch

from recxfer.encoders import IdEmbeddingEncoder, TwoTowerIdModel


def test_towers_have_their_own_sizes() -> None:
    model = TwoTowerIdModel(n_users=7, n_items=11, dim=5, init_std=0.2)
    assert isinstance(model.user_tower, IdEmbeddingEncoder)
    assert model.user_tower.export().shape == (7, 5)
    assert model.item_tower.export().shape == (11, 5)
    assert model.user_tower.config.init_std == 0.2
    assert model.item_tower.config.init_std == 0.2


def test_forward_shapes_and_rows() -> None:
    torch.manual_seed(0)
    model = TwoTowerIdModel(n_users=7, n_items=11, dim=5)
    user_idx = torch.tensor([0, 6, 6, 2])
    item_idx = torch.tensor([10, 0, 3, 3])
    users, items = model(user_idx, item_idx)
    assert users.shape == (4, 5) and items.shape == (4, 5)
    assert torch.equal(users, model.user_tower.export()[user_idx])
    assert torch.equal(items, model.item_tower.export()[item_idx])


def test_score_is_the_dot_product_of_exported_tables() -> None:
    torch.manual_seed(1)
    model = TwoTowerIdModel(n_users=3, n_items=4, dim=2)
    users, items = model(torch.tensor([2]), torch.tensor([1]))
    score = (users * items).sum().item()
    u, v = model.user_tower.export()[2].tolist(), model.item_tower.export()[1].tolist()
    assert score == pytest.approx(u[0] * v[0] + u[1] * v[1], rel=1e-6)


def test_item_index_beyond_the_item_table_raises() -> None:
    model = TwoTowerIdModel(n_users=20, n_items=3, dim=2)
    with pytest.raises(IndexError):
        model(torch.tensor([10]), torch.tensor([10]))


def test_parameters_are_the_two_tables() -> None:
    model = TwoTowerIdModel(n_users=7, n_items=11, dim=5)
    shapes = sorted(tuple(p.shape) for p in model.parameters())
    assert shapes == [(7, 5), (11, 5)]


def test_backward_updates_both_towers() -> None:
    model = TwoTowerIdModel(n_users=4, n_items=4, dim=3)
    users, items = model(torch.tensor([0, 1]), torch.tensor([2, 3]))
    (users * items).sum().backward()
    assert model.user_tower.table.weight.grad[[0, 1]].abs().sum() > 0
    assert model.item_tower.table.weight.grad[[2, 3]].abs().sum() > 0
    assert model.user_tower.table.weight.grad[[2, 3]].abs().sum() == 0


@pytest.mark.parametrize("n_users,n_items,dim", [(0, 3, 2), (3, 0, 2), (3, 3, 0)])
def test_sizes_are_validated(n_users: int, n_items: int, dim: int) -> None:
    with pytest.raises(ValueError):
        TwoTowerIdModel(n_users, n_items, dim)

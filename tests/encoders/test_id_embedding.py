"""Id embedding tower (recxfer/encoders/id_embedding.py)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from recxfer.encoders import IdEmbeddingConfig, IdEmbeddingEncoder


def test_forward_shapes_and_values() -> None:
    torch.manual_seed(0)
    encoder = IdEmbeddingEncoder(IdEmbeddingConfig(num_embeddings=10, dim=4))
    idx = torch.tensor([3, 0, 3, 9])
    out = encoder(idx)
    assert out.shape == (4, 4)
    assert out.dtype == torch.float32
    table = encoder.table.weight
    for row, position in enumerate(idx.tolist()):
        assert torch.equal(out[row], table[position])
    assert encoder(torch.tensor([[1, 2], [3, 4], [5, 6]])).shape == (3, 2, 4)
    assert encoder(torch.zeros(0, dtype=torch.long)).shape == (0, 4)


def test_out_of_range_positions_raise() -> None:
    encoder = IdEmbeddingEncoder(IdEmbeddingConfig(num_embeddings=5, dim=2))
    with pytest.raises(IndexError):
        encoder(torch.tensor([5]))


def test_default_dim_and_init_std() -> None:
    torch.manual_seed(0)
    config = IdEmbeddingConfig(num_embeddings=4000)
    assert config.dim == 32
    weight = IdEmbeddingEncoder(config).table.weight
    assert weight.shape == (4000, 32)
    assert weight.std().item() == pytest.approx(config.init_std, rel=0.02)
    assert weight.mean().abs().item() < 0.01
    small = IdEmbeddingEncoder(IdEmbeddingConfig(4000, 8, init_std=0.01)).table.weight
    assert small.std().item() == pytest.approx(0.01, rel=0.02)


def test_seeded_init_is_deterministic() -> None:
    torch.manual_seed(3)
    a = IdEmbeddingEncoder(IdEmbeddingConfig(20, 4)).export()
    torch.manual_seed(3)
    b = IdEmbeddingEncoder(IdEmbeddingConfig(20, 4)).export()
    assert torch.equal(a, b)


def test_export_is_a_detached_cpu_float32_table() -> None:
    encoder = IdEmbeddingEncoder(IdEmbeddingConfig(num_embeddings=7, dim=3))
    table = encoder.export()
    assert table.shape == (7, 3)
    assert table.dtype == torch.float32
    assert table.device.type == "cpu"
    assert not table.requires_grad
    assert table.grad_fn is None
    assert torch.equal(table, encoder.table.weight.detach())
    table.numpy()  # usable as an array without .detach()


def test_export_of_a_double_model_is_float32() -> None:
    encoder = IdEmbeddingEncoder(IdEmbeddingConfig(num_embeddings=6, dim=2)).double()
    assert encoder(torch.tensor([1])).dtype == torch.float64
    table = encoder.export()
    assert table.dtype == torch.float32
    assert torch.allclose(table.double(), encoder.table.weight.detach())


def test_gradient_reaches_only_the_rows_used() -> None:
    encoder = IdEmbeddingEncoder(IdEmbeddingConfig(num_embeddings=6, dim=2))
    encoder(torch.tensor([1, 4, 4])).sum().backward()
    grad = encoder.table.weight.grad
    assert grad[[0, 2, 3, 5]].abs().sum() == 0
    assert torch.equal(grad[1], torch.ones(2))
    assert torch.equal(grad[4], torch.full((2,), 2.0))  # used twice


@pytest.mark.parametrize("num_embeddings,dim", [(0, 4), (-3, 4), (5, 0), (5, -1)])
def test_config_validation(num_embeddings: int, dim: int) -> None:
    with pytest.raises(ValueError):
        IdEmbeddingEncoder(IdEmbeddingConfig(num_embeddings=num_embeddings, dim=dim))


def test_config_is_frozen() -> None:
    config = IdEmbeddingConfig(num_embeddings=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.dim = 8  # type: ignore[misc]
    assert IdEmbeddingEncoder(config).config is config

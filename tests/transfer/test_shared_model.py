"""SharedTransferModel (recxfer/transfer/shared.py): shapes, masking, export == forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recxfer.transfer.shared import SharedModelConfig, SharedTransferModel

N_ITEMS, DIM, L = 30, 8, 6

CONFIGS = [
    SharedModelConfig(dim=DIM),
    SharedModelConfig(dim=DIM, pooling="attention"),
    SharedModelConfig(dim=DIM, hidden=16),
]


def make_model(config: SharedModelConfig = CONFIGS[0], text: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    text_emb = np.random.default_rng(seed).standard_normal((N_ITEMS, 5)).astype(np.float32) if text else None
    model = SharedTransferModel(N_ITEMS, config, text_emb).eval()
    if isinstance(model.user_encoder.query, torch.nn.Parameter):  # non-trivial attention
        with torch.no_grad():
            model.user_encoder.query.normal_()
    return model


def random_history(n: int = 5, seed: int = 0) -> torch.Tensor:
    """``(n, L)`` item positions with some ``-1`` pads; row 0 is all pads."""
    g = torch.Generator().manual_seed(seed)
    hist = torch.randint(0, N_ITEMS, (n, L), generator=g)
    pads = torch.rand(n, L, generator=g) < 0.3
    hist[pads] = -1
    hist[0] = -1
    hist[1, 0] = 3  # at least one real position in the other rows
    return hist


@pytest.mark.parametrize("text", [False, True])
def test_items_shapes(text: bool) -> None:
    model = make_model(text=text)
    assert model.items(torch.arange(4)).shape == (4, DIM)
    grid = torch.randint(0, N_ITEMS, (3, L))
    out = model.items(grid)
    assert out.shape == (3, L, DIM)
    torch.testing.assert_close(out[1], model.items(grid[1]))


@pytest.mark.parametrize("config", CONFIGS, ids=["mean", "attention", "mlp"])
def test_users_shape_and_empty_history(config) -> None:
    model = make_model(config)
    hist = random_history()
    out = model.users(hist, hist >= 0)
    assert out.shape == (5, DIM)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0], torch.zeros(DIM))  # no history: zero vector, not nan


def test_mean_users_are_the_mean_of_kept_items() -> None:
    model = make_model()
    hist = random_history()
    mask = hist >= 0
    mask[2, :2] = False  # masked real items are left out too
    out = model.users(hist, mask)
    for b in range(hist.shape[0]):
        kept = [int(hist[b, p]) for p in range(L) if mask[b, p] and hist[b, p] >= 0]
        expected = model.items(torch.tensor(kept)).mean(0) if kept else torch.zeros(DIM)
        torch.testing.assert_close(out[b], expected)


@pytest.mark.parametrize("config", CONFIGS, ids=["mean", "attention", "mlp"])
def test_users_ignore_padded_and_masked_positions(config) -> None:
    model = make_model(config)
    hist = random_history(seed=1)
    mask = torch.rand(hist.shape, generator=torch.Generator().manual_seed(2)) < 0.7
    mask[:, 0] = True
    base = model.users(hist, mask)
    # what sits behind a False mask (pads included) is replaced by other real items
    scrambled = hist.clone()
    scrambled[~mask] = torch.randint(0, N_ITEMS, (int((~mask).sum()),))
    torch.testing.assert_close(model.users(scrambled, mask), base)
    # padded positions (-1) are ignored even where the mask says True
    torch.testing.assert_close(model.users(hist, torch.ones_like(mask)), model.users(hist, hist >= 0))
    torch.testing.assert_close(model.users(hist, mask), model.users(hist, mask & (hist >= 0)))
    # sanity: a kept position does matter
    changed = hist.clone()
    row, col = 1, 0
    changed[row, col] = (hist[row, col] + 1) % N_ITEMS
    assert not torch.allclose(model.users(changed, mask)[row], base[row])


def test_users_depend_on_order_only_through_content() -> None:
    model = make_model()
    hist = random_history(seed=3)
    perm = torch.randperm(L, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model.users(hist[:, perm], hist[:, perm] >= 0), model.users(hist, hist >= 0))


@pytest.mark.parametrize("text", [False, True])
def test_export_items_matches_forward(text: bool) -> None:
    model = make_model(text=text)
    out = model.export_items(4, 27, batch=5)  # several batches, ragged last one
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    assert out.shape == (23, DIM)
    with torch.no_grad():
        expected = model.items(torch.arange(4, 27)).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("config", CONFIGS, ids=["mean", "attention", "mlp"])
def test_export_users_matches_forward(config) -> None:
    model = make_model(config)
    hist = random_history(n=7, seed=4)
    out = model.export_users(hist.numpy(), batch=3)
    assert out.shape == (7, DIM) and out.dtype == np.float32
    with torch.no_grad():
        expected = model.users(hist, hist >= 0).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_export_users_of_no_users() -> None:
    out = make_model().export_users(np.zeros((0, L), dtype=np.int64))
    assert out.shape == (0, DIM)


def test_gradients_reach_item_embeddings_of_kept_positions_only() -> None:
    model = make_model()
    model.train()
    hist = torch.tensor([[1, 2, -1], [4, -1, -1]])
    mask = torch.tensor([[True, False, True], [True, True, True]])
    model.users(hist, mask).sum().backward()
    grads = [p.grad for p in model.item_tower.parameters() if p.grad is not None]
    assert grads, "no gradient reached the item tower"
    table = next(p for p in model.item_tower.parameters() if p.shape[0] == N_ITEMS)
    rows_with_grad = set(torch.nonzero(table.grad.abs().sum(1)).flatten().tolist())
    assert rows_with_grad == {1, 4}  # 2 masked, -1 pads (clamped to 0) ignored

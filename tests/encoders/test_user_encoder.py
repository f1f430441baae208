"""Shared user encoder (recxfer/encoders/user_encoder.py) against naive per-user loops."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from recxfer.encoders import HistoryUserEncoder, UserEncoderConfig

B, L, D = 5, 6, 4


def batch(seed: int = 0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    hist = torch.randn(B, L, D, generator=gen, dtype=dtype)
    lengths = [6, 3, 0, 1, 4]  # row 2 has an empty history
    mask = torch.zeros(B, L, dtype=torch.bool)
    for row, n in enumerate(lengths):
        mask[row, :n] = True
    return hist, mask


def make_encoder(pooling: str = "mean", hidden: int | None = None) -> HistoryUserEncoder:
    torch.manual_seed(0)
    encoder = HistoryUserEncoder(UserEncoderConfig(dim=D, pooling=pooling, hidden=hidden))
    if pooling == "attention":  # the query starts at zero (= mean); make attention non-trivial
        with torch.no_grad():
            encoder.query.copy_(torch.randn(D, generator=torch.Generator().manual_seed(1)) * 2)
    return encoder


def naive_mean(hist, kept):
    out = []
    for b in range(hist.shape[0]):
        rows = [hist[b, i].tolist() for i in range(hist.shape[1]) if kept[b, i]]
        out.append([sum(r[k] for r in rows) / len(rows) for k in range(D)] if rows else [0.0] * D)
    return torch.tensor(out, dtype=hist.dtype)


def naive_attention(hist, kept, query):
    weights, out = [], []
    q = query.tolist()
    for b in range(hist.shape[0]):
        idx = [i for i in range(hist.shape[1]) if kept[b, i]]
        scores = {i: sum(a * c for a, c in zip(hist[b, i].tolist(), q)) / math.sqrt(D) for i in idx}
        top = max(scores.values(), default=0.0)
        z = sum(math.exp(s - top) for s in scores.values())
        w = [math.exp(scores[i] - top) / z if i in scores else 0.0 for i in range(hist.shape[1])]
        weights.append(w)
        out.append([sum(w[i] * hist[b, i, k].item() for i in idx) for k in range(D)])
    return torch.tensor(weights, dtype=hist.dtype), torch.tensor(out, dtype=hist.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mean_pooling_equals_a_naive_loop(dtype) -> None:
    hist, mask = batch(dtype=dtype)
    out = HistoryUserEncoder(UserEncoderConfig(dim=D))(hist, mask)
    assert out.shape == (B, D) and out.dtype == dtype
    torch.testing.assert_close(out, naive_mean(hist, mask))
    assert torch.equal(out[2], torch.zeros(D, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_attention_weights_and_output_equal_a_naive_loop(dtype) -> None:
    hist, mask = batch(dtype=dtype)
    encoder = make_encoder("attention")
    weights = encoder.pooling_weights(hist, mask)
    expected_w, expected_out = naive_attention(hist, mask, encoder.query.detach())
    torch.testing.assert_close(weights, expected_w)
    sums = weights.sum(dim=1)
    torch.testing.assert_close(sums, torch.tensor([1, 1, 0, 1, 1], dtype=dtype))
    assert torch.equal(weights[~mask], torch.zeros_like(weights[~mask]))
    out = encoder(hist, mask)
    torch.testing.assert_close(out, expected_out)
    assert not torch.allclose(out[0], naive_mean(hist, mask)[0])  # it is not just the mean


def test_attention_starts_as_mean_pooling() -> None:
    hist, mask = batch()
    fresh = HistoryUserEncoder(UserEncoderConfig(dim=D, pooling="attention"))
    torch.testing.assert_close(fresh(hist, mask), naive_mean(hist, mask))


@pytest.mark.parametrize("pooling", ["mean", "attention"])
@pytest.mark.parametrize("hidden", [None, 8])
def test_masked_positions_have_no_influence(pooling, hidden) -> None:
    encoder = make_encoder(pooling, hidden)
    hist, mask = batch()
    before = encoder(hist, mask)
    changed = hist.clone()
    changed[~mask] = torch.randn(int((~mask).sum()), D) * 100
    torch.testing.assert_close(encoder(changed, mask), before)
    changed[~mask] = float("nan")  # even garbage padding does not leak
    torch.testing.assert_close(encoder(changed, mask), before)


@pytest.mark.parametrize("pooling", ["mean", "attention"])
@pytest.mark.parametrize("hidden", [None, 8])
def test_empty_history_gives_zeros_without_nan(pooling, hidden) -> None:
    encoder = make_encoder(pooling, hidden)
    hist = torch.randn(3, L, D, requires_grad=True)
    mask = torch.zeros(3, L, dtype=torch.bool)
    out = encoder(hist, mask)
    assert torch.equal(out, torch.zeros(3, D))
    out.sum().backward()
    assert torch.isfinite(hist.grad).all()
    assert encoder(torch.randn(0, L, D), torch.zeros(0, L, dtype=torch.bool)).shape == (0, D)
    assert torch.equal(
        encoder(torch.randn(2, 0, D), torch.zeros(2, 0, dtype=torch.bool)), torch.zeros(2, D)
    )


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_exclude_leaves_positions_out(pooling) -> None:
    encoder = make_encoder(pooling)
    hist, mask = batch()
    exclude = torch.zeros(B, L, dtype=torch.bool)
    exclude[0, 2] = True  # leave-one-out: the target item
    exclude[3, 0] = True  # the only item: the row becomes empty
    exclude[1, 5] = True  # a padding position: no effect
    got = encoder(hist, mask, exclude)
    torch.testing.assert_close(got, encoder(hist, mask & ~exclude))
    assert not torch.allclose(got[0], encoder(hist, mask)[0])
    assert torch.equal(got[3], torch.zeros(D))
    torch.testing.assert_close(got[[1, 2, 4]], encoder(hist, mask)[[1, 2, 4]])


def test_mlp_is_residual_and_gradients_flow() -> None:
    torch.manual_seed(0)
    encoder = HistoryUserEncoder(UserEncoderConfig(dim=D, pooling="attention", hidden=8))
    hist, mask = batch()
    hist.requires_grad_(True)
    out = encoder(hist, mask)
    pooled = naive_mean(hist.detach(), mask)  # zero query: attention == mean
    expected = pooled + encoder.mlp(pooled)
    expected[2] = 0.0
    torch.testing.assert_close(out, expected)
    (out ** 2).sum().backward()
    assert encoder.query.grad is not None and encoder.query.grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in encoder.parameters())
    assert hist.grad[mask].abs().sum() > 0
    assert torch.equal(hist.grad[~mask], torch.zeros_like(hist.grad[~mask]))


def test_validation_and_config() -> None:
    encoder = HistoryUserEncoder(UserEncoderConfig(dim=D))
    hist, mask = batch()
    with pytest.raises(ValueError, match="hist_emb"):
        encoder(hist[0], mask)
    with pytest.raises(ValueError, match="d=3"):
        encoder(hist[..., :3], mask)
    with pytest.raises(ValueError, match="mask"):
        encoder(hist, mask[:, :3])
    with pytest.raises(ValueError, match="mask"):
        encoder(hist, mask.float())
    with pytest.raises(ValueError, match="exclude"):
        encoder(hist, mask, mask.long())
    with pytest.raises(ValueError, match="pooling"):
        UserEncoderConfig(dim=D, pooling="max")
    with pytest.raises(ValueError, match="hidden"):
        UserEncoderConfig(dim=D, dropout=0.1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        UserEncoderConfig(dim=D).dim = 3  # type: ignore[misc]

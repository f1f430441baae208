"""PTUPCDR personalized bridge (recxfer/transfer/ptupcdr.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recxfer.losses.ranking import in_batch_softmax_loss
from recxfer.transfer.ptupcdr import PersonalizedBridge, PTUPCDRConfig, apply_ptupcdr, fit_ptupcdr

DIM, HIDDEN, L = 8, 16, 5


def make_inputs(batch: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    src_user = torch.randn(batch, DIM, generator=g)
    hist_emb = torch.randn(batch, L, DIM, generator=g)
    mask = torch.rand(batch, L, generator=g) < 0.6
    mask[:, 0] = True
    mask[-1] = False  # a user with no source history
    return src_user, hist_emb, mask


def test_forward_shape_and_finite() -> None:
    torch.manual_seed(0)
    bridge = PersonalizedBridge(DIM, HIDDEN)
    src_user, hist_emb, mask = make_inputs()
    out = bridge(src_user, hist_emb, mask)
    assert out.shape == (6, DIM)
    assert torch.isfinite(out).all()


def test_starts_as_the_identity_bridge() -> None:
    torch.manual_seed(0)
    bridge = PersonalizedBridge(DIM, HIDDEN)
    src_user, hist_emb, mask = make_inputs()
    out = bridge(src_user, hist_emb, mask)
    # W_u = I + 0.01 * (small meta output): nearly the identity
    torch.testing.assert_close(out, src_user, atol=0.05 * float(src_user.abs().max()), rtol=0.05)
    cos = torch.nn.functional.cosine_similarity(out, src_user, dim=1)
    assert (cos > 0.99).all()


def test_masked_history_positions_are_ignored() -> None:
    torch.manual_seed(0)
    bridge = PersonalizedBridge(DIM, HIDDEN)
    src_user, hist_emb, mask = make_inputs()
    base = bridge(src_user, hist_emb, mask)
    other = hist_emb.clone()
    other[~mask] = torch.randn(int((~mask).sum()), DIM) * 100
    torch.testing.assert_close(bridge(src_user, other, mask), base)
    # a kept position does matter (once the bridge is far from the identity)
    with torch.no_grad():
        bridge.meta[-1].weight.mul_(100.0)
    base = bridge(src_user, hist_emb, mask)
    changed = hist_emb.clone()
    changed[0, 0] += 1.0
    assert not torch.allclose(bridge(src_user, changed, mask)[0], base[0])


def test_user_without_history_gets_finite_output_and_gradients() -> None:
    torch.manual_seed(0)
    bridge = PersonalizedBridge(DIM, HIDDEN)
    src_user, hist_emb, _ = make_inputs(batch=3)
    mask = torch.zeros(3, L, dtype=torch.bool)
    hist_emb.requires_grad_(True)
    out = bridge(src_user, hist_emb, mask)
    assert torch.isfinite(out).all()
    out.sum().backward()
    for p in bridge.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()
    assert torch.isfinite(hist_emb.grad).all()


# ----------------------------------------------------------------------------- fitting

N_USERS, N_SRC, N_TGT = 200, 30, 40


def toy_task(seed: int = 0):
    """Target taste = a fixed rotation of the source taste; each user's target items
    are their top items under that rotated taste. The identity bridge is wrong."""
    rng = np.random.default_rng(seed)
    src_user = rng.standard_normal((N_USERS, DIM)).astype(np.float32)
    src_item = rng.standard_normal((N_SRC, DIM)).astype(np.float32)
    tgt_item = rng.standard_normal((N_TGT, DIM)).astype(np.float32)
    rotation, _ = np.linalg.qr(rng.standard_normal((DIM, DIM)))
    true_tgt = src_user @ rotation.astype(np.float32)
    top = np.argsort(-(true_tgt @ tgt_item.T), axis=1)[:, :3]  # (U, 3)
    pair_user = np.repeat(np.arange(N_USERS), 3)
    pair_item = top.ravel()
    history = np.argsort(-(src_user @ src_item.T), axis=1)[:, :L].copy()  # (U, L)
    history[::4, 3:] = -1  # some padding
    return src_user, src_item, history, tgt_item, pair_user, pair_item


def full_loss(bridge, src_user, src_item, history, tgt_item, pair_user, pair_item) -> float:
    out = apply_ptupcdr(bridge, src_user[pair_user], src_item, history[pair_user])
    with torch.no_grad():
        return float(in_batch_softmax_loss(torch.as_tensor(out), torch.as_tensor(tgt_item[pair_item]),
                                           item_idx=torch.as_tensor(pair_item)))


def hit_rate(bridge, src_user, src_item, history, tgt_item, pair_user, pair_item, k: int = 5) -> float:
    emb = apply_ptupcdr(bridge, src_user, src_item, history)  # (U, d)
    top = np.argsort(-(emb @ tgt_item.T), axis=1)[:, :k]
    return float(np.mean([pair_item[i] in top[pair_user[i]] for i in range(len(pair_user))]))


@pytest.fixture(scope="module")
def fitted():
    task = toy_task()
    config = PTUPCDRConfig(hidden=HIDDEN, epochs=10, batch_size=64, lr=1e-2, seed=0)
    before = fit_ptupcdr(*task, config=PTUPCDRConfig(hidden=HIDDEN, epochs=0, seed=0))
    after = fit_ptupcdr(*task, config=config)
    return task, config, before, after


def test_fit_reduces_the_training_loss(fitted) -> None:
    task, _, before, after = fitted
    loss_before, loss_after = full_loss(before, *task), full_loss(after, *task)
    assert loss_after < 0.6 * loss_before, (loss_before, loss_after)


def test_fit_learns_the_toy_task(fitted) -> None:
    task, _, before, after = fitted
    hr_before, hr_after = hit_rate(before, *task), hit_rate(after, *task)
    assert hr_before < 0.3 and hr_after > 0.8, (hr_before, hr_after)


def test_fit_returns_an_eval_module_and_is_seeded(fitted) -> None:
    task, config, _, after = fitted
    assert not after.training
    again = fit_ptupcdr(*task, config=PTUPCDRConfig(hidden=HIDDEN, epochs=2, batch_size=64, lr=1e-2))
    same = fit_ptupcdr(*task, config=PTUPCDRConfig(hidden=HIDDEN, epochs=2, batch_size=64, lr=1e-2))
    for a, b in zip(again.state_dict().values(), same.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_apply_matches_forward(fitted) -> None:
    (src_user, src_item, history, *_), _, _, after = fitted
    out = apply_ptupcdr(after, src_user[:7], src_item, history[:7])
    assert out.shape == (7, DIM) and out.dtype == np.float32
    hist = torch.as_tensor(history[:7])
    mask = hist >= 0
    hist_emb = torch.as_tensor(src_item)[hist.clamp(min=0)]
    with torch.no_grad():
        expected = after(torch.as_tensor(src_user[:7]), hist_emb, mask).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_fit_without_pairs_raises() -> None:
    src_user, src_item, history, tgt_item, *_ = toy_task()
    empty = np.zeros(0, dtype=np.int64)
    with pytest.raises(ValueError, match="overlapping"):
        fit_ptupcdr(src_user, src_item, history, tgt_item, empty, empty)

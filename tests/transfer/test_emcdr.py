"""EMCDR mapping (recxfer/transfer/emcdr.py): recovers a known source->target map."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recxfer.transfer import EMCDRConfig, EMCDRMapping, apply_emcdr, fit_emcdr

N, D_SRC, D_TGT, N_TRAIN = 500, 8, 8, 400


def linear_problem(seed: int = 0, d_tgt: int = D_TGT, noise: float = 0.01):
    """tgt = src @ W + b + small noise: a map EMCDR must learn from 400 users."""
    rng = np.random.default_rng(seed)
    src = rng.normal(size=(N, D_SRC))
    w = rng.normal(size=(D_SRC, d_tgt)) / np.sqrt(D_SRC)
    b = rng.normal(size=d_tgt) * 0.1
    tgt = src @ w + b + noise * rng.normal(size=(N, d_tgt))
    return src.astype(np.float32), tgt.astype(np.float32)


@pytest.fixture(scope="module")
def fitted():
    src, tgt = linear_problem()
    return src, tgt, fit_emcdr(src[:N_TRAIN], tgt[:N_TRAIN])


def test_recovers_a_linear_map_on_held_out_users(fitted) -> None:
    src, tgt, mapping = fitted
    pred = apply_emcdr(mapping, src[N_TRAIN:])
    held = tgt[N_TRAIN:]
    mse = float(((pred - held) ** 2).mean())
    variance = float(held.var(axis=0).mean())
    assert mse < 0.05 * variance, (mse, variance)
    # per user, the prediction is closer to that user's target than to anyone else's
    dist = ((pred[:, None, :] - held[None, :, :]) ** 2).sum(-1)  # (100, 100)
    assert (dist.argmin(axis=1) == np.arange(len(held))).mean() > 0.95


def test_beats_the_mean_and_the_identity_map(fitted) -> None:
    src, tgt, mapping = fitted
    held_src, held = src[N_TRAIN:], tgt[N_TRAIN:]
    pred_mse = ((apply_emcdr(mapping, held_src) - held) ** 2).mean()
    mean_mse = ((tgt[:N_TRAIN].mean(axis=0) - held) ** 2).mean()
    identity_mse = ((held_src - held) ** 2).mean()
    assert pred_mse < 0.1 * mean_mse
    assert pred_mse < 0.1 * identity_mse


def test_apply_shape_dtype_and_no_grad(fitted) -> None:
    src, _, mapping = fitted
    out = apply_emcdr(mapping, src[:7].astype(np.float64))
    assert isinstance(out, np.ndarray)
    assert out.shape == (7, D_TGT)
    assert out.dtype == np.float32
    assert apply_emcdr(mapping, src[:0]).shape == (0, D_TGT)
    with torch.no_grad():
        direct = mapping(torch.as_tensor(src[:7])).numpy()
    np.testing.assert_allclose(out, direct, rtol=1e-5, atol=1e-6)


def test_apply_matches_row_by_row(fitted) -> None:
    src, _, mapping = fitted
    batch = apply_emcdr(mapping, src[:5])
    for i in range(5):
        np.testing.assert_allclose(apply_emcdr(mapping, src[i : i + 1])[0], batch[i], rtol=1e-5,
                                   atol=1e-6)


def test_fitted_mapping_is_in_eval_mode(fitted) -> None:
    _, _, mapping = fitted
    assert isinstance(mapping, EMCDRMapping)
    assert not mapping.training
    assert next(mapping.parameters()).device.type == "cpu"


def test_different_target_dimension() -> None:
    src, tgt = linear_problem(seed=1, d_tgt=3)
    mapping = fit_emcdr(src, tgt, EMCDRConfig(hidden=16, epochs=20))
    assert apply_emcdr(mapping, src[:4]).shape == (4, 3)


def test_same_seed_same_mapping() -> None:
    src, tgt = linear_problem(seed=2)
    config = EMCDRConfig(hidden=16, epochs=10, seed=5)
    a = apply_emcdr(fit_emcdr(src, tgt, config), src[:10])
    b = apply_emcdr(fit_emcdr(src, tgt, config), src[:10])
    np.testing.assert_array_equal(a, b)
    c = apply_emcdr(fit_emcdr(src, tgt, EMCDRConfig(hidden=16, epochs=10, seed=6)), src[:10])
    assert not np.array_equal(a, c)


def test_training_lowers_the_error() -> None:
    src, tgt = linear_problem(seed=3)
    untrained = fit_emcdr(src, tgt, EMCDRConfig(hidden=32, epochs=0))
    trained = fit_emcdr(src, tgt, EMCDRConfig(hidden=32, epochs=100))
    before = ((apply_emcdr(untrained, src) - tgt) ** 2).mean()
    after = ((apply_emcdr(trained, src) - tgt) ** 2).mean()
    assert after < 0.3 * before


@pytest.mark.parametrize("n_src,n_tgt", [(10, 9), (9, 10), (0, 0)])
def test_mismatched_or_empty_sizes_raise(n_src: int, n_tgt: int) -> None:
    with pytest.raises(ValueError, match="same non-zero number of users"):
        fit_emcdr(np.zeros((n_src, 4), np.float32), np.zeros((n_tgt, 4), np.float32))

"""``dae`` (recxfer/transfer/dae.py) and its servable form ``DAEScorer``
(recxfer/types.py): the scoring formula against a naive per-user loop, the torch
module against the numpy scorer, training on a planted mapping, epoch choice by
validation, the size refusal, and the term in ``blend``."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from recxfer.transfer.blend import BlendConfig, fit_blend, fit_dae_scorer
from recxfer.transfer.dae import DAEConfig, _bag, _Net, dae_hidden, dae_networks, expansion, fit_dae
from recxfer.transfer.ease import CatalogueTooLargeError
from recxfer.transfer.interactions import build_matrices
from recxfer.types import DAEScorer, ItemToItemScorer


def random_encoder(n_src: int = 6, n_tgt: int = 5, hidden: int = 3, seed: int = 0) -> DAEScorer:
    rng = np.random.default_rng(seed)
    return DAEScorer(rng.normal(size=(n_src, hidden)).astype(np.float32),
                          rng.normal(size=hidden).astype(np.float32),
                          rng.normal(size=(n_tgt, hidden)).astype(np.float32),
                          rng.normal(size=n_tgt).astype(np.float32))


def naive_score(enc: DAEScorer, hist: np.ndarray) -> np.ndarray:
    out = []
    for h in np.asarray(hist, np.float64):
        norm = np.linalg.norm(h)
        x = h / norm if norm > 0 else h
        z = np.tanh(x @ enc.w_in + enc.b_in)
        logits = z @ enc.w_out.T + enc.b_out
        p = np.exp(logits) / np.exp(logits).sum()  # the softmax ...
        out.append(p / p.max())  # ... over its largest entry
    return np.array(out)


def test_encoder_score_equals_the_naive_softmax_over_its_max() -> None:
    enc = random_encoder()
    hist = np.array([[1, 0, 1, 0, 0, 1], [0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]],
                    np.float32)
    got = enc.score(sp.csr_matrix(hist))
    assert got.shape == (4, 5) and got.dtype == np.float32
    np.testing.assert_allclose(got, naive_score(enc, hist), rtol=1e-5, atol=1e-6)
    assert np.allclose(got.max(axis=1), 1.0)


def test_encoder_shapes_are_checked() -> None:
    enc = random_encoder()
    with pytest.raises(ValueError, match="shapes"):
        DAEScorer(enc.w_in, enc.b_in[:2], enc.w_out, enc.b_out)
    with pytest.raises(ValueError, match="shapes"):
        DAEScorer(enc.w_in, enc.b_in, enc.w_out, enc.b_out[:2])
    ids = lambda n, p: np.array([f"{p}{i}" for i in range(n)], dtype=object)  # noqa: E731
    with pytest.raises(ValueError, match="dae network maps"):
        ItemToItemScorer(ids(5, "s"), ids(5, "t"), (), (), (), np.ones(5, np.float32), 0.0, 0.0, enc, 1.0)
    with pytest.raises(ValueError, match="no dae network"):
        ItemToItemScorer(ids(6, "s"), ids(5, "t"), (), (), (), np.ones(5, np.float32), 0.0, 0.0, None, 1.0)


def test_scorer_adds_the_weighted_encoder_term() -> None:
    enc = random_encoder()
    ids = lambda n, p: np.array([f"{p}{i}" for i in range(n)], dtype=object)  # noqa: E731
    pop = np.array([1, 2, 3, 4, 8], np.float32)
    scorer = ItemToItemScorer(ids(6, "s"), ids(5, "t"), (), (), (), pop, 0.5, 0.0, enc, 2.0)
    hist = sp.csr_matrix(np.array([[1, 0, 1, 0, 0, 1], [0, 1, 0, 0, 0, 0]], np.float32))
    np.testing.assert_allclose(scorer.score(hist), 2.0 * naive_score(enc, hist.toarray()) + 0.5 * pop / 8,
                               rtol=1e-5, atol=1e-6)


def test_the_torch_module_is_the_numpy_scorer() -> None:
    torch.manual_seed(0)
    net = _Net(6, 5, 3)
    hist = sp.csr_matrix(np.array([[1, 0, 1, 0, 0, 1], [0, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0]], np.float32))
    with torch.no_grad():
        logits = net(*_bag(hist, 0.0, torch.Generator())).numpy()
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(net.encoder(np.arange(5), 5).score(hist), expected, rtol=1e-5, atol=1e-6)


def test_expansion_is_identity_plus_row_normalised_source_cosine() -> None:
    src = sp.csr_matrix(np.array([[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 1, 0], [1, 1, 1, 0]], np.float32))
    out = expansion(src, DAEConfig(expand=0.5, expand_top_n=10)).toarray()
    dense = src.toarray()
    counts = dense.sum(axis=0)
    cos = np.array([[0.0 if i == k or counts[i] * counts[k] == 0
                     else (dense[:, i] @ dense[:, k]) / np.sqrt(counts[i] * counts[k])
                     for k in range(4)] for i in range(4)])
    rows = cos.sum(axis=1, keepdims=True)
    expected = np.eye(4) + 0.5 * np.divide(cos, rows, out=np.zeros_like(cos), where=rows > 0)
    np.testing.assert_allclose(out, expected, rtol=1e-6)  # s3 (no user) keeps its identity row
    assert expansion(src, DAEConfig(expand=0.0)) is None


def test_the_expanded_input_is_folded_into_the_served_weights() -> None:
    """A net trained behind ``E`` scores ``h`` as the numpy scorer with ``w_in = E @ W``."""
    torch.manual_seed(0)
    net = _Net(6, 5, 3)
    rng = np.random.default_rng(0)
    expand = sp.csr_matrix(np.eye(6, dtype=np.float32) + 0.3 * rng.random((6, 6)).astype(np.float32))
    hist = sp.csr_matrix(np.array([[1, 0, 1, 0, 0, 1], [0, 1, 0, 0, 0, 0]], np.float32))
    items, offsets, weights = _bag(hist, 0.0, torch.Generator(), expand)
    x = (hist.toarray() / np.sqrt(hist.sum(axis=1)).A) @ expand.toarray()  # (2, 6) expanded inputs
    dense = np.zeros_like(x)
    dense[np.repeat(np.arange(2), np.diff(offsets.numpy(), append=len(items))), items.numpy()] = weights.numpy()
    np.testing.assert_allclose(dense, x, rtol=1e-5)
    with torch.no_grad():
        logits = net(items, offsets, weights).numpy()
    np.testing.assert_allclose(net.encoder(np.arange(5), 5, expand).score(hist),
                               np.exp(logits - logits.max(axis=1, keepdims=True)), rtol=1e-5, atol=1e-6)


def test_items_without_training_users_score_below_every_trained_one() -> None:
    """A net over 3 of 7 target items (positions 1, 4, 6): those keep the net's
    scores, the other 4 get about 0, below each of them."""
    torch.manual_seed(0)
    net = _Net(6, 3, 3)
    hist = sp.csr_matrix(np.array([[1, 0, 1, 0, 0, 1], [0, 1, 0, 0, 0, 0]], np.float32))
    with torch.no_grad():
        logits = net(*_bag(hist, 0.0, torch.Generator())).numpy()
    full = net.encoder(np.array([1, 4, 6]), 7).score(hist)  # (2, 7)
    assert full.shape == (2, 7)
    np.testing.assert_allclose(full[:, [1, 4, 6]], np.exp(logits - logits.max(axis=1, keepdims=True)),
                               rtol=1e-5, atol=1e-6)
    others = full[:, [0, 2, 3, 5]]
    assert (others < 1e-9).all() and (others.max(axis=1) < full[:, [1, 4, 6]].min(axis=1)).all()


def test_fit_trains_only_items_some_overlapping_user_has() -> None:
    """``t_extra`` is bought only by a target-only user: outside the softmax, scored
    below every other item, and said so in ``info["outputs"]``."""
    rows = [(f"u{u}", f"s{u % 12:02d}", "video") for u in range(72)]
    rows += [(f"u{u}", f"t{11 - u % 12:02d}", "books") for u in range(72)] + [("solo", "t_extra", "books")]
    m = build_matrices(pd.DataFrame(rows, columns=["user_id", "item_id", "domain"]), "video", "books")
    dae, info = fit_dae(m, DAEConfig(hidden=8, epochs=4, networks=1))
    extra = list(m.tgt_item_ids).index("t_extra")
    assert info["outputs"] == len(m.tgt_item_ids) - 1 == 12
    scores = dae.score(sp.identity(12, dtype=np.float32, format="csr"))  # (12, 13)
    assert (scores[:, extra] < np.delete(scores, extra, axis=1).min(axis=1)).all()


def test_dropout_keeps_the_expected_input() -> None:
    """Inverted dropout: entries are 0 or value / (1 - p), and their mean is the value."""
    hist = sp.csr_matrix(np.ones((1, 4000), np.float32))
    _, _, weights = _bag(hist, 0.5, torch.Generator().manual_seed(1))
    value = 1 / np.sqrt(4000)
    assert set(np.round(weights.numpy() / value, 5)) <= {0.0, 2.0}
    assert weights.numpy().mean() == pytest.approx(value, rel=0.05)


def planted_matrices(n: int = 12, users_per_item: int = 6, seed: int = 0):
    """Source item ``s_i`` is bought, in the target, with ``t_(n - 1 - i)`` (a
    permutation no popularity or identity gets): every overlapping user has one
    source item and its partner, plus a random other target item."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        for k in range(users_per_item):
            user = f"u{i}_{k}"
            records += [(user, f"s{i:02d}", "video"), (user, f"t{n - 1 - i:02d}", "books"),
                        (user, f"t{int(rng.integers(n)):02d}", "books")]
    rows = pd.DataFrame(records, columns=["user_id", "item_id", "domain"]).drop_duplicates()
    return build_matrices(rows, "video", "books")


def test_fit_dae_learns_a_planted_mapping() -> None:
    m = planted_matrices()
    encoder, info = fit_dae(m, DAEConfig(hidden=16, epochs=150, dropout=0.0, lr=1e-2, batch_size=16, networks=1))
    one_each = sp.identity(12, dtype=np.float32, format="csr")  # history {s_i} per row
    top = encoder.score(one_each).argmax(axis=1)
    np.testing.assert_array_equal(top, 11 - np.arange(12))
    assert info["epochs"] == 150 and info["valid"] == {}


def test_fit_dae_keeps_the_best_validated_epoch_and_stops_on_patience() -> None:
    m = planted_matrices()
    valid_hist = sp.identity(12, dtype=np.float32, format="csr")
    plan = [1.0, 2.0, 5.0, 4.0, 3.0, 2.0, 9.0]  # the value of each evaluation, in order
    seen: list[np.ndarray] = []

    def validator(scores: np.ndarray) -> float:
        seen.append(scores.copy())
        return plan[len(seen) - 1]

    config = DAEConfig(hidden=8, epochs=40, eval_every=2, patience=3, lr=1e-2, batch_size=16, networks=1)
    encoder, info = fit_dae(m, config, valid_hist, validator)
    assert len(seen) == 6  # 5.0 at the 3rd, then 3 without better: the 7th never runs
    assert info["best_epoch"] == 6 and info["epochs"] == 12
    assert info["valid"] == {2: 1.0, 4: 2.0, 6: 5.0, 8: 4.0, 10: 3.0, 12: 2.0}
    np.testing.assert_array_equal(encoder.score(valid_hist), seen[2])


def test_hidden_size_is_capped_by_the_serving_cost() -> None:
    config = DAEConfig()  # 256 units, max_serve_cells 6.4 M
    assert dae_hidden(config, 17_943) == 256 and dae_hidden(config, 25_000) == 256
    assert dae_hidden(config, 100_000) == 64 and dae_hidden(config, 10_000_000) == 16
    assert dae_hidden(DAEConfig(hidden=8), 10_000_000) == 8
    assert dae_hidden(config, 17_943, networks=3) == 118 and dae_hidden(config, 5_000, networks=3) == 256
    encoder, info = fit_dae(planted_matrices(), DAEConfig(hidden=16, max_serve_cells=12 * 5, min_hidden=2,
                                                          epochs=1, networks=1))
    assert info["hidden"] == 5 and encoder.w_out.shape == (12, 5) and encoder.w_in.shape == (12, 5)


def test_networks_are_capped_by_the_training_cost() -> None:
    config = DAEConfig()  # 3 networks while 3 * n_overlap * n_tgt <= 6e7
    assert dae_networks(config, 1_253, 6_777) == 3 and dae_networks(config, 2_560, 5_622) == 3
    assert dae_networks(config, 7_856, 12_655) == 1 and dae_networks(config, 5_000, 6_000) == 2
    assert dae_networks(DAEConfig(fixed_epochs=(3, 5)), 10**6, 10**6) == 2


def test_an_ensemble_averages_the_networks_logits() -> None:
    """Three networks (seeds 0, 1, 2), each the single network of its seed; the
    ensemble's logits are their mean, up to each row's constant."""
    m = planted_matrices()
    config = DAEConfig(hidden=4, epochs=3, batch_size=16, networks=3)
    ensemble, info = fit_dae(m, config)
    assert info["networks"] == 3 and info["best_epochs"] == [3, 3, 3]
    assert ensemble.w_in.shape == (12, 12) and ensemble.w_out.shape == (12, 12)
    singles = [fit_dae(m, dataclasses.replace(config, networks=1, seed=k))[0] for k in range(3)]
    hist = sp.identity(12, dtype=np.float32, format="csr")
    log_mean = np.mean([np.log(d.score(hist)) for d in singles], axis=0)  # (12, 12), per-row shifted
    expected = np.exp(log_mean - log_mean.max(axis=1, keepdims=True))
    np.testing.assert_allclose(ensemble.score(hist), expected, rtol=1e-4, atol=1e-6)


def test_fixed_epochs_train_one_network_each_without_validation() -> None:
    m = planted_matrices()
    calls = []
    config = DAEConfig(hidden=4, batch_size=16, fixed_epochs=(2, 4))
    ensemble, info = fit_dae(m, config, sp.identity(12, dtype=np.float32, format="csr"),
                             lambda s: calls.append(1) or 0.0)
    assert calls == [] and info["networks"] == 2 and info["best_epochs"] == [2, 4]
    first = fit_dae(m, DAEConfig(hidden=4, batch_size=16, networks=1, epochs=2))[0]
    np.testing.assert_array_equal(ensemble.w_in[:, :4], first.w_in)


def test_fit_dae_is_seeded() -> None:
    m = planted_matrices()
    config = DAEConfig(hidden=8, epochs=3, batch_size=16, networks=1)
    a, _ = fit_dae(m, config)
    b, _ = fit_dae(m, config)
    np.testing.assert_array_equal(a.w_out, b.w_out)


def test_fit_dae_refuses_above_max_cells_and_blend_leaves_it_out(tiny, valid_hist) -> None:
    with pytest.raises(CatalogueTooLargeError, match="max_cells=10"):
        fit_dae(tiny, DAEConfig(max_cells=10))
    config = BlendConfig(dae=DAEConfig(max_cells=10))
    fitted = fit_blend(tiny, config, valid_hist, lambda scores: float(scores[:, 0].mean()))
    assert fitted.scorer.dae is None and fitted.scorer.dae_weight == 0.0
    assert "max_cells=10" in fitted.info["skipped"]["dae"]


def test_fit_dae_without_overlap_is_a_clear_error() -> None:
    rows = pd.DataFrame([("a", "s0", "video"), ("b", "t0", "books")], columns=["user_id", "item_id", "domain"])
    with pytest.raises(ValueError, match="both domains"):
        fit_dae(build_matrices(rows, "video", "books"))


def test_blend_weights_the_dae_term_the_validator_rewards(tiny, valid_hist) -> None:
    config = BlendConfig(dae=DAEConfig(hidden=4, epochs=4, eval_every=2, batch_size=4, networks=1))
    dae_alone = fit_dae_scorer(tiny, config.dae, valid_hist, lambda s: 0.0)
    reference = dae_alone.scorer.score(valid_hist)

    def cosine(scores: np.ndarray) -> float:
        num = (scores * reference).sum(axis=1)
        return float(np.mean(num / (np.linalg.norm(scores, axis=1) * np.linalg.norm(reference, axis=1))))

    fitted = fit_blend(tiny, config, valid_hist, cosine)
    assert fitted.info["dae_weight"] == 10.0  # the grid's largest: the closest to the dae alone
    assert fitted.scorer.dae_weight == 10.0
    np.testing.assert_array_equal(fitted.scorer.dae.w_out, dae_alone.scorer.dae.w_out)
    stage1 = fit_blend(tiny, BlendConfig(components=("ridge", "itemknn", "userknn")), valid_hist, cosine)
    assert fitted.info["valid"]["best"] > stage1.info["valid"]["best"]
    parts = {n: ItemToItemScorer(tiny.src_item_ids, tiny.tgt_item_ids, (n,), (x,), (1.0,),
                                 tiny.target_popularity(), 0.0).score(valid_hist)
             for n, x in zip(fitted.scorer.names, fitted.scorer.matrices)}
    pop = tiny.target_popularity()
    expected = (sum(w * parts[n] for n, w in zip(fitted.scorer.names, fitted.scorer.weights))
                + fitted.scorer.pop_weight * pop / pop.max() + 10.0 * reference)
    np.testing.assert_allclose(fitted.scorer.score(valid_hist), expected, rtol=1e-5, atol=1e-6)
    assert fitted.info["components"]["dae"]["epochs"] == 4


def test_blend_without_validator_gives_the_dae_weight_one(tiny, valid_hist) -> None:
    fitted = fit_blend(tiny, BlendConfig(dae=DAEConfig(hidden=4, epochs=2, batch_size=4)))
    assert fitted.scorer.dae is not None and fitted.scorer.dae_weight == 1.0
    assert fitted.info["dae_weight"] == 1.0 and fitted.info["components"]["dae"]["epochs"] == 2


def test_config_validation() -> None:
    for bad in ({"hidden": 0}, {"epochs": 0}, {"patience": 0}, {"max_cells": 0}, {"max_serve_cells": 0},
                {"min_hidden": 0}, {"networks": 0}, {"ensemble_cells": 0}, {"fixed_epochs": (2, 0)},
                {"dropout": 1.0},
                {"dropout": -0.1}, {"lr": 0.0}, {"expand": -1.0}, {"expand_top_n": 0}, {"expand_shrink": -1.0}):
        with pytest.raises(ValueError, match="dae"):
            DAEConfig(**bad)
    with pytest.raises(ValueError, match="dae_grid"):
        BlendConfig(dae_grid=(-1.0,))

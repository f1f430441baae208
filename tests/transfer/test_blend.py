"""Fitting the item-to-item methods and the blend (recxfer/transfer/blend.py): what
the ``validator`` rewards is what gets chosen; without one, the documented defaults."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp

from recxfer.transfer.blend import (
    BlendConfig,
    fit_blend,
    fit_ease,
    fit_itemknn,
    fit_ridge,
    fit_userknn,
)
from recxfer.transfer.ease import EASEConfig, ease_matrices
from recxfer.transfer.itemknn import ItemKNNConfig, itemknn_matrix
from recxfer.transfer.ridge import RidgeConfig, ridge_matrices
from recxfer.transfer.userknn import UserKNNConfig, userknn_matrix

COMPONENTS = ("ridge", "itemknn", "userknn")
# fixed hyper-parameters (empty grids: nothing searched), far apart so the three
# components rank differently on the tiny data
FIXED = BlendConfig(
    components=COMPONENTS,  # the matrix components (the ``dae`` term: tests/transfer/test_dae.py)
    ridge=RidgeConfig(l2=1.0, l2_grid=(), top_n=100),
    itemknn=ItemKNNConfig(shrink=0.0, shrink_grid=(), top_n=100),
    userknn=UserKNNConfig(alpha=1.0, top_n=100),
)
# (15, 4): every non-empty 0/1 history over the 4 source items
EVERY_HISTORY = sp.csr_matrix(np.array([[(k >> b) & 1 for b in range(4)] for k in range(1, 16)],
                                       dtype=np.float32))
FIT_ONE = {"ridge": fit_ridge, "itemknn": fit_itemknn, "userknn": fit_userknn}


def normalised(scores: np.ndarray) -> np.ndarray:
    top = np.abs(scores).max(axis=1, keepdims=True)
    return np.divide(scores, top, out=np.zeros_like(scores), where=top > 0)


def cosine_to(reference: np.ndarray):
    """A validator: mean row cosine between the scores and ``reference``."""
    ref = np.asarray(reference, np.float64)

    def validator(scores: np.ndarray) -> float:
        s = np.asarray(scores, np.float64)
        num = (s * ref).sum(axis=1)
        den = np.linalg.norm(s, axis=1) * np.linalg.norm(ref, axis=1)
        return float(np.mean(np.divide(num, den, out=np.zeros_like(num), where=den > 0)))

    return validator


def recall_at_1(planted: np.ndarray, rows: np.ndarray):
    """A validator: share of the validation users at ``rows`` whose top target item is
    ``planted``."""
    def validator(scores: np.ndarray) -> float:
        return float(np.mean(np.argmax(scores[rows], axis=1) == planted))

    return validator


def component_scores(tiny, valid_hist, name: str) -> np.ndarray:
    """``(n_valid, n_tgt)`` normalised scores of one component of ``FIXED``."""
    fitted = FIT_ONE[name](tiny, getattr(FIXED, name))
    return fitted.scorer.score(valid_hist)


# ----------------------------------------------------------------------------- single methods


def test_single_fits_without_validator_use_the_defaults(tiny) -> None:
    cases = [
        (fit_itemknn, ItemKNNConfig(shrink=5.0, top_n=100), "shrink", 5.0,
         itemknn_matrix(tiny, 5.0, 100)),
        (fit_ease, EASEConfig(l2=3.0, top_n=100), "l2", 3.0,
         ease_matrices(tiny, (3.0,), 100, 20_000)[3.0]),
        (fit_ridge, RidgeConfig(l2=3.0, top_n=100), "l2", 3.0,
         ridge_matrices(tiny, (3.0,), 100, 20_000)[3.0]),
    ]
    for fit, config, key, value, matrix in cases:
        fitted = fit(tiny, config)
        assert fitted.info[key] == value and fitted.info["valid"] == {}
        s = fitted.scorer
        assert len(s.matrices) == 1 and s.weights == (1.0,) and s.pop_weight == 0.0
        np.testing.assert_allclose(s.matrices[0].toarray(), matrix.toarray(), rtol=1e-6)
        np.testing.assert_array_equal(s.src_item_ids, tiny.src_item_ids)
        np.testing.assert_array_equal(s.tgt_item_ids, tiny.tgt_item_ids)
        np.testing.assert_array_equal(s.popularity, tiny.target_popularity())
    fitted = fit_userknn(tiny, UserKNNConfig(alpha=0.3, top_n=100))
    assert fitted.info == {"alpha": 0.3} and fitted.scorer.names == ("userknn",)
    np.testing.assert_allclose(fitted.scorer.matrices[0].toarray(),
                               userknn_matrix(tiny, 0.3, 100).toarray(), rtol=1e-6)


@pytest.mark.parametrize("fit,config,key,planted_value", [
    (fit_itemknn, ItemKNNConfig(shrink=100.0, shrink_grid=(0.0, 10.0, 100.0), top_n=100), "shrink", 0.0),
    (fit_ease, EASEConfig(l2=300.0, l2_grid=(1.0, 30.0, 300.0), top_n=100), "l2", 1.0),
    (fit_ridge, RidgeConfig(l2=100.0, l2_grid=(0.3, 10.0, 100.0), top_n=100), "l2", 0.3),
])
def test_single_fits_choose_what_the_validator_rewards(tiny, valid_hist, fit, config, key,
                                                       planted_value) -> None:
    reference = fit(tiny, _with(config, key, planted_value)).scorer.score(valid_hist)
    shapes = []

    def validator(scores: np.ndarray) -> float:
        shapes.append(scores.shape)
        return cosine_to(reference)(scores)

    fitted = fit(tiny, config, valid_hist, validator)
    assert fitted.info[key] == planted_value
    assert set(fitted.info["valid"]) == {str(float(v)) for v in _grid(config)}
    assert shapes == [(valid_hist.shape[0], len(tiny.tgt_item_ids))] * len(_grid(config))
    np.testing.assert_allclose(fitted.scorer.score(valid_hist), reference, rtol=1e-6)


@pytest.mark.parametrize("fit,config", [
    (fit_itemknn, ItemKNNConfig(shrink=1.0, shrink_grid=(1.0,), top_n=100)),
    (fit_ridge, RidgeConfig(l2=3.0, l2_grid=(3.0,), top_n=100)),
])
@pytest.mark.parametrize("planted", [0.0, 1.0])
def test_user_alpha_is_chosen_when_rewarded(tiny, valid_hist, fit, config, planted) -> None:
    import dataclasses

    reference = fit(tiny, dataclasses.replace(config, user_alpha_grid=(planted,))).scorer.score(valid_hist)
    fitted = fit(tiny, dataclasses.replace(config, user_alpha_grid=(0.0, 1.0)), valid_hist,
                 cosine_to(reference))
    assert fitted.info["user_alpha"] == planted
    assert set(fitted.info["user_alpha_valid"]) == {"0.0", "1.0"}
    np.testing.assert_allclose(fitted.scorer.score(valid_hist), reference, rtol=1e-6)
    assert not np.allclose(  # the two weightings differ on this matrix
        fit(tiny, dataclasses.replace(config, user_alpha_grid=(1.0 - planted,))).scorer.score(valid_hist),
        reference)


def _grid(config):
    return config.shrink_grid if isinstance(config, ItemKNNConfig) else config.l2_grid


def _with(config, key, value):
    import dataclasses

    return dataclasses.replace(config, **{key: value})


# ----------------------------------------------------------------------------- blend


def test_blend_without_validator_weights_everything_one_and_popularity_0_1(tiny, valid_hist) -> None:
    fitted = fit_blend(tiny, FIXED)
    s = fitted.scorer
    assert s.names == COMPONENTS and s.weights == (1.0, 1.0, 1.0) and s.pop_weight == 0.1
    assert fitted.info["weights"] == {n: 1.0 for n in COMPONENTS}
    assert fitted.info["pop_weight"] == 0.1 and fitted.info["skipped"] == {}
    assert set(fitted.info["components"]) == set(COMPONENTS)
    for name, matrix in zip(s.names, s.matrices):
        alone = FIT_ONE[name](tiny, getattr(FIXED, name)).scorer.matrices[0]
        np.testing.assert_array_equal(matrix.toarray(), alone.toarray())
    pop = tiny.target_popularity()
    expected = sum(normalised(component_scores(tiny, valid_hist, n)) for n in COMPONENTS)
    np.testing.assert_allclose(s.score(valid_hist), expected + 0.1 * pop / pop.max(), rtol=1e-5)


def test_the_fixed_components_rank_differently(tiny, valid_hist) -> None:
    """Precondition of the tests below: no component is another one rescaled."""
    parts = {n: component_scores(tiny, valid_hist, n) for n in COMPONENTS}
    for a in COMPONENTS:
        for b in COMPONENTS:
            if a != b:
                assert cosine_to(parts[a])(parts[b]) < 0.999, (a, b)


@pytest.mark.parametrize("favoured", COMPONENTS)
def test_blend_favours_the_component_the_validator_rewards(tiny, valid_hist, favoured) -> None:
    reference = component_scores(tiny, valid_hist, favoured)
    fitted = fit_blend(tiny, FIXED, valid_hist, cosine_to(reference))
    weights = fitted.info["weights"]
    assert weights[favoured] > 0, weights
    assert all(w == 0 for n, w in weights.items() if n != favoured), weights
    assert fitted.info["pop_weight"] == 0.0
    assert fitted.info["valid"]["best"] == pytest.approx(1.0, abs=1e-6)
    assert fitted.info["valid"]["tried"] == (3 ** 3 - 1) * len(FIXED.pop_grid)
    assert fitted.scorer.weights == tuple(weights[n] for n in fitted.scorer.names)


@pytest.mark.parametrize("favoured", COMPONENTS)
def test_blend_recovers_a_planted_target(tiny, favoured) -> None:
    """Validation targets planted at each user's top item of ``favoured`` (users whose
    top item is unique): recall@1 is 1 for it alone, and ties go to the smallest
    weights (0.5, no popularity). Validation users: every non-empty source history."""
    valid_hist = EVERY_HISTORY
    reference = component_scores(tiny, valid_hist, favoured)
    rows = np.flatnonzero((reference == reference.max(axis=1, keepdims=True)).sum(axis=1) == 1)
    assert len(rows) >= 4
    planted = reference[rows].argmax(axis=1)
    validator = recall_at_1(planted, rows)
    for other in COMPONENTS:  # precondition: no other component alone gets it all
        if other != favoured:
            assert validator(component_scores(tiny, valid_hist, other)) < 1.0, other
    fitted = fit_blend(tiny, FIXED, valid_hist, validator)
    assert fitted.info["valid"]["best"] == 1.0
    assert fitted.info["weights"] == {n: (0.5 if n == favoured else 0.0) for n in COMPONENTS}
    assert fitted.info["pop_weight"] == 0.0
    np.testing.assert_array_equal(fitted.scorer.score(valid_hist)[rows].argmax(axis=1), planted)


def test_popularity_weight_is_chosen_when_rewarded(tiny, valid_hist) -> None:
    pop = tiny.target_popularity()
    reference = normalised(component_scores(tiny, valid_hist, "itemknn")) + 1.0 * pop / pop.max()
    fitted = fit_blend(tiny, FIXED, valid_hist, cosine_to(reference))
    assert fitted.info["pop_weight"] == 1.0
    assert fitted.info["weights"]["itemknn"] == 1.0
    assert fitted.info["weights"]["ridge"] == 0.0 and fitted.info["weights"]["userknn"] == 0.0


@pytest.mark.parametrize("with_validator", [False, True])
def test_a_component_too_large_is_skipped_and_recorded(tiny, valid_hist, with_validator) -> None:
    config = BlendConfig(components=COMPONENTS, ridge=RidgeConfig(l2=1.0, l2_grid=(), max_items=2),
                         itemknn=FIXED.itemknn, userknn=FIXED.userknn)
    args = (valid_hist, cosine_to(component_scores(tiny, valid_hist, "userknn"))) if with_validator else ()
    fitted = fit_blend(tiny, config, *args)
    assert fitted.scorer.names == ("itemknn", "userknn")
    assert set(fitted.info["skipped"]) == {"ridge"}
    assert "max_items=2" in fitted.info["skipped"]["ridge"]
    assert set(fitted.info["weights"]) == {"itemknn", "userknn"}
    assert "ridge" not in fitted.info["components"]
    if with_validator:
        assert fitted.info["weights"] == {"itemknn": 0.0, "userknn": 0.5}


def test_every_component_skipped_without_validator_is_popularity(tiny, valid_hist) -> None:
    config = BlendConfig(components=("ridge",), ridge=RidgeConfig(max_items=1))
    fitted = fit_blend(tiny, config)
    assert fitted.scorer.names == () and set(fitted.info["skipped"]) == {"ridge"}
    pop = tiny.target_popularity()
    np.testing.assert_allclose(fitted.scorer.score(valid_hist),
                               np.tile(pop / pop.max(), (valid_hist.shape[0], 1)), rtol=1e-6)


def test_every_component_skipped_with_validator_is_popularity_or_a_clear_error(tiny, valid_hist) -> None:
    config = BlendConfig(components=("ridge",), ridge=RidgeConfig(max_items=1))
    try:
        fitted = fit_blend(tiny, config, valid_hist, lambda scores: 0.0)
    except ValueError as exc:
        assert "empty sequence" not in str(exc), exc
    else:
        assert fitted.scorer.names == ()


def test_blend_user_alpha_search_never_loses_to_the_unweighted_blend(tiny, valid_hist) -> None:
    """The blend is fit per user_alpha and the best kept: with 0 in the grid its
    validation score is at least the unweighted blend's, and a validator that
    rewards the weighted itemknn gets it."""
    import dataclasses

    weighted = FIT_ONE["itemknn"](tiny, dataclasses.replace(FIXED.itemknn, user_alpha_grid=(1.0,)))
    for reference in (weighted.scorer.score(valid_hist), component_scores(tiny, valid_hist, "ridge")):
        validator = cosine_to(reference)
        plain = fit_blend(tiny, dataclasses.replace(FIXED, user_alpha_grid=(0.0,)), valid_hist, validator)
        both = fit_blend(tiny, dataclasses.replace(FIXED, user_alpha_grid=(0.0, 1.0)), valid_hist, validator)
        assert set(both.info["user_alpha_valid"]) == {"0.0", "1.0"}
        assert both.info["valid"]["best"] >= plain.info["valid"]["best"]
        assert both.info["valid"]["best"] == max(both.info["user_alpha_valid"].values())
    assert both.info["user_alpha"] == 0.0  # ridge rewarded: nothing to gain from weights
    first = fit_blend(tiny, dataclasses.replace(FIXED, user_alpha_grid=(0.0, 1.0)), valid_hist,
                      cosine_to(weighted.scorer.score(valid_hist)))
    assert first.info["user_alpha"] == 1.0 and first.info["weights"]["itemknn"] > 0


def test_a_weight_grid_of_only_zeros_is_refused() -> None:
    with pytest.raises(ValueError, match="weight"):
        BlendConfig(weight_grid=(0.0,))


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="components"):
        BlendConfig(components=("ease",))
    with pytest.raises(ValueError, match="components"):
        BlendConfig(components=())
    with pytest.raises(ValueError, match="grids"):
        BlendConfig(weight_grid=())
    with pytest.raises(ValueError, match="grids"):
        BlendConfig(pop_grid=(-0.1,))
    with pytest.raises(ValueError, match="head_grid"):
        BlendConfig(head_grid=(0, 5))


# ----------------------------------------------------------------------------- head


def _head_validator(first: np.ndarray, rest: np.ndarray):
    """Rewards a list whose top item is ``first``'s best (1) and whose other items
    follow ``rest``'s order (2): the blend search settles on ``rest``, and only a
    head of ``first``'s view, size 1, over it earns both."""
    want1 = np.argmax(first, axis=1)
    order_rest = np.argsort(-rest, axis=1, kind="stable")

    def validator(scores: np.ndarray) -> float:
        order = np.argsort(-scores, axis=1, kind="stable")
        top = order[:, 0] == want1
        tail = [np.array_equal(o[o != w], r[r != w]) for o, r, w in zip(order, order_rest, want1)]
        return float(np.mean(top + 2 * np.array(tail)))

    return validator


def test_head_search_takes_the_component_the_top_needs(tiny) -> None:
    from recxfer.transfer.blend import _search_head

    hist = EVERY_HISTORY
    ridge, userknn = (component_scores(tiny, hist, n) for n in ("ridge", "userknn"))
    assert (np.argmax(ridge, axis=1) != np.argmax(userknn, axis=1)).any()  # the two views disagree somewhere
    matrices = {n: FIT_ONE[n](tiny, getattr(FIXED, n)).scorer.matrices[0] for n in ("ridge", "userknn")}
    validator = _head_validator(ridge, userknn)
    config = BlendConfig(components=COMPONENTS, head_grid=(1, 3), min_gain=0.01)
    base = userknn.copy()  # the blend: userknn alone, weight 1
    assert validator(base) < 3.0
    head, size, value, info = _search_head(tiny, matrices, base, 3.0, hist, validator, config)
    assert (head, size, value) == ("ridge", 1, 3.0)
    assert info == {"component": "ridge", "size": 1, "without": validator(base), "valid": info["valid"]}
    assert set(info["valid"]) == {"ridge:1", "ridge:3", "userknn:1", "userknn:3"}
    assert info["valid"]["userknn:1"] == validator(base)  # its own top over itself changes nothing
    # a gain below min_gain is no head
    strict = BlendConfig(components=COMPONENTS, head_grid=(1, 3), min_gain=0.99)
    assert _search_head(tiny, matrices, base, 3.0, hist, validator, strict)[:3] == ("", 0, validator(base))


def test_blend_with_a_head_scores_as_its_headless_blend_lifted(tiny) -> None:
    """The blend's head chosen on validation (ridge's top item over the userknn the
    weights settle on) is ``lift_head`` over the blend without it; without a head
    grid no head is searched."""
    from recxfer.types import ItemToItemScorer, lift_head

    hist = EVERY_HISTORY
    ridge, userknn = (component_scores(tiny, hist, n) for n in ("ridge", "userknn"))
    validator = _head_validator(ridge, userknn)
    config = BlendConfig(components=COMPONENTS, ridge=FIXED.ridge, itemknn=FIXED.itemknn, userknn=FIXED.userknn,
                         head_grid=(1, 2), user_alpha_grid=(0.0,))
    fitted = fit_blend(tiny, config, hist, validator)
    s = fitted.scorer
    assert (s.head, s.head_size) == ("ridge", 1) and fitted.info["head"]["component"] == "ridge"
    assert fitted.info["valid"]["best"] == 3.0 > fitted.info["head"]["without"]
    headless = ItemToItemScorer(s.src_item_ids, s.tgt_item_ids, s.names, s.matrices, s.weights, s.popularity,
                                s.pop_weight, s.embedding_weight, s.dae, s.dae_weight)
    want = headless.score(hist)
    head = ItemToItemScorer(s.src_item_ids, s.tgt_item_ids, ("ridge",), (s.matrices[s.names.index("ridge")],),
                            (1.0,), s.popularity, 0.0).score(hist)
    lift_head(want, head, 1, s.head_offset)
    np.testing.assert_array_equal(s.score(hist), want)
    assert validator(s.score(hist)) == 3.0
    none = fit_blend(tiny, dataclasses.replace(config, head_grid=()), hist, validator)
    assert none.scorer.head_size == 0 and "head" not in none.info
    # the blend the head was searched on, as fit_blend falls back to when a head gains
    # less than min_gain over the best headless blend of any user_alpha
    from recxfer.transfer.blend import _without_head

    dropped = _without_head(fitted)
    assert dropped.scorer.head_size == 0 and dropped.scorer.names == s.names
    assert dropped.info["head"]["dropped"] == "ridge:1"
    assert dropped.info["valid"]["best"] == fitted.info["head"]["without"]
    np.testing.assert_array_equal(dropped.scorer.score(hist), headless.score(hist))


def test_a_head_must_beat_the_best_headless_blend_of_any_user_alpha(tiny, monkeypatch) -> None:
    """A head that gains min_gain over its own user_alpha's blend but not over another
    alpha's headless blend is dropped."""
    import recxfer.transfer.blend as blend

    hist = EVERY_HISTORY
    ridge, userknn = (component_scores(tiny, hist, n) for n in ("ridge", "userknn"))
    config = BlendConfig(components=COMPONENTS, ridge=FIXED.ridge, itemknn=FIXED.itemknn, userknn=FIXED.userknn,
                         head_grid=(1,), user_alpha_grid=(0.0, 0.5), min_gain=0.03)
    real = blend._fit_blend_once

    def fake(m, cfg, alpha, *args):
        fitted = real(m, cfg, alpha, *args)
        if alpha == 0.0:  # alpha 0: no head, a headless value just under the head's
            if fitted.scorer.head_size:
                fitted = blend._without_head(fitted)
            fitted.info["valid"]["best"] = 2.95
            fitted.info.pop("head", None)
            return fitted
        return fitted  # alpha 0.5: the head, 3.0: +1.7 % over 2.95, under min_gain (its own blend: +4.7 %)

    monkeypatch.setattr(blend, "_fit_blend_once", fake)
    got = fit_blend(tiny, config, hist, _head_validator(ridge, userknn))
    assert got.scorer.head_size == 0 and got.info["user_alpha"] == 0.0
    monkeypatch.setattr(blend, "_fit_blend_once", real)
    kept = fit_blend(tiny, dataclasses.replace(config, user_alpha_grid=(0.5,)), hist, _head_validator(ridge, userknn))
    assert kept.scorer.head == "ridge"

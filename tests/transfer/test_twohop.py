"""``twohop`` (recxfer/transfer/twohop.py) against naive loops, and its place in the
blend (recxfer/transfer/blend.py)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recxfer.transfer.blend import BlendConfig, fit_blend
from recxfer.transfer.itemknn import ItemKNNConfig
from recxfer.transfer.twohop import TwoHopConfig, _product_top_n, source_similarity, twohop_matrices
from tests.transfer.test_blend import cosine_to
from tests.transfer.test_itemknn import naive_itemknn


def naive_source_cosine(S: np.ndarray, shrink: float) -> np.ndarray:
    """``(n_src, n_src)`` shrunk cosine between source columns over every row of ``S``
    (source-only users included), zero diagonal; a loop over item pairs."""
    n_src = S.shape[1]
    out = np.zeros((n_src, n_src))
    for i in range(n_src):
        for k in range(n_src):
            if i != k:
                both = float(np.sum(S[:, i] * S[:, k]))
                out[i, k] = both / (np.sqrt(S[:, i].sum()) * np.sqrt(S[:, k].sum()) + shrink)
    return out


@pytest.mark.parametrize("shrink", [0.0, 2.0])
def test_source_similarity_equals_the_naive_cosine(tiny, truth, shrink) -> None:
    out = source_similarity(tiny.src, shrink, top_n=10)
    np.testing.assert_allclose(out.toarray(), naive_source_cosine(truth.S, shrink), rtol=1e-5)
    assert out.diagonal().sum() == 0


def test_source_similarity_counts_source_only_users(tiny, truth) -> None:
    # u6 (source only: s0, s3) is the only user linking s0 and s3 besides u2
    with_u6 = source_similarity(tiny.src, 0.0, 10).toarray()
    without = naive_source_cosine(np.delete(truth.S, 6, axis=0), 0.0)
    assert with_u6[0, 3] > without[0, 3] > 0


def test_source_similarity_keeps_top_n_per_row(tiny, truth) -> None:
    full = naive_source_cosine(truth.S, 1.0)
    out = source_similarity(tiny.src, 1.0, top_n=1).toarray()
    assert ((out != 0).sum(axis=1) <= 1).all()
    np.testing.assert_allclose(out.max(axis=1), full.max(axis=1), rtol=1e-5)


@pytest.mark.parametrize("shrink,source_shrink", [(0.0, 0.0), (3.0, 1.0)])
def test_twohop_equals_the_naive_product(tiny, truth, shrink, source_shrink) -> None:
    config = TwoHopConfig(source_shrink=source_shrink, source_top_n=10, top_n=10)
    out = twohop_matrices(tiny, (shrink,), config)[shrink]
    # naive: source cosine over every user times the cross-domain cosine of the overlap
    expected = naive_source_cosine(truth.S, source_shrink) @ naive_itemknn(truth.S, truth.T, shrink)
    assert out.shape == (4, 5)
    np.testing.assert_allclose(out.toarray(), expected, rtol=1e-5, atol=1e-7)


def test_twohop_user_weights_reach_the_cross_links(tiny, truth) -> None:
    config = TwoHopConfig(source_top_n=10, top_n=10)
    out = twohop_matrices(tiny, (1.0,), config, user_alpha=1.0)[1.0]
    expected = naive_source_cosine(truth.S, 0.0) @ naive_itemknn(truth.S, truth.T, 1.0, alpha=1.0)
    np.testing.assert_allclose(out.toarray(), expected, rtol=1e-5, atol=1e-7)


def test_blocked_product_equals_one_product() -> None:
    left = sp.random(37, 20, density=0.3, random_state=1, format="csr", dtype=np.float32)
    right = sp.random(20, 23, density=0.3, random_state=2, format="csr", dtype=np.float32)
    whole = _product_top_n(left, right, top_n=5)
    blocked = _product_top_n(left, right, top_n=5, block_cells=23 * 4)  # one row a block (the widest-row bound is above 92)
    np.testing.assert_allclose(blocked.toarray(), whole.toarray(), rtol=1e-6)
    assert ((whole.toarray() != 0).sum(axis=1) <= 5).all()


def test_blend_keeps_twohop_when_the_validator_rewards_it(tiny, valid_hist) -> None:
    config = BlendConfig(components=("itemknn", "twohop"), itemknn=ItemKNNConfig(shrink=0.0, shrink_grid=()),
                         twohop=TwoHopConfig(shrink=0.0, shrink_grid=(0.0, 5.0), source_top_n=10, top_n=10))
    target = twohop_matrices(tiny, (5.0,), config.twohop)[5.0]
    reference = np.asarray((valid_hist @ target).todense())

    def validator(scores: np.ndarray) -> float:  # negative distance to the twohop(5) ranking
        ref = reference / np.maximum(np.abs(reference).max(axis=1, keepdims=True), 1e-12)
        s = scores / np.maximum(np.abs(scores).max(axis=1, keepdims=True), 1e-12)
        return -float(np.abs(s - ref).sum())

    fitted = fit_blend(tiny, config, valid_hist, validator)
    assert fitted.info["components"]["twohop"] == {"shrink": 5.0}
    assert fitted.info["weights"]["twohop"] > fitted.info["weights"]["itemknn"]  # stage 1 must keep a matrix
    assert fitted.scorer.names[-1] == "twohop"
    np.testing.assert_allclose(fitted.scorer.matrices[-1].toarray(), target.toarray())


def test_blend_leaves_out_twohop_of_weight_zero(tiny, valid_hist) -> None:
    config = BlendConfig(components=("itemknn", "twohop"), itemknn=ItemKNNConfig(shrink=0.0, shrink_grid=()),
                         twohop=TwoHopConfig(source_top_n=10, top_n=10), twohop_grid=(0.0,))
    fitted = fit_blend(tiny, config, valid_hist, lambda scores: 0.0)
    assert fitted.scorer.names == ("itemknn",)
    assert fitted.info["weights"]["twohop"] == 0.0


def test_blend_without_validator_weights_twohop_one(tiny, valid_hist) -> None:
    config = BlendConfig(components=("itemknn", "twohop"), itemknn=ItemKNNConfig(shrink=0.0, shrink_grid=()),
                         twohop=TwoHopConfig(shrink=2.0, source_top_n=10, top_n=10))
    fitted = fit_blend(tiny, config)
    assert fitted.scorer.names == ("itemknn", "twohop") and fitted.scorer.weights == (1.0, 1.0)
    assert fitted.info["components"]["twohop"] == {"shrink": 2.0}


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="shrinkage"):
        TwoHopConfig(source_shrink=-1.0)
    with pytest.raises(ValueError, match="source_top_n"):
        TwoHopConfig(source_top_n=0)
    with pytest.raises(ValueError, match="twohop_grid"):
        BlendConfig(twohop_grid=(-1.0,))


def test_blend_leaves_out_a_term_below_min_gain(tiny, valid_hist) -> None:
    """The validator gains a little from twohop: kept at min_gain 0, left out when the
    gain is below min_gain of the value without it."""
    twohop = TwoHopConfig(shrink=0.0, shrink_grid=(), source_top_n=10, top_n=10)
    hop = np.asarray((valid_hist @ twohop_matrices(tiny, (0.0,), twohop)[0.0]).todense())
    close_to_hop = cosine_to(hop)

    def validator(scores: np.ndarray) -> float:  # 1 + a small reward of being twohop
        return 1.0 + 1e-3 * close_to_hop(scores)

    kept, left = (fit_blend(tiny, BlendConfig(components=("itemknn", "twohop"), twohop=twohop, min_gain=g),
                            valid_hist, validator) for g in (0.0, 0.01))
    assert kept.info["weights"]["twohop"] > 0 and kept.scorer.names[-1] == "twohop"
    assert left.info["weights"]["twohop"] == 0.0 and "twohop" not in left.scorer.names
    assert left.info["valid"]["best"] < kept.info["valid"]["best"] < left.info["valid"]["best"] * 1.01

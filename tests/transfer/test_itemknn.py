"""``itemknn`` (recxfer/transfer/itemknn.py) against a naive loop over items and users."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from recxfer.transfer.interactions import build_matrices
from recxfer.transfer.itemknn import ItemKNNConfig, itemknn_matrix


def naive_itemknn(S: np.ndarray, T: np.ndarray, shrink: float, alpha: float = 0.0) -> np.ndarray:
    """sim[i, j] = c_ij / (sqrt(n_i) sqrt(n_j) + shrink), by explicit loops; every user
    counts in n_i / n_j, pairs that no user shares are 0; c_ij sums
    |s_u|^-alpha over the users with both."""
    n_users, n_src = S.shape
    n_tgt = T.shape[1]
    sim = np.zeros((n_src, n_tgt))
    for i in range(n_src):
        n_i = sum(S[u, i] for u in range(n_users))
        for j in range(n_tgt):
            n_j = sum(T[u, j] for u in range(n_users))
            c = sum(S[u, i] * T[u, j] * S[u].sum() ** -alpha for u in range(n_users) if S[u].sum())
            if c:
                sim[i, j] = c / (math.sqrt(n_i) * math.sqrt(n_j) + shrink)
    return sim


@pytest.mark.parametrize("shrink", [0.0, 1.0, 10.0])
def test_equals_the_naive_shrunk_cosine(tiny, truth, shrink) -> None:
    out = itemknn_matrix(tiny, shrink, top_n=100)  # top_n >= catalogue: nothing cut
    assert sp.isspmatrix_csr(out) and out.dtype == np.float32
    assert out.shape == (len(truth.src_item_ids), len(truth.tgt_item_ids))
    np.testing.assert_allclose(out.toarray(), naive_itemknn(truth.S, truth.T, shrink), rtol=1e-5)


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_user_weights_equal_the_naive_weighted_counts(tiny, truth, alpha) -> None:
    out = itemknn_matrix(tiny, 2.0, top_n=100, user_alpha=alpha).toarray()
    np.testing.assert_allclose(out, naive_itemknn(truth.S, truth.T, 2.0, alpha), rtol=1e-5)
    assert not np.allclose(out, itemknn_matrix(tiny, 2.0, 100).toarray())


def test_shrink_zero_is_plain_cosine_of_the_item_columns(tiny, truth) -> None:
    S, T = truth.S, truth.T
    cosine = (S.T @ T) / np.outer(np.linalg.norm(S, axis=0), np.linalg.norm(T, axis=0))
    np.testing.assert_allclose(itemknn_matrix(tiny, 0.0, 100).toarray(), cosine, rtol=1e-5)


def test_top_n_keeps_the_largest_per_source_item(tiny, truth) -> None:
    full = naive_itemknn(truth.S, truth.T, 1.0)
    out = itemknn_matrix(tiny, 1.0, top_n=2).toarray()
    for i in range(full.shape[0]):
        kept = np.flatnonzero(out[i])
        assert len(kept) == min(2, np.count_nonzero(full[i]))
        np.testing.assert_allclose(out[i, kept], full[i, kept], rtol=1e-5)
        dropped = np.setdiff1d(np.arange(full.shape[1]), kept)
        assert np.abs(full[i, kept]).min() >= np.abs(full[i, dropped]).max() - 1e-7


def test_users_in_one_domain_only_count_in_the_norms(truth) -> None:
    """u6 (source only) and u7 (target only) link nothing but change n_i / n_j."""
    S, T = truth.S, truth.T
    both = build_matrices(truth.to_rows(S[:6], T[:6]), truth.source, truth.target)
    everyone = build_matrices(truth.to_rows(S, T), truth.source, truth.target)
    np.testing.assert_allclose(itemknn_matrix(both, 0.0, 100).toarray(),
                               naive_itemknn(S[:6], T[:6], 0.0), rtol=1e-5)
    assert not np.allclose(itemknn_matrix(both, 0.0, 100).toarray(),
                           itemknn_matrix(everyone, 0.0, 100).toarray())


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="shrink"):
        ItemKNNConfig(shrink=-1.0)
    with pytest.raises(ValueError, match="shrink"):
        ItemKNNConfig(shrink_grid=(1.0, -2.0))
    with pytest.raises(ValueError, match="top_n"):
        ItemKNNConfig(top_n=0)

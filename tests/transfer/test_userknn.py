"""``userknn`` (recxfer/transfer/userknn.py) against a naive loop over overlapping users,
and against user-to-user cosine scoring of a history."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recxfer.transfer.interactions import build_matrices
from recxfer.transfer.userknn import userknn_matrix


def naive_userknn(S: np.ndarray, T: np.ndarray, alpha: float) -> np.ndarray:
    """B = sum over users v with rows in both domains of outer(s_v, t_v) / |s_v|^alpha."""
    B = np.zeros((S.shape[1], T.shape[1]))
    for v in range(S.shape[0]):
        if S[v].sum() > 0 and T[v].sum() > 0:
            B += np.outer(S[v], T[v]) / S[v].sum() ** alpha
    return B


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_equals_the_naive_sum_over_overlapping_users(tiny, truth, alpha) -> None:
    out = userknn_matrix(tiny, alpha, top_n=100)
    assert sp.isspmatrix_csr(out) and out.dtype == np.float32
    assert out.shape == (len(truth.src_item_ids), len(truth.tgt_item_ids))
    np.testing.assert_allclose(out.toarray(), naive_userknn(truth.S, truth.T, alpha), rtol=1e-5)


def test_history_scores_are_cosine_weighted_neighbour_rows(tiny, truth) -> None:
    """h @ B (alpha 0.5) = |h| * sum_v cos(h, s_v) t_v: user-kNN with every neighbour."""
    S, T = truth.S[truth.overlap], truth.T[truth.overlap]
    h = np.array([1.0, 0.0, 1.0, 1.0])
    cos = (S @ h) / (np.linalg.norm(S, axis=1) * np.linalg.norm(h))  # (n_overlap,)
    expected = np.linalg.norm(h) * (cos[:, None] * T).sum(axis=0)
    np.testing.assert_allclose(h @ userknn_matrix(tiny, 0.5, 100).toarray(), expected, rtol=1e-5)


def test_one_domain_users_change_nothing(truth) -> None:
    S, T = truth.S, truth.T
    everyone = build_matrices(truth.to_rows(S, T), truth.source, truth.target)
    both = build_matrices(truth.to_rows(S[:6], T[:6]), truth.source, truth.target)
    np.testing.assert_allclose(userknn_matrix(everyone, 0.5, 100).toarray(),
                               userknn_matrix(both, 0.5, 100).toarray(), rtol=1e-6)


def test_top_n_keeps_the_largest_per_source_item(tiny, truth) -> None:
    full = naive_userknn(truth.S, truth.T, 0.5)
    out = userknn_matrix(tiny, 0.5, top_n=2).toarray()
    for i in range(full.shape[0]):
        kept = np.flatnonzero(out[i])
        assert len(kept) == min(2, np.count_nonzero(full[i]))
        np.testing.assert_allclose(out[i, kept], full[i, kept], rtol=1e-5)
        dropped = np.setdiff1d(np.arange(full.shape[1]), kept)
        assert np.abs(full[i, kept]).min() >= np.abs(full[i, dropped]).max() - 1e-7

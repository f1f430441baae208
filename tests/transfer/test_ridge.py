"""``ridge`` (recxfer/transfer/ridge.py) against ``np.linalg.solve`` on the overlapping users."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recxfer.transfer.ease import CatalogueTooLargeError
from recxfer.transfer.interactions import build_matrices
from recxfer.transfer.ridge import RidgeConfig, RidgeSolver, ridge_matrices


def naive_ridge(S: np.ndarray, T: np.ndarray, l2: float) -> np.ndarray:
    """(S^T S + l2 I)^-1 S^T T over the users with rows in both domains."""
    both = (S.sum(axis=1) > 0) & (T.sum(axis=1) > 0)
    s, t = S[both], T[both]
    return np.linalg.solve(s.T @ s + l2 * np.eye(S.shape[1]), s.T @ t)


@pytest.mark.parametrize("l2", [0.1, 1.0, 30.0])
def test_equals_the_naive_solve(tiny, truth, l2) -> None:
    out = ridge_matrices(tiny, (l2,), top_n=100, max_items=100)
    assert set(out) == {l2}
    B = out[l2]
    assert sp.isspmatrix_csr(B) and B.dtype == np.float32
    assert B.shape == (len(truth.src_item_ids), len(truth.tgt_item_ids))
    np.testing.assert_allclose(B.toarray(), naive_ridge(truth.S, truth.T, l2), rtol=1e-5, atol=1e-6)


def test_many_l2_in_one_call_equal_one_call_each(tiny) -> None:
    grid = (0.5, 5.0, 50.0)
    together = ridge_matrices(tiny, grid, 100, 100)
    assert list(together) == list(grid)
    for l2 in grid:
        alone = ridge_matrices(tiny, (l2,), 100, 100)[l2]
        np.testing.assert_allclose(together[l2].toarray(), alone.toarray(), rtol=1e-6, atol=1e-8)


def test_uses_only_users_with_rows_in_both_domains(truth) -> None:
    """A source-only user (u6) or a target-only one (u7) must not change B."""
    S, T = truth.S, truth.T
    both = build_matrices(truth.to_rows(S[:6], T[:6]), truth.source, truth.target)
    expected = ridge_matrices(both, (1.0,), 100, 100)[1.0].toarray()
    np.testing.assert_allclose(expected, np.linalg.solve(S[:6].T @ S[:6] + np.eye(4), S[:6].T @ T[:6]),
                               rtol=1e-5, atol=1e-6)
    for keep in ([0, 1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 4, 5, 7], list(range(8))):
        m = build_matrices(truth.to_rows(S[keep], T[keep]), truth.source, truth.target)
        np.testing.assert_allclose(ridge_matrices(m, (1.0,), 100, 100)[1.0].toarray(), expected,
                                   rtol=1e-5, atol=1e-6, err_msg=f"users {keep}")
    # a source-only user with the same history as an overlapping one would change a
    # regression over all users: here it must not
    heavy = np.vstack([S, np.tile(S[2], (5, 1))])
    m = build_matrices(truth.to_rows(heavy, np.vstack([T, np.zeros((5, T.shape[1]))])),
                       truth.source, truth.target)
    np.testing.assert_allclose(ridge_matrices(m, (1.0,), 100, 100)[1.0].toarray(), expected,
                               rtol=1e-5, atol=1e-6)


def test_top_n_keeps_the_largest_magnitudes(tiny, truth) -> None:
    full = naive_ridge(truth.S, truth.T, 1.0)
    assert (full < -1e-3).any()  # negative weights exist: magnitude, not value, decides
    out = ridge_matrices(tiny, (1.0,), top_n=2, max_items=100)[1.0].toarray()
    for i in range(full.shape[0]):
        kept = np.flatnonzero(out[i])
        assert len(kept) == 2
        np.testing.assert_allclose(out[i, kept], full[i, kept], rtol=1e-5)
        dropped = np.setdiff1d(np.arange(full.shape[1]), kept)
        assert np.abs(full[i, kept]).min() >= np.abs(full[i, dropped]).max() - 1e-6


def test_refuses_more_source_items_than_max_items(tiny) -> None:
    with pytest.raises(CatalogueTooLargeError, match=r"ridge: 4 items.*max_items=3"):
        ridge_matrices(tiny, (1.0,), 100, max_items=3)
    assert ridge_matrices(tiny, (1.0,), 100, max_items=4)  # the limit itself is allowed
    assert issubclass(CatalogueTooLargeError, ValueError)


def test_no_overlapping_user_raises(truth) -> None:
    S = truth.S.copy()
    S[:6] = 0  # u0..u5 keep target rows only; u6 is source only, u7 target only
    m = build_matrices(truth.to_rows(S, truth.T), truth.source, truth.target)
    assert len(m.overlap_rows) == 0
    with pytest.raises(ValueError, match="no user has rows in both domains"):
        ridge_matrices(m, (1.0,), 100, 100)


@pytest.mark.parametrize("l2", [0.1, 1.0, 30.0])
def test_dual_form_equals_the_naive_solve(truth, l2) -> None:
    """Fewer overlapping users (3) than source items (4): the user-space system is
    solved, and gives the same B as the primal solve."""
    S, T = truth.S[:3], truth.T[:3]
    m = build_matrices(truth.to_rows(S, T), truth.source, truth.target)
    solver = RidgeSolver(m, max_items=100)
    assert solver.dual
    cols = np.flatnonzero(S.sum(axis=0) > 0)  # source items the 3 users have
    tcols = np.flatnonzero(T.sum(axis=0) > 0)
    expected = naive_ridge(S[:, cols], T[:, tcols], l2)
    np.testing.assert_allclose(solver.matrix(l2, 100).toarray(), expected, rtol=1e-5, atol=1e-6)


def test_scores_equal_history_times_the_full_matrix(tiny, truth, valid_hist) -> None:
    solver = RidgeSolver(tiny, max_items=100)
    assert not solver.dual  # 6 overlapping users, 4 source items
    full = naive_ridge(truth.S, truth.T, 3.0)
    np.testing.assert_allclose(solver.scores(valid_hist, 3.0), valid_hist.toarray() @ full,
                               rtol=1e-5, atol=1e-6)


def test_refuses_a_system_above_max_items_in_either_space(truth) -> None:
    """The limit bounds min(n_overlap, n_src): 3 users x 4 items solves a 3x3 system."""
    m = build_matrices(truth.to_rows(truth.S[:3], truth.T[:3]), truth.source, truth.target)
    assert RidgeSolver(m, max_items=3).dual
    with pytest.raises(CatalogueTooLargeError, match=r"ridge: 3 items.*max_items=2"):
        RidgeSolver(m, max_items=2)


@pytest.mark.parametrize("dual", [False, True])
def test_user_weights_equal_the_naive_weighted_solve(truth, dual) -> None:
    """B = (S^T W S + l2 I)^-1 S^T W T, W = diag(|s_u|^-1/2), in both spaces."""
    S, T = (truth.S[:3], truth.T[:3]) if dual else (truth.S, truth.T)
    m = build_matrices(truth.to_rows(S, T), truth.source, truth.target)
    solver = RidgeSolver(m, max_items=100, user_alpha=0.5)
    assert solver.dual is dual
    both = (S.sum(axis=1) > 0) & (T.sum(axis=1) > 0)
    cols, tcols = np.flatnonzero(S.sum(axis=0) > 0), np.flatnonzero(T.sum(axis=0) > 0)
    s, t = S[both][:, cols], T[both][:, tcols]
    w = np.diag(s.sum(axis=1) ** -0.5)
    expected = np.linalg.solve(s.T @ w @ s + 2.0 * np.eye(len(cols)), s.T @ w @ t)
    np.testing.assert_allclose(solver.matrix(2.0, 100).toarray(), expected, rtol=1e-5, atol=1e-6)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="user_alpha_grid"):
        RidgeConfig(user_alpha_grid=())
    with pytest.raises(ValueError, match="user_alpha_grid"):
        RidgeConfig(user_alpha_grid=(-1.0,))
    with pytest.raises(ValueError, match="l2"):
        RidgeConfig(l2=0.0)
    with pytest.raises(ValueError, match="l2"):
        RidgeConfig(l2_grid=(1.0, -1.0))

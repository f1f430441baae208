"""``ease`` (recxfer/transfer/ease.py) against EASE's definition: per target column, a
ridge regression on every other joint item (explicit loop), and the closed form
``B = I - P / diag(P)``; solved in the items' space and in the users' (Woodbury), which
must agree."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recxfer.transfer.ease import CatalogueTooLargeError, EASEConfig, check_size, ease_matrices


def naive_ease_loop(X: np.ndarray, l2: float) -> np.ndarray:
    """EASE by its definition: min ||X - XB||^2 + l2 ||B||^2 with diag(B) = 0, solved
    column by column (column j regressed on every other column)."""
    n = X.shape[1]
    G = X.T @ X
    B = np.zeros((n, n))
    for j in range(n):
        others = [k for k in range(n) if k != j]
        B[others, j] = np.linalg.solve(G[np.ix_(others, others)] + l2 * np.eye(n - 1), G[others, j])
    return B


def naive_ease_closed_form(X: np.ndarray, l2: float) -> np.ndarray:
    """B = I - P / diag(P) (column j divided by P_jj), P = (X^T X + l2 I)^-1."""
    P = np.linalg.inv(X.T @ X + l2 * np.eye(X.shape[1]))
    return np.eye(X.shape[1]) - P / np.diag(P)[None, :]


@pytest.mark.parametrize("l2", [0.5, 3.0, 30.0])
def test_the_naive_references_agree_and_have_a_zero_diagonal(truth, l2) -> None:
    X = np.hstack([truth.S, truth.T])  # (8, 9) joint matrix
    loop, closed = naive_ease_loop(X, l2), naive_ease_closed_form(X, l2)
    np.testing.assert_allclose(np.diag(closed), 0.0, atol=1e-12)
    np.testing.assert_allclose(closed, loop, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("space", ["primal", "dual", "auto"])
@pytest.mark.parametrize("l2", [0.5, 3.0, 30.0])
def test_block_equals_the_source_to_target_block_of_the_joint_B(tiny, truth, l2, space) -> None:
    n_src = truth.S.shape[1]
    X = np.hstack([truth.S, truth.T])
    expected = naive_ease_loop(X, l2)[:n_src, n_src:]  # (4, 5)
    out = ease_matrices(tiny, (l2,), top_n=100, max_items=100, space=space)
    assert set(out) == {l2}
    block = out[l2]
    assert sp.isspmatrix_csr(block) and block.dtype == np.float32
    assert block.shape == (len(truth.src_item_ids), len(truth.tgt_item_ids))
    np.testing.assert_allclose(block.toarray(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("space", ["primal", "dual"])
def test_many_l2_in_one_call_equal_one_call_each(tiny, space) -> None:
    grid = (0.5, 5.0, 50.0)
    together = ease_matrices(tiny, grid, 100, 100, space)
    assert list(together) == list(grid)
    for l2 in grid:
        alone = ease_matrices(tiny, (l2,), 100, 100, space)[l2]
        np.testing.assert_allclose(together[l2].toarray(), alone.toarray(), rtol=1e-6, atol=1e-8)


def test_top_n_keeps_the_largest_magnitudes(tiny, truth) -> None:
    n_src = truth.S.shape[1]
    full = naive_ease_loop(np.hstack([truth.S, truth.T]), 1.0)[:n_src, n_src:]
    assert (full < -1e-3).any()  # negative links exist: magnitude, not value, decides
    out = ease_matrices(tiny, (1.0,), top_n=2, max_items=100)[1.0].toarray()
    for i in range(full.shape[0]):
        kept = np.flatnonzero(out[i])
        assert len(kept) == 2
        np.testing.assert_allclose(out[i, kept], full[i, kept], rtol=1e-5)
        dropped = np.setdiff1d(np.arange(full.shape[1]), kept)
        assert np.abs(full[i, kept]).min() >= np.abs(full[i, dropped]).max() - 1e-6


def test_refuses_a_system_above_max_items_in_the_space_it_solves(tiny) -> None:
    # 4 source + 5 target = 9 joint items, 8 users: auto solves the users' 8x8 system
    with pytest.raises(CatalogueTooLargeError,
                       match=r"ease: 9 items need a dense 9x9 inverse .*max_items=8.*itemknn"):
        ease_matrices(tiny, (1.0,), 100, max_items=8, space="primal")
    assert ease_matrices(tiny, (1.0,), 100, max_items=9, space="primal")  # the limit itself is allowed
    with pytest.raises(CatalogueTooLargeError, match=r"ease: 8 users need a dense 8x8 inverse .*max_items=7"):
        ease_matrices(tiny, (1.0,), 100, max_items=7)
    # the users' 8x8 system fits max_items=8, but its (8, 9) projection is above 8^2 floats
    with pytest.raises(CatalogueTooLargeError, match=r"ease: 8 users x 9 joint items .*8x9 projection.*=64"):
        ease_matrices(tiny, (1.0,), 100, max_items=8)
    assert ease_matrices(tiny, (1.0,), 100, max_items=9)
    with pytest.raises(ValueError, match="space must be"):
        ease_matrices(tiny, (1.0,), 100, max_items=8, space="items")


def test_users_without_rows_change_nothing(tiny) -> None:
    """Extra users with no row (cold users known by id only) are not in either Gram."""
    import dataclasses

    wide = dataclasses.replace(
        tiny, user_ids=np.concatenate([tiny.user_ids, ["x0", "x1", "x2"]]).astype(object),
        src=sp.vstack([tiny.src, sp.csr_matrix((3, tiny.src.shape[1]), dtype=np.float32)], format="csr"),
        tgt=sp.vstack([tiny.tgt, sp.csr_matrix((3, tiny.tgt.shape[1]), dtype=np.float32)], format="csr"))
    for space in ("primal", "dual"):  # 11 users > 9 items: auto would go primal; both agree
        np.testing.assert_allclose(ease_matrices(wide, (2.0,), 100, 100, space)[2.0].toarray(),
                                   ease_matrices(tiny, (2.0,), 100, 100, "primal")[2.0].toarray(),
                                   rtol=1e-5, atol=1e-7)


def test_the_two_spaces_agree_on_a_wider_random_matrix() -> None:
    """More items than users and the reverse, with popular columns (a large diagonal
    against a small l2, where ``1 - y^T W y`` is small): primal and dual agree."""
    from recxfer.transfer.interactions import SourceTargetMatrices

    rng = np.random.default_rng(3)
    for n_users, n_src, n_tgt in ((30, 25, 20), (60, 12, 10)):
        dense = (rng.random((n_users, n_src + n_tgt)) < 0.25).astype(np.float32)
        dense[:, 0] = 1.0  # an item every user has
        m = SourceTargetMatrices(np.array([f"u{k}" for k in range(n_users)], dtype=object),
                                 np.array([f"s{k}" for k in range(n_src)], dtype=object),
                                 np.array([f"t{k}" for k in range(n_tgt)], dtype=object),
                                 sp.csr_matrix(dense[:, :n_src]), sp.csr_matrix(dense[:, n_src:]))
        for l2 in (0.1, 10.0):
            expected = naive_ease_closed_form(dense.astype(np.float64), l2)[:n_src, n_src:]
            for space in ("primal", "dual"):
                np.testing.assert_allclose(ease_matrices(m, (l2,), 1000, 1000, space)[l2].toarray(),
                                           expected, rtol=1e-4, atol=1e-6)


def test_check_size_states_the_memory_it_would_take() -> None:
    check_size(10, 10, "x")
    with pytest.raises(CatalogueTooLargeError, match=r"x: 65536 items .*32\.0 GiB.*max_items=1000"):
        check_size(65536, 1000, "x")
    assert issubclass(CatalogueTooLargeError, ValueError)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="l2"):
        EASEConfig(l2=0.0)
    with pytest.raises(ValueError, match="l2"):
        EASEConfig(l2_grid=(-1.0,))


def test_the_dual_block_in_chunks_equals_the_whole(tiny, truth, monkeypatch) -> None:
    """The users' space forms the block a few source rows at a time (memory): 1, 3 or
    every row per chunk give the same matrix."""
    import recxfer.transfer.ease as ease

    n_src = truth.S.shape[1]
    expected = naive_ease_loop(np.hstack([truth.S, truth.T]), 2.0)[:n_src, n_src:]
    for chunk in (1, 3, 4096):
        monkeypatch.setattr(ease, "_CHUNK", chunk)
        out = ease_matrices(tiny, (2.0,), 100, 100, "dual")[2.0]
        assert out.shape == expected.shape
        np.testing.assert_allclose(out.toarray(), expected, rtol=1e-5, atol=1e-6)

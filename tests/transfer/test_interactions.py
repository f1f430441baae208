"""Source/target matrices and per-row truncation (recxfer/transfer/interactions.py),
checked against the hand-made dense truth of ``conftest.py``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recxfer.transfer.interactions import build_matrices, top_n_per_row


def naive_top_n(dense: np.ndarray, n: int) -> np.ndarray:
    """Keep the ``n`` largest ``|values|`` of each row, ties to the lower column, by a loop."""
    out = np.zeros_like(dense)
    for r, row in enumerate(dense):
        order = sorted(range(len(row)), key=lambda c: (-abs(row[c]), c))[:n]
        out[r, order] = row[order]
    return out


# ----------------------------------------------------------------------------- build_matrices


def test_matrices_equal_the_dense_truth(tiny, truth) -> None:
    np.testing.assert_array_equal(tiny.user_ids, truth.user_ids)
    np.testing.assert_array_equal(tiny.src_item_ids, truth.src_item_ids)
    np.testing.assert_array_equal(tiny.tgt_item_ids, truth.tgt_item_ids)
    assert sp.isspmatrix_csr(tiny.src) and sp.isspmatrix_csr(tiny.tgt)
    assert tiny.src.dtype == np.float32 and tiny.tgt.dtype == np.float32
    np.testing.assert_array_equal(tiny.src.toarray(), truth.S)
    np.testing.assert_array_equal(tiny.tgt.toarray(), truth.T)


def test_repeated_rows_count_once(truth) -> None:
    rows = truth.to_rows(truth.S, truth.T)
    tripled = pd.concat([rows, rows, rows], ignore_index=True)
    m = build_matrices(tripled, truth.source, truth.target)
    assert set(np.unique(m.src.data)) == {1.0} and set(np.unique(m.tgt.data)) == {1.0}
    np.testing.assert_array_equal(m.src.toarray(), truth.S)
    np.testing.assert_array_equal(m.tgt.toarray(), truth.T)
    np.testing.assert_array_equal(m.target_popularity(), truth.T.sum(axis=0))


def test_other_domains_are_ignored(tiny) -> None:
    assert "m9" not in set(tiny.src_item_ids) | set(tiny.tgt_item_ids)


def test_extra_users_get_empty_rows(rows, truth) -> None:
    m = build_matrices(rows, truth.source, truth.target, extra_users=["zz-cold", "a-cold", "u3"])
    assert list(m.user_ids) == sorted([*truth.user_ids, "zz-cold", "a-cold"])  # u3 not twice
    cold = m.user_rows(["zz-cold", "a-cold"])
    assert m.src[cold].nnz == 0 and m.tgt[cold].nnz == 0
    known = m.user_rows(list(truth.user_ids))
    np.testing.assert_array_equal(m.src[known].toarray(), truth.S)
    np.testing.assert_array_equal(m.tgt[known].toarray(), truth.T)
    # extra users neither link the catalogues nor count in popularity
    np.testing.assert_array_equal(m.user_ids[m.overlap_rows], truth.user_ids[truth.overlap])
    np.testing.assert_array_equal(m.target_popularity(), truth.T.sum(axis=0))


def test_overlap_rows_are_the_users_in_both_domains(tiny, truth) -> None:
    np.testing.assert_array_equal(tiny.overlap_rows, truth.overlap)


def test_target_popularity_counts_users_per_item(tiny, truth) -> None:
    pop = tiny.target_popularity()
    assert pop.dtype == np.float32 and pop.shape == (len(truth.tgt_item_ids),)
    np.testing.assert_array_equal(pop, truth.T.sum(axis=0))


def test_user_rows_keep_the_order_asked(tiny) -> None:
    np.testing.assert_array_equal(tiny.user_rows(["u5", "u0", "u7", "u5"]), [5, 0, 7, 5])
    assert tiny.user_rows([]).shape == (0,)


def test_user_rows_raise_naming_unknown_users(tiny) -> None:
    with pytest.raises(ValueError, match=r"1 users unknown.*nobody"):
        tiny.user_rows(["u1", "nobody"])


@pytest.mark.parametrize("missing", ["source", "target"])
def test_a_domain_without_rows_raises(rows, truth, missing) -> None:
    source, target = truth.source, truth.target
    if missing == "source":
        source = "absent"
    else:
        target = "absent"
    with pytest.raises(ValueError, match=f"{missing} domain 'absent'"):
        build_matrices(rows, source, target)


# ----------------------------------------------------------------------------- top_n_per_row


def untied(seed: int, shape=(7, 9)) -> np.ndarray:
    """Random values with distinct magnitudes per row, signs mixed, some zeros."""
    rng = np.random.default_rng(seed)
    values = rng.permutation(np.arange(1, shape[0] * shape[1] + 1)).reshape(shape) / 10.0
    values *= rng.choice([-1.0, 1.0], size=shape)
    values[rng.random(shape) < 0.2] = 0.0
    return values.astype(np.float32)


@pytest.mark.parametrize("kind", ["dense", "sparse"])
@pytest.mark.parametrize("n", [1, 2, 5, 9, 50])
def test_top_n_keeps_the_largest_magnitudes(kind, n) -> None:
    dense = untied(n)
    given = dense if kind == "dense" else sp.csr_matrix(dense)
    out = top_n_per_row(given, n)
    assert sp.isspmatrix_csr(out) and out.dtype == np.float32 and out.shape == dense.shape
    np.testing.assert_array_equal(out.toarray(), naive_top_n(dense, n))
    assert not (out.data == 0).any()  # zeros dropped
    assert (np.diff(out.indptr) <= n).all()


def test_top_n_at_least_the_width_keeps_every_nonzero() -> None:
    dense = untied(3)
    for given in (dense, sp.csr_matrix(dense)):
        out = top_n_per_row(given, dense.shape[1])
        np.testing.assert_array_equal(out.toarray(), dense)
        assert out.nnz == np.count_nonzero(dense)


def test_sparse_explicit_zeros_are_dropped() -> None:
    matrix = sp.csr_matrix((np.array([0.0, 2.0, -3.0], np.float32), np.array([0, 1, 2]),
                            np.array([0, 3])), shape=(1, 3))
    out = top_n_per_row(matrix, 2)
    assert out.nnz == 2
    np.testing.assert_array_equal(out.toarray(), [[0.0, 2.0, -3.0]])


def test_top_n_below_one_raises() -> None:
    with pytest.raises(ValueError, match="top_n must be >= 1"):
        top_n_per_row(np.ones((2, 2)), 0)


def test_dense_and_sparse_inputs_agree_without_ties() -> None:
    for seed in range(5):
        dense = untied(seed, (30, 12))
        for n in (1, 3, 7):
            np.testing.assert_array_equal(top_n_per_row(dense, n).toarray(),
                                          top_n_per_row(sp.csr_matrix(dense), n).toarray())


def tied_rows() -> np.ndarray:
    """Rows with many equal magnitudes (as 0/1 data gives)."""
    return np.array([
        [3, 2, 3, -1, 1, 3, 1, 2, 1, 1, -1, 3, -3, 1, 2, 2],
        [2, 1, -2, 2, -3, 0, -1, 3, -2, 3, -3, 1, 1, 3, -1, 3],
    ], dtype=np.float32)


@pytest.mark.parametrize("n", [2, 7, 12])
def test_sparse_ties_go_to_the_lower_column(n) -> None:
    dense = tied_rows()
    np.testing.assert_array_equal(top_n_per_row(sp.csr_matrix(dense), n).toarray(),
                                  naive_top_n(dense, n))


def test_dense_ties_go_to_the_lower_column() -> None:
    """200 seeded rows of small integers (many ties): the dense branch must keep what
    the naive loop keeps (the sparse branch does, see the test above)."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        n_cols = int(rng.integers(2, 40))
        n = int(rng.integers(1, n_cols))
        dense = rng.integers(-3, 4, size=(1, n_cols)).astype(np.float32)
        np.testing.assert_array_equal(top_n_per_row(sp.csr_matrix(dense), n).toarray(),
                                      naive_top_n(dense, n))  # the sparse branch is right
        np.testing.assert_array_equal(top_n_per_row(dense, n).toarray(), naive_top_n(dense, n),
                                      err_msg=f"row {dense.astype(int).tolist()}, n={n}")


@pytest.mark.parametrize("density", [0.05, 0.2, 0.5, 0.9])
@pytest.mark.parametrize("n", [1, 4, 15])
def test_sparse_cut_paths_equal_the_naive_loop(density, n) -> None:
    """Sparse input below 30 % density is cut row by row, above it through dense row
    blocks: both keep what the naive loop keeps (small integers: many ties), in
    canonical csr (sorted columns), zeros dropped."""
    rng = np.random.default_rng(n)
    dense = rng.integers(-3, 4, size=(60, 40)).astype(np.float32)
    dense[rng.random(dense.shape) > density] = 0.0
    out = top_n_per_row(sp.csr_matrix(dense), n)
    np.testing.assert_array_equal(out.toarray(), naive_top_n(dense, n))
    assert out.has_sorted_indices and not (out.data == 0).any()
    for r in range(out.shape[0]):
        assert (np.diff(out.indices[out.indptr[r]:out.indptr[r + 1]]) > 0).all()


def test_sparse_rows_within_n_come_back_canonical() -> None:
    """No row over n: the matrix is returned as is, but with sorted columns."""
    unsorted = sp.csr_matrix((np.array([1.0, 2.0, 3.0], np.float32), np.array([2, 0, 1]), np.array([0, 3])),
                             shape=(1, 3))
    assert not unsorted.has_sorted_indices
    out = top_n_per_row(unsorted, 5)
    np.testing.assert_array_equal(out.indices, [0, 1, 2])
    np.testing.assert_array_equal(out.toarray(), [[2.0, 3.0, 1.0]])

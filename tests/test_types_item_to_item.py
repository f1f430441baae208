"""``ItemToItemScorer`` (recxfer/types.py): the servable score of a source history,
against a naive per-user loop of its documented formula."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recxfer.types import ItemToItemScorer, lift_head

N_SRC, N_TGT = 4, 5
SRC_IDS = np.array([f"s{i}" for i in range(N_SRC)], dtype=object)
TGT_IDS = np.array([f"t{j}" for j in range(N_TGT)], dtype=object)

# two components with negative links; s3 has no link in B1 (row of zeros)
B1 = np.array([
    [0.5, 0.0, -0.2, 0.0, 0.1],
    [0.0, 0.3, 0.0, 0.4, 0.0],
    [-0.6, 0.0, 0.2, 0.0, 0.0],
    [0.0, 0.0, 0.0, 0.0, 0.0],
], dtype=np.float32)
B2 = np.array([
    [0.0, 1.0, 0.0, 0.0, 2.0],
    [0.0, 0.0, 0.0, 3.0, 0.0],
    [0.0, 0.0, 0.0, 0.0, 0.0],
    [1.0, 0.0, 5.0, 0.0, -1.0],
], dtype=np.float32)
POP = np.array([4.0, 0.0, 1.0, 2.0, 8.0], dtype=np.float32)

HIST = np.array([
    [1, 0, 0, 0],
    [0, 1, 0, 1],
    [1, 1, 1, 1],
    [0, 0, 0, 1],  # nothing in B1: only B2 and popularity
    [0, 0, 1, 0],  # nothing in B2
    [0, 0, 0, 0],  # empty history: popularity only
    [1, 0, 1, 0],  # B1 row sum has a negative maximum magnitude
], dtype=np.float32)


def scorer(weights=(0.7, 0.3), pop_weight=0.2, pop=POP, matrices=(B1, B2)) -> ItemToItemScorer:
    mats = tuple(sp.csr_matrix(m) for m in matrices)
    names = tuple(f"c{c}" for c in range(len(mats)))
    return ItemToItemScorer(SRC_IDS, TGT_IDS, names, mats, tuple(weights), pop, pop_weight)


def naive_score(hist, matrices, weights, pop, pop_weight) -> np.ndarray:
    """The docstring's formula, user by user, item by item."""
    out = np.zeros((hist.shape[0], N_TGT))
    for u in range(hist.shape[0]):
        for matrix, weight in zip(matrices, weights):
            part = [sum(hist[u, i] * matrix[i, j] for i in range(N_SRC)) for j in range(N_TGT)]
            top = max(abs(p) for p in part)
            for j in range(N_TGT):
                if top > 0:
                    out[u, j] += weight * part[j] / top
        if pop.max() > 0:
            for j in range(N_TGT):
                out[u, j] += pop_weight * pop[j] / pop.max()
    return out


@pytest.mark.parametrize("weights,pop_weight", [((0.7, 0.3), 0.2), ((1.0, 0.0), 0.0),
                                                ((0.0, 2.0), 1.0), ((0.5, 0.5), 0.0)])
def test_score_equals_the_naive_formula(weights, pop_weight) -> None:
    out = scorer(weights, pop_weight).score(sp.csr_matrix(HIST))
    assert out.dtype == np.float32 and out.shape == (len(HIST), N_TGT)
    np.testing.assert_allclose(out, naive_score(HIST, (B1, B2), weights, POP, pop_weight),
                               rtol=1e-5, atol=1e-7)


def test_a_zero_row_adds_nothing() -> None:
    s = scorer((0.7, 0.3), 0.2)
    out = s.score(HIST[[3, 4, 5]])
    pop = 0.2 * POP / POP.max()
    part2 = HIST[3] @ B2
    np.testing.assert_allclose(out[0], 0.3 * part2 / np.abs(part2).max() + pop, rtol=1e-6)
    part1 = HIST[4] @ B1
    np.testing.assert_allclose(out[1], 0.7 * part1 / np.abs(part1).max() + pop, rtol=1e-6)
    np.testing.assert_allclose(out[2], pop, rtol=1e-6)  # an empty history: popularity only
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(scorer((1.0, 1.0), 0.0).score(HIST[[5]]), 0.0)


def test_one_component_ranks_as_its_raw_product() -> None:
    out = scorer((1.0,), 0.0, matrices=(B1,)).score(HIST[:3])
    raw = HIST[:3] @ B1
    np.testing.assert_allclose(out, raw / np.abs(raw).max(axis=1, keepdims=True), rtol=1e-6)
    for u in range(3):
        np.testing.assert_array_equal(np.argsort(-out[u], kind="stable"),
                                      np.argsort(-raw[u], kind="stable"))


def test_popularity_term() -> None:
    with_pop = scorer((0.7, 0.3), 0.5).score(HIST)
    without = scorer((0.7, 0.3), 0.0).score(HIST)
    np.testing.assert_allclose(with_pop - without, np.tile(0.5 * POP / 8.0, (len(HIST), 1)),
                               rtol=1e-6, atol=1e-7)
    # no popularity at all: the term is left out (no division by zero)
    zero_pop = scorer((0.7, 0.3), 0.5, pop=np.zeros(N_TGT, np.float32)).score(HIST)
    np.testing.assert_allclose(zero_pop, without, rtol=1e-6)
    # popularity alone (no component)
    alone = ItemToItemScorer(SRC_IDS, TGT_IDS, (), (), (), POP, 1.0).score(HIST[:2])
    np.testing.assert_allclose(alone, np.tile(POP / 8.0, (2, 1)), rtol=1e-6)


def test_dense_and_sparse_histories_score_the_same() -> None:
    s = scorer()
    np.testing.assert_array_equal(s.score(HIST), s.score(sp.csr_matrix(HIST)))
    np.testing.assert_array_equal(s.score(HIST.astype(np.int64)), s.score(sp.csr_matrix(HIST)))


def test_batch_equals_single() -> None:
    s = scorer()
    batch = s.score(sp.csr_matrix(HIST))
    for u in range(len(HIST)):
        np.testing.assert_allclose(s.score(sp.csr_matrix(HIST[u:u + 1]))[0], batch[u], rtol=1e-6)
    order = np.random.default_rng(0).permutation(len(HIST))
    np.testing.assert_allclose(s.score(sp.csr_matrix(HIST[order])), batch[order], rtol=1e-6)


def test_no_histories() -> None:
    out = scorer().score(sp.csr_matrix((0, N_SRC), dtype=np.float32))
    assert out.shape == (0, N_TGT) and out.dtype == np.float32


def test_history_with_wrong_width_raises() -> None:
    with pytest.raises(ValueError, match="history has 3 columns, not 4"):
        scorer().score(np.ones((2, 3), np.float32))


def test_inconsistent_components_raise() -> None:
    mats = (sp.csr_matrix(B1), sp.csr_matrix(B2))
    with pytest.raises(ValueError, match="one entry per component"):
        ItemToItemScorer(SRC_IDS, TGT_IDS, ("a", "b"), mats, (1.0,), POP, 0.0)
    with pytest.raises(ValueError, match="one entry per component"):
        ItemToItemScorer(SRC_IDS, TGT_IDS, ("a",), mats, (1.0, 1.0), POP, 0.0)
    with pytest.raises(ValueError, match=r"component b: shape \(4, 4\) != \(4, 5\)"):
        ItemToItemScorer(SRC_IDS, TGT_IDS, ("a", "b"), (mats[0], sp.csr_matrix(B2[:, :4])),
                         (1.0, 1.0), POP, 0.0)
    with pytest.raises(ValueError, match=r"component a: shape \(5, 4\)"):
        ItemToItemScorer(SRC_IDS, TGT_IDS, ("a",), (sp.csr_matrix(B1.T),), (1.0,), POP, 0.0)
    with pytest.raises(ValueError, match=r"popularity \(4,\) != \(5,\)"):
        ItemToItemScorer(SRC_IDS, TGT_IDS, ("a",), mats[:1], (1.0,), POP[:4], 0.0)


# ----------------------------------------------------------------------------- history_matrix


def test_history_matrix_is_binary_deduplicated_and_ignores_padding() -> None:
    s = scorer()
    hist = s.history_matrix([np.array([2, 0, 2, -1]), np.array([], np.int64),
                             np.array([-1, -1]), np.array([3])])
    assert sp.isspmatrix_csr(hist) and hist.shape == (4, N_SRC)
    np.testing.assert_array_equal(hist.toarray(), [[1, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0],
                                                   [0, 0, 0, 1]])
    assert set(hist.data) == {1.0}
    # what it builds scores as the dense 0/1 matrix does
    np.testing.assert_array_equal(s.score(hist), s.score(hist.toarray()))


def test_history_matrix_of_no_users() -> None:
    hist = scorer().history_matrix([])
    assert hist.shape == (0, N_SRC) and hist.nnz == 0


def test_history_matrix_rejects_positions_outside_the_catalogue() -> None:
    with pytest.raises(ValueError):
        scorer().history_matrix([np.array([0, N_SRC + 3]), np.array([1])])


def test_blocked_accumulation_equals_one_block(monkeypatch) -> None:
    """A batch scored a few rows at a time (the product's float64 accumulator is
    bounded) scores as in one block; non-binary history values weight their rows."""
    import recxfer.types as types

    hist = HIST * np.arange(1, N_SRC + 1, dtype=np.float32)[None, :]
    s = scorer()
    whole = s.score(sp.csr_matrix(hist))
    np.testing.assert_allclose(whole, naive_score(hist, (B1, B2), (0.7, 0.3), POP, 0.2),
                               rtol=1e-5, atol=1e-7)
    monkeypatch.setattr(types, "_PRODUCT_BLOCK_FLOATS", 2 * N_TGT)  # two rows a block
    np.testing.assert_array_equal(s.score(sp.csr_matrix(hist)), whole)


def test_embedding_term_from_the_transposed_table() -> None:
    """``item_emb_t`` (what serving keeps) scores as ``item_emb``; a table that does
    not fit is refused either way."""
    rng = np.random.default_rng(2)
    user_emb = rng.standard_normal((len(HIST), 3)).astype(np.float32)
    item_emb = rng.standard_normal((N_TGT, 3)).astype(np.float32)
    s = ItemToItemScorer(SRC_IDS, TGT_IDS, ("c0",), (sp.csr_matrix(B1),), (0.5,), POP, 0.2, 0.7)
    want = s.score(HIST, user_emb, item_emb)
    part = user_emb @ item_emb.T
    naive = naive_score(HIST, (B1,), (0.5,), POP, 0.2) + 0.7 * part / np.abs(part).max(axis=1, keepdims=True)
    np.testing.assert_allclose(want, naive, rtol=1e-5, atol=1e-6)
    got = s.score(HIST, user_emb, item_emb_t=np.ascontiguousarray(item_emb.T))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="do not fit"):
        s.score(HIST, user_emb, item_emb_t=np.ascontiguousarray(item_emb[:-1].T))
    with pytest.raises(ValueError, match="give user_emb and item_emb"):
        s.score(HIST, user_emb)


@pytest.mark.parametrize("fmt", ["csc", "coo"])
def test_components_in_other_sparse_formats_score_the_same(fmt) -> None:
    want = scorer().score(HIST)
    mats = tuple(sp.csr_matrix(m).asformat(fmt) for m in (B1, B2))
    other = ItemToItemScorer(SRC_IDS, TGT_IDS, ("c0", "c1"), mats, (0.7, 0.3), POP, 0.2)
    np.testing.assert_array_equal(other.score(HIST), want)


def test_components_are_held_as_csr() -> None:
    s = ItemToItemScorer(SRC_IDS, TGT_IDS, ("c0",), (sp.csc_matrix(B1),), (1.0,), POP, 0.0)
    assert s.matrices[0].format == "csr"
    np.testing.assert_array_equal(s.matrices[0].toarray(), B1)


# ----------------------------------------------------------------------------- head


def naive_with_head(hist, matrices, weights, pop, pop_weight, head: int, size: int) -> np.ndarray:
    """The blend's scores with the head component's ``size`` best positive items of
    each user (ties at the cut all in) moved above every other item, in the head's
    order: a per-user loop."""
    out = naive_score(hist, matrices, weights, pop, pop_weight)
    offset = 2.0 + sum(abs(w) for w in weights) + abs(pop_weight)
    for u in range(hist.shape[0]):
        part = hist[u] @ matrices[head]
        top = np.abs(part).max()
        if top == 0:
            continue
        norm = part / top
        cut = sorted(norm, reverse=True)[size - 1]
        for j in range(N_TGT):
            if norm[j] > 0 and norm[j] >= cut:
                out[u, j] = offset + norm[j]
    return out


@pytest.mark.parametrize("head,size", [(0, 1), (0, 2), (1, 1), (1, 3), (1, 5)])
def test_head_items_lead_in_the_heads_order(head, size) -> None:
    base = scorer()
    with_head = ItemToItemScorer(SRC_IDS, TGT_IDS, base.names, base.matrices, base.weights, POP, 0.2,
                                 head=base.names[head], head_size=size)
    got = with_head.score(sp.csr_matrix(HIST))
    want = naive_with_head(HIST, (B1, B2), (0.7, 0.3), POP, 0.2, head, size)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # the lifted items are above every other one of their row
    plain = base.score(sp.csr_matrix(HIST))
    lifted = got != plain
    for u in range(len(HIST)):
        if lifted[u].any() and (~lifted[u]).any():
            assert got[u, lifted[u]].min() > got[u, ~lifted[u]].max()
        assert lifted[u].sum() <= max(size, 1) + N_TGT  # never more than the ties at the cut


def test_a_head_of_weight_zero_still_leads() -> None:
    """The head's component need not weigh in the blend (weight 0)."""
    with_head = ItemToItemScorer(SRC_IDS, TGT_IDS, ("c0", "c1"), (sp.csr_matrix(B1), sp.csr_matrix(B2)),
                                 (1.0, 0.0), POP, 0.0, head="c1", head_size=1)
    got = with_head.score(sp.csr_matrix(HIST))
    np.testing.assert_allclose(got, naive_with_head(HIST, (B1, B2), (1.0, 0.0), POP, 0.0, 1, 1),
                               rtol=1e-5, atol=1e-6)
    assert np.argmax(got[1]) == 2  # user 1 (s1, s3): B2 gives [1, 0, 5, 3, -1], t2 leads


def test_head_must_name_a_component() -> None:
    base = scorer()
    for head, size in (("nope", 3), ("c0", 0), ("", 2), ("c0", -1)):
        with pytest.raises(ValueError, match="head"):
            ItemToItemScorer(SRC_IDS, TGT_IDS, base.names, base.matrices, base.weights, POP, 0.2,
                             head=head, head_size=size)


def test_a_weighted_head_reuses_its_product_bit_for_bit() -> None:
    """The head's component, also weighted in the blend, is multiplied once: the
    scores equal, to the last bit, the blend without a head lifted by a product of
    the head's own (what scoring did before the product was shared)."""
    rng = np.random.default_rng(3)
    n_src, n_tgt = 40, 300
    src_ids = np.array([f"s{i}" for i in range(n_src)], dtype=object)
    tgt_ids = np.array([f"t{j}" for j in range(n_tgt)], dtype=object)
    mats = tuple(sp.random(n_src, n_tgt, density=0.1, format="csr", dtype=np.float32, random_state=s)
                 for s in (1, 2))
    hist = sp.csr_matrix((rng.random((25, n_src)) < 0.15).astype(np.float32))
    pop = rng.integers(0, 50, n_tgt).astype(np.float32)
    with_head = ItemToItemScorer(src_ids, tgt_ids, ("c0", "c1"), mats, (0.7, 0.3), pop, 0.1,
                                 head="c1", head_size=7)
    without = ItemToItemScorer(src_ids, tgt_ids, ("c0", "c1"), mats, (0.7, 0.3), pop, 0.1)
    alone = ItemToItemScorer(src_ids, tgt_ids, ("c1",), mats[1:], (1.0,), pop, 0.0)
    want = without.score(hist)
    lift_head(want, alone.score(hist), 7, with_head.head_offset)
    np.testing.assert_array_equal(with_head.score(hist), want)

"""Ranking losses (recxfer/losses/ranking.py) against naive per-row loops.

In the style of pytorch-metric-learning's loss tests: a handful of hand-made
points, the loss computed by hand with plain Python floats, per dtype; plus
empty input, shape validation and a backward pass.
"""

from __future__ import annotations

import math

import pytest
import torch

from recxfer.losses import BPRLoss, InBatchSoftmaxLoss, bpr_loss, in_batch_softmax_loss

DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: 1e-5, torch.float64: 1e-12}

USERS = [[1.0, 0.0, 0.5], [0.5, -1.0, 0.0], [0.0, 2.0, -0.5], [-1.5, 0.5, 1.0], [0.3, 0.3, 0.3]]
ITEMS = [[0.8, 0.1, 0.0], [0.0, -1.2, 0.4], [0.2, 1.5, 0.0], [-1.0, 0.0, 2.0], [0.5, 0.5, -0.5]]
LOG_Q = [-1.0, -3.0, -0.5, -2.0, -4.0]
ITEM_IDX = [4, 7, 4, 1, 7]  # rows 0/2 and 1/4 hold the same item
WEIGHTS = [1.0, 0.5, 2.0, 0.0, 3.0]  # sum != B: a plain mean would differ


def naive_in_batch(users, items, log_q=None, item_idx=None, temperature=1.0, weight=None):
    """Per-row cross entropy with a hand-written log-sum-exp."""
    losses = []
    for i, u in enumerate(users):
        logits = {}
        for j, v in enumerate(items):
            if item_idx is not None and j != i and item_idx[j] == item_idx[i]:
                continue  # another row's copy of my positive is not a negative
            s = sum(a * b for a, b in zip(u, v)) / temperature
            if log_q is not None:
                s -= log_q[j]
            logits[j] = s
        top = max(logits.values())
        lse = top + math.log(sum(math.exp(s - top) for s in logits.values()))
        losses.append(lse - logits[i])
    if weight is None:
        return sum(losses) / len(losses)
    return sum(w * l for w, l in zip(weight, losses)) / sum(weight)


def naive_bpr(pos, neg):
    terms = []
    for i, p in enumerate(pos):
        for n in neg[i] if isinstance(neg[i], list) else [neg[i]]:
            x = p - n
            terms.append(math.log1p(math.exp(-x)))  # -log(sigmoid(x))
    return sum(terms) / len(terms)


def t(values, dtype, grad=False):
    return torch.tensor(values, dtype=dtype, requires_grad=grad)


# --------------------------------------------------------------------------- in-batch softmax


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("log_q", [None, LOG_Q], ids=["plain", "logq"])
@pytest.mark.parametrize("item_idx", [None, ITEM_IDX], ids=["distinct", "dup_items"])
@pytest.mark.parametrize("weight", [None, WEIGHTS], ids=["mean", "weighted"])
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_in_batch_softmax_matches_naive_loop(dtype, log_q, item_idx, weight, temperature) -> None:
    expected = naive_in_batch(USERS, ITEMS, log_q, item_idx, temperature, weight)
    kwargs = dict(
        item_log_q=None if log_q is None else t(log_q, dtype),
        item_idx=None if item_idx is None else torch.tensor(item_idx),
        weight=None if weight is None else t(weight, dtype),
    )
    got = in_batch_softmax_loss(t(USERS, dtype), t(ITEMS, dtype), temperature=temperature, **kwargs)
    assert got.dtype == dtype
    assert got.shape == ()
    assert got.item() == pytest.approx(expected, rel=TOL[dtype], abs=TOL[dtype])
    module = InBatchSoftmaxLoss(temperature)(t(USERS, dtype), t(ITEMS, dtype), **kwargs)
    assert module.item() == pytest.approx(expected, rel=TOL[dtype], abs=TOL[dtype])


def test_log_q_changes_the_loss_and_a_constant_log_q_does_not() -> None:
    u, v = t(USERS, torch.float64), t(ITEMS, torch.float64)
    plain = in_batch_softmax_loss(u, v)
    corrected = in_batch_softmax_loss(u, v, item_log_q=t(LOG_Q, torch.float64))
    constant = in_batch_softmax_loss(u, v, item_log_q=torch.full((5,), -2.3, dtype=torch.float64))
    assert abs(corrected.item() - plain.item()) > 1e-3
    assert constant.item() == pytest.approx(plain.item(), abs=1e-12)


def test_duplicate_masking_matters_and_uses_item_idx_not_embeddings() -> None:
    u, v = t(USERS, torch.float64), t(ITEMS, torch.float64)
    distinct = torch.arange(5)
    assert in_batch_softmax_loss(u, v, item_idx=distinct).item() == pytest.approx(
        in_batch_softmax_loss(u, v).item(), abs=1e-12
    )
    masked = in_batch_softmax_loss(u, v, item_idx=torch.tensor(ITEM_IDX))
    assert masked.item() < in_batch_softmax_loss(u, v).item()  # fewer negatives


def test_a_batch_of_one_item_has_no_negatives() -> None:
    u, v = t(USERS, torch.float64), t(ITEMS, torch.float64)
    assert in_batch_softmax_loss(u[:1], v[:1]).item() == pytest.approx(0.0, abs=1e-12)
    same = in_batch_softmax_loss(u, v, item_idx=torch.zeros(5, dtype=torch.long))
    assert same.item() == pytest.approx(0.0, abs=1e-12)


def test_weights_select_rows() -> None:
    u, v = t(USERS, torch.float64), t(ITEMS, torch.float64)
    only_row_2 = torch.tensor([0.0, 0.0, 3.0, 0.0, 0.0], dtype=torch.float64)
    got = in_batch_softmax_loss(u, v, weight=only_row_2).item()
    per_row = [naive_in_batch(USERS, ITEMS, weight=[float(k == i) for k in range(5)])
               for i in range(5)]
    assert got == pytest.approx(per_row[2], abs=1e-12)
    assert in_batch_softmax_loss(u, v, weight=torch.full((5,), 7.0, dtype=torch.float64)).item() \
        == pytest.approx(sum(per_row) / 5, abs=1e-12)


@pytest.mark.parametrize("item_idx", [None, ITEM_IDX], ids=["distinct", "dup_items"])
def test_in_batch_softmax_backward(item_idx) -> None:
    u, v = t(USERS, torch.float32, grad=True), t(ITEMS, torch.float32, grad=True)
    idx = None if item_idx is None else torch.tensor(item_idx)
    loss = InBatchSoftmaxLoss(0.5)(u, v, item_log_q=t(LOG_Q, torch.float32), item_idx=idx)
    loss.backward()
    for grad in (u.grad, v.grad):
        assert grad is not None and grad.shape == (5, 3)
        assert torch.isfinite(grad).all()
        assert grad.abs().sum() > 0


def test_in_batch_softmax_gradcheck() -> None:
    u, v = t(USERS, torch.float64, grad=True), t(ITEMS, torch.float64, grad=True)
    w = t(WEIGHTS, torch.float64)
    idx, log_q = torch.tensor(ITEM_IDX), t(LOG_Q, torch.float64)
    assert torch.autograd.gradcheck(
        lambda a, b: in_batch_softmax_loss(a, b, log_q, idx, 0.7, w), (u, v)
    )


def test_gradient_descent_lowers_the_loss() -> None:
    torch.manual_seed(0)
    u = torch.randn(16, 4, requires_grad=True)
    v = torch.randn(16, 4, requires_grad=True)
    loss_fn = InBatchSoftmaxLoss()
    start = loss_fn(u, v).item()
    optim = torch.optim.SGD([u, v], lr=0.5)
    for _ in range(50):
        optim.zero_grad()
        loss_fn(u, v).backward()
        optim.step()
    assert loss_fn(u, v).item() < 0.5 * start


@pytest.mark.parametrize("dtype", DTYPES)
def test_in_batch_softmax_empty_input(dtype) -> None:
    u = torch.zeros(0, 3, dtype=dtype, requires_grad=True)
    v = torch.zeros(0, 3, dtype=dtype, requires_grad=True)
    loss = InBatchSoftmaxLoss()(u, v)
    assert loss.item() == 0.0
    loss.backward()
    assert u.grad is not None and u.grad.shape == (0, 3)


@pytest.mark.parametrize(
    "user_shape,item_shape",
    [((5,), (5,)), ((5, 3), (5, 4)), ((5, 3), (4, 3)), ((2, 5, 3), (2, 5, 3))],
)
def test_in_batch_softmax_shape_validation(user_shape, item_shape) -> None:
    with pytest.raises(ValueError, match="must both be"):
        InBatchSoftmaxLoss()(torch.zeros(user_shape), torch.zeros(item_shape))


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_temperature_must_be_positive(temperature) -> None:
    with pytest.raises(ValueError, match="temperature"):
        InBatchSoftmaxLoss(temperature)


def test_weight_of_the_wrong_shape_is_rejected() -> None:
    u, v = t(USERS, torch.float64), t(ITEMS, torch.float64)
    with pytest.raises(ValueError):
        InBatchSoftmaxLoss()(u, v, weight=torch.ones(5, 1, dtype=torch.float64))


# --------------------------------------------------------------------------- BPR

POS = [2.0, -0.5, 0.0, 1.25]
NEG_1 = [1.0, 0.5, -3.0, 1.25]
NEG_2 = [[1.0, 3.0, -1.0], [0.5, -0.5, -2.0], [0.0, 4.0, 0.25], [1.0, 1.5, -10.0]]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("neg", [NEG_1, NEG_2], ids=["one_neg", "n_neg"])
def test_bpr_matches_naive_loop(dtype, neg) -> None:
    expected = naive_bpr(POS, neg)
    got = bpr_loss(t(POS, dtype), t(neg, dtype))
    assert got.dtype == dtype and got.shape == ()
    assert got.item() == pytest.approx(expected, rel=TOL[dtype])
    assert BPRLoss()(t(POS, dtype), t(neg, dtype)).item() == pytest.approx(expected, rel=TOL[dtype])


def test_bpr_of_equal_scores_is_log_two() -> None:
    assert bpr_loss(torch.zeros(3), torch.zeros(3, 2)).item() == pytest.approx(math.log(2.0))


def test_bpr_is_stable_for_large_margins() -> None:
    loss = bpr_loss(torch.tensor([-200.0, 200.0]), torch.tensor([200.0, -200.0]))
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(200.0, rel=1e-4)  # mean(400, ~0)


@pytest.mark.parametrize("neg", [NEG_1, NEG_2], ids=["one_neg", "n_neg"])
def test_bpr_backward(neg) -> None:
    pos = t(POS, torch.float32, grad=True)
    negs = t(neg, torch.float32, grad=True)
    BPRLoss()(pos, negs).backward()
    assert torch.isfinite(pos.grad).all() and (pos.grad < 0).all()  # raising pos lowers loss
    assert torch.isfinite(negs.grad).all() and (negs.grad > 0).all()
    assert torch.autograd.gradcheck(bpr_loss, (t(POS, torch.float64, True), t(neg, torch.float64, True)))


@pytest.mark.parametrize("neg_shape", [(0,), (0, 4)])
def test_bpr_empty_input(neg_shape) -> None:
    pos = torch.zeros(0, requires_grad=True)
    neg = torch.zeros(neg_shape, requires_grad=True)
    loss = BPRLoss()(pos, neg)
    assert loss.item() == 0.0
    loss.backward()
    assert pos.grad is not None and pos.grad.shape == (0,)


@pytest.mark.parametrize("pos_shape,neg_shape", [((4, 1), (4,)), ((4,), (3,)), ((4,), (5, 2)), ((), ())])
def test_bpr_shape_validation(pos_shape, neg_shape) -> None:
    with pytest.raises(ValueError, match="pos_scores"):
        BPRLoss()(torch.zeros(pos_shape), torch.zeros(neg_shape))


def test_bpr_rejects_three_dimensional_negatives() -> None:
    with pytest.raises(ValueError):
        BPRLoss()(torch.zeros(2), torch.zeros(2, 3, 2))

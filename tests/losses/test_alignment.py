"""Domain-alignment losses (recxfer/losses/alignment.py) against naive loops.

In the style of pytorch-metric-learning's loss tests: hand-made points, the loss
recomputed with plain Python floats, per dtype; plus "about zero on the same
sample", "clearly positive on a shift", empty input, validation and backward.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from recxfer.losses import (
    AlignmentConfig,
    AlignmentLoss,
    ContrastiveAlignmentLoss,
    CORALLoss,
    DomainAdversarialLoss,
    MMDLoss,
    contrastive_alignment_loss,
    coral_loss,
    grad_reverse,
    median_bandwidths,
    mmd_loss,
)

DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


SRC = [[1.0, 0.0, 0.5], [0.5, -1.0, 0.0], [0.0, 2.0, -0.5], [-1.5, 0.5, 1.0]]
TGT = [[0.8, 0.1, 0.0], [0.0, -1.2, 0.4], [0.2, 1.5, 0.0], [-1.0, 0.0, 2.0], [2.5, 0.5, -0.5]]


def t(values, dtype=torch.float32, grad=False):
    return torch.tensor(values, dtype=dtype, requires_grad=grad)


# --------------------------------------------------------------------------- naive references
def sq_dist(x, y):
    return sum((a - b) ** 2 for a, b in zip(x, y))


def naive_kernel(x, y, bandwidths):
    return sum(math.exp(-sq_dist(x, y) / (2 * s * s)) for s in bandwidths) / len(bandwidths)


def naive_mmd(src, tgt, bandwidths, unbiased=False):
    def mean_k(a, b, skip_diagonal):
        total, count = 0.0, 0
        for i, x in enumerate(a):
            for j, y in enumerate(b):
                if skip_diagonal and i == j:
                    continue
                total += naive_kernel(x, y, bandwidths)
                count += 1
        return total / count

    return (
        mean_k(src, src, unbiased) + mean_k(tgt, tgt, unbiased) - 2 * mean_k(src, tgt, False)
    )


def naive_median_distance(src, tgt):
    pooled = src + tgt
    dists = sorted(
        math.sqrt(sq_dist(pooled[i], pooled[j]))
        for i in range(len(pooled))
        for j in range(i + 1, len(pooled))
    )
    return dists[(len(dists) - 1) // 2]  # torch.median: the lower middle value


def naive_cov(rows):
    n, d = len(rows), len(rows[0])
    mean = [sum(r[k] for r in rows) / n for k in range(d)]
    return [
        [sum((r[a] - mean[a]) * (r[b] - mean[b]) for r in rows) / (n - 1) for b in range(d)]
        for a in range(d)
    ]


def naive_coral(src, tgt):
    d = len(src[0])
    cs, ct = naive_cov(src), naive_cov(tgt)
    return sum((cs[a][b] - ct[a][b]) ** 2 for a in range(d) for b in range(d)) / (4 * d * d)


def naive_ntxent(src, tgt, temperature):
    """SimCLR NT-Xent over all 2B anchors (both directions), cosine similarity."""

    def cos(x, y):
        return sum(a * b for a, b in zip(x, y)) / math.sqrt(
            sum(a * a for a in x) * sum(b * b for b in y)
        )

    rows = src + tgt
    batch = len(src)
    losses = []
    for i, anchor in enumerate(rows):
        positive = (i + batch) % (2 * batch)
        sims = {j: cos(anchor, rows[j]) / temperature for j in range(2 * batch) if j != i}
        top = max(sims.values())
        lse = top + math.log(sum(math.exp(s - top) for s in sims.values()))
        losses.append(lse - sims[positive])
    return sum(losses) / len(losses)


def sigmoid(z):
    return 1 / (1 + math.exp(-z))


# --------------------------------------------------------------------------- MMD
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("unbiased", [False, True])
def test_mmd_matches_naive_loop(dtype, unbiased) -> None:
    bandwidths = (0.7, 1.5, 3.0)
    got = MMDLoss(bandwidths, unbiased=unbiased)(t(SRC, dtype), t(TGT, dtype))
    assert got.dtype == dtype and got.ndim == 0
    expected = naive_mmd(SRC, TGT, bandwidths, unbiased)
    assert got.item() == pytest.approx(expected, abs=TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_mmd_default_bandwidths_use_the_median_heuristic(dtype) -> None:
    median = naive_median_distance(SRC, TGT)
    got_bw = median_bandwidths(t(SRC, dtype), t(TGT, dtype))
    assert got_bw == pytest.approx([median * s for s in (0.25, 0.5, 1, 2, 4)], rel=1e-5)
    got = mmd_loss(t(SRC, dtype), t(TGT, dtype))
    assert got.item() == pytest.approx(naive_mmd(SRC, TGT, got_bw), abs=TOL[dtype])


def test_median_bandwidths_are_detached_and_fall_back_when_points_coincide() -> None:
    x = torch.ones(3, 2, requires_grad=True)
    assert median_bandwidths(x, x) == pytest.approx([0.25, 0.5, 1, 2, 4])
    assert all(isinstance(b, float) for b in median_bandwidths(x, x * 2))


def test_mmd_is_zero_on_the_same_sample_and_positive_on_a_mean_shift() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=gen)
    y = torch.randn(64, 8, generator=gen)
    loss = MMDLoss()
    assert loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(x, x[torch.randperm(64, generator=gen)]).item() == pytest.approx(0.0, abs=1e-6)
    same_distribution = loss(x, y).item()
    shifted = loss(x, y + 1.0).item()
    assert shifted > 5 * same_distribution
    assert shifted > 0.05


def test_mmd_detects_a_variance_shift_that_a_mean_check_misses() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(128, 4, generator=gen)
    y_same = torch.randn(128, 4, generator=gen)
    y_wide = 3.0 * torch.randn(128, 4, generator=gen)
    y_wide = y_wide - y_wide.mean(0) + x.mean(0)  # identical means: a mean check sees nothing
    assert (x.mean(0) - y_wide.mean(0)).norm().item() < 1e-5
    loss = MMDLoss()
    assert loss(x, y_wide).item() > 5 * loss(x, y_same).item()
    assert MMDLoss(unbiased=True)(x, y_wide).item() > 0.05


@pytest.mark.parametrize("dtype", DTYPES)
def test_mmd_backward_is_finite_even_on_coincident_points(dtype) -> None:
    src = t(SRC + [SRC[0]], dtype, grad=True)  # a duplicate row: distance exactly 0
    tgt = t(TGT, dtype, grad=True)
    MMDLoss()(src, tgt).backward()
    assert torch.isfinite(src.grad).all() and torch.isfinite(tgt.grad).all()
    assert src.grad.abs().sum() > 0


# --------------------------------------------------------------------------- CORAL
@pytest.mark.parametrize("dtype", DTYPES)
def test_coral_matches_naive_loop(dtype) -> None:
    got = CORALLoss()(t(SRC, dtype), t(TGT, dtype))
    assert got.dtype == dtype and got.ndim == 0
    assert got.item() == pytest.approx(naive_coral(SRC, TGT), abs=TOL[dtype])
    assert coral_loss(t(SRC, dtype), t(TGT, dtype)).item() == pytest.approx(got.item())


def test_coral_is_zero_on_the_same_sample_and_positive_on_a_scale_shift() -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(64, 6, generator=gen)
    assert CORALLoss()(x, x).item() == pytest.approx(0.0, abs=1e-7)
    assert CORALLoss()(x, x + 5.0).item() == pytest.approx(0.0, abs=1e-6)  # blind to means
    y = torch.randn(64, 6, generator=gen)
    assert CORALLoss()(x, 3.0 * y).item() > 10 * CORALLoss()(x, y).item()


@pytest.mark.parametrize("dtype", DTYPES)
def test_coral_backward_is_finite(dtype) -> None:
    src, tgt = t(SRC, dtype, grad=True), t(TGT, dtype, grad=True)
    CORALLoss()(src, tgt).backward()
    assert torch.isfinite(src.grad).all() and torch.isfinite(tgt.grad).all()
    assert src.grad.abs().sum() > 0


# --------------------------------------------------------------------------- empty / validation
def _modules():
    return [
        MMDLoss(),
        MMDLoss(unbiased=True),
        CORALLoss(),
        DomainAdversarialLoss(dim=3, hidden=4),
    ]


@pytest.mark.parametrize("loss", _modules(), ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("rows", [(0, 5), (4, 0), (0, 0)])
def test_empty_side_gives_a_zero_with_grad(loss, rows) -> None:
    src = torch.randn(rows[0], 3, requires_grad=True)
    tgt = torch.randn(rows[1], 3, requires_grad=True)
    value = loss(src, tgt)
    assert value.item() == 0.0
    value.backward()
    assert torch.equal(src.grad, torch.zeros_like(src))
    assert torch.equal(tgt.grad, torch.zeros_like(tgt))


def test_single_row_sides_give_zero_not_nan() -> None:
    src, tgt = torch.randn(1, 3, requires_grad=True), torch.randn(1, 3, requires_grad=True)
    assert CORALLoss()(src, tgt).item() == 0.0  # no covariance from one row
    assert MMDLoss(unbiased=True)(src, tgt).item() == 0.0
    assert math.isfinite(MMDLoss()(src, tgt).item())
    assert ContrastiveAlignmentLoss()(src, tgt).item() == 0.0  # no negatives


@pytest.mark.parametrize("loss", _modules() + [ContrastiveAlignmentLoss()],
                         ids=lambda m: type(m).__name__)
def test_validation_names_the_bad_argument(loss) -> None:
    good = torch.randn(4, 3)
    with pytest.raises(ValueError, match="src"):
        loss(torch.randn(4), good)
    with pytest.raises(ValueError, match="tgt"):
        loss(good, torch.randn(4, 3, 1))
    with pytest.raises(ValueError, match="tgt has d=2"):
        loss(good, torch.randn(4, 2))
    with pytest.raises(ValueError, match="floating"):
        loss(good.long(), good.long())


def test_bad_configuration_raises() -> None:
    with pytest.raises(ValueError, match="bandwidths"):
        MMDLoss(bandwidths=(1.0, 0.0))
    with pytest.raises(ValueError, match="temperature"):
        ContrastiveAlignmentLoss(temperature=0.0)
    with pytest.raises(ValueError, match="dim"):
        DomainAdversarialLoss(dim=0)


# --------------------------------------------------------------------------- adversarial
def test_gradient_reversal_flips_and_scales_the_gradient() -> None:
    x = torch.randn(5, 3, requires_grad=True)
    w = torch.randn(5, 3)
    y = grad_reverse(x, 0.5)
    assert torch.equal(y, x)
    (y * w).sum().backward()
    assert torch.allclose(x.grad, -0.5 * w)


def test_dann_loss_matches_naive_bce() -> None:
    torch.manual_seed(0)
    loss = DomainAdversarialLoss(dim=3, hidden=8)
    src, tgt = t(SRC), t(TGT)
    got = loss(src, tgt, lambda_=0.3)
    with torch.no_grad():
        z_src = loss.classifier(src).squeeze(-1).tolist()
        z_tgt = loss.classifier(tgt).squeeze(-1).tolist()
    terms = [-math.log(sigmoid(z)) for z in z_src] + [-math.log(1 - sigmoid(z)) for z in z_tgt]
    assert got.item() == pytest.approx(sum(terms) / len(terms), abs=1e-6)


def test_dann_reverses_input_gradients_but_not_classifier_gradients() -> None:
    torch.manual_seed(0)
    loss = DomainAdversarialLoss(dim=3, hidden=8)
    lam = 0.7

    def grads(reversed_: bool):
        loss.zero_grad()
        src, tgt = t(SRC, grad=True), t(TGT, grad=True)
        if reversed_:
            value = loss(src, tgt, lambda_=lam)
        else:  # the same BCE without the reversal layer
            logits = loss.classifier(torch.cat([src, tgt])).squeeze(-1)
            labels = torch.cat([torch.ones(len(SRC)), torch.zeros(len(TGT))])
            value = nn.functional.binary_cross_entropy_with_logits(logits, labels)
        value.backward()
        return src.grad, tgt.grad, [p.grad.clone() for p in loss.parameters()]

    src_rev, tgt_rev, params_rev = grads(True)
    src_ref, tgt_ref, params_ref = grads(False)
    assert src_ref.abs().sum() > 0
    assert torch.allclose(src_rev, -lam * src_ref, atol=1e-7)
    assert torch.allclose(tgt_rev, -lam * tgt_ref, atol=1e-7)
    for p_rev, p_ref in zip(params_rev, params_ref):
        assert torch.allclose(p_rev, p_ref, atol=1e-7)


def test_dann_cannot_beat_chance_on_the_same_sample() -> None:
    """Each point is labelled both 1 and 0: the BCE is >= log 2 for any classifier."""
    torch.manual_seed(0)
    loss = DomainAdversarialLoss(dim=3, hidden=8)
    x = torch.randn(16, 3)
    assert loss(x, x).item() >= math.log(2) - 1e-6
    assert loss.domain_accuracy(x, x) == pytest.approx(0.5)


def test_dann_classifier_learns_to_separate_shifted_domains() -> None:
    torch.manual_seed(0)
    loss = DomainAdversarialLoss(dim=2, hidden=8)
    src, tgt = torch.randn(32, 2) + 2.0, torch.randn(32, 2) - 2.0
    for _ in range(30):  # plain gradient descent (torch.optim's first step is slow to import)
        loss.zero_grad()
        loss(src, tgt).backward()
        with torch.no_grad():
            for p in loss.parameters():
                p -= 0.5 * p.grad
    assert loss.domain_accuracy(src, tgt) > 0.9


# --------------------------------------------------------------------------- contrastive
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_contrastive_matches_naive_ntxent(dtype, temperature) -> None:
    src, tgt = SRC, TGT[:4]
    got = ContrastiveAlignmentLoss(temperature)(t(src, dtype), t(tgt, dtype))
    expected = naive_ntxent(src, tgt, temperature)
    assert got.item() == pytest.approx(expected, rel=1e-5 if dtype == torch.float32 else 1e-9)
    # both directions count: swapping the domains gives the same loss
    swapped = contrastive_alignment_loss(t(tgt, dtype), t(src, dtype), temperature)
    assert swapped.item() == pytest.approx(got.item(), rel=1e-5)


def test_contrastive_prefers_aligned_users_and_backward_is_finite() -> None:
    gen = torch.Generator().manual_seed(3)
    src = torch.randn(8, 5, generator=gen, requires_grad=True)
    noise = 0.05 * torch.randn(8, 5, generator=gen)
    loss = ContrastiveAlignmentLoss(0.1)
    aligned = loss(src, src.detach() + noise)
    shuffled = loss(src, (src.detach() + noise)[torch.roll(torch.arange(8), 1)])
    assert aligned.item() < shuffled.item()
    aligned.backward()
    assert torch.isfinite(src.grad).all() and src.grad.abs().sum() > 0


def test_contrastive_needs_the_same_rows() -> None:
    with pytest.raises(ValueError, match="same rows"):
        ContrastiveAlignmentLoss()(torch.randn(4, 3), torch.randn(5, 3))


# --------------------------------------------------------------------------- combined
def test_alignment_loss_is_the_weighted_sum_of_its_parts() -> None:
    torch.manual_seed(0)
    config = AlignmentConfig(mmd=1.0, coral=2.0, adversarial=0.5, contrastive=0.25, temperature=0.2)
    loss = AlignmentLoss(config, dim=3)
    src, tgt = t(SRC, grad=True), t(TGT, grad=True)
    paired_src, paired_tgt = t(SRC), t(TGT[:4])
    total, parts = loss(src, tgt, paired_src, paired_tgt, lambda_=0.5)
    assert set(parts) == {"mmd", "coral", "adversarial", "contrastive"}
    expected = {
        "mmd": MMDLoss()(src, tgt),
        "coral": CORALLoss()(src, tgt),
        "adversarial": loss.parts["adversarial"](src, tgt),
        "contrastive": ContrastiveAlignmentLoss(0.2)(paired_src, paired_tgt),
    }
    for name, value in expected.items():
        assert parts[name].item() == pytest.approx(value.item(), rel=1e-5)
        assert not parts[name].requires_grad
    weighted = sum(getattr(config, name) * value.item() for name, value in expected.items())
    assert total.item() == pytest.approx(weighted, rel=1e-5)
    total.backward()
    assert torch.isfinite(src.grad).all()


def test_alignment_loss_skips_zero_weights() -> None:
    loss = AlignmentLoss(AlignmentConfig(coral=1.0), dim=3)
    assert list(loss.parts) == ["coral"]
    assert list(loss.parameters()) == []  # no domain classifier when adversarial == 0
    total, parts = loss(t(SRC), t(TGT))
    assert set(parts) == {"coral"}
    assert total.item() == pytest.approx(naive_coral(SRC, TGT), abs=1e-6)

    nothing = AlignmentLoss(AlignmentConfig(), dim=3)
    src = t(SRC, grad=True)
    total, parts = nothing(src, t(TGT))
    assert parts == {} and total.item() == 0.0
    total.backward()
    assert torch.equal(src.grad, torch.zeros_like(src))


def test_alignment_loss_validates() -> None:
    loss = AlignmentLoss(AlignmentConfig(mmd=1.0, contrastive=1.0), dim=3)
    src, tgt = t(SRC), t(TGT)
    with pytest.raises(ValueError, match="paired_src"):
        loss(src, tgt)
    with pytest.raises(ValueError, match="paired_tgt"):
        loss(src, tgt, paired_src=src)
    with pytest.raises(ValueError, match="src_users"):
        loss(src[0], tgt)
    with pytest.raises(ValueError, match="dim=3"):
        loss(torch.randn(4, 2), torch.randn(4, 2), torch.randn(4, 2), torch.randn(4, 2))
    with pytest.raises(ValueError, match="paired_tgt"):
        loss(src, tgt, src, tgt)  # 4 vs 5 rows: not pairs


def test_alignment_config_is_frozen_and_validated() -> None:
    config = AlignmentConfig(mmd=1.0, mmd_bandwidths=[1, 2])
    assert config.mmd_bandwidths == (1.0, 2.0)
    assert config.active == ("mmd",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.mmd = 2.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="coral"):
        AlignmentConfig(coral=-1.0)
    with pytest.raises(ValueError, match="temperature"):
        AlignmentConfig(temperature=0.0)

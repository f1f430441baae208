"""``paired_ratio_interval`` (recxfer/eval/bootstrap.py) against a naive resampling
loop, on exact cases, and for its coverage on a population with a known ratio."""

from __future__ import annotations

import numpy as np
import pytest

from recxfer.eval.bootstrap import paired_ratio_interval, resample_counts


def naive_ratios(method: np.ndarray, baselines: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """One resample at a time: the drawn users' totals, over the best baseline's."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(resamples):
        drawn = rng.integers(0, len(method), size=len(method))
        out.append(method[drawn].sum() / max(b[drawn].sum() for b in baselines))
    return np.array(out)


def test_interval_equals_the_naive_resampling_loop() -> None:
    rng = np.random.default_rng(3)
    base = rng.random((3, 300))  # three baselines, 300 users
    method = 1.1 * base[1] + rng.normal(0, 0.2, 300)
    ci = paired_ratio_interval(method, base, threshold=1.05, level=0.9, resamples=700, seed=11)
    ratios = naive_ratios(method, base, 700, 11)
    low, high = np.quantile(ratios, [0.05, 0.95])
    assert ci.low == pytest.approx(low, rel=1e-12) and ci.high == pytest.approx(high, rel=1e-12)
    assert ci.p_at_least == np.mean(ratios >= 1.05)
    assert ci.ratio == pytest.approx(method.sum() / base.sum(axis=1).max())
    assert ci.best_baseline == int(np.argmax(base.sum(axis=1)))
    assert (ci.users, ci.resamples, ci.level, ci.threshold) == (300, 700, 0.9, 1.05)


def test_resample_counts_are_draws_with_replacement() -> None:
    blocks = list(resample_counts(50, 600, seed=2))
    counts = np.concatenate(blocks)
    assert counts.shape == (600, 50) and max(len(b) for b in blocks) <= 256
    assert (counts.sum(axis=1) == 50).all()
    assert counts.mean() == pytest.approx(1.0)


def test_exact_cases() -> None:
    base = np.random.default_rng(0).random(40)
    same = paired_ratio_interval(base, base)
    assert same.ratio == same.low == same.high == pytest.approx(1.0) and same.p_at_least == 0.0
    double = paired_ratio_interval(2 * base, base, threshold=2.0)
    assert double.low == pytest.approx(2.0) and double.high == pytest.approx(2.0) and double.p_at_least == 1.0
    # the best baseline is the larger one, in every resample
    both = paired_ratio_interval(base, np.stack([base, 1.5 * base]))
    assert both.ratio == pytest.approx(1 / 1.5) and both.high == pytest.approx(1 / 1.5)
    assert both.best_baseline == 1


def test_interval_covers_the_population_ratio() -> None:
    """Samples of 400 users from a population whose method / baseline ratio of means is
    1.1: the 90 % interval holds it in about 90 % of samples."""
    rng = np.random.default_rng(7)
    hits = 0
    trials = 150
    for t in range(trials):
        base = rng.binomial(1, 0.2, 400).astype(float)
        method = np.where(rng.random(400) < 0.5, base, rng.binomial(1, 0.24, 400))  # mean 0.22
        ci = paired_ratio_interval(method, base, level=0.9, resamples=400, seed=t)
        hits += ci.low <= 1.1 <= ci.high
    assert 0.8 <= hits / trials <= 0.97


def test_bad_inputs_are_refused() -> None:
    good = np.ones(5)
    with pytest.raises(ValueError, match="must be"):
        paired_ratio_interval(good, np.ones((2, 4)))
    with pytest.raises(ValueError, match="finite"):
        paired_ratio_interval(np.array([1.0, np.nan, 1, 1, 1]), good)
    with pytest.raises(ValueError, match="all 0"):
        paired_ratio_interval(good, np.zeros(5))
    with pytest.raises(ValueError, match="level"):
        paired_ratio_interval(good, good, level=1.0)
    with pytest.raises(ValueError, match="resamples"):
        paired_ratio_interval(good, good, resamples=0)
    with pytest.raises(ValueError, match="no users"):
        paired_ratio_interval(np.ones(0), np.ones((1, 0)))

"""Paired bootstrap intervals of a method's metric relative to the best of its
baselines, over the evaluated users.

A benchmark's test set is one sample of users: a ratio such as "recall@50 1.096x
the best baseline" has a sampling error that decides whether a goal like
"≥ 1.10x" is met or missed by chance. ``paired_ratio_interval`` resamples the
users with replacement (one draw shared by the method and every baseline, so
their correlation is kept), recomputes ``sum(method) / max_b sum(baseline_b)``
per resample (the best baseline is picked again in each), and reports the
percentile interval and the share of resamples at or above a threshold.

Per-user values are sums over the user's evaluated instances (a user with three
held-out items adds three sampled-protocol values): with the same users and the
same instances in every method, a ratio of sums is the ratio of the means.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np

# resamples per block of the count matrix: bounds memory to ``block x n_users`` float64
_BLOCK = 256


@dataclass(frozen=True)
class RatioInterval:
    """A method's metric over the best baseline's, with its bootstrap interval.

    Attributes:
        ratio: on the whole sample (``sum(method) / max_b sum(baseline_b)``).
        low, high: the ``level`` percentile interval of the resampled ratios.
        level: e.g. 0.95.
        threshold: the ratio ``p_at_least`` is about.
        p_at_least: share of resamples whose ratio is ``>= threshold``.
        best_baseline: index of the best baseline on the whole sample.
        users: users resampled.
        resamples: how many.
    """

    ratio: float
    low: float
    high: float
    level: float
    threshold: float
    p_at_least: float
    best_baseline: int
    users: int
    resamples: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def resample_counts(n_users: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Blocks (``(m, n_users)`` float64, ``m <= 256`` rows, ``resamples`` rows in all)
    of how often each user is drawn in each resample of ``n_users`` draws with
    replacement: ``default_rng(seed).integers(0, n_users, n_users)`` per resample,
    in order (the draws of ``paired_ratio_interval``)."""
    rng = np.random.default_rng(seed)
    for start in range(0, resamples, _BLOCK):
        block = np.empty((min(_BLOCK, resamples - start), n_users), np.float64)
        for r in range(block.shape[0]):
            block[r] = np.bincount(rng.integers(0, n_users, size=n_users), minlength=n_users)
        yield block


def paired_ratio_interval(
    method: np.ndarray,
    baselines: np.ndarray,
    threshold: float = 1.10,
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> RatioInterval:
    """Bootstrap interval of ``sum(method) / max_b sum(baselines[b])`` over users.

    Args:
        method: ``(n_users,)`` the method's per-user metric sums.
        baselines: ``(n_baselines, n_users)`` (or ``(n_users,)`` for one) the same
            users' sums under each baseline, in the same order.
        threshold: the ratio whose bootstrap share is reported (``p_at_least``).
        level: the interval's coverage, in ``(0, 1)``.
        resamples: bootstrap resamples, ``>= 1``.
        seed: seeds the draws (``resample_counts``).

    Raises:
        ValueError: shapes disagree, values are not finite, no users, or the
            baselines' best total is not positive (a ratio to nothing).
    """
    method = np.asarray(method, np.float64)
    baselines = np.atleast_2d(np.asarray(baselines, np.float64))
    if method.ndim != 1 or baselines.ndim != 2 or baselines.shape[1] != method.shape[0]:
        raise ValueError(f"method {method.shape} and baselines {baselines.shape} must be (n,) and (b, n)")
    n = method.shape[0]
    if n == 0 or baselines.shape[0] == 0:
        raise ValueError("no users or no baselines to compare")
    if not (np.isfinite(method).all() and np.isfinite(baselines).all()):
        raise ValueError("per-user values must be finite (users without held-out items left out)")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    base_totals = baselines.sum(axis=1)  # (b,)
    if base_totals.max() <= 0:
        raise ValueError("the baselines' totals are all 0: no ratio to report")
    parts = []
    for counts in resample_counts(n, resamples, seed):  # (m, n)
        best = (counts @ baselines.T).max(axis=1)  # (m,) the best baseline of each resample
        parts.append(np.divide(counts @ method, best, out=np.full(len(best), np.inf), where=best > 0))
    ratios = np.concatenate(parts)  # (resamples,)
    tail = (1 - level) / 2
    low, high = np.quantile(ratios, [tail, 1 - tail])
    return RatioInterval(
        ratio=float(method.sum() / base_totals.max()), low=float(low), high=float(high), level=float(level),
        threshold=float(threshold), p_at_least=float(np.mean(ratios >= threshold)),
        best_baseline=int(np.argmax(base_totals)), users=int(n), resamples=int(resamples),
    )

"""Seeded splits: cold-start users per target domain, and leave-one-out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class ColdStartSplit:
    """Interactions split for cold-start evaluation.

    Attributes:
        train: all training rows, every domain; cold users' rows in the target where
            they are cold are removed (their source rows stay).
        valid: target -> held-out rows of that target's validation cold users.
        test: target -> held-out rows of that target's test cold users.
    """

    train: pd.DataFrame
    valid: dict[str, pd.DataFrame]
    test: dict[str, pd.DataFrame]

    def cold_users(self, target: str, part: str = "test") -> np.ndarray:
        """Sorted external ids of the cold users of ``target`` in ``part``."""
        frame = {"valid": self.valid, "test": self.test}[part][target]
        return np.sort(frame["user_id"].unique())


def overlapping_users(interactions: pd.DataFrame, source: str, target: str) -> np.ndarray:
    """Sorted ids of users with rows in both ``source`` and ``target``."""
    by_domain = interactions.groupby("domain")["user_id"].unique()
    return np.sort(np.intersect1d(by_domain.get(source, []), by_domain.get(target, [])))


def cold_start_split(
    interactions: pd.DataFrame,
    source: str,
    targets: Sequence[str],
    cold_share: float = 0.2,
    valid_share: float = 0.5,
    seed: int = 0,
) -> ColdStartSplit:
    """Hold out a seeded share of the users overlapping ``source`` and each target.

    For each target (in the given order), ``cold_share`` of the overlapping users are
    drawn; all their target rows leave training. A ``valid_share`` of those users go
    to validation, the rest to test. A user may be cold in several targets.
    """
    if not 0.0 < cold_share < 1.0:
        raise ValueError(f"cold_share must be in (0, 1), got {cold_share}")
    if not 0.0 <= valid_share < 1.0:
        raise ValueError(f"valid_share must be in [0, 1), got {valid_share}")
    rng = np.random.default_rng(seed)
    drop = np.zeros(len(interactions), dtype=bool)
    valid: dict[str, pd.DataFrame] = {}
    test: dict[str, pd.DataFrame] = {}
    for target in targets:
        users = overlapping_users(interactions, source, target)
        n_cold = int(round(cold_share * len(users)))
        if n_cold == 0:
            raise ValueError(f"no overlapping users between {source!r} and {target!r} to hold out")
        cold = rng.permutation(users)[:n_cold]
        n_valid = int(round(valid_share * n_cold))
        valid_users, test_users = cold[:n_valid], cold[n_valid:]
        in_target = (interactions["domain"] == target).to_numpy()
        is_valid = in_target & interactions["user_id"].isin(valid_users).to_numpy()
        is_test = in_target & interactions["user_id"].isin(test_users).to_numpy()
        valid[target] = interactions[is_valid].reset_index(drop=True)
        test[target] = interactions[is_test].reset_index(drop=True)
        drop |= is_valid | is_test
    return ColdStartSplit(train=interactions[~drop].reset_index(drop=True), valid=valid, test=test)


def leave_one_out(interactions: pd.DataFrame, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out one row per (user, domain) with at least two rows.

    The held-out row is the latest by ``timestamp`` when the column exists (ties
    broken at random), else a random one; seeded.

    Returns:
        ``(train, test)`` frames.
    """
    rng = np.random.default_rng(seed)
    frame = interactions.assign(_r=rng.random(len(interactions)))
    order = ["user_id", "domain"] + (["timestamp"] if "timestamp" in frame else []) + ["_r"]
    frame = frame.sort_values(order, kind="stable")
    group = frame.groupby(["user_id", "domain"], sort=False)
    is_last = group.cumcount(ascending=False).to_numpy() == 0
    big_enough = group["item_id"].transform("size").to_numpy() >= 2
    held = is_last & big_enough
    frame = frame.drop(columns="_r")
    return frame[~held].reset_index(drop=True), frame[held].reset_index(drop=True)

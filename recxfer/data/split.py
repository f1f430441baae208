"""Seeded splits: cold-start users per target domain, and leave-one-out."""

from __future__ import annotations

import hashlib
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


SPLIT_METHODS = ("random", "hash")


def stable_unit(keys: Sequence[str], salt: str) -> np.ndarray:
    """``(n,)`` float64 in ``[0, 1)``: a fixed pseudo-random number per key.

    The same key and salt give the same number on every machine and run,
    whatever other keys exist (blake2b of ``"<salt>:<key>"``). One C hash call per
    key (about a microsecond); the split hashes users, not rows.
    """
    blake2b, prefix = hashlib.blake2b, f"{salt}:"
    digests = [blake2b(f"{prefix}{key}".encode(), digest_size=8).digest() for key in keys]
    return np.frombuffer(b"".join(digests), dtype=">u8").astype(np.float64) / 2.0**64 \
        if digests else np.zeros(0, dtype=np.float64)


def cold_start_split(
    interactions: pd.DataFrame,
    source: str,
    targets: Sequence[str],
    cold_share: float = 0.2,
    valid_share: float = 0.5,
    seed: int = 0,
    method: str = "random",
) -> ColdStartSplit:
    """Hold out a seeded share of the users overlapping ``source`` and each target.

    For each target (in the given order), ``cold_share`` of the overlapping users are
    drawn; all their target rows leave training. A ``valid_share`` of those users go
    to validation, the rest to test. A user may be cold in several targets.

    ``method="random"`` draws exactly ``round(cold_share * n)`` users from a seeded
    permutation: adding users reshuffles everyone. ``method="hash"`` makes a user
    cold in a target when ``stable_unit`` of the user id (salted with the seed and
    the target) is below ``cold_share`` (validation below ``cold_share *
    valid_share``): each user's role stays the same as data grows, so a model
    trained on yesterday's split never saw today's held-out rows (what a nightly
    comparison with production needs); the share is ``cold_share`` on average.
    """
    if not 0.0 < cold_share < 1.0:
        raise ValueError(f"cold_share must be in (0, 1), got {cold_share}")
    if not 0.0 <= valid_share < 1.0:
        raise ValueError(f"valid_share must be in [0, 1), got {valid_share}")
    if method not in SPLIT_METHODS:
        raise ValueError(f"split method must be one of {SPLIT_METHODS}, got {method!r}")
    rng = np.random.default_rng(seed)
    # Integer codes once: users and domains are factorised, every per-target step
    # below is array work on codes (no string comparisons over the rows).
    user_code, user_ids = pd.factorize(interactions["user_id"])
    user_ids = np.asarray(user_ids, dtype=object)
    domain_code, domain_names = pd.factorize(interactions["domain"])
    domain_of = {str(d): i for i, d in enumerate(domain_names)}
    has = np.zeros((len(domain_names), len(user_ids)), dtype=bool)  # (domains, users)
    has[domain_code, user_code] = True
    order = np.argsort(user_ids)  # codes in sorted-id order
    drop = np.zeros(len(interactions), dtype=bool)
    valid: dict[str, pd.DataFrame] = {}
    test: dict[str, pd.DataFrame] = {}
    for target in targets:
        if source in domain_of and target in domain_of:
            both = has[domain_of[source]] & has[domain_of[target]]  # (users,)
            codes = order[both[order]]  # overlapping users' codes, sorted by id
        else:
            codes = np.zeros(0, dtype=np.int64)
        users = user_ids[codes]
        if method == "hash":
            unit = stable_unit([str(u) for u in users], f"{seed}:{target}")  # (n_users,)
            valid_codes = codes[unit < cold_share * valid_share]
            test_codes = codes[(unit >= cold_share * valid_share) & (unit < cold_share)]
            if len(valid_codes) + len(test_codes) == 0:
                raise ValueError(
                    f"no overlapping users between {source!r} and {target!r} to hold out"
                )
        else:
            n_cold = int(round(cold_share * len(users)))
            if n_cold == 0:
                raise ValueError(
                    f"no overlapping users between {source!r} and {target!r} to hold out"
                )
            cold = rng.permutation(codes)[:n_cold]  # the same draw as over the sorted ids
            n_valid = int(round(valid_share * n_cold))
            valid_codes, test_codes = cold[:n_valid], cold[n_valid:]
        role = np.zeros(len(user_ids), dtype=np.int8)  # 1 valid, 2 test
        role[valid_codes], role[test_codes] = 1, 2
        in_target = domain_code == domain_of.get(target, -1)
        is_valid = in_target & (role[user_code] == 1)
        is_test = in_target & (role[user_code] == 2)
        valid[target] = interactions[is_valid].reset_index(drop=True)
        test[target] = interactions[is_test].reset_index(drop=True)
        drop |= is_valid | is_test
    return ColdStartSplit(train=interactions[~drop].reset_index(drop=True), valid=valid, test=test)


def leave_one_out(
    interactions: pd.DataFrame, seed: int = 0, stable: bool = False
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out one row per (user, domain) with at least two rows.

    The held-out row is the latest by ``timestamp`` when the column exists (ties
    broken at random), else a random one; seeded. With ``stable``, the random
    part is ``stable_unit`` of the row's ``(user_id, item_id, domain)`` instead of
    a generator draw, so a user's held-out row does not change when other rows
    are added (unless it is no longer the latest).

    Returns:
        ``(train, test)`` frames.
    """
    if stable:
        keys = (
            interactions["user_id"].astype(str) + "\x1f" + interactions["item_id"].astype(str)
            + "\x1f" + interactions["domain"].astype(str)
        )
        draws = stable_unit(keys.tolist(), f"loo:{seed}")
    else:
        draws = np.random.default_rng(seed).random(len(interactions))
    frame = interactions.assign(_r=draws)
    order = ["user_id", "domain"] + (["timestamp"] if "timestamp" in frame else []) + ["_r"]
    frame = frame.sort_values(order, kind="stable")
    group = frame.groupby(["user_id", "domain"], sort=False)
    is_last = group.cumcount(ascending=False).to_numpy() == 0
    big_enough = group["item_id"].transform("size").to_numpy() >= 2
    held = is_last & big_enough
    frame = frame.drop(columns="_r")
    return frame[~held].reset_index(drop=True), frame[held].reset_index(drop=True)

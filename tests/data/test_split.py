"""Seeded splits (recxfer/data/split.py), checked against plain-Python set logic."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest

from recxfer.data import cold_start_split, leave_one_out
from recxfer.data.synthetic import generate

SOURCE, TARGETS = "video", ("books", "music")


@pytest.fixture(scope="module")
def interactions(three_domain_config) -> pd.DataFrame:
    config = three_domain_config(n_users=400, seed=11, n_items=(120, 80, 60), mean_interactions=(10.0, 4.0, 4.0))
    return generate(config)[0]


def rows(frame: pd.DataFrame) -> Counter:
    """Multiset of rows as tuples (order-free comparison)."""
    return Counter(map(tuple, frame[sorted(frame.columns)].itertuples(index=False)))


def users_in(frame: pd.DataFrame, domain: str) -> set[str]:
    return {u for u, d in zip(frame["user_id"], frame["domain"]) if d == domain}


# --------------------------------------------------------------------------- cold start


@pytest.fixture(scope="module")
def split(interactions: pd.DataFrame):
    return cold_start_split(interactions, SOURCE, TARGETS, cold_share=0.2, valid_share=0.5, seed=0)


@pytest.mark.parametrize("target", TARGETS)
def test_cold_users_are_overlapping_users(interactions, split, target: str) -> None:
    overlap = users_in(interactions, SOURCE) & users_in(interactions, target)
    cold = set(split.valid[target]["user_id"]) | set(split.test[target]["user_id"])
    assert cold <= overlap
    assert len(overlap) > 50  # the check above is not vacuous


@pytest.mark.parametrize("target", TARGETS)
def test_share_of_cold_and_valid_users(interactions, split, target: str) -> None:
    overlap = users_in(interactions, SOURCE) & users_in(interactions, target)
    valid = set(split.valid[target]["user_id"])
    test = set(split.test[target]["user_id"])
    n_cold = round(0.2 * len(overlap))
    assert len(valid) + len(test) == n_cold
    assert len(valid) == round(0.5 * n_cold)


@pytest.mark.parametrize("target", TARGETS)
def test_valid_and_test_users_are_disjoint(split, target: str) -> None:
    assert not set(split.valid[target]["user_id"]) & set(split.test[target]["user_id"])


@pytest.mark.parametrize("target", TARGETS)
def test_all_target_rows_of_cold_users_are_held_out(interactions, split, target: str) -> None:
    for part in (split.valid, split.test):
        cold = set(part[target]["user_id"])
        expected = interactions[
            interactions["user_id"].isin(cold) & (interactions["domain"] == target)
        ]
        assert rows(part[target]) == rows(expected)
        assert (part[target]["domain"] == target).all()
        train_target = split.train[split.train["domain"] == target]
        assert not set(train_target["user_id"]) & cold


@pytest.mark.parametrize("target", TARGETS)
def test_source_rows_of_cold_users_stay_in_train(interactions, split, target: str) -> None:
    cold = set(split.cold_users(target, "valid")) | set(split.cold_users(target, "test"))
    source = interactions[interactions["user_id"].isin(cold) & (interactions["domain"] == SOURCE)]
    assert len(source) > 0
    assert not (rows(source) - rows(split.train))


def test_rows_are_conserved(interactions, split) -> None:
    held = [split.valid[t] for t in TARGETS] + [split.test[t] for t in TARGETS]
    together = pd.concat([split.train, *held], ignore_index=True)
    assert len(together) == len(interactions)
    assert rows(together) == rows(interactions)


def test_cold_users_are_sorted_external_ids(split) -> None:
    for target in TARGETS:
        for part, frame in (("valid", split.valid), ("test", split.test)):
            got = split.cold_users(target, part)
            assert got.tolist() == sorted(set(frame[target]["user_id"]))


def test_same_seed_same_split_other_seed_other_split(interactions, split) -> None:
    again = cold_start_split(interactions, SOURCE, TARGETS, cold_share=0.2, seed=0)
    pd.testing.assert_frame_equal(again.train, split.train)
    for target in TARGETS:
        pd.testing.assert_frame_equal(again.test[target], split.test[target])
        pd.testing.assert_frame_equal(again.valid[target], split.valid[target])
    other = cold_start_split(interactions, SOURCE, TARGETS, cold_share=0.2, seed=1)
    assert set(other.cold_users("books")) != set(split.cold_users("books"))


def test_split_does_not_depend_on_row_order(interactions, split) -> None:
    shuffled = interactions.sample(frac=1.0, random_state=3).reset_index(drop=True)
    again = cold_start_split(shuffled, SOURCE, TARGETS, cold_share=0.2, seed=0)
    for target in TARGETS:
        assert again.cold_users(target).tolist() == split.cold_users(target).tolist()
        assert again.cold_users(target, "valid").tolist() == split.cold_users(target, "valid").tolist()


def test_valid_share_zero_puts_everyone_in_test(interactions) -> None:
    split = cold_start_split(interactions, SOURCE, ["books"], cold_share=0.3, valid_share=0.0)
    assert split.valid["books"].empty
    assert len(split.cold_users("books")) > 0


@pytest.mark.parametrize("kwargs", [{"cold_share": 0.0}, {"cold_share": 1.0},
                                    {"valid_share": 1.0}, {"valid_share": -0.1}])
def test_bad_shares_raise(interactions, kwargs) -> None:
    with pytest.raises(ValueError):
        cold_start_split(interactions, SOURCE, TARGETS, **kwargs)


def test_no_overlap_raises() -> None:
    frame = pd.DataFrame(
        {"user_id": ["a", "b"], "item_id": ["i", "j"], "domain": ["video", "books"]}
    )
    with pytest.raises(ValueError, match="books"):
        cold_start_split(frame, "video", ["books"], cold_share=0.5)


# --------------------------------------------------------------------------- leave one out


HAND = pd.DataFrame(
    {
        "user_id": ["u1", "u1", "u1", "u1", "u2", "u2", "u3", "u3"],
        "item_id": ["a", "b", "c", "x", "a", "b", "a", "c"],
        "domain": ["video", "video", "video", "books", "video", "video", "video", "books"],
        "timestamp": [1, 5, 3, 9, 7, 7, 4, 2],
    }
)


def test_leave_one_out_by_hand() -> None:
    train, test = leave_one_out(HAND, seed=0)
    got = {(u, d): i for u, i, d in zip(test["user_id"], test["item_id"], test["domain"])}
    # u1/video: latest is b (ts 5); u2/video: a tie, one of a/b; single-row groups stay.
    assert set(got) == {("u1", "video"), ("u2", "video")}
    assert got[("u1", "video")] == "b"
    assert got[("u2", "video")] in {"a", "b"}
    assert rows(pd.concat([train, test])) == rows(HAND)


def test_ties_are_broken_by_the_seed() -> None:
    picks = set()
    for seed in range(20):
        _, test = leave_one_out(HAND, seed=seed)
        picks.add(test.loc[test["user_id"] == "u2", "item_id"].item())
        _, again = leave_one_out(HAND, seed=seed)
        pd.testing.assert_frame_equal(test, again)
    assert picks == {"a", "b"}


def test_leave_one_out_holds_out_the_latest_row(interactions) -> None:
    train, test = leave_one_out(interactions, seed=4)
    groups: dict[tuple[str, str], list[int]] = {}
    for u, d, ts in zip(interactions["user_id"], interactions["domain"], interactions["timestamp"]):
        groups.setdefault((u, d), []).append(int(ts))
    held = Counter(zip(test["user_id"], test["domain"]))
    assert set(held) == {key for key, ts in groups.items() if len(ts) >= 2}
    assert set(held.values()) == {1}
    for u, d, ts in zip(test["user_id"], test["domain"], test["timestamp"]):
        assert ts == max(groups[(u, d)])
    # every (user, domain) keeps at least one training row
    assert set(zip(train["user_id"], train["domain"])) == set(groups)
    assert rows(pd.concat([train, test])) == rows(interactions)


def test_leave_one_out_without_timestamps_is_seeded(interactions) -> None:
    frame = interactions.drop(columns="timestamp")
    _, a = leave_one_out(frame, seed=0)
    _, b = leave_one_out(frame, seed=0)
    _, c = leave_one_out(frame, seed=1)
    pd.testing.assert_frame_equal(a, b)
    assert rows(a) != rows(c)
    assert len(a) == len(c)
    train, _ = leave_one_out(frame, seed=0)
    assert rows(pd.concat([train, a])) == rows(frame)


def test_single_row_users_stay_in_train() -> None:
    frame = pd.DataFrame({"user_id": ["a", "b"], "item_id": ["i", "j"], "domain": ["video"] * 2,
                          "timestamp": [1, 2]})
    train, test = leave_one_out(frame)
    assert test.empty
    assert rows(train) == rows(frame)


# --------------------------------------------------------------------------- stable (hash) splits


def _roles(split, target: str) -> dict[str, str]:
    return {**{u: "valid" for u in split.valid[target]["user_id"]},
            **{u: "test" for u in split.test[target]["user_id"]}}


@pytest.mark.parametrize("target", TARGETS)
def test_hash_split_keeps_each_users_role_as_data_grows(interactions, target: str) -> None:
    all_users = sorted(interactions["user_id"].unique())
    early = interactions[interactions["user_id"].isin(all_users[:300])]
    small = cold_start_split(early, SOURCE, TARGETS, cold_share=0.2, seed=0, method="hash")
    big = cold_start_split(interactions, SOURCE, TARGETS, cold_share=0.2, seed=0, method="hash")
    small_roles, big_roles = _roles(small, target), _roles(big, target)
    assert small_roles == {u: r for u, r in big_roles.items() if u in set(all_users[:300])}
    overlap = users_in(interactions, SOURCE) & users_in(interactions, target)
    assert 0.1 < len(big_roles) / len(overlap) < 0.3  # about cold_share
    assert set(big.valid[target]["user_id"]).isdisjoint(big.test[target]["user_id"])
    assert rows(pd.concat([big.train, big.valid[target], big.test[target]])) >= rows(
        interactions[interactions["domain"] == target]
    )
    other_seed = cold_start_split(interactions, SOURCE, TARGETS, cold_share=0.2, seed=1, method="hash")
    assert _roles(other_seed, target) != big_roles


def test_unknown_split_method(interactions) -> None:
    with pytest.raises(ValueError, match="split method"):
        cold_start_split(interactions, SOURCE, TARGETS, method="alphabetical")


@pytest.mark.parametrize("with_timestamps", [True, False])
def test_stable_leave_one_out_ignores_other_users_rows(interactions, with_timestamps: bool) -> None:
    frame = interactions if with_timestamps else interactions.drop(columns="timestamp")
    users = sorted(frame["user_id"].unique())
    _, early = leave_one_out(frame[frame["user_id"].isin(users[:200])], seed=3, stable=True)
    _, late = leave_one_out(frame, seed=3, stable=True)
    assert rows(early) == rows(late[late["user_id"].isin(users[:200])])
    _, other = leave_one_out(frame, seed=4, stable=True)
    assert with_timestamps or rows(other) != rows(late)

"""Multi-domain index (recxfer/train/histories.py) against a naive construction."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recxfer.train.histories import MultiDomainIndex, build_multi_domain_index

DOMAINS = ("video", "books")


def make_rows(seed: int = 0, timestamps: bool = True) -> pd.DataFrame:
    """Random rows of two domains (plus an ignored third); distinct timestamps."""
    rng = np.random.default_rng(seed)
    frames = []
    for domain, n_users, n_items, n_rows in (("video", 30, 25, 260), ("books", 20, 15, 90),
                                             ("music", 10, 5, 20)):
        users = rng.integers(0, n_users, size=n_rows)
        items = rng.integers(0, n_items, size=n_rows)
        frames.append(pd.DataFrame({
            "user_id": [f"u{u:02d}" for u in users],
            "item_id": [f"{domain[0]}{i:02d}" for i in items],
            "domain": domain,
        }))
    frame = pd.concat(frames, ignore_index=True)
    frame["user_id"] = frame["user_id"].astype(object)
    frame.loc[frame["domain"] == "music", "user_id"] = [f"m{u}" for u in range(20)]  # music-only users
    if timestamps:
        frame["timestamp"] = rng.permutation(len(frame)) * 10 + 1_000  # all distinct
    return frame.sample(frac=1.0, random_state=1).reset_index(drop=True)  # shuffled row order


def naive_index(train: pd.DataFrame, domains, max_history: int, extra_users=()):
    """Users, item lists, offsets and per-user-per-domain latest items, by loops."""
    rows = train[train["domain"].isin(domains)]
    users = sorted(set(rows["user_id"]) | set(extra_users))
    items = {d: sorted(set(rows.loc[rows["domain"] == d, "item_id"])) for d in domains}
    offsets, total = [], 0
    for d in domains:
        offsets.append(total)
        total += len(items[d])
    history = {}
    for u in users:
        for d_idx, d in enumerate(domains):
            mine = rows[(rows["user_id"] == u) & (rows["domain"] == d)]
            pairs = sorted(zip(mine["timestamp"], mine["item_id"]), reverse=True)[:max_history]
            history[u, d] = [offsets[d_idx] + items[d].index(i) for _, i in pairs]
    return users, items, offsets, history


@pytest.fixture(scope="module")
def train() -> pd.DataFrame:
    return make_rows()


@pytest.mark.parametrize("max_history", [3, 50])
def test_index_matches_naive_construction(train, max_history: int) -> None:
    index = build_multi_domain_index(train, DOMAINS, max_history=max_history)
    users, items, offsets, history = naive_index(train, DOMAINS, max_history)
    assert isinstance(index, MultiDomainIndex)
    assert index.domains == DOMAINS
    assert list(index.users.ids) == users
    for d in DOMAINS:
        assert list(index.items[d].ids) == items[d]
    np.testing.assert_array_equal(index.offsets, offsets)
    assert index.offsets.dtype == np.int64
    assert index.n_items_total == sum(len(v) for v in items.values())
    assert index.history.shape == (len(users), max_history * len(DOMAINS))
    assert index.history.dtype == np.int64
    np.testing.assert_array_equal(index.position_domain, np.repeat([0, 1], max_history))
    for row, u in enumerate(users):
        for d_idx, d in enumerate(DOMAINS):
            cols = index.history[row, d_idx * max_history : (d_idx + 1) * max_history]
            expected = history[u, d]
            assert list(cols[: len(expected)]) == expected, (u, d)
            assert np.all(cols[len(expected) :] == -1), (u, d)


def test_rows_are_every_training_row_in_global_positions(train) -> None:
    index = build_multi_domain_index(train, DOMAINS)
    for d_idx, d in enumerate(DOMAINS):
        part = train[train["domain"] == d]
        user_pos, item_pos = index.rows[d]
        assert user_pos.dtype == np.int32 and item_pos.dtype == np.int32  # int32 ids (issue 11)
        got = sorted(zip(index.users.to_ids(user_pos),
                         index.items[d].to_ids(item_pos - index.offsets[d_idx])))
        assert got == sorted(zip(part["user_id"], part["item_id"]))
        sl = index.domain_slice(d)
        assert np.all((item_pos >= sl.start) & (item_pos < sl.stop))


def test_domain_slices_tile_the_item_space(train) -> None:
    index = build_multi_domain_index(train, DOMAINS)
    a, b = index.domain_slice("video"), index.domain_slice("books")
    assert a.start == 0 and a.stop == b.start and b.stop == index.n_items_total
    assert a.stop - a.start == len(index.items["video"])


def test_other_domains_are_ignored(train) -> None:
    index = build_multi_domain_index(train, DOMAINS)
    assert not any(str(u).startswith("m") for u in index.users.ids)
    assert "music" not in index.items


def test_history_of_masks_domains(train) -> None:
    index = build_multi_domain_index(train, DOMAINS, max_history=4)
    pos = np.array([0, 3, 5])
    full = index.history_of(pos)
    np.testing.assert_array_equal(full, index.history[pos])
    only_books = index.history_of(pos, ["books"])
    np.testing.assert_array_equal(only_books[:, :4], -1)
    np.testing.assert_array_equal(only_books[:, 4:], index.history[pos, 4:])
    only_video = index.history_of(pos, ["video"])
    np.testing.assert_array_equal(only_video[:, 4:], -1)
    np.testing.assert_array_equal(only_video[:, :4], index.history[pos, :4])
    np.testing.assert_array_equal(index.history_of(pos, DOMAINS), full)
    np.testing.assert_array_equal(index.history_of(pos, []), -1)
    # a copy: masking never touches the index
    only_books[:] = 7
    np.testing.assert_array_equal(index.history[pos], full)


def test_has_history(train) -> None:
    index = build_multi_domain_index(train, DOMAINS)
    for d in DOMAINS:
        users_with_rows = set(train.loc[train["domain"] == d, "user_id"])
        expected = np.array([u in users_with_rows for u in index.users.ids])
        np.testing.assert_array_equal(index.has_history(d), expected)


def test_extra_users_get_empty_rows(train) -> None:
    index = build_multi_domain_index(train, DOMAINS, max_history=5, extra_users=["zz-new", "u00"])
    pos = index.users.to_idx(["zz-new"])
    assert np.all(index.history[pos] == -1)
    assert not index.has_history("video")[pos][0]
    assert not index.has_history("books")[pos][0]
    # an extra user who also has rows is not duplicated and keeps the rows
    assert list(index.users.ids).count("u00") == 1
    assert (index.history[index.users.to_idx(["u00"])] >= 0).any()
    for d in DOMAINS:  # no training row points at the extra user
        assert pos[0] not in set(index.rows[d][0])


def test_without_timestamps_a_seeded_subset_is_kept() -> None:
    train = make_rows(timestamps=False)
    a = build_multi_domain_index(train, DOMAINS, max_history=3, seed=0)
    b = build_multi_domain_index(train, DOMAINS, max_history=3, seed=0)
    c = build_multi_domain_index(train, DOMAINS, max_history=3, seed=1)
    np.testing.assert_array_equal(a.history, b.history)
    assert not np.array_equal(a.history, c.history)
    for row, u in enumerate(a.users.ids):
        for d_idx, d in enumerate(DOMAINS):
            mine = train[(train["user_id"] == u) & (train["domain"] == d)]
            all_pos = sorted(a.offsets[d_idx] + a.items[d].to_idx(mine["item_id"]))
            kept = a.history[row, d_idx * 3 : d_idx * 3 + 3]
            kept = kept[kept >= 0]
            assert len(kept) == min(3, len(all_pos))
            remaining = list(all_pos)
            for k in kept:  # a sub-multiset of the user's rows
                remaining.remove(k)


def test_domain_without_rows_raises(train) -> None:
    with pytest.raises(ValueError, match="films"):
        build_multi_domain_index(train, ("video", "films"))

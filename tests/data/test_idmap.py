"""IdMap: external string ids <-> row positions (recxfer/data/idmap.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recxfer.data import IdMap

IDS = ["u3", "007", "7", "a", "NA", "u10"]


def naive_positions(ids: list[str], queries: list[str]) -> list[int]:
    table = {}
    for position, external in enumerate(ids):
        table[external] = position
    return [table.get(q, -1) for q in queries]


def test_round_trip_ids_to_idx_to_ids() -> None:
    idmap = IdMap(IDS)
    assert len(idmap) == len(IDS)
    assert idmap.ids.tolist() == IDS
    idx = idmap.to_idx(IDS)
    assert idx.dtype == np.int64
    assert idx.tolist() == list(range(len(IDS)))
    assert idmap.to_ids(idx).tolist() == IDS
    positions = np.array([5, 0, 0, 2])
    assert idmap.to_idx(idmap.to_ids(positions)).tolist() == positions.tolist()


def test_positions_match_a_naive_dict() -> None:
    idmap = IdMap(IDS)
    queries = ["7", "007", "u10", "u3", "a", "a"]
    assert idmap.to_idx(queries).tolist() == naive_positions(IDS, queries)


def test_lookup_gives_minus_one_for_unknown() -> None:
    idmap = IdMap(IDS)
    queries = ["a", "zz", "07", "7", "", "u1"]
    out = idmap.lookup(queries)
    assert out.dtype == np.int64
    assert out.shape == (len(queries),)
    assert out.tolist() == naive_positions(IDS, queries)
    assert out.tolist() == [3, -1, -1, 2, -1, -1]


def test_lookup_of_nothing() -> None:
    out = IdMap(IDS).lookup([])
    assert out.shape == (0,)
    assert out.dtype == np.int64


def test_to_idx_raises_key_error_naming_the_id() -> None:
    idmap = IdMap(IDS)
    with pytest.raises(KeyError) as exc:
        idmap.to_idx(["a", "missing-user", "other-missing"])
    assert "missing-user" in str(exc.value)
    assert "2" in str(exc.value)  # how many are unknown


def test_ids_that_look_numeric_stay_distinct() -> None:
    idmap = IdMap(["007", "7"])
    assert idmap.to_idx(["7", "007"]).tolist() == [1, 0]
    assert "7" in idmap and "007" in idmap
    assert "07" not in idmap


@pytest.mark.parametrize("ids", [["a", "b", "a"], ["x", "y", "z", "y"]])
def test_duplicates_are_rejected(ids: list[str]) -> None:
    dup = [v for v in ids if ids.count(v) > 1][0]
    with pytest.raises(ValueError, match=repr(dup)):
        IdMap(ids)


def test_from_values_is_sorted_and_distinct() -> None:
    values = ["b", "a", "c", "a", "b", "007", "7"]
    idmap = IdMap.from_values(values)
    assert idmap.ids.tolist() == sorted(set(values))


def test_from_values_does_not_depend_on_input_order() -> None:
    rng = np.random.default_rng(0)
    values = [f"u{i}" for i in rng.integers(0, 50, size=200)]
    reference = IdMap.from_values(values).ids.tolist()
    for _ in range(3):
        shuffled = list(rng.permutation(values))
        assert IdMap.from_values(shuffled).ids.tolist() == reference


@pytest.mark.parametrize(
    "container",
    [list, tuple, lambda v: np.asarray(v, dtype=object), pd.Series, pd.Index, iter],
    ids=["list", "tuple", "ndarray", "series", "index", "iterator"],
)
def test_accepts_any_iterable(container) -> None:
    idmap = IdMap(container(IDS))
    assert idmap.ids.tolist() == IDS
    assert idmap.lookup(container(["a", "zz"])).tolist() == [3, -1]


def test_to_ids_keeps_the_shape() -> None:
    idmap = IdMap(IDS)
    idx = np.array([[0, 1], [2, 5]])
    out = idmap.to_ids(idx)
    assert out.shape == (2, 2)
    assert out.tolist() == [["u3", "007"], ["7", "u10"]]


def test_empty_map() -> None:
    idmap = IdMap([])
    assert len(idmap) == 0
    assert idmap.lookup(["a"]).tolist() == [-1]
    with pytest.raises(KeyError):
        idmap.to_idx(["a"])

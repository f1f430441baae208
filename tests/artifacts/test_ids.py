"""``IdTable``: external ids as three memory-mappable ``.npy`` arrays (the ids
sorted, the row of each, the position of each row); row -> id and id -> row
checked against a list and a dict on hand-made ids, plus the refusal of damaged,
truncated and missing files."""

from __future__ import annotations

import re

import numpy as np
import pytest

from recxfer.artifacts import ArtifactError
from recxfer.artifacts.ids import IdTable, as_id_table

# Uneven lengths, a shared prefix ("a" < "a0" < "ab"), non-ASCII, row order unsorted.
IDS = ["zeta", "a", "ab", "a0", "é-1", "日本", "b" * 30, "user 7", ""]


@pytest.fixture(params=["memory", "read", "mmap"])
def table(request, tmp_path) -> IdTable:
    built = IdTable.from_ids(IDS, "t")
    if request.param == "memory":
        return built
    names = built.save(tmp_path, "ids")
    assert names == ("ids.npy", "ids_rows.npy", "ids_pos.npy")
    loaded = IdTable.load(IdTable.paths(tmp_path, "ids"), mmap=request.param == "mmap")
    if request.param == "mmap":
        assert all(isinstance(a, np.memmap) for a in loaded.arrays())
    sorted_ids = np.load(tmp_path / "ids.npy")
    assert sorted_ids.tolist() == sorted(i.encode() for i in IDS)  # stored sorted
    return loaded


def test_row_to_id_is_the_list(table) -> None:
    assert len(table) == len(IDS) and table.shape == (len(IDS),)
    assert table.tolist() == IDS and list(table) == IDS
    assert [table[i] for i in range(len(IDS))] == IDS
    assert table[np.int64(5)] == "日本"
    picked = table[np.array([4, 0, 4])]
    assert picked.dtype == object and picked.tolist() == ["é-1", "zeta", "é-1"]
    assert table[2:4].tolist() == IDS[2:4]
    mask = np.array([len(i) > 2 for i in IDS])
    assert table[mask].tolist() == [i for i in IDS if len(i) > 2]
    as_array = np.asarray(table)
    assert as_array.dtype == object and as_array.tolist() == IDS
    assert table.width == max(len(i.encode()) for i in IDS)


def test_id_to_row_is_the_dict(table) -> None:
    rows = {i: r for r, i in enumerate(IDS)}
    for item, row in rows.items():
        assert table.get(item) == row and item in table
    unknown = ["nobody", "a ", "ab\x00", "a\x00", "b" * 31, "b" * 29, "Zeta", 7, None, b"a", "\ud800"]
    for item in unknown:
        assert table.get(item, -1) == -1 and item not in table
    queries = [*IDS, *unknown, IDS[0]]
    expected = [rows.get(q, -1) if isinstance(q, str) else -1 for q in queries]
    strings = [q for q in queries if isinstance(q, str)]  # (the all-str fast path)
    for cut in (1, 3, 4, 5, 9, len(queries)):  # one by one, and batched
        np.testing.assert_array_equal(table.rows(queries[:cut]), expected[:cut])
        np.testing.assert_array_equal(table.rows(strings[:cut]), [rows.get(q, -1) for q in strings[:cut]])
    assert table.rows(np.array(IDS, dtype=object)).tolist() == list(range(len(IDS)))
    assert table.rows([]).shape == (0,) and table.rows(["x"]).tolist() == [-1]


def test_empty_table() -> None:
    empty = IdTable.from_ids([], "empty")
    assert len(empty) == 0 and empty.tolist() == [] and empty.get("a") is None
    assert empty.rows(["a", "b"]).tolist() == [-1, -1]
    assert empty[np.zeros(0, np.int64)].tolist() == []


def test_duplicates_and_nul_are_refused() -> None:
    with pytest.raises(ArtifactError, match="duplicate ids"):
        IdTable.from_ids(["a", "b", "a"], "users")
    with pytest.raises(ValueError, match="NUL"):
        IdTable.from_ids(["a", "b\x00"], "users")
    assert IdTable.from_ids([3, 1, 2]).tolist() == ["3", "1", "2"]  # str() of each


def test_as_id_table_keeps_a_table_and_builds_one_from_an_array() -> None:
    table = IdTable.from_ids(IDS)
    assert as_id_table(table) is table
    assert as_id_table(np.array(IDS, dtype=object)).tolist() == IDS


def _saved(tmp_path) -> tuple:
    IdTable.from_ids(IDS, "t").save(tmp_path, "ids")
    return IdTable.paths(tmp_path, "ids")


@pytest.mark.parametrize("mmap", [False, True])
@pytest.mark.parametrize("which", [0, 1, 2])
def test_truncated_or_missing_files_are_refused_naming_the_file(tmp_path, mmap, which) -> None:
    paths = _saved(tmp_path)
    path = paths[which]
    name = re.escape(path.name)
    data = path.read_bytes()
    path.write_bytes(data[:-5])  # partial: the header promises more
    with pytest.raises(ArtifactError, match=rf"/{name}: cannot be read as an id table"):
        IdTable.load(paths, mmap)
    path.write_bytes(data[:40])  # not even a whole header
    with pytest.raises(ArtifactError, match=rf"/{name}: cannot be read"):
        IdTable.load(paths, mmap)
    path.unlink()
    with pytest.raises(ArtifactError, match=rf"/{name}: cannot be read"):
        IdTable.load(paths, mmap)


def _edit(path, change) -> None:
    np.save(path, change(np.load(path)))


@pytest.mark.parametrize(
    ("which", "change", "message"),
    [
        (0, lambda a: a[::-1].copy(), "not sorted"),
        (0, lambda a: np.roll(a, 1), "not sorted"),
        (0, lambda a: np.array([b"x"] * len(IDS)), "duplicate ids"),
        (0, lambda a: np.sort(np.concatenate([a[:-1], a[:1]])), "duplicate ids"),
        (0, lambda a: np.array(sorted(IDS)), "bytes array"),  # unicode, not bytes
        (0, lambda a: a.reshape(3, 3), "1-d"),
        (1, lambda a: np.roll(a, 1), "not inverse permutations"),  # ids at the wrong rows
        (1, lambda a: a.astype(np.int32), r"_rows\.npy must be int64"),
        (1, lambda a: a[:-1], "shape"),
        (2, lambda a: np.roll(a, 1), "not inverse permutations"),
        (2, lambda a: np.zeros_like(a), "not inverse permutations"),
        (2, lambda a: a + 1, "outside"),
        (2, lambda a: a - 1, "outside"),
        (2, lambda a: a.astype(np.float64), r"_pos\.npy must be int64"),
    ],
)
def test_damaged_content_is_refused(tmp_path, which, change, message) -> None:
    paths = _saved(tmp_path)
    _edit(paths[which], change)
    for mmap in (False, True):
        with pytest.raises(ArtifactError, match=message):
            IdTable.load(paths, mmap)


def test_a_mapped_table_is_read_only(tmp_path) -> None:
    table = IdTable.load(_saved(tmp_path), mmap=True)
    for array in table.arrays():
        with pytest.raises(ValueError, match="read-only"):
            array[0] = array[1]

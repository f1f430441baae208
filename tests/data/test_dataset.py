"""load_data_dir, fingerprint and domain_matrix (recxfer/data/dataset.py)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recxfer.data import DataValidationError, IdMap, domain_matrix, load_data_dir, load_sources
from recxfer.data.dataset import fingerprint
from recxfer.data.synthetic import generate

DOMAINS = ["video", "books", "music"]


@pytest.fixture(scope="module")
def tables(three_domain_config) -> tuple[pd.DataFrame, pd.DataFrame]:
    config = three_domain_config(n_users=200, seed=3, n_items=(80, 50, 40), mean_interactions=(8.0, 4.0, 4.0))
    inter, items = generate(config)
    rng = np.random.default_rng(0)
    inter = inter.assign(weight=rng.integers(1, 5, size=len(inter)) / 2.0)
    return inter, items


def write_dir(root: Path, inter: pd.DataFrame, items: pd.DataFrame | None, fmt: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, frame in (("interactions", inter), ("items", items)):
        if frame is None:
            continue
        if fmt == "parquet":
            frame.to_parquet(root / f"{name}.parquet", index=False)
        elif fmt == "tsv":
            frame.to_csv(root / f"{name}.tsv", sep="\t", index=False)
        elif fmt == "parquet-folder":
            (root / name).mkdir()
            half = len(frame) // 2
            frame.iloc[:half].to_parquet(root / name / "part-0.parquet", index=False)
            frame.iloc[half:].to_parquet(root / name / "part-1.parquet", index=False)
        else:
            frame.to_csv(root / f"{name}.csv", index=False)
    return root


# --------------------------------------------------------------------------- load + fingerprint


def test_load_data_dir_reads_both_tables(tmp_path: Path, tables) -> None:
    inter, items = tables
    data = load_data_dir(write_dir(tmp_path, inter, items, "csv"), DOMAINS)
    assert len(data.interactions) == len(inter)
    assert data.items is not None and len(data.items) == len(items)
    assert data.interactions["weight"].tolist() == inter["weight"].tolist()
    assert len(data.fingerprint) == 64 and int(data.fingerprint, 16) >= 0


@pytest.mark.parametrize("fmt", ["parquet", "tsv", "parquet-folder"])
def test_fingerprint_is_independent_of_file_format(tmp_path: Path, tables, fmt: str) -> None:
    inter, items = tables
    csv = load_data_dir(write_dir(tmp_path / "csv", inter, items, "csv"), DOMAINS)
    other = load_data_dir(write_dir(tmp_path / fmt, inter, items, fmt), DOMAINS)
    pd.testing.assert_frame_equal(csv.interactions, other.interactions)
    pd.testing.assert_frame_equal(csv.items, other.items)
    assert csv.fingerprint == other.fingerprint


def test_fingerprint_is_independent_of_row_and_column_order(tmp_path: Path, tables) -> None:
    inter, items = tables
    a = load_data_dir(write_dir(tmp_path / "a", inter, items, "csv"), DOMAINS)
    shuffled_inter = inter.sample(frac=1.0, random_state=1)[["timestamp", "domain", "weight",
                                                              "item_id", "user_id"]]
    shuffled_items = items.sample(frac=1.0, random_state=2)[["title", "item_id", "domain"]]
    b = load_data_dir(write_dir(tmp_path / "b", shuffled_inter, shuffled_items, "parquet"),
                      DOMAINS)
    assert not a.interactions.equals(b.interactions)  # the order did change
    assert a.fingerprint == b.fingerprint


@pytest.mark.parametrize(
    "change",
    ["weight", "timestamp", "drop_row", "title", "no_items", "user_id"],
)
def test_fingerprint_changes_with_the_content(tmp_path: Path, tables, change: str) -> None:
    inter, items = tables
    base = load_data_dir(write_dir(tmp_path / "a", inter, items, "csv"), DOMAINS).fingerprint
    inter, items = inter.copy(), items.copy()
    if change == "weight":
        inter.loc[5, "weight"] += 0.5
    elif change == "timestamp":
        inter.loc[5, "timestamp"] += 1
    elif change == "drop_row":
        inter = inter.drop(index=5)
    elif change == "title":
        items.loc[3, "title"] = items.loc[3, "title"] + "!"
    elif change == "no_items":
        items = None
    elif change == "user_id":
        inter.loc[inter["user_id"] == inter.loc[0, "user_id"], "user_id"] = "brand-new-user"
    changed = load_data_dir(write_dir(tmp_path / "b", inter, items, "csv"), DOMAINS).fingerprint
    assert changed != base


def test_fingerprint_function_direct(tables) -> None:
    inter, items = tables
    assert fingerprint(inter, items) == fingerprint(inter.iloc[::-1], items.iloc[::-1])
    assert fingerprint(inter, items) != fingerprint(inter, None)


def test_items_table_is_optional(tmp_path: Path, tables) -> None:
    inter, _ = tables
    data = load_data_dir(write_dir(tmp_path, inter, None, "csv"), DOMAINS)
    assert data.items is None
    assert len(data.interactions) == len(inter)


def test_missing_data_folder(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match="does not exist"):
        load_data_dir(tmp_path / "absent", DOMAINS)


def test_missing_interactions(tmp_path: Path, tables) -> None:
    _, items = tables
    items.to_csv(tmp_path / "items.csv", index=False)
    with pytest.raises(DataValidationError, match="interactions"):
        load_data_dir(tmp_path, DOMAINS)


def test_configured_domain_missing(tmp_path: Path, tables) -> None:
    inter, items = tables
    with pytest.raises(DataValidationError, match="podcasts"):
        load_data_dir(write_dir(tmp_path, inter, items, "csv"), DOMAINS + ["podcasts"])


def test_items_not_covering_interactions(tmp_path: Path, tables) -> None:
    inter, items = tables
    used = inter.loc[0, "item_id"]
    with pytest.raises(DataValidationError, match=used):
        load_data_dir(write_dir(tmp_path, inter, items[items["item_id"] != used], "csv"), DOMAINS)


@pytest.mark.parametrize("fmt", ["csv", "parquet-folder"])
def test_nul_id_and_huge_timestamp_name_file_column_and_line(tmp_path: Path, tables, fmt: str) -> None:
    inter, items = tables
    last = len(inter) - 1  # in the second partition of the folder: its own line numbers
    line = (last - len(inter) // 2 if fmt == "parquet-folder" else last) + 2
    file = "part-1.parquet" if fmt == "parquet-folder" else "interactions.csv"
    nul = inter.copy()
    nul.loc[last, "user_id"] = "u\x00x"
    with pytest.raises(DataValidationError, match="control character") as exc:
        load_data_dir(write_dir(tmp_path / "nul", nul, items, fmt), DOMAINS)
    assert file in str(exc.value) and "'user_id'" in str(exc.value) and f"line(s) [{line}]" in str(exc.value)
    huge = inter.assign(timestamp=np.arange(len(inter), dtype=np.float64))
    huge.loc[last, "timestamp"] = 1e25
    with pytest.raises(DataValidationError, match="int64 range") as exc:
        load_data_dir(write_dir(tmp_path / "huge", huge, items, fmt), DOMAINS)
    assert file in str(exc.value) and "'timestamp'" in str(exc.value) and f"line(s) [{line}]" in str(exc.value)


def test_two_interactions_tables_are_ambiguous(tmp_path: Path, tables) -> None:
    inter, items = tables
    write_dir(tmp_path, inter, items, "csv")
    inter.to_parquet(tmp_path / "interactions.parquet", index=False)
    with pytest.raises(DataValidationError, match="interactions.parquet"):
        load_data_dir(tmp_path, DOMAINS)


def test_two_items_tables_are_ambiguous(tmp_path: Path, tables) -> None:
    inter, items = tables
    write_dir(tmp_path, inter, items, "csv")
    items.to_parquet(tmp_path / "items.parquet", index=False)
    with pytest.raises(DataValidationError, match="items"):
        load_data_dir(tmp_path, DOMAINS)


# --------------------------------------------------------------------------- domain_matrix


@pytest.mark.parametrize("domain", DOMAINS)
def test_domain_matrix_positions_match_the_id_maps(tables, domain: str) -> None:
    inter, _ = tables
    matrix = domain_matrix(inter, domain)
    rows = inter[inter["domain"] == domain]
    assert matrix.domain == domain
    assert matrix.users.ids.tolist() == sorted(set(rows["user_id"]))
    assert matrix.items.ids.tolist() == sorted(set(rows["item_id"]))
    assert matrix.user_idx.dtype == np.int64 and matrix.item_idx.dtype == np.int64
    assert matrix.weight.dtype == np.float32
    assert len(matrix.user_idx) == len(matrix.item_idx) == len(matrix.weight) == len(rows)
    user_pos = {u: k for k, u in enumerate(sorted(set(rows["user_id"])))}
    item_pos = {i: k for k, i in enumerate(sorted(set(rows["item_id"])))}
    for k, (user, item, weight) in enumerate(zip(rows["user_id"], rows["item_id"], rows["weight"])):
        assert matrix.user_idx[k] == user_pos[user]
        assert matrix.item_idx[k] == item_pos[item]
        assert matrix.weight[k] == pytest.approx(weight)


def test_item_popularity_matches_a_naive_count(tables) -> None:
    inter, _ = tables
    matrix = domain_matrix(inter, "books")
    counts = Counter(inter.loc[inter["domain"] == "books", "item_id"])
    expected = [counts[i] for i in matrix.items.ids]
    assert matrix.item_popularity.dtype == np.int64
    assert matrix.item_popularity.tolist() == expected


def test_catalogue_keeps_items_without_rows() -> None:
    frame = pd.DataFrame(
        {"user_id": ["u2", "u1", "u2"], "item_id": ["b", "b", "d"], "domain": ["books"] * 3}
    )
    matrix = domain_matrix(frame, "books", item_ids=["a", "b", "c", "d"])
    assert matrix.items.ids.tolist() == ["a", "b", "c", "d"]
    assert matrix.item_idx.tolist() == [1, 1, 3]
    assert matrix.user_idx.tolist() == [1, 0, 1]
    assert matrix.item_popularity.tolist() == [0, 2, 0, 1]
    assert matrix.weight.tolist() == [1.0, 1.0, 1.0]  # no weight column -> ones
    assert isinstance(matrix.users, IdMap)


def test_domain_matrix_of_an_empty_domain(tables) -> None:
    inter, _ = tables
    with pytest.raises(DataValidationError, match="podcasts"):
        domain_matrix(inter, "podcasts")


# --------------------------------------------------------------------------- several sources


def test_load_sources_concatenates_files_and_partition_folders(tmp_path: Path, tables) -> None:
    inter, items = tables
    whole = load_data_dir(write_dir(tmp_path / "whole", inter, items, "csv"), DOMAINS)
    third = len(inter) // 3
    inter.iloc[:third].to_csv(tmp_path / "day1.csv", index=False)
    (tmp_path / "day2").mkdir()
    inter.iloc[third : 2 * third].to_parquet(tmp_path / "day2" / "part-0.parquet", index=False)
    inter.iloc[2 * third :].to_parquet(tmp_path / "day2" / "part-1.parquet", index=False)
    items.to_csv(tmp_path / "items.csv", index=False)
    data = load_sources([tmp_path / "day1.csv", tmp_path / "day2"], tmp_path / "items.csv", DOMAINS)
    assert len(data.interactions) == len(inter)
    assert data.fingerprint == whole.fingerprint


def test_load_sources_names_the_bad_partition(tmp_path: Path, tables) -> None:
    inter, items = tables
    (tmp_path / "parts").mkdir()
    inter.iloc[:100].to_parquet(tmp_path / "parts" / "part-0.parquet", index=False)
    (tmp_path / "parts" / "part-1.parquet").write_bytes(b"PAR1 truncated")
    with pytest.raises(DataValidationError, match=r"part-1\.parquet: cannot be read"):
        load_sources([tmp_path / "parts"], None, DOMAINS)


def test_duplicate_across_sources_names_both_files(tmp_path: Path, tables) -> None:
    inter, _ = tables
    inter.iloc[:200].to_csv(tmp_path / "a.csv", index=False)
    inter.iloc[150:300].to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(DataValidationError, match=r"b\.csv: 50 duplicate row\(s\).*first seen in .*a\.csv"):
        load_sources([tmp_path / "a.csv", tmp_path / "b.csv"], None, ["video"])
    with pytest.raises(DataValidationError, match="no interactions source"):
        load_sources([], None, DOMAINS)

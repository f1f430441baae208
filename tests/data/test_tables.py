"""Reading and validating the interactions and items tables (recxfer/data/tables.py).

Every validation error must be a ``DataValidationError`` whose message names the
file and the offending column, so a user can fix the input without a debugger.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from recxfer.data import DataValidationError, read_interactions, read_items
from recxfer.data.tables import find_table

# Ids that a careless reader would turn into numbers or NaN.
INTERACTIONS = pd.DataFrame(
    {
        "user_id": ["007", "7", "u2", "u2", "NA"],
        "item_id": ["1", "1", "01", "b9", "1"],
        "domain": ["video", "video", "books", "books", "video"],
        "weight": [1.0, 2.5, 0.5, 1.0, 3.0],
        "timestamp": [10, 20, 30, 40, 1_700_000_000],
    }
)
ITEMS = pd.DataFrame(
    {
        "item_id": ["1", "01", "b9", "1"],
        "domain": ["video", "books", "books", "books"],  # "1" in two domains is fine
        "title": ["Star orbit Show", "NA", "Kiss heart Novel", "Clue case Tales"],
    }
)


def write(frame: pd.DataFrame, path: Path) -> Path:
    """Write ``frame`` in the format named by ``path``'s suffix."""
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    elif path.suffix in (".tsv", ".txt"):
        frame.to_csv(path, sep="\t", index=False)
    else:
        frame.to_csv(path, index=False)
    return path


def write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def assert_names(exc: pytest.ExceptionInfo, path: Path, column: str) -> None:
    message = str(exc.value)
    assert str(path) in message, message
    assert column in message, message


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".txt", ".parquet"])
def test_every_format_gives_the_same_normalised_frame(tmp_path: Path, suffix: str) -> None:
    frame = read_interactions(write(INTERACTIONS, tmp_path / f"interactions{suffix}"))
    reference = read_interactions(write(INTERACTIONS, tmp_path / "reference.csv"))
    pd.testing.assert_frame_equal(frame, reference)
    assert list(frame.columns) == list(INTERACTIONS.columns)
    assert frame["user_id"].tolist() == ["007", "7", "u2", "u2", "NA"]
    assert frame["item_id"].tolist() == ["1", "1", "01", "b9", "1"]
    assert frame["weight"].dtype == "float32"
    assert frame["weight"].tolist() == [1.0, 2.5, 0.5, 1.0, 3.0]
    assert frame["timestamp"].dtype == "int64"
    assert frame["timestamp"].tolist() == [10, 20, 30, 40, 1_700_000_000]


def test_ids_stay_strings_in_csv(tmp_path: Path) -> None:
    path = write_text(
        tmp_path / "interactions.csv",
        "user_id,item_id,domain\n007,1,video\n7,1.0,video\nNA,null,video\n",
    )
    frame = read_interactions(path)
    assert frame["user_id"].tolist() == ["007", "7", "NA"]
    assert frame["item_id"].tolist() == ["1", "1.0", "null"]
    assert all(isinstance(v, str) for v in frame["user_id"])


def test_integer_ids_in_parquet_become_strings_matching_csv(tmp_path: Path) -> None:
    numeric = pd.DataFrame({"user_id": [7, 8], "item_id": [1, 2], "domain": ["video"] * 2})
    textual = numeric.astype(str)
    from_parquet = read_interactions(write(numeric, tmp_path / "a.parquet"))
    from_csv = read_interactions(write(textual, tmp_path / "b.csv"))
    assert from_parquet["user_id"].tolist() == ["7", "8"]
    pd.testing.assert_frame_equal(from_parquet, from_csv)


def test_optional_columns_may_be_absent(tmp_path: Path) -> None:
    frame = read_interactions(write(INTERACTIONS[["user_id", "item_id", "domain"]],
                                    tmp_path / "i.csv"))
    assert list(frame.columns) == ["user_id", "item_id", "domain"]
    assert len(frame) == len(INTERACTIONS)


def test_folder_of_parquet_partitions_is_concatenated(tmp_path: Path) -> None:
    folder = tmp_path / "interactions"
    folder.mkdir()
    write(INTERACTIONS.iloc[:2], folder / "part-0.parquet")
    write(INTERACTIONS.iloc[2:4], folder / "part-1.parquet")
    write(INTERACTIONS.iloc[4:], folder / "part-2.parquet")
    (folder / "_SUCCESS").write_text("")  # not a table: ignored
    frame = read_interactions(folder)
    reference = read_interactions(write(INTERACTIONS, tmp_path / "all.parquet"))
    pd.testing.assert_frame_equal(frame, reference)


def test_folder_whose_files_disagree_on_columns_is_rejected(tmp_path: Path) -> None:
    folder = tmp_path / "interactions"
    folder.mkdir()
    write(INTERACTIONS.iloc[:2], folder / "part-0.parquet")
    write(INTERACTIONS.iloc[2:].drop(columns="weight"), folder / "part-1.parquet")
    with pytest.raises(DataValidationError, match="columns"):
        read_interactions(folder)


def test_folder_without_tables_is_rejected(tmp_path: Path) -> None:
    folder = tmp_path / "interactions"
    folder.mkdir()
    (folder / "notes.md").write_text("hi")
    with pytest.raises(DataValidationError) as exc:
        read_interactions(folder)
    assert str(folder) in str(exc.value)


# --------------------------------------------------------------------------- validation


def test_missing_column(tmp_path: Path) -> None:
    path = write(INTERACTIONS.drop(columns="domain"), tmp_path / "i.csv")
    with pytest.raises(DataValidationError, match="missing") as exc:
        read_interactions(path)
    assert_names(exc, path, "domain")


def test_extra_column(tmp_path: Path) -> None:
    path = write(INTERACTIONS.assign(rating=5), tmp_path / "i.parquet")
    with pytest.raises(DataValidationError) as exc:
        read_interactions(path)
    assert_names(exc, path, "rating")


@pytest.mark.parametrize("empty", ["", "   "])
def test_empty_user_id_names_the_line(tmp_path: Path, empty: str) -> None:
    # line 1 is the header, so the empty id is on line 4
    path = write_text(
        tmp_path / "i.csv",
        f"user_id,item_id,domain\nu1,i1,video\nu2,i1,video\n{empty},i2,video\nu3,i3,video\n",
    )
    with pytest.raises(DataValidationError) as exc:
        read_interactions(path)
    assert_names(exc, path, "user_id")
    assert re.search(r"line\D*\b4\b", str(exc.value)), str(exc.value)


def test_null_item_id_in_parquet(tmp_path: Path) -> None:
    frame = INTERACTIONS.astype({"item_id": object})
    frame.loc[2, "item_id"] = None
    path = write(frame, tmp_path / "i.parquet")
    with pytest.raises(DataValidationError) as exc:
        read_interactions(path)
    assert_names(exc, path, "item_id")


@pytest.mark.parametrize("bad", ["0", "-1.5", "abc", ""])
def test_weight_must_be_a_positive_number(tmp_path: Path, bad: str) -> None:
    path = write_text(
        tmp_path / "i.csv",
        f"user_id,item_id,domain,weight\nu1,i1,video,1.0\nu2,i1,video,{bad}\n",
    )
    with pytest.raises(DataValidationError) as exc:
        read_interactions(path)
    assert_names(exc, path, "weight")


def test_infinite_weight_is_rejected(tmp_path: Path) -> None:
    path = write_text(tmp_path / "i.csv", "user_id,item_id,domain,weight\nu1,i1,video,inf\n")
    with pytest.raises(DataValidationError):
        read_interactions(path)


@pytest.mark.parametrize("bad", ["abc", "", "2024-01-01"])
def test_timestamp_must_be_an_integer(tmp_path: Path, bad: str) -> None:
    path = write_text(
        tmp_path / "i.csv",
        f"user_id,item_id,domain,timestamp\nu1,i1,video,5\nu2,i1,video,{bad}\n",
    )
    with pytest.raises(DataValidationError) as exc:
        read_interactions(path)
    assert_names(exc, path, "timestamp")


def test_fractional_timestamp_is_rejected(tmp_path: Path) -> None:
    path = write_text(
        tmp_path / "i.csv", "user_id,item_id,domain,timestamp\nu1,i1,video,1.5\nu2,i1,video,3\n"
    )
    with pytest.raises(DataValidationError) as exc:
        read_interactions(path)
    assert_names(exc, path, "timestamp")


@pytest.mark.parametrize("bad", ["1e25", "-1e25", "9223372036854775808", "99999999999999999999"])
def test_timestamp_outside_int64_is_refused_not_wrapped(tmp_path: Path, bad: str) -> None:
    path = write_text(
        tmp_path / "i.csv",
        f"user_id,item_id,domain,timestamp\nu1,i1,video,5\nu2,i2,video,7\nu3,i1,video,{bad}\n",
    )
    with pytest.raises(DataValidationError, match=r"outside the int64 range") as exc:
        read_interactions(path)
    assert_names(exc, path, "timestamp")
    assert "line(s) [4]" in str(exc.value)  # header is line 1: the bad row is the file's line 4


def test_timestamp_at_the_int64_bounds_is_kept(tmp_path: Path) -> None:
    path = write_text(
        tmp_path / "i.csv",
        "user_id,item_id,domain,timestamp\nu1,i1,video,-9223372036854775808\n"
        "u2,i1,video,9223372036854775807\n",
    )
    assert read_interactions(path)["timestamp"].tolist() == [-(2**63), 2**63 - 1]


def test_timestamp_outside_int64_in_parquet(tmp_path: Path) -> None:
    frame = INTERACTIONS.assign(timestamp=[1.0, 2.0, 1e25, 4.0, 5.0])
    path = write(frame, tmp_path / "i.parquet")
    with pytest.raises(DataValidationError, match=r"outside the int64 range.*line\(s\) \[4\]") as exc:
        read_interactions(path)
    assert_names(exc, path, "timestamp")


@pytest.mark.parametrize("column", ["user_id", "item_id", "domain"])
@pytest.mark.parametrize("char", ["\x00", "\x07", "\x1b", "\x7f", "\x85"])
def test_ids_with_control_characters_are_refused(tmp_path: Path, column: str, char: str) -> None:
    frame = INTERACTIONS.copy()
    frame.loc[1, column] = f"ab{char}cd"
    path = write(frame, tmp_path / "i.parquet")
    with pytest.raises(DataValidationError, match="control character") as exc:
        read_interactions(path)
    assert_names(exc, path, column)
    assert "line(s) [3]" in str(exc.value)


def test_nul_in_a_csv_id_names_file_column_and_line(tmp_path: Path) -> None:
    path = tmp_path / "i.csv"
    path.write_bytes(b"user_id,item_id,domain\nu1,i1,video\nu2,i1,video\nu\x003,i2,video\n")
    with pytest.raises(DataValidationError, match=r"column 'user_id' has 1 value\(s\) with a control") as exc:
        read_interactions(path)
    assert_names(exc, path, "user_id")
    assert "line(s) [4]" in str(exc.value) and "'u\\x003'" in str(exc.value)


def test_a_tab_inside_a_csv_id_is_refused_but_surrounding_space_is_stripped(tmp_path: Path) -> None:
    ok = write_text(tmp_path / "ok.csv", 'user_id,item_id,domain\n" u1 ",i1,video\n')
    assert read_interactions(ok)["user_id"].tolist() == ["u1"]
    bad = write_text(tmp_path / "bad.csv", 'user_id,item_id,domain\nu1,i1,video\n"u\t2",i1,video\n')
    with pytest.raises(DataValidationError, match="control character") as exc:
        read_interactions(bad)
    assert_names(exc, bad, "user_id")


def test_items_ids_are_checked_too(tmp_path: Path) -> None:
    items = ITEMS.copy()
    items.loc[2, "item_id"] = "b\x009"
    path = write(items, tmp_path / "items.parquet")
    with pytest.raises(DataValidationError, match="control character") as exc:
        read_items(path)
    assert_names(exc, path, "item_id")


def test_duplicate_rows_are_rejected(tmp_path: Path) -> None:
    frame = pd.concat([INTERACTIONS, INTERACTIONS.iloc[[3]]], ignore_index=True)
    path = write(frame, tmp_path / "i.csv")
    with pytest.raises(DataValidationError, match="duplicate") as exc:
        read_interactions(path)
    assert_names(exc, path, "user_id")
    assert "b9" in str(exc.value)


def test_duplicates_count_after_id_normalisation(tmp_path: Path) -> None:
    path = write_text(tmp_path / "i.csv", "user_id,item_id,domain\nu1,i1,video\n u1 ,i1,video\n")
    with pytest.raises(DataValidationError, match="duplicate"):
        read_interactions(path)


def test_same_pair_at_different_times_is_not_a_duplicate(tmp_path: Path) -> None:
    path = write_text(
        tmp_path / "i.csv", "user_id,item_id,domain,timestamp\nu1,i1,video,1\nu1,i1,video,2\n"
    )
    assert len(read_interactions(path)) == 2


def test_configured_domain_without_rows(tmp_path: Path) -> None:
    path = write(INTERACTIONS, tmp_path / "i.csv")
    assert len(read_interactions(path, domains=["video", "books"])) == len(INTERACTIONS)
    with pytest.raises(DataValidationError) as exc:
        read_interactions(path, domains=["video", "music"])
    assert_names(exc, path, "domain")
    assert "music" in str(exc.value)


@pytest.mark.parametrize("name", ["i.json", "i.xlsx", "interactions"])
def test_unsupported_suffix(tmp_path: Path, name: str) -> None:
    path = write_text(tmp_path / name, "user_id,item_id,domain\nu1,i1,video\n")
    with pytest.raises(DataValidationError) as exc:
        read_interactions(path)
    assert str(path) in str(exc.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.csv"
    with pytest.raises(DataValidationError) as exc:
        read_interactions(path)
    assert str(path) in str(exc.value)


def test_unreadable_parquet(tmp_path: Path) -> None:
    path = write_text(tmp_path / "i.parquet", "this is not parquet")
    with pytest.raises(DataValidationError) as exc:
        read_interactions(path)
    assert str(path) in str(exc.value)


def test_validation_error_is_a_value_error() -> None:
    assert issubclass(DataValidationError, ValueError)


# --------------------------------------------------------------------------- items


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
def test_items_are_read_in_every_format(tmp_path: Path, suffix: str) -> None:
    items = read_items(write(ITEMS, tmp_path / f"items{suffix}"))
    assert items["item_id"].tolist() == ["1", "01", "b9", "1"]
    assert items["title"].tolist() == ITEMS["title"].tolist()  # "NA" is a title, not NaN


def test_missing_text_becomes_empty_string(tmp_path: Path) -> None:
    frame = ITEMS.assign(text=["a", None, "c", None])
    items = read_items(write(frame, tmp_path / "items.parquet"))
    assert items["text"].tolist() == ["a", "", "c", ""]


def test_items_missing_title_column(tmp_path: Path) -> None:
    path = write(ITEMS.drop(columns="title"), tmp_path / "items.csv")
    with pytest.raises(DataValidationError) as exc:
        read_items(path)
    assert_names(exc, path, "title")


def test_items_duplicate_item(tmp_path: Path) -> None:
    path = write(pd.concat([ITEMS, ITEMS.iloc[[2]]], ignore_index=True), tmp_path / "items.csv")
    with pytest.raises(DataValidationError, match="duplicate") as exc:
        read_items(path)
    assert_names(exc, path, "item_id")
    assert "b9" in str(exc.value)


def test_items_cover_interactions(tmp_path: Path) -> None:
    interactions = read_interactions(write(INTERACTIONS, tmp_path / "i.csv"))
    items = read_items(write(ITEMS, tmp_path / "items.csv"), interactions)
    assert len(items) == len(ITEMS)


def test_interaction_item_absent_from_items(tmp_path: Path) -> None:
    interactions = read_interactions(write(INTERACTIONS, tmp_path / "i.csv"))
    path = write(ITEMS.drop(index=2), tmp_path / "items.csv")  # drops ("b9", "books")
    with pytest.raises(DataValidationError) as exc:
        read_items(path, interactions)
    assert_names(exc, path, "item_id")
    assert "b9" in str(exc.value)


def test_interaction_item_known_only_in_another_domain(tmp_path: Path) -> None:
    interactions = read_interactions(write(INTERACTIONS, tmp_path / "i.csv"))
    items = ITEMS.copy()
    items.loc[1, "domain"] = "video"  # ("01", "books") is now unknown
    path = write(items, tmp_path / "items.csv")
    with pytest.raises(DataValidationError) as exc:
        read_items(path, interactions)
    assert "'01'" in str(exc.value)


# --------------------------------------------------------------------------- find_table


def test_find_table_file_and_folder(tmp_path: Path) -> None:
    path = write(INTERACTIONS, tmp_path / "interactions.tsv")
    assert find_table(tmp_path, "interactions") == path
    (tmp_path / "items").mkdir()
    assert find_table(tmp_path, "items") == tmp_path / "items"


def test_find_table_none(tmp_path: Path) -> None:
    write(INTERACTIONS, tmp_path / "other.csv")
    with pytest.raises(DataValidationError, match="none") as exc:
        find_table(tmp_path, "interactions")
    assert str(tmp_path) in str(exc.value)


def test_find_table_two_candidates(tmp_path: Path) -> None:
    write(INTERACTIONS, tmp_path / "interactions.csv")
    write(INTERACTIONS, tmp_path / "interactions.parquet")
    with pytest.raises(DataValidationError) as exc:
        find_table(tmp_path, "interactions")
    assert "interactions.csv" in str(exc.value)
    assert "interactions.parquet" in str(exc.value)
